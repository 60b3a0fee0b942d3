package spec

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeNetworkAndIngress(t *testing.T) {
	in := `{
	  "network": {"cidr": "10.200.0.0/24"},
	  "vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64, "replicas": 2}},
	  "ingress": {
	    "site": {"host": "web.example.org", "to": "web", "port": 8080},
	    "api":  {"host": "web.example.org", "path": "/api", "to": "web", "port": 9090, "protocol": "http", "listenPort": null},
	    "pg":   {"host": "db.example.org", "to": "web", "port": 5432, "protocol": "tcp", "listenPort": 15432}
	  }
	}`
	got, err := Decode([]byte(in))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	wantNet := Network{CIDR: netip.MustParsePrefix("10.200.0.0/24")}
	wantIngress := map[string]Ingress{
		"site": {Host: "web.example.org", Path: "/", To: "web", Port: 8080, Protocol: "http"},
		"api":  {Host: "web.example.org", Path: "/api", To: "web", Port: 9090, Protocol: "http"},
		"pg":   {Host: "db.example.org", Path: "/", To: "web", Port: 5432, Protocol: "tcp", ListenPort: 15432},
	}
	if got.Network != wantNet || !reflect.DeepEqual(got.Ingress, wantIngress) {
		t.Fatalf("Decode = network %+v ingress %+v\nwant network %+v ingress %+v", got.Network, got.Ingress, wantNet, wantIngress)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	data, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Decode(data)
	if err != nil || !reflect.DeepEqual(got, again) {
		t.Fatalf("canonical JSON does not decode to the same cluster (%v):\n%s", err, data)
	}
}

func TestNetworkCIDRDefaults(t *testing.T) {
	def := netip.MustParsePrefix(DefaultCIDR)
	for name, in := range map[string]string{
		"absent network gives the default":       `{}`,
		"network without cidr gives the default": `{"network": {}}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, err := Decode([]byte(in))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.NetworkCIDR(); got != def {
				t.Fatalf("NetworkCIDR() = %s, want %s", got, def)
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
	if got := (&Cluster{}).NetworkCIDR(); got != def {
		t.Fatalf("hand-built cluster: NetworkCIDR() = %s, want %s", got, def)
	}
	if got := (*Cluster)(nil).NetworkCIDR(); got != def {
		t.Fatalf("nil cluster: NetworkCIDR() = %s, want %s", got, def)
	}
}

func TestDecodeNetworkAndIngressProblems(t *testing.T) {
	entry := func(fields string) string {
		return `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64}}, "ingress": {"site": {` + fields + `}}}`
	}
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"cidr that is not a CIDR names network.cidr", `{"network": {"cidr": "10.100.0.0"}}`,
			[]string{`network.cidr: "10.100.0.0" is not a CIDR such as "10.100.0.0/16"`}},
		{"cidr with a prefix over 32 names network.cidr", `{"network": {"cidr": "10.100.0.0/33"}}`,
			[]string{`network.cidr: "10.100.0.0/33" is not a CIDR`}},
		{"cidr that is not a string", `{"network": {"cidr": 16}}`,
			[]string{`network.cidr: expected a string such as "10.100.0.0/16", got integer 16`}},
		{"unknown network field", `{"network": {"cdir": "10.0.0.0/8"}}`,
			[]string{`network.cdir: unknown field "cdir"; did you mean "cidr"?`}},
		{"network not an attribute set", `{"network": "10.0.0.0/8"}`,
			[]string{`network: expected an attribute set, got string "10.0.0.0/8"`}},
		{"ingress not an attribute set", `{"ingress": []}`,
			[]string{`ingress: expected an attribute set of ingress entries, got list of 0 elements`}},
		{"ingress entry missing host, to and port", entry(``),
			[]string{`ingress.site.host: missing required field`, `ingress.site.port: missing required field`, `ingress.site.to: missing required field`}},
		{"ingress port given as a string", entry(`"host": "a.b", "to": "web", "port": "80"`),
			[]string{`ingress.site.port: expected an integer, got string "80"`}},
		{"ingress listenPort given as a string", entry(`"host": "a.b", "to": "web", "port": 80, "protocol": "tcp", "listenPort": "80"`),
			[]string{`ingress.site.listenPort: expected an integer, got string "80"`}},
		{"unknown ingress field with a suggestion", entry(`"host": "a.b", "to": "web", "port": 80, "listen": 80`),
			[]string{`ingress.site.listen: unknown field "listen"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode succeeded with %#v, want problems %q", c, tt.want)
			}
			assertProblems(t, err, tt.want)
		})
	}
}

func TestValidateNetworkAndIngress(t *testing.T) {
	cidr := func(s string) func(c *Cluster) {
		return func(c *Cluster) { c.Network.CIDR = netip.MustParsePrefix(s) }
	}
	http := func(host, path string) Ingress {
		return Ingress{Host: host, Path: path, To: "web", Port: 8080, Protocol: IngressHTTP}
	}
	tcp := func(listen int) Ingress {
		return Ingress{Host: "db.example.org", Path: "/", To: "db", Port: 5432, Protocol: IngressTCP, ListenPort: listen}
	}
	ingress := func(entries map[string]Ingress) func(c *Cluster) {
		return func(c *Cluster) { c.Ingress = entries }
	}
	tests := []struct {
		name string
		edit func(c *Cluster)
		want []string // prefixes of the error's lines; nil means valid
	}{
		{"default network passes", func(c *Cluster) {}, nil},
		{"a /8 passes", cidr("10.0.0.0/8"), nil},
		{"a /28 passes", cidr("192.168.7.16/28"), nil},
		{"a public range passes", cidr("100.64.0.0/10"), nil},
		{"IPv6 is rejected", cidr("fd00::/64"),
			[]string{`network.cidr: fd00::/64 is not IPv4`}},
		{"IPv4-mapped IPv6 is rejected", cidr("::ffff:10.0.0.0/104"),
			[]string{`network.cidr: ::ffff:10.0.0.0/104 is not IPv4`}},
		{"a /7 is rejected", cidr("10.0.0.0/7"),
			[]string{`network.cidr: 10.0.0.0/7 has prefix length /7: use /8 to /28 (a /28 has 13 instance addresses)`}},
		{"a /29 is rejected", cidr("10.0.0.0/29"),
			[]string{`network.cidr: 10.0.0.0/29 has prefix length /29: use /8 to /28`}},
		{"a host address instead of the network address is rejected", cidr("10.100.3.4/16"),
			[]string{`network.cidr: 10.100.3.4/16 is not a network address: the network containing it is 10.100.0.0/16; write that`}},
		{"loopback is rejected", cidr("127.0.0.0/8"),
			[]string{`network.cidr: 127.0.0.0/8 overlaps the loopback range 127.0.0.0/8`}},
		{"link-local is rejected", cidr("169.254.0.0/24"),
			[]string{`network.cidr: 169.254.0.0/24 overlaps the link-local range 169.254.0.0/16`}},
		{"multicast is rejected", cidr("224.0.0.0/8"),
			[]string{`network.cidr: 224.0.0.0/8 overlaps the multicast range 224.0.0.0/4`}},
		{"class E is rejected", cidr("250.0.0.0/8"),
			[]string{`network.cidr: 250.0.0.0/8 overlaps the reserved (class E and broadcast) range 240.0.0.0/4`}},
		{"0.0.0.0/8 is rejected", cidr("0.0.0.0/8"),
			[]string{`network.cidr: 0.0.0.0/8 overlaps the "this network" range 0.0.0.0/8`}},

		{"HTTP and TCP entries pass", ingress(map[string]Ingress{
			"site": http("web.example.org", "/"), "api": http("web.example.org", "/api"), "other": http("Other.Example.org", "/"),
			"pg": tcp(15432), "pg2": tcp(15433),
		}), nil},
		{"ingress to an undeclared VM is rejected", ingress(map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "nope", Port: 80, Protocol: "http"}}),
			[]string{`ingress.site.to: "nope" is not a VM declared in vms`}},
		{"ingress to a replica names the declared VM", func(c *Cluster) {
			editVM(c, "web", func(vm *VM) { vm.Replicas = 2 })
			c.Ingress = map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "web-1", Port: 80, Protocol: "http"}}
		}, []string{`ingress.site.to: "web-1" is not a VM declared in vms; ingress routes to every replica of a declared VM: write "web"`}},
		{"ingress to a function is rejected", ingress(map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "fn", Port: 80, Protocol: "http"}}),
			[]string{`ingress.site.to: "fn" is not a VM declared in vms; it is a function, and ingress routes to VMs`}},
		{"port 0 is rejected", ingress(map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "web", Protocol: "http"}}),
			[]string{`ingress.site.port: must be a port between 1 and 65535 (the VM's port), got 0`}},
		{"port 65536 is rejected", ingress(map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "web", Port: 65536, Protocol: "http"}}),
			[]string{`ingress.site.port: must be a port between 1 and 65535 (the VM's port), got 65536`}},
		{"ports 1 and 65535 pass", ingress(map[string]Ingress{
			"a": {Host: "a.b", Path: "/", To: "web", Port: 1, Protocol: "http"},
			"b": {Host: "c.d", Path: "/", To: "web", Port: 65535, Protocol: "http"},
		}), nil},
		{"two entries for one host and path are rejected", ingress(map[string]Ingress{
			"a": http("web.example.org", "/"), "b": http("WEB.example.org", "/"),
		}), []string{`ingress.b: host "WEB.example.org" and path "/" are also routed by ingress.a; give each entry its own host or path`}},
		{"unknown protocol is rejected", ingress(map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "web", Port: 80, Protocol: "udp"}}),
			[]string{`ingress.site.protocol: must be "http" or "tcp", got "udp"`}},
		{"tcp without listenPort is rejected", ingress(map[string]Ingress{"pg": tcp(0)}),
			[]string{`ingress.pg.listenPort: protocol = "tcp" needs listenPort`}},
		{"tcp listenPort out of range is rejected", ingress(map[string]Ingress{"pg": tcp(70000)}),
			[]string{`ingress.pg.listenPort: must be a port between 1 and 65535, got 70000`}},
		{"two tcp entries on one listenPort are rejected", ingress(map[string]Ingress{"pg": tcp(15432), "pg2": tcp(15432)}),
			[]string{`ingress.pg2.listenPort: port 15432 is also the listenPort of ingress.pg`}},
		{"tcp with a path is rejected", ingress(map[string]Ingress{"pg": {Host: "a.b", Path: "/x", To: "db", Port: 5432, Protocol: "tcp", ListenPort: 1}}),
			[]string{`ingress.pg.path: applies to protocol = "http" only`}},
		{"http with a listenPort is rejected", ingress(map[string]Ingress{"site": {Host: "a.b", Path: "/", To: "web", Port: 80, Protocol: "http", ListenPort: 8080}}),
			[]string{`ingress.site.listenPort: applies to protocol = "tcp" only`}},
		{"empty host is rejected", ingress(map[string]Ingress{"site": http("", "/")}),
			[]string{`ingress.site.host: must be a host name such as "web.example.org", got ""`}},
		{"host with a port is rejected", ingress(map[string]Ingress{"site": http("web.example.org:80", "/")}),
			[]string{`ingress.site.host: "web.example.org:80" is not a host name`}},
		{"host with a scheme is rejected", ingress(map[string]Ingress{"site": http("https://web.example.org", "/")}),
			[]string{`ingress.site.host: "https://web.example.org" is not a host name`}},
		{"host label ending in '-' is rejected", ingress(map[string]Ingress{"site": http("web-.example.org", "/")}),
			[]string{`ingress.site.host: "web-.example.org" is not a host name`}},
		{"host with an empty label is rejected", ingress(map[string]Ingress{"site": http("web..org", "/")}),
			[]string{`ingress.site.host: "web..org" is not a host name`}},
		{"host longer than 253 characters is rejected", ingress(map[string]Ingress{"site": http(strings.Repeat("a.", 127)+"ab", "/")}),
			[]string{`ingress.site.host: host name "a.a.`}},
		{"path without a leading slash is rejected", ingress(map[string]Ingress{"site": http("a.b", "api")}),
			[]string{`ingress.site.path: must start with "/", got "api"`}},
		{"path with a query is rejected", ingress(map[string]Ingress{"site": http("a.b", "/api?x=1")}),
			[]string{`ingress.site.path: "/api?x=1" holds '?'`}},
		{"path with a space is rejected", ingress(map[string]Ingress{"site": http("a.b", "/a b")}),
			[]string{`ingress.site.path: "/a b" holds ' '`}},
		{"bad entry name is rejected", ingress(map[string]Ingress{"My_Site": http("a.b", "/")}),
			[]string{`ingress.My_Site: invalid name "My_Site"`}},
		{"every problem of an entry is reported", ingress(map[string]Ingress{"site": {Host: "", Path: "x", To: "", Port: 0, Protocol: "tcp"}}),
			[]string{
				`ingress.site.host: must be a host name`,
				`ingress.site.listenPort: protocol = "tcp" needs listenPort`,
				`ingress.site.path: applies to protocol = "http" only`,
				`ingress.site.path: must start with "/"`,
				`ingress.site.port: must be a port between 1 and 65535`,
				`ingress.site.to: "" is not a VM declared in vms`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(tt.edit)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed, want %q", tt.want)
			}
			assertProblems(t, err, tt.want)
		})
	}
}

func TestIsDNSLabel(t *testing.T) {
	for _, ok := range []string{"a", "web-0", "a--b", "0a", strings.Repeat("x", 63)} {
		if !IsDNSLabel(ok) {
			t.Errorf("IsDNSLabel(%q) = false, want true", ok)
		}
	}
	for _, bad := range []string{"", "a-", "-a", "A", "a.b", "a_b", strings.Repeat("x", 64)} {
		if IsDNSLabel(bad) {
			t.Errorf("IsDNSLabel(%q) = true, want false", bad)
		}
	}
}
