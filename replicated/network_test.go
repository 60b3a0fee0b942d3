package replicated

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/spec"
)

// The expected values below were computed outside Go, with
// `printf 'prod/web-0' | sha256sum`: the derivation is a documented
// function of the names (the Nix side computes attempt 0 the same way).
func TestDeriveIdentityVectors(t *testing.T) {
	tests := []struct {
		name     string
		got      string
		want     string
		describe string
	}{
		{"MAC of attempt 0 is 02 and the first five octets of sha256(CLUSTER/INSTANCE)",
			DeriveMAC("prod", "web-0", 0).String(), "02:04:91:75:c6:b0", "sha256(prod/web-0) = 049175c6b0…"},
		{"MAC of attempt 1 hashes CLUSTER/INSTANCE/1",
			DeriveMAC("prod", "web-0", 1).String(), "02:0c:0b:45:30:c4", "sha256(prod/web-0/1) = 0c0b4530c4…"},
		{"tap is bx and hex digits 10–22", DeriveTap("prod", "web-0", 0), "bx93a75970af78f", ""},
		{"tap of attempt 1", DeriveTap("prod", "web-0", 1), "bx657bb27a4de2f", ""},
		{"hostname of a name that is a DNS label is the name", DeriveHostname("prod", "web-0", 0), "web-0", ""},
		{"hostname of attempt 1 is derived", DeriveHostname("prod", "web-0", 1), "web-0-de6441", ""},
		{"hostname of a name ending in '-' is derived", DeriveHostname("prod", "web-", 0), "web-69a1b3", ""},
		{"an empty cluster name hashes /INSTANCE", DeriveMAC("", "a", 0).String(), "02:6a:50:dc:85:84", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %q, want %q %s", tt.got, tt.want, tt.describe)
			}
		})
	}
}

func TestDerivedIdentitiesAreWellFormed(t *testing.T) {
	names := []string{"a", "web-0", "web-", "a--", strings.Repeat("x", 63), strings.Repeat("y", 62) + "-", "db-999"}
	for _, cluster := range []string{"", "prod", strings.Repeat("c", 63)} {
		for _, name := range names {
			for attempt := range 3 {
				m := DeriveMAC(cluster, name, attempt)
				if !m.LocalUnicast() || m[0] != 0x02 {
					t.Errorf("DeriveMAC(%q, %q, %d) = %s: not 02:… locally administered unicast", cluster, name, attempt, m)
				}
				tap := DeriveTap(cluster, name, attempt)
				if len(tap) != MaxTapName || !strings.HasPrefix(tap, TapPrefix) || strings.Trim(tap[2:], "0123456789abcdef") != "" {
					t.Errorf("DeriveTap(%q, %q, %d) = %q: want %s and 13 hex digits", cluster, name, attempt, tap, TapPrefix)
				}
				h := DeriveHostname(cluster, name, attempt)
				if !spec.IsDNSLabel(h) {
					t.Errorf("DeriveHostname(%q, %q, %d) = %q: not a DNS label", cluster, name, attempt, h)
				}
				if again := DeriveMAC(cluster, name, attempt); again != m {
					t.Errorf("DeriveMAC is not stable: %s then %s", m, again)
				}
			}
			if DeriveMAC(cluster, name, 0) == DeriveMAC(cluster, name, 1) || DeriveTap(cluster, name, 0) == DeriveTap(cluster, name, 1) {
				t.Errorf("%s/%s: attempts 0 and 1 derive the same MAC or tap", cluster, name)
			}
		}
	}
}

func TestMACText(t *testing.T) {
	m := MAC{0x02, 0xab, 0, 0x10, 0xff, 1}
	b, err := json.Marshal(m)
	if err != nil || string(b) != `"02:ab:00:10:ff:01"` {
		t.Fatalf("json.Marshal = %s, %v; want \"02:ab:00:10:ff:01\"", b, err)
	}
	var back MAC
	if err := json.Unmarshal(b, &back); err != nil || back != m {
		t.Fatalf("round trip = %s, %v", back, err)
	}
	for _, bad := range []string{`"02:ab"`, `"zz:ab:00:10:ff:01"`, `"02:ab:00:10:ff:01:02:03"`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("Unmarshal(%s) accepted", bad)
		}
	}
	if (MAC{0x03}).LocalUnicast() || (MAC{0x00}).LocalUnicast() || !(MAC{0x06}).LocalUnicast() {
		t.Error("LocalUnicast misreads bits 0 and 1 of the first octet")
	}
}

func TestNetworkAddressArithmetic(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name      string
		cidr      netip.Prefix
		gateway   string
		instances int
		yes, no   []string
	}{
		{"default /16: gateway .0.1, instances .0.2 to .255.254", pfx("10.100.0.0/16"), "10.100.0.1", 65533,
			[]string{"10.100.0.2", "10.100.0.255", "10.100.1.0", "10.100.255.254"},
			[]string{"10.100.0.0", "10.100.0.1", "10.100.255.255", "10.101.0.2", "10.99.255.254", "::1", "::ffff:10.100.0.2"}},
		{"a /28 has 13 instance addresses", pfx("192.168.7.16/28"), "192.168.7.17", 13,
			[]string{"192.168.7.18", "192.168.7.30"}, []string{"192.168.7.16", "192.168.7.17", "192.168.7.31", "192.168.7.32"}},
		{"a /8", pfx("10.0.0.0/8"), "10.0.0.1", 1<<24 - 3, []string{"10.255.255.254"}, []string{"10.255.255.255"}},
		{"a /30 has one", pfx("10.0.0.4/30"), "10.0.0.5", 1, []string{"10.0.0.6"}, []string{"10.0.0.7"}},
		{"a /31 has none", pfx("10.0.0.4/31"), "", 0, nil, []string{"10.0.0.4", "10.0.0.5"}},
		{"IPv6 has none", pfx("fd00::/64"), "", 0, nil, []string{"fd00::2"}},
		{"the zero prefix has none", netip.Prefix{}, "", 0, nil, []string{"10.0.0.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw := Gateway(tt.cidr)
			if tt.gateway == "" && gw.IsValid() || tt.gateway != "" && gw != addr(tt.gateway) {
				t.Errorf("Gateway(%s) = %s, want %q", tt.cidr, gw, tt.gateway)
			}
			if n := InstanceAddrs(tt.cidr); n != tt.instances {
				t.Errorf("InstanceAddrs(%s) = %d, want %d", tt.cidr, n, tt.instances)
			}
			for _, a := range tt.yes {
				if !IsInstanceAddr(tt.cidr, addr(a)) {
					t.Errorf("IsInstanceAddr(%s, %s) = false", tt.cidr, a)
				}
			}
			for _, a := range tt.no {
				if IsInstanceAddr(tt.cidr, addr(a)) {
					t.Errorf("IsInstanceAddr(%s, %s) = true", tt.cidr, a)
				}
			}
		})
	}
}

// allocation is a compact view of a network: instance → address.
func allocation(n *Network) map[string]string {
	out := map[string]string{}
	for vm, id := range n.Identities {
		out[vm] = id.Address.String()
	}
	return out
}

// alloc is AllocateNetwork of instances on nodes with nothing declared,
// with the names of the instances it gives no identity.
func alloc(prev *Network, cluster string, cidr netip.Prefix, instances []string, nodes ...uint64) (*Network, []string) {
	n, refused := AllocateNetwork(prev, NetworkRequest{Cluster: cluster, CIDR: cidr, Instances: instances, Nodes: nodes})
	return n, refusedVMs(refused)
}

func refusedVMs(refused []Unaddressed) []string {
	var out []string
	for _, u := range refused {
		out = append(out, u.VM)
	}
	return out
}

func TestAllocateNetwork(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	def := pfx("10.100.0.0/16")
	ident := func(vm, a string) Identity {
		return Identity{Address: addr(a), MAC: DeriveMAC("t", vm, 0), Tap: DeriveTap("t", vm, 0), Hostname: DeriveHostname("t", vm, 0)}
	}
	net := func(cidr netip.Prefix, ids map[string]Identity) *Network {
		return &Network{CIDR: cidr, Gateway: Gateway(cidr), Identities: ids}
	}
	tests := []struct {
		name            string
		prev            *Network
		cidr            netip.Prefix
		instances       []string
		want            map[string]string
		wantUnaddressed []string
	}{
		{"new instances get the lowest addresses in name order", nil, def, []string{"c", "a", "b"},
			map[string]string{"a": "10.100.0.2", "b": "10.100.0.3", "c": "10.100.0.4"}, nil},
		{"an instance keeps its address when others are declared before it",
			net(def, map[string]Identity{"b": ident("b", "10.100.0.2")}), def, []string{"a", "b"},
			map[string]string{"a": "10.100.0.3", "b": "10.100.0.2"}, nil},
		{"a gap left by a removal is filled by the next new instance",
			net(def, map[string]Identity{"a": ident("a", "10.100.0.3"), "b": ident("b", "10.100.0.4")}), def, []string{"a", "b", "c", "d"},
			map[string]string{"a": "10.100.0.3", "b": "10.100.0.4", "c": "10.100.0.2", "d": "10.100.0.5"}, nil},
		{"the address of an instance the plan removes is not given out in that plan",
			net(def, map[string]Identity{"old": ident("old", "10.100.0.2")}), def, []string{"new"},
			map[string]string{"new": "10.100.0.3"}, nil},
		{"a CIDR change readdresses instances outside it and keeps those inside",
			net(pfx("10.100.0.0/16"), map[string]Identity{"in": ident("in", "10.100.0.9"), "out": ident("out", "10.100.1.2")}),
			pfx("10.100.0.0/24"), []string{"in", "out"},
			map[string]string{"in": "10.100.0.9", "out": "10.100.0.2"}, nil},
		{"a CIDR change readdresses an instance on the new broadcast address",
			net(pfx("10.100.0.0/23"), map[string]Identity{"b": ident("b", "10.100.0.255")}), pfx("10.100.0.0/24"), []string{"b"},
			map[string]string{"b": "10.100.0.2"}, nil},
		{"a CIDR change readdresses an instance on the new gateway address",
			net(pfx("10.100.0.0/24"), map[string]Identity{"g": ident("g", "10.100.0.1")}), pfx("10.100.0.0/23"), []string{"g"},
			map[string]string{"g": "10.100.0.2"}, nil},
		{"a /28 addresses 13 instances; the ones beyond it, by name, get none", nil, pfx("10.0.0.0/28"),
			[]string{"i00", "i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "i11", "i12", "i13", "i14"},
			map[string]string{"i00": "10.0.0.2", "i01": "10.0.0.3", "i02": "10.0.0.4", "i03": "10.0.0.5", "i04": "10.0.0.6",
				"i05": "10.0.0.7", "i06": "10.0.0.8", "i07": "10.0.0.9", "i08": "10.0.0.10", "i09": "10.0.0.11",
				"i10": "10.0.0.12", "i11": "10.0.0.13", "i12": "10.0.0.14"},
			[]string{"i13", "i14"}},
		{"on exhaustion running instances being readdressed go before new ones",
			net(pfx("10.1.0.0/16"), map[string]Identity{"z": ident("z", "10.1.0.2")}), pfx("10.0.0.0/28"),
			[]string{"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "b0", "b1", "b2", "z"},
			map[string]string{"z": "10.0.0.2", "a0": "10.0.0.3", "a1": "10.0.0.4", "a2": "10.0.0.5", "a3": "10.0.0.6", "a4": "10.0.0.7",
				"a5": "10.0.0.8", "a6": "10.0.0.9", "a7": "10.0.0.10", "a8": "10.0.0.11", "a9": "10.0.0.12", "b0": "10.0.0.13", "b1": "10.0.0.14"},
			[]string{"b2"}},
		{"no instances give an empty network", nil, def, nil, map[string]string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := mustJSON(t, tt.prev)
			got, unaddressed := alloc(tt.prev, "t", tt.cidr, tt.instances)
			if a := allocation(got); !reflect.DeepEqual(a, tt.want) {
				t.Errorf("addresses = %v\nwant        %v", a, tt.want)
			}
			if !slices.Equal(unaddressed, tt.wantUnaddressed) {
				t.Errorf("unaddressed = %v, want %v", unaddressed, tt.wantUnaddressed)
			}
			if got.CIDR != tt.cidr || got.Gateway != Gateway(tt.cidr) {
				t.Errorf("network %s gateway %s, want %s gateway %s", got.CIDR, got.Gateway, tt.cidr, Gateway(tt.cidr))
			}
			if mustJSON(t, tt.prev) != before {
				t.Error("AllocateNetwork modified prev")
			}
			checkNetwork(t, got)
			if tt.prev != nil {
				for vm, was := range tt.prev.Identities {
					now, ok := got.Identities[vm]
					if ok && (now.MAC != was.MAC || now.Tap != was.Tap || now.Hostname != was.Hostname) {
						t.Errorf("%s: identity %+v changed to %+v", vm, was, now)
					}
				}
			}
		})
	}
}

func TestAllocateNetworkNodeAddresses(t *testing.T) {
	cidr := netip.MustParsePrefix("10.0.0.0/28") // instance addresses .2 to .14
	addr := netip.MustParseAddr
	t.Run("nodes take the highest addresses by id, instances the lowest", func(t *testing.T) {
		n, _ := alloc(nil, "t", cidr, []string{"b", "a"}, 3, 1)
		if got := nodeAddrs(n); !reflect.DeepEqual(got, map[uint64]string{1: "10.0.0.14", 3: "10.0.0.13"}) {
			t.Fatalf("nodes %v", got)
		}
		if got := allocation(n); !reflect.DeepEqual(got, map[string]string{"a": "10.0.0.2", "b": "10.0.0.3"}) {
			t.Fatalf("instances %v", got)
		}
		checkNetwork(t, n)
	})
	t.Run("a node keeps its address; a removed node's is free only after the plan that removes it", func(t *testing.T) {
		prev := &Network{CIDR: cidr, Gateway: Gateway(cidr), NodeAddrs: map[uint64]netip.Addr{1: addr("10.0.0.14"), 2: addr("10.0.0.13")}}
		n, _ := alloc(prev, "t", cidr, nil, 2, 3)
		if got := nodeAddrs(n); !reflect.DeepEqual(got, map[uint64]string{2: "10.0.0.13", 3: "10.0.0.12"}) {
			t.Fatalf("nodes %v: node 1's .14 must stay taken in the plan that drops it", got)
		}
		n, _ = alloc(n, "t", cidr, nil, 2, 3, 4)
		if got := nodeAddrs(n); !reflect.DeepEqual(got, map[uint64]string{2: "10.0.0.13", 3: "10.0.0.12", 4: "10.0.0.14"}) {
			t.Fatalf("nodes %v: node 4 should get node 1's freed .14", got)
		}
	})
	t.Run("where nodes and instances meet the network is full and new instances go without", func(t *testing.T) {
		var names []string
		for i := range 11 {
			names = append(names, fmt.Sprintf("i%02d", i))
		}
		n, unaddressed := alloc(nil, "t", cidr, names, 1, 2, 3)
		if len(n.NodeAddrs) != 3 || len(n.Identities) != 10 || !slices.Equal(unaddressed, []string{"i10"}) {
			t.Fatalf("%d node addresses, %d identities, unaddressed %v; want 3, 10 and i10", len(n.NodeAddrs), len(n.Identities), unaddressed)
		}
		checkNetwork(t, n)
	})
}

func TestAllocateNetworkDeclaredIdentities(t *testing.T) {
	cidr := netip.MustParsePrefix("10.100.0.0/16")
	req := func(decl map[string]DeclaredIdentity, names ...string) NetworkRequest {
		return NetworkRequest{Cluster: "t", CIDR: cidr, Instances: names, Declared: decl}
	}
	t.Run("a declared part is used as it is and derived ones avoid it", func(t *testing.T) {
		xMAC := DeriveMAC("t", "x", 0)
		n, refused := AllocateNetwork(nil, req(map[string]DeclaredIdentity{"y": {MAC: xMAC, Hostname: "www"}}, "x", "y"))
		if len(refused) > 0 {
			t.Fatalf("refused %+v", refused)
		}
		if y := n.Identities["y"]; y.MAC != xMAC || y.Hostname != "www" || y.Tap != DeriveTap("t", "y", 0) {
			t.Fatalf("y = %+v, want x's attempt-0 MAC and hostname www as declared, its own derived tap", y)
		}
		if x := n.Identities["x"]; x.MAC != DeriveMAC("t", "x", 1) {
			t.Fatalf("x = %+v, want the MAC of attempt 1: y declared attempt 0's", x)
		}
		checkNetwork(t, n)
	})
	t.Run("a declared hostname that is another instance's name is refused", func(t *testing.T) {
		_, refused := AllocateNetwork(nil, req(map[string]DeclaredIdentity{"y": {Hostname: "x"}}, "x", "y"))
		if len(refused) != 1 || refused[0].VM != "y" || !strings.HasPrefix(refused[0].Reason, "its declared hostname x is the name of instance x") {
			t.Fatalf("refused %+v", refused)
		}
	})
	t.Run("a running instance that declares a new MAC gets it and keeps its address", func(t *testing.T) {
		prev, _ := AllocateNetwork(nil, req(nil, "x"))
		mac := MAC{0x02, 0, 0, 0, 0, 9}
		n, refused := AllocateNetwork(prev, req(map[string]DeclaredIdentity{"x": {MAC: mac}}, "x"))
		if x := n.Identities["x"]; len(refused) > 0 || x.MAC != mac || x.Address != prev.Identities["x"].Address || x.Tap != prev.Identities["x"].Tap {
			t.Fatalf("x = %+v (refused %+v), want the new MAC and the rest as before (%+v)", x, refused, prev.Identities["x"])
		}
	})
	t.Run("a part held by an instance the plan removes is refused in that plan and free in the next", func(t *testing.T) {
		prev, _ := AllocateNetwork(nil, req(nil, "old"))
		decl := map[string]DeclaredIdentity{"new": {Tap: prev.Identities["old"].Tap}}
		n, refused := AllocateNetwork(prev, req(decl, "new"))
		if len(refused) != 1 || !strings.HasPrefix(refused[0].Reason, "its declared tap "+prev.Identities["old"].Tap+" is instance old's") {
			t.Fatalf("refused %+v", refused)
		}
		n, refused = AllocateNetwork(n, req(decl, "new"))
		if len(refused) > 0 || n.Identities["new"].Tap != prev.Identities["old"].Tap {
			t.Fatalf("next plan: refused %+v, new = %+v", refused, n.Identities["new"])
		}
	})
}

func TestDeclaredIdentities(t *testing.T) {
	c := &spec.Cluster{VMs: map[string]spec.VM{
		"web": {Replicas: 2, Instances: map[string]spec.InstanceEntry{
			"web-0": {MAC: "02:00:00:00:00:01", Tap: "bx0", Hostname: "w0"},
			"web-1": {Runner: spec.Runner{Drv: "/nix/store/x.drv", Out: "/nix/store/x"}}, // declares nothing
		}},
		"db": {Replicas: 1},
	}}
	got, err := DeclaredIdentities(c)
	want := map[string]DeclaredIdentity{"web-0": {MAC: MAC{2, 0, 0, 0, 0, 1}, Tap: "bx0", Hostname: "w0"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("DeclaredIdentities = %v, %v; want %v", got, err, want)
	}
	c.VMs["web"].Instances["web-1"] = spec.InstanceEntry{MAC: "02:00:00:00:00:0G"}
	if _, err := DeclaredIdentities(c); err == nil || !strings.HasPrefix(err.Error(), `vms.web.instances.web-1.mac: "02:00:00:00:00:0G" is not a MAC address`) {
		t.Fatalf("err = %v", err)
	}
}

func TestAllocateNetworkResolvesCollisions(t *testing.T) {
	cidr := netip.MustParsePrefix("10.100.0.0/16")
	// "other" already holds what "x" derives at attempt 0: its MAC, its
	// tap and (for the name "y") its hostname.
	prev := &Network{CIDR: cidr, Gateway: Gateway(cidr), Identities: map[string]Identity{
		"other": {Address: netip.MustParseAddr("10.100.0.2"), MAC: DeriveMAC("t", "x", 0), Tap: DeriveTap("t", "x", 0), Hostname: "y"},
	}}
	got, _ := alloc(prev, "t", cidr, []string{"other", "x", "y"})
	x, y := got.Identities["x"], got.Identities["y"]
	if x.MAC != DeriveMAC("t", "x", 1) || x.Tap != DeriveTap("t", "x", 1) || x.Hostname != "x" {
		t.Errorf("x = %+v: want MAC and tap of attempt 1 and hostname x", x)
	}
	if y.Hostname != DeriveHostname("t", "y", 1) || y.MAC != DeriveMAC("t", "y", 0) {
		t.Errorf("y = %+v: want hostname of attempt 1 (y is taken) and MAC of attempt 0", y)
	}
	if got.Identities["other"] != prev.Identities["other"] {
		t.Errorf("the holder's identity changed: %+v", got.Identities["other"])
	}
	checkNetwork(t, got)

	// A name ending in '-' gets a derived hostname, which avoids the
	// plan's instance names: that name stays the hostname of its instance.
	derived := DeriveHostname("t", "web-", 0)
	got, _ = alloc(nil, "t", cidr, []string{"web-", derived})
	if h := got.Identities[derived].Hostname; h != derived {
		t.Errorf("instance %s has hostname %q, want its own name", derived, h)
	}
	if h := got.Identities["web-"].Hostname; h != DeriveHostname("t", "web-", 1) {
		t.Errorf("instance web- has hostname %q, want attempt 1 %q (attempt 0 is another instance's name)", h, DeriveHostname("t", "web-", 1))
	}
	checkNetwork(t, got)
}

// checkNetwork checks the invariants of every allocated network: each
// instance's and node's address an instance address of the CIDR, and
// address (instances and nodes together), MAC, tap and hostname unique;
// MACs locally administered unicast and not a bridge's 0a:b1, taps and
// hostnames well-formed.
func checkNetwork(t *testing.T, n *Network) {
	t.Helper()
	if n == nil {
		return
	}
	if n.Gateway != Gateway(n.CIDR) {
		t.Fatalf("gateway %s of %s, want %s", n.Gateway, n.CIDR, Gateway(n.CIDR))
	}
	addrs, macs, taps, hosts := map[netip.Addr]string{}, map[MAC]string{}, map[string]string{}, map[string]string{}
	for _, vm := range slices.Sorted(maps.Keys(n.Identities)) {
		id := n.Identities[vm]
		if !IsInstanceAddr(n.CIDR, id.Address) {
			t.Fatalf("%s has address %s, not an instance address of %s", vm, id.Address, n.CIDR)
		}
		if !id.MAC.LocalUnicast() || id.MAC[0] == 0x0a && id.MAC[1] == 0xb1 || spec.ValidTap(id.Tap) != nil || !spec.IsDNSLabel(id.Hostname) {
			t.Fatalf("%s has a malformed identity %+v", vm, id)
		}
		for _, dup := range []struct {
			what  string
			other string
			ok    bool
		}{
			{"address " + id.Address.String(), addrs[id.Address], addrs[id.Address] != ""},
			{"MAC " + id.MAC.String(), macs[id.MAC], macs[id.MAC] != ""},
			{"tap " + id.Tap, taps[id.Tap], taps[id.Tap] != ""},
			{"hostname " + id.Hostname, hosts[id.Hostname], hosts[id.Hostname] != ""},
		} {
			if dup.ok {
				t.Fatalf("%s of %s is also %s's", dup.what, vm, dup.other)
			}
		}
		addrs[id.Address], macs[id.MAC], taps[id.Tap], hosts[id.Hostname] = vm, vm, vm, vm
	}
	for _, node := range slices.Sorted(maps.Keys(n.NodeAddrs)) {
		a := n.NodeAddrs[node]
		if !IsInstanceAddr(n.CIDR, a) {
			t.Fatalf("node %d has address %s, not a host address of %s other than the gateway", node, a, n.CIDR)
		}
		if other := addrs[a]; other != "" {
			t.Fatalf("node %d's address %s is also %s's", node, a, other)
		}
		addrs[a] = fmt.Sprintf("node %d", node)
	}
}

// propCIDRs are small, overlapping networks, so random plans run out of
// addresses and change networks often.
var propCIDRs = []string{"10.0.0.0/28", "10.0.0.0/27", "10.0.0.16/28", "10.0.0.0/26", "10.1.0.0/28", "10.0.0.0/24"}

// propNames is the pool random plans declare instances from: replicas,
// plain names and a name that is no DNS label.
func propNames() []string {
	var out []string
	for i := range 30 {
		out = append(out, fmt.Sprintf("web-%d", i))
	}
	for i := range 20 {
		out = append(out, fmt.Sprintf("vm%d", i))
	}
	return append(out, "odd-", "odd")
}

// mkClusterIdentity is what lib.mkCluster declares for instance vm: the
// derivations at attempt 0.
func mkClusterIdentity(cluster, vm string) DeclaredIdentity {
	return DeclaredIdentity{MAC: DeriveMAC(cluster, vm, 0), Tap: DeriveTap(cluster, vm, 0), Hostname: DeriveHostname(cluster, vm, 0)}
}

// propDeclared declares identities for some of names, at random: most as
// mkCluster does, some with a part another pool name derives (a clash
// when that one holds it), some only partly.
func propDeclared(r *rand.Rand, cluster string, names, pool []string) map[string]DeclaredIdentity {
	out := map[string]DeclaredIdentity{}
	for _, vm := range names {
		switch r.IntN(8) {
		case 0, 1, 2:
			out[vm] = mkClusterIdentity(cluster, vm)
		case 3:
			other := pool[r.IntN(len(pool))]
			d := mkClusterIdentity(cluster, vm)
			switch r.IntN(3) {
			case 0:
				d.MAC = DeriveMAC(cluster, other, 0)
			case 1:
				d.Tap = DeriveTap(cluster, other, 0)
			default:
				d.Hostname = DeriveHostname(cluster, other, 0)
			}
			out[vm] = d
		case 4:
			out[vm] = DeclaredIdentity{Tap: fmt.Sprintf("tap%d", r.IntN(4))}
		}
	}
	return out
}

// TestAllocateNetworkProperties runs random sequences of plans (instances
// added, removed and rescaled, identities declared, CIDR changes, nodes
// registered and removed) through AllocateNetwork and checks, after each:
// the network invariants; stability (an instance keeps its identity but
// for what it declares differently, and its address while it is an
// instance address; a node keeps its address on the same terms);
// declarations (a declared part is used as it is, or the instance gets no
// identity because another holds it); freeing (nothing prev holds is given
// to a new holder in the same plan); lowest-free for instances and
// highest-free for nodes, nodes first; exhaustion (an instance or node
// goes without an address only when no free one is left, running
// instances first); determinism (the order of the lists does not matter).
func TestAllocateNetworkProperties(t *testing.T) {
	pool := propNames()
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 0x0e7))
		var prev *Network
		cidr := netip.MustParsePrefix(propCIDRs[r.IntN(len(propCIDRs))])
		declared := map[string]bool{}
		nodes := map[uint64]bool{1: true}
		redeclare := r.IntN(2) == 0
		var decl map[string]DeclaredIdentity
		for step := range 12 {
			name := fmt.Sprintf("seed=%d/step=%d", seed, step)
			switch op := r.IntN(7); {
			case op == 0:
				cidr = netip.MustParsePrefix(propCIDRs[r.IntN(len(propCIDRs))])
			case op <= 2: // add some
				for range 1 + r.IntN(12) {
					declared[pool[r.IntN(len(pool))]] = true
				}
			case op == 3: // remove some
				for vm := range declared {
					if r.IntN(3) == 0 {
						delete(declared, vm)
					}
				}
			case op == 4: // rescale web
				n := r.IntN(30)
				for i := range 30 {
					declared[fmt.Sprintf("web-%d", i)] = i < n
				}
			case op == 5: // nodes come and go
				for id := range uint64(6) {
					nodes[id+1] = r.IntN(2) == 0
				}
			}
			var names []string
			for vm, ok := range declared {
				if ok {
					names = append(names, vm)
				}
			}
			var ids []uint64
			for id, ok := range nodes {
				if ok {
					ids = append(ids, id)
				}
			}
			if decl == nil || redeclare {
				decl = propDeclared(r, "prop", names, pool)
			}
			req := NetworkRequest{Cluster: "prop", CIDR: cidr, Instances: names, Declared: decl, Nodes: ids}
			got, refused := AllocateNetwork(prev, req)
			checkNetwork(t, got)
			checkAllocationStep(t, name, prev, req, got, refused)
			r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
			again, refused2 := AllocateNetwork(prev, NetworkRequest{Cluster: "prop", CIDR: cidr, Instances: names, Declared: decl, Nodes: ids})
			if !reflect.DeepEqual(got, again) || !slices.Equal(refused, refused2) {
				t.Fatalf("%s: the order of the instances or nodes changed the allocation", name)
			}
			prev = got
		}
	}
}

func checkAllocationStep(t *testing.T, name string, prev *Network, req NetworkRequest, got *Network, refused []Unaddressed) {
	t.Helper()
	cidr := req.CIDR
	held := map[netip.Addr]bool{}
	heldMAC, heldTap, heldHost := map[MAC]string{}, map[string]string{}, map[string]string{}
	var prevIDs map[string]Identity
	var prevNodes map[uint64]netip.Addr
	if prev != nil {
		prevIDs, prevNodes = prev.Identities, prev.NodeAddrs
	}
	for vm, id := range prevIDs {
		held[id.Address] = true
		heldMAC[id.MAC], heldTap[id.Tap], heldHost[id.Hostname] = vm, vm, vm
	}
	for _, a := range prevNodes {
		held[a] = true
	}
	if len(got.Identities)+len(refused) != len(req.Instances) {
		t.Fatalf("%s: %d identities and %d refused for %d instances", name, len(got.Identities), len(refused), len(req.Instances))
	}
	noAddress := NoAddressReason(cidr)
	var unaddressed []string
	for _, u := range refused {
		if u.Reason == noAddress {
			unaddressed = append(unaddressed, u.VM)
			continue
		}
		// Refused for its declaration: a declared part is another's.
		d := req.Declared[u.VM]
		clash := func(owner string) bool { return owner != "" && owner != u.VM }
		isName := d.Hostname != u.VM && slices.Contains(req.Instances, d.Hostname)
		otherDeclares := false
		for _, vm := range req.Instances {
			o, ok := req.Declared[vm]
			if vm != u.VM && ok && (o.MAC == d.MAC && d.MAC != (MAC{}) || o.Tap == d.Tap && d.Tap != "" || o.Hostname == d.Hostname && d.Hostname != "") {
				otherDeclares = true
			}
		}
		if !clash(heldMAC[d.MAC]) && !clash(heldTap[d.Tap]) && !clash(heldHost[d.Hostname]) && !isName && !otherDeclares {
			t.Fatalf("%s: %s refused (%s) though no other instance holds or declares what it declares (%+v)", name, u.VM, u.Reason, d)
		}
	}
	given := map[netip.Addr]bool{} // addresses given to new holders in this plan
	runningUnaddressed := false
	for _, vm := range req.Instances {
		id, ok := got.Identities[vm]
		was, had := prevIDs[vm]
		if !ok {
			if had && slices.Contains(unaddressed, vm) {
				runningUnaddressed = true
			}
			continue
		}
		d := req.Declared[vm]
		if d.apply(id) != id {
			t.Fatalf("%s: %s has %+v, not what it declares, %+v", name, vm, id, d)
		}
		for _, part := range []struct {
			what         string
			changed      bool
			holder, want string
		}{
			{"MAC", !had || id.MAC != was.MAC, heldMAC[id.MAC], id.MAC.String()},
			{"tap", !had || id.Tap != was.Tap, heldTap[id.Tap], id.Tap},
			{"hostname", !had || id.Hostname != was.Hostname, heldHost[id.Hostname], id.Hostname},
		} {
			if part.changed && part.holder != "" && part.holder != vm {
				t.Fatalf("%s: %s got %s %s, which %s still holds", name, vm, part.what, part.want, part.holder)
			}
		}
		if w := d.apply(was); had && (w.MAC != id.MAC || w.Tap != id.Tap || w.Hostname != id.Hostname) {
			t.Fatalf("%s: %s's identity changed from %+v to %+v (declared %+v)", name, vm, was, id, d)
		}
		switch {
		case had && IsInstanceAddr(cidr, was.Address) && id.Address != was.Address:
			t.Fatalf("%s: %s moved from %s to %s though %s is still an instance address of %s", name, vm, was.Address, id.Address, was.Address, cidr)
		case had && id.Address == was.Address:
			continue
		}
		if held[id.Address] {
			t.Fatalf("%s: %s got %s, which the committed network still holds", name, vm, id.Address)
		}
		given[id.Address] = true
	}
	givenNodes := map[netip.Addr]bool{}
	var homeless []uint64
	for _, node := range req.Nodes {
		a, ok := got.NodeAddrs[node]
		was, had := prevNodes[node]
		switch {
		case !ok:
			homeless = append(homeless, node)
		case had && IsInstanceAddr(cidr, was) && a != was:
			t.Fatalf("%s: node %d moved from %s to %s", name, node, was, a)
		case !had || a != was:
			if held[a] {
				t.Fatalf("%s: node %d got %s, which the committed network still holds", name, node, a)
			}
			givenNodes[a] = true
		}
	}
	if len(got.NodeAddrs) != len(req.Nodes)-len(homeless) {
		t.Fatalf("%s: node addresses %v for nodes %v", name, got.NodeAddrs, req.Nodes)
	}
	free := func(a netip.Addr) bool { return !held[a] && !given[a] && !givenNodes[a] && !inUse(got, a) }
	first, last, _ := ipv4Range(cidr)
	// Lowest-free for instances: no free address is left below the highest
	// one given, and none at all when an instance went without.
	var highest netip.Addr
	for a := range given {
		if !highest.IsValid() || highest.Less(a) {
			highest = a
		}
	}
	for v := first; v <= last && v >= first; v++ {
		a := fromIPv4(v)
		if len(unaddressed) == 0 && (!highest.IsValid() || !a.Less(highest)) {
			break
		}
		if free(a) {
			t.Fatalf("%s: %s is free, but %s was given out or %v went without (unaddressed)", name, a, highest, unaddressed)
		}
	}
	// Highest-free for nodes, likewise from the top; and nodes go first, so
	// a node without an address means no address at all was free.
	var lowest netip.Addr
	for a := range givenNodes {
		if !lowest.IsValid() || a.Less(lowest) {
			lowest = a
		}
	}
	for v := last; v >= first && v <= last; v-- {
		a := fromIPv4(v)
		if len(homeless) == 0 && (!lowest.IsValid() || !lowest.Less(a)) {
			break
		}
		if free(a) {
			t.Fatalf("%s: %s is free, but node address %s was given out or nodes %v went without", name, a, lowest, homeless)
		}
		if len(homeless) > 0 && given[a] {
			t.Fatalf("%s: nodes %v went without an address while instance got %s", name, homeless, a)
		}
	}
	// Running instances are readdressed before new ones are addressed.
	if runningUnaddressed {
		for _, vm := range req.Instances {
			if _, had := prevIDs[vm]; !had {
				if _, ok := got.Identities[vm]; ok {
					t.Fatalf("%s: new instance %s got an address while a running one went without", name, vm)
				}
			}
		}
	}
}

func inUse(n *Network, a netip.Addr) bool {
	for _, id := range n.Identities {
		if id.Address == a {
			return true
		}
	}
	for _, na := range n.NodeAddrs {
		if na == a {
			return true
		}
	}
	return false
}

// netPlan is a CommitPlan of the given instances on parent, assigned
// round-robin to nodes 1–3 (shifted by move), with network cidr (zero:
// the default). Like the planner, it lists the instances the network
// gives no identity as unschedulable.
func netPlan(s *State, commit string, cidr netip.Prefix, move int, instances ...string) Command {
	return netPlanDeclared(s, commit, cidr, move, nil, instances...)
}

// netPlanDeclared is netPlan whose spec declares identities: each
// instance is a VM of its own, whose instances entry declares decl[vm].
func netPlanDeclared(s *State, commit string, cidr netip.Prefix, move int, decl map[string]DeclaredIdentity, instances ...string) Command {
	sp := &spec.Cluster{Name: "t", VMs: map[string]spec.VM{}, Network: spec.Network{CIDR: cidr}}
	c := &CommitPlan{Parent: s.revisionID(), Commit: commit, Spec: sp}
	for i, vm := range instances {
		a := asg(vm, uint64(1+(i+move)%3), "v1")
		v := spec.VM{Runner: spec.Runner{Drv: a.Drv, Out: a.OutPath}, VCPU: a.VCPU, MemMiB: a.MemMiB, Replicas: 1, Autostart: true}
		if d, ok := decl[vm]; ok {
			e := spec.InstanceEntry{Tap: d.Tap, Hostname: d.Hostname}
			if d.MAC != (MAC{}) {
				e.MAC = d.MAC.String()
			}
			v.Instances = map[string]spec.InstanceEntry{vm: e}
		}
		sp.VMs[vm] = v
	}
	declared, err := DeclaredIdentities(sp)
	if err != nil {
		panic(err)
	}
	retiring := RetiringAddrs(s.Network, instances, s.Assignments, s.Observed, s.Nodes)
	_, refused := AllocateNetwork(s.Network, NetworkRequest{Cluster: sp.Name, CIDR: sp.NetworkCIDR(), Instances: instances,
		Declared: declared, Nodes: slices.Collect(maps.Keys(s.Nodes)), Reserved: slices.Collect(maps.Values(retiring))})
	for i, vm := range instances {
		a := asg(vm, uint64(1+(i+move)%3), "v1")
		if j, ok := slices.BinarySearchFunc(refused, vm, func(u Unaddressed, vm string) int { return strings.Compare(u.VM, vm) }); ok {
			c.Unschedulable = append(c.Unschedulable, Unschedulable{VM: vm, Reason: refused[j].Reason})
			continue
		}
		c.Assignments = append(c.Assignments, a)
	}
	slices.SortFunc(c.Assignments, func(a, b Assignment) int { return strings.Compare(a.VM, b.VM) })
	return cmdAt(t0, Command{Type: CmdCommitPlan, CommitPlan: c})
}

func addressOf(t *testing.T, s *State, vm string) string {
	t.Helper()
	id, ok := s.Identity(vm)
	if !ok {
		return "none"
	}
	return id.Address.String()
}

func nodeAddrs(n *Network) map[uint64]string {
	out := map[uint64]string{}
	for id, a := range n.NodeAddrs {
		out[id] = a.String()
	}
	return out
}

func TestApplyCommitPlanAllocatesTheNetwork(t *testing.T) {
	s := NewState()
	applyAll(t, s, reg(1), reg(2), reg(3))
	applyAll(t, s, netPlan(s, "c1", netip.Prefix{}, 0, "web-0", "web-1", "db"))
	if s.Network == nil || s.Network.CIDR.String() != spec.DefaultCIDR || s.Network.Gateway.String() != "10.100.0.1" {
		t.Fatalf("network after the first plan = %+v, want %s with gateway 10.100.0.1", s.Network, spec.DefaultCIDR)
	}
	want := map[string]string{"db": "10.100.0.2", "web-0": "10.100.0.3", "web-1": "10.100.0.4"}
	if got := allocation(s.Network); !reflect.DeepEqual(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
	wantNodes := map[uint64]string{1: "10.100.255.254", 2: "10.100.255.253", 3: "10.100.255.252"}
	if got := nodeAddrs(s.Network); !reflect.DeepEqual(got, wantNodes) {
		t.Fatalf("node addresses = %v, want %v (from the top of the network, by id)", got, wantNodes)
	}
	if a, ok := s.NodeAddr(2); !ok || a.String() != "10.100.255.253" {
		t.Fatalf("NodeAddr(2) = %s, %t", a, ok)
	}
	first := s.Network.Identities

	t.Run("a move, a restart and a new revision keep every identity", func(t *testing.T) {
		applyAll(t, s, netPlan(s, "c2", netip.Prefix{}, 1, "web-0", "web-1", "db"))
		applyAll(t, s, cmdAt(t0, Command{Type: CmdSetVMRunState, SetVMRunState: &SetVMRunState{VM: "web-0", Restart: true}}))
		applyAll(t, s, plan(s.revisionID(), "c3", asg("web-0", 3, "v2"), asg("web-1", 3, "v2"), asg("db", 2, "v2")))
		if s.Assignments["web-0"].Node != 3 || !reflect.DeepEqual(s.Network.Identities, first) {
			t.Fatalf("identities changed:\n%v\nwant\n%v", s.Network.Identities, first)
		}
		if got := nodeAddrs(s.Network); !reflect.DeepEqual(got, wantNodes) {
			t.Fatalf("node addresses = %v, want %v", got, wantNodes)
		}
	})
	t.Run("a node registered after a plan gets the highest free address with the next plan", func(t *testing.T) {
		applyAll(t, s, reg(4))
		if _, ok := s.NodeAddr(4); ok {
			t.Fatal("node 4 has an address before any plan: RegisterNode allocates nothing")
		}
		applyAll(t, s, netPlan(s, "c3b", netip.Prefix{}, 0, "web-0", "web-1", "db"))
		if a, _ := s.NodeAddr(4); a.String() != "10.100.255.251" {
			t.Fatalf("node 4 = %s, want 10.100.255.251", a)
		}
	})
	t.Run("a removed instance frees its address once its removal is committed", func(t *testing.T) {
		applyAll(t, s, netPlan(s, "c4", netip.Prefix{}, 0, "web-0", "db", "api"))
		if got := addressOf(t, s, "api"); got != "10.100.0.5" {
			t.Fatalf("api = %s, want 10.100.0.5: web-1's 10.100.0.4 is still held in the plan that removes it", got)
		}
		if _, ok := s.Identity("web-1"); ok {
			t.Fatal("web-1 keeps an identity after its removal committed")
		}
		applyAll(t, s, netPlan(s, "c5", netip.Prefix{}, 0, "web-0", "db", "api", "cache"))
		if got := addressOf(t, s, "cache"); got != "10.100.0.4" {
			t.Fatalf("cache = %s, want web-1's freed 10.100.0.4", got)
		}
	})
	t.Run("a CIDR change readdresses every instance and node outside it and keeps MACs", func(t *testing.T) {
		macs := map[string]MAC{}
		for vm, id := range s.Network.Identities {
			macs[vm] = id.MAC
		}
		applyAll(t, s, netPlan(s, "c6", netip.MustParsePrefix("10.200.0.0/24"), 0, "web-0", "db", "api", "cache"))
		want := map[string]string{"api": "10.200.0.2", "cache": "10.200.0.3", "db": "10.200.0.4", "web-0": "10.200.0.5"}
		if got := allocation(s.Network); !reflect.DeepEqual(got, want) || s.Network.Gateway.String() != "10.200.0.1" {
			t.Fatalf("addresses = %v gateway %s, want %v gateway 10.200.0.1", got, s.Network.Gateway, want)
		}
		wantNodes := map[uint64]string{1: "10.200.0.254", 2: "10.200.0.253", 3: "10.200.0.252", 4: "10.200.0.251"}
		if got := nodeAddrs(s.Network); !reflect.DeepEqual(got, wantNodes) {
			t.Fatalf("node addresses = %v, want %v", got, wantNodes)
		}
		for vm, id := range s.Network.Identities {
			if id.MAC != macs[vm] {
				t.Errorf("%s's MAC changed with the CIDR", vm)
			}
		}
	})
	t.Run("instances beyond a too small network are unschedulable; nodes and running instances keep theirs", func(t *testing.T) {
		var names []string
		for i := range 16 {
			names = append(names, fmt.Sprintf("n%02d", i))
		}
		cmd := netPlan(s, "c7", netip.MustParsePrefix("10.200.0.0/28"), 0, append(names, "web-0", "db", "api", "cache")...)
		applyAll(t, s, cmd)
		// 13 addresses: 4 nodes from the top (.14 down to .11), the 4
		// running instances keep .2 to .5, 5 new ones get .6 to .10.
		if got := len(s.Network.Identities); got != 9 {
			t.Fatalf("%d identities, want 9 (a /28 less 4 node addresses)", got)
		}
		wantNodes := map[uint64]string{1: "10.200.0.14", 2: "10.200.0.13", 3: "10.200.0.12", 4: "10.200.0.11"}
		if got := nodeAddrs(s.Network); !reflect.DeepEqual(got, wantNodes) {
			t.Fatalf("node addresses = %v, want %v", got, wantNodes)
		}
		if got := addressOf(t, s, "web-0"); got != "10.200.0.5" {
			t.Fatalf("web-0 = %s, want its 10.200.0.5", got)
		}
		if len(s.Unschedulable) != 11 || !strings.HasPrefix(s.Unschedulable[0].Reason, "network 10.200.0.0/28 has no free address") {
			t.Fatalf("unschedulable = %+v, want 11 with the network's reason", s.Unschedulable)
		}
		checkNetwork(t, s.Network)
	})
}

// TestApplyCommitPlanKeepsRetiringAddresses: a removed instance's address
// goes to no other instance while its node may still run it (assigned
// when the plan removed it, reported starting, running or stopping since
// by a node that is not down), and is free for the first plan after it
// stopped.
func TestApplyCommitPlanKeepsRetiringAddresses(t *testing.T) {
	s := NewState()
	applyAll(t, s, reg(1), reg(2), reg(3))
	// web-0 on node 1 at .2, web-1 on node 2 at .3.
	applyAll(t, s, netPlan(s, "c1", netip.Prefix{}, 0, "web-0", "web-1"))
	applyAll(t, s, hb(2, VMStatus{VM: "web-1", Node: 2, Phase: PhaseRunning}))
	retiring := func() map[string]string {
		out := map[string]string{}
		for vm, a := range s.Network.Retiring {
			out[vm] = a.String()
		}
		return out
	}
	steps := []struct {
		name      string
		cmds      []Command // before the plan
		instances []string
		check     string // instance whose address is checked
		address   string
		retiring  map[string]string
	}{
		{"the plan that removes web-1: still held as any identity is", nil, []string{"web-0", "api"}, "api", "10.100.0.4",
			map[string]string{"web-1": "10.100.0.3"}},
		{"web-1 reported running: its address stays taken", nil, []string{"web-0", "api", "cache"}, "cache", "10.100.0.5",
			map[string]string{"web-1": "10.100.0.3"}},
		{"web-1 reported stopping: still taken", []Command{hb(2, VMStatus{VM: "web-1", Node: 2, Phase: PhaseStopping})},
			[]string{"web-0", "api", "cache", "db"}, "db", "10.100.0.6", map[string]string{"web-1": "10.100.0.3"}},
		{"web-1 reported stopped: the next plan hands it out", []Command{hb(2, VMStatus{VM: "web-1", Node: 2, Phase: PhaseStopped})},
			[]string{"web-0", "api", "cache", "db", "queue"}, "queue", "10.100.0.3", map[string]string{}},
	}
	for _, st := range steps {
		applyAll(t, s, st.cmds...)
		applyAll(t, s, netPlan(s, st.name, netip.Prefix{}, 0, st.instances...))
		if got := addressOf(t, s, st.check); got != st.address {
			t.Errorf("%s: %s = %s, want %s", st.name, st.check, got, st.address)
		}
		if got := retiring(); !reflect.DeepEqual(got, st.retiring) {
			t.Errorf("%s: retiring %v, want %v", st.name, got, st.retiring)
		}
		checkNetwork(t, s.Network)
	}

	t.Run("a node marked down runs nothing", func(t *testing.T) {
		// queue (the 5th instance) is on node 2; removing it while node 2
		// reports it running keeps its address, until node 2 is down.
		applyAll(t, s, hb(2, VMStatus{VM: "queue", Node: 2, Phase: PhaseRunning}))
		applyAll(t, s, netPlan(s, "d1", netip.Prefix{}, 0, "web-0", "api", "cache", "db"))
		if got := retiring(); !reflect.DeepEqual(got, map[string]string{"queue": "10.100.0.3"}) {
			t.Fatalf("retiring %v, want queue's 10.100.0.3", got)
		}
		applyAll(t, s, cmdAt(t0, Command{Type: CmdSetNodeState, SetNodeState: &SetNodeState{ID: 2, State: NodeDown}}))
		applyAll(t, s, netPlan(s, "d2", netip.Prefix{}, 0, "web-0", "api", "cache", "db", "mail"))
		if got := addressOf(t, s, "mail"); got != "10.100.0.3" || len(s.Network.Retiring) != 0 {
			t.Errorf("mail = %s, retiring %v; want queue's 10.100.0.3 and nothing retiring", got, retiring())
		}
	})
}

func TestApplyCommitPlanUsesDeclaredIdentities(t *testing.T) {
	s := NewState()
	applyAll(t, s, reg(1), reg(2), reg(3))
	decl := map[string]DeclaredIdentity{
		"web-0": mkClusterIdentity("t", "web-0"),
		"web-1": {MAC: MAC{0x02, 0xaa, 0, 0, 0, 1}, Tap: "vm-web1", Hostname: "www"},
	}
	applyAll(t, s, netPlanDeclared(s, "c1", netip.Prefix{}, 0, decl, "web-0", "web-1", "db"))
	if id, _ := s.Identity("web-1"); id.MAC.String() != "02:aa:00:00:00:01" || id.Tap != "vm-web1" || id.Hostname != "www" {
		t.Fatalf("web-1 = %+v, want its declared identity", id)
	}
	if id, _ := s.Identity("web-0"); id.MAC != DeriveMAC("t", "web-0", 0) || id.Tap != DeriveTap("t", "web-0", 0) {
		t.Fatalf("web-0 = %+v, want attempt 0 as mkCluster declares it", id)
	}

	// Later, db's entry declares web-1's MAC: db asks for what another
	// holds, so it loses its identity and is unschedulable (nothing is
	// re-derived in its place), and web-1 keeps the MAC.
	decl["db"] = DeclaredIdentity{MAC: MAC{0x02, 0xaa, 0, 0, 0, 1}}
	applyAll(t, s, netPlanDeclared(s, "c2", netip.Prefix{}, 0, decl, "web-0", "web-1", "db"))
	if _, ok := s.Identity("db"); ok || len(s.Unschedulable) != 1 || s.Unschedulable[0].VM != "db" ||
		!strings.HasPrefix(s.Unschedulable[0].Reason, "its declared MAC 02:aa:00:00:00:01 is instance web-1's") {
		t.Fatalf("db = %+v, unschedulable %+v: want db unschedulable because web-1 holds its MAC", s.Network.Identities["db"], s.Unschedulable)
	}
	if id, _ := s.Identity("web-1"); id.MAC.String() != "02:aa:00:00:00:01" {
		t.Fatalf("web-1 lost its MAC: %+v", id)
	}

	t.Run("a plan that assigns an instance whose declared identity is taken is refused", func(t *testing.T) {
		c := netPlanDeclared(s, "c3", netip.Prefix{}, 0, decl, "web-0", "web-1", "db")
		c.CommitPlan.Assignments = append(c.CommitPlan.Assignments, asg("db", 1, "v1"))
		slices.SortFunc(c.CommitPlan.Assignments, func(a, b Assignment) int { return strings.Compare(a.VM, b.VM) })
		c.CommitPlan.Unschedulable = nil
		r := s.Apply(s.Applied+1, c)
		if r.Code != ResultInvalid || !strings.Contains(r.Message, `VM "db" is assigned to node 1 but its declared MAC 02:aa:00:00:00:01 is instance web-1's`) {
			t.Fatalf("result %s %q", r.Code, r.Message)
		}
	})
}

func TestApplyRefusesPlansTheNetworkCannotTake(t *testing.T) {
	base := func(t *testing.T) *State {
		s := NewState()
		applyAll(t, s, reg(1), reg(2), reg(3))
		applyAll(t, s, netPlan(s, "c1", netip.Prefix{}, 0, "a", "b"))
		return s
	}
	var many []Assignment
	for i := range 14 {
		many = append(many, asg(fmt.Sprintf("n%02d", i), 1, "v1"))
	}
	withInstances := func(s *State, e spec.InstanceEntry) Command {
		c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
		vm := c.CommitPlan.Spec.VMs["a"]
		vm.Instances = map[string]spec.InstanceEntry{"a": e}
		c.CommitPlan.Spec.VMs["a"] = vm
		return c
	}
	tests := []struct {
		name string
		cmd  func(s *State) Command
		want string
	}{
		{"an assigned instance the network has no address for", func(s *State) Command {
			c := plan(s.revisionID(), "c2", many...)
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("10.0.0.0/28")
			return c
		}, `CommitPlan: VM "n10" is assigned to node 1 but network 10.0.0.0/28 has no free address`},
		{"a CIDR with host bits", func(s *State) Command {
			c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("10.0.0.5/16")
			return c
		}, "CommitPlan: network.cidr: 10.0.0.5/16 is not a network address"},
		{"an IPv6 CIDR", func(s *State) Command {
			c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("fd00::/64")
			return c
		}, "CommitPlan: network.cidr: fd00::/64 is not IPv4"},
		{"a /30", func(s *State) Command {
			c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("10.0.0.0/30")
			return c
		}, "CommitPlan: network.cidr: 10.0.0.0/30 has prefix length /30"},
		{"a declared MAC with a node bridge's prefix", func(s *State) Command {
			return withInstances(s, spec.InstanceEntry{MAC: "0a:b1:0a:64:ff:fe"})
		}, "CommitPlan: vms.a.instances.a.mac: 0a:b1:0a:64:ff:fe starts with 0a:b1"},
		{"a declared multicast MAC", func(s *State) Command {
			return withInstances(s, spec.InstanceEntry{MAC: "03:00:00:00:00:01"})
		}, "CommitPlan: vms.a.instances.a.mac: 03:00:00:00:00:01 is not a locally administered unicast address"},
		{"a declared tap name too long for Linux", func(s *State) Command {
			return withInstances(s, spec.InstanceEntry{Tap: "a-very-long-tap-name"})
		}, `CommitPlan: vms.a.instances.a.tap: tap interface name "a-very-long-tap-name" has 20 characters`},
		{"a declared hostname that is no DNS label", func(s *State) Command {
			return withInstances(s, spec.InstanceEntry{Hostname: "Web_1"})
		}, `CommitPlan: vms.a.instances.a.hostname: "Web_1" is not a DNS label`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base(t)
			before := s.Clone()
			r := s.Apply(s.Applied+1, tt.cmd(s))
			if r.Code != ResultInvalid || !strings.HasPrefix(r.Message, tt.want) {
				t.Fatalf("result %s %q, want invalid %q…", r.Code, r.Message, tt.want)
			}
			before.Applied = s.Applied
			if !reflect.DeepEqual(s, before) {
				t.Fatal("a refused plan changed the state")
			}
		})
	}
}

// TestReplicasAgreeOnTheNetwork applies random sequences of plans (added,
// removed and rescaled instances, declared identities, moves, CIDR
// changes, exhaustion, nodes registering) as encoded entries to three
// replicas, one of which is recovered from a snapshot halfway. They must
// end byte-identical, and every step must keep the network's invariants
// and agree with AllocateNetwork on the entry's state.
func TestReplicasAgreeOnTheNetwork(t *testing.T) {
	pool := propNames()
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 0x5eed))
		replicas := []*State{NewState(), NewState(), NewState()}
		var entries [][]byte
		apply := func(cmd Command) {
			data, err := EncodeCommand(cmd)
			if err != nil {
				t.Fatal(err)
			}
			entries = append(entries, data)
			for i, s := range replicas {
				if res := s.ApplyEntry(uint64(len(entries)), data); !res.OK() {
					t.Fatalf("seed %d, replica %d, entry %d (%s): %s %s", seed, i, len(entries), cmd.Type, res.Code, res.Message)
				}
			}
		}
		for id := range uint64(3) {
			apply(reg(id + 1))
		}
		cidr := netip.Prefix{}
		declared := map[string]bool{}
		for step := range 16 {
			switch op := r.IntN(7); {
			case op == 0:
				cidr = netip.MustParsePrefix(propCIDRs[r.IntN(len(propCIDRs))])
			case op <= 2:
				for range 1 + r.IntN(10) {
					declared[pool[r.IntN(len(pool))]] = true
				}
			case op == 3:
				for vm := range declared {
					if r.IntN(3) == 0 {
						delete(declared, vm)
					}
				}
			case op == 4:
				n := r.IntN(30)
				for i := range 30 {
					declared[fmt.Sprintf("web-%d", i)] = i < n
				}
			case op == 5:
				apply(reg(uint64(4 + r.IntN(4))))
			}
			var names []string
			for vm, ok := range declared {
				if ok {
					names = append(names, vm)
				}
			}
			slices.Sort(names)
			s := replicas[0]
			decl := propDeclared(r, "t", names, pool)
			cmd := netPlanDeclared(s, fmt.Sprintf("c%d", step), cidr, r.IntN(3), decl, names...)
			d, err := DeclaredIdentities(cmd.CommitPlan.Spec)
			if err != nil {
				t.Fatal(err)
			}
			retiring := RetiringAddrs(s.Network, names, s.Assignments, s.Observed, s.Nodes)
			want, _ := AllocateNetwork(s.Network, NetworkRequest{Cluster: "t", CIDR: specCIDR(cidr), Instances: names, Declared: d,
				Nodes: slices.Collect(maps.Keys(s.Nodes)), Reserved: slices.Collect(maps.Values(retiring))})
			if len(retiring) > 0 {
				want.Retiring = retiring
			}
			apply(cmd)
			if !reflect.DeepEqual(s.Network, want) {
				t.Fatalf("seed %d step %d: Apply committed\n%v\nAllocateNetwork on the same state gives\n%v", seed, step, s.Network, want)
			}
			checkNetwork(t, s.Network)
			for _, a := range s.Assignments {
				if _, ok := s.Identity(a.VM); !ok {
					t.Fatalf("seed %d step %d: assigned %s has no identity", seed, step, a.VM)
				}
			}
			if step == 8 {
				replicas[1] = snapshotRoundTrip(t, replicas[1])
			}
		}
		var snaps [3]bytes.Buffer
		for i, s := range replicas {
			if err := EncodeSnapshot(&snaps[i], s); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(snaps[0].Bytes(), snaps[1].Bytes()) || !bytes.Equal(snaps[0].Bytes(), snaps[2].Bytes()) {
			t.Fatalf("seed %d: replicas differ after the same entries", seed)
		}
		if got := snapshotRoundTrip(t, replicas[0]); !reflect.DeepEqual(got, replicas[0]) {
			t.Fatalf("seed %d: the network does not survive a snapshot round trip", seed)
		}
	}
}

func specCIDR(p netip.Prefix) netip.Prefix {
	return (&spec.Cluster{Network: spec.Network{CIDR: p}}).NetworkCIDR()
}

// BenchmarkAllocateNetwork10000 measures the allocation Apply runs for
// every CommitPlan (and the planner for every plan) with 10,000 instances
// on 100 nodes: all new (the first plan), all kept (a re-plan), and all
// kept with the identities lib.mkCluster declares.
func BenchmarkAllocateNetwork10000(b *testing.B) {
	cidr := netip.MustParsePrefix(spec.DefaultCIDR)
	names := make([]string, 10000)
	decl := make(map[string]DeclaredIdentity, len(names))
	for i := range names {
		names[i] = fmt.Sprintf("vm%d-%d", i/3, i%3)
		decl[names[i]] = mkClusterIdentity("bench", names[i])
	}
	nodes := make([]uint64, 100)
	for i := range nodes {
		nodes[i] = uint64(i + 1)
	}
	req := NetworkRequest{Cluster: "bench", CIDR: cidr, Instances: names, Nodes: nodes}
	first, _ := AllocateNetwork(nil, req)
	b.Run("fresh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AllocateNetwork(nil, req)
		}
	})
	b.Run("stable", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AllocateNetwork(first, req)
		}
	})
	declared := req
	declared.Declared = decl
	b.Run("stable-declared", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AllocateNetwork(first, declared)
		}
	})
}
