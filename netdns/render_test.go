package netdns_test

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/netdns"
)

const dir = "/var/lib/blixard/netdns"

func network() netdns.Network {
	return netdns.Network{
		Bridge:    "blixard0",
		Domain:    "prod.internal",
		CIDR:      netip.MustParsePrefix("10.100.0.0/16"),
		Gateway:   netip.MustParseAddr("10.100.0.1"),
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")},
		MTU:       1450,
	}
}

func inst(name, vm, addr, mac, hostname string) netdns.Instance {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		panic(err)
	}
	return netdns.Instance{Name: name, VM: vm, Address: netip.MustParseAddr(addr), MAC: hw, Hostname: hostname}
}

var (
	web0 = inst("web-0", "web", "10.100.0.2", "02:00:00:00:00:02", "web-0")
	web1 = inst("web-1", "web", "10.100.0.3", "02:00:00:00:00:03", "web-1")
	db   = inst("db", "", "10.100.0.4", "02:00:00:00:00:04", "db")
)

func TestRenderMainConfig(t *testing.T) {
	f, err := netdns.Render(dir, netdns.Desired{Network: network()})
	if err != nil {
		t.Fatal(err)
	}
	want := `# Rendered by blixard (package netdns), which rewrites it: do not edit.
# DHCP and DNS for the instances on blixard0, cluster network 10.100.0.0/16, domain prod.internal.

# Serve the bridge only. interface= makes dnsmasq bind its DHCP socket to
# the bridge (SO_BINDTODEVICE), so another DHCP server on this host never
# takes our clients' packets; DNS listens on the bridge's addresses.
interface=blixard0
except-interface=lo
listen-address=10.100.0.1
bind-interfaces

# DNS: the cluster's names from the hosts file; the rest upstream.
no-hosts
addn-hosts=/var/lib/blixard/netdns/hosts
local=/prod.internal/
local=/100.10.in-addr.arpa/
domain-needed
no-resolv
server=192.0.2.53

# DHCP: static leases for this node's instances only; other MACs are ignored.
dhcp-range=10.100.0.0,static,255.255.0.0,3600
dhcp-hostsfile=/var/lib/blixard/netdns/dhcp-hosts
dhcp-ignore=tag:!known
# The only DHCP server its clients see (broadcasts stay on this node):
# acknowledge a renewal of a lease another node gave.
dhcp-authoritative
dhcp-option=option:router,10.100.0.1
dhcp-option=option:dns-server,10.100.0.1
# The domain as an option rather than domain=, which would also put every
# lease's hostname under it: leases outlive the instances they were for.
dhcp-option=option:domain-name,prod.internal
dhcp-option=option:domain-search,prod.internal
dhcp-option=option:mtu,1450
dhcp-leasefile=/var/lib/blixard/netdns/leases

pid-file=/var/lib/blixard/netdns/dnsmasq.pid
log-facility=-
`
	if got := string(f.Config); got != want {
		t.Errorf("config:\n%s\nwant:\n%s", got, want)
	}
	if len(f.DHCPHosts) != 0 || len(f.Hosts) != 0 || len(f.Skipped) != 0 {
		t.Errorf("no instances rendered dhcp-hosts %q, hosts %q, skipped %q; want all empty", f.DHCPHosts, f.Hosts, f.Skipped)
	}
}

func TestRenderInstances(t *testing.T) {
	for _, tc := range []struct {
		name       string
		local, run []netdns.Instance
		dhcp       string
		hosts      string
		skipped    []string // substrings, one per skipped entry, in order
	}{{
		name: "empty sets render empty files",
	}, {
		name:  "two replicas share the VM name and a single instance has one name",
		local: []netdns.Instance{web1, web0},
		run:   []netdns.Instance{web1, db, web0},
		dhcp:  "02:00:00:00:00:02,10.100.0.2,web-0\n02:00:00:00:00:03,10.100.0.3,web-1\n",
		hosts: "10.100.0.4 db.prod.internal\n" +
			"10.100.0.2 web-0.prod.internal web.prod.internal\n" +
			"10.100.0.3 web-1.prod.internal web.prod.internal\n",
	}, {
		name:  "a local instance not running yet gets a lease but no name",
		local: []netdns.Instance{web0},
		dhcp:  "02:00:00:00:00:02,10.100.0.2,web-0\n",
	}, {
		name:  "a running instance of another node gets names but no lease",
		run:   []netdns.Instance{db},
		hosts: "10.100.0.4 db.prod.internal\n",
	}, {
		name:    "an instance name that is not a DNS label is served under its derived hostname",
		local:   []netdns.Instance{inst("api-", "", "10.100.0.9", "02:00:00:00:00:09", "api-3f2a1c")},
		run:     []netdns.Instance{inst("api-", "", "10.100.0.9", "02:00:00:00:00:09", "api-3f2a1c")},
		dhcp:    "02:00:00:00:00:09,10.100.0.9,api-3f2a1c\n",
		hosts:   "10.100.0.9 api-3f2a1c.prod.internal\n",
		skipped: []string{`running instance "api-": VM name "api-" is not a DNS label`},
	}, {
		name:    "replicas of a VM whose name is not a DNS label keep their own names",
		run:     []netdns.Instance{inst("x--0", "x-", "10.100.0.5", "02:00:00:00:00:05", "x--0")},
		hosts:   "10.100.0.5 x--0.prod.internal\n",
		skipped: []string{`VM name "x-" is not a DNS label`},
	}, {
		name:  "a hostname that is not a DNS label leaves the lease without a name and DNS with the VM name only",
		local: []netdns.Instance{inst("web-2", "web", "10.100.0.6", "02:00:00:00:00:06", "Web_2")},
		run:   []netdns.Instance{inst("web-2", "web", "10.100.0.6", "02:00:00:00:00:06", "Web_2")},
		dhcp:  "02:00:00:00:00:06,10.100.0.6\n",
		hosts: "10.100.0.6 web.prod.internal\n",
		skipped: []string{
			`local instance "web-2": hostname "Web_2" is not a DNS label: its lease carries no hostname`,
			`running instance "web-2": hostname "Web_2" is not a DNS label`,
		},
	}, {
		name: "addresses the network cannot give an instance are skipped",
		local: []netdns.Instance{
			inst("a", "", "10.100.0.1", "02:00:00:00:00:0a", "a"),     // gateway
			inst("b", "", "10.100.255.255", "02:00:00:00:00:0b", "b"), // broadcast
			inst("c", "", "10.101.0.2", "02:00:00:00:00:0c", "c"),     // outside
			inst("d", "", "10.100.0.0", "02:00:00:00:00:0d", "d"),     // network
		},
		skipped: []string{
			`"a": address 10.100.0.1 is not an instance address`,
			`"b": address 10.100.255.255 is not an instance address`,
			`"c": address 10.101.0.2 is not an instance address`,
			`"d": address 10.100.0.0 is not an instance address`,
		},
	}, {
		name: "the first instance by name keeps a MAC or address two claim, whatever the input order",
		local: []netdns.Instance{
			inst("c", "", "10.100.0.2", "02:00:00:00:00:0c", "c"), // a's address
			inst("b", "", "10.100.0.3", "02:00:00:00:00:0a", "b"), // a's MAC
			inst("a", "", "10.100.0.2", "02:00:00:00:00:0a", "a"),
			inst("m", "", "10.100.0.7", "01:00:5e:00:00:01", "m"), // multicast
		},
		run: []netdns.Instance{
			inst("y", "", "10.100.0.8", "02:00:00:00:00:0f", "y"),
			inst("x", "", "10.100.0.8", "02:00:00:00:00:0e", "x"),
			inst("x", "", "10.100.0.9", "02:00:00:00:00:0e", "x"),
		},
		dhcp:  "02:00:00:00:00:0a,10.100.0.2,a\n",
		hosts: "10.100.0.8 x.prod.internal\n",
		skipped: []string{
			`local instance "b": MAC 02:00:00:00:00:0a is also instance "a"'s`,
			`local instance "c": address 10.100.0.2 is also instance "a"'s`,
			`local instance "m": MAC "01:00:5e:00:00:01" is not a unicast Ethernet address`,
			`running instance "x" is listed twice`,
			`running instance "y": address 10.100.0.8 is also instance "x"'s`,
		},
	}, {
		name: "a hostname two instances claim names the first only; both keep the VM name",
		run: []netdns.Instance{
			inst("b-0", "b", "10.100.0.3", "02:00:00:00:00:03", "same"),
			inst("a-0", "a", "10.100.0.2", "02:00:00:00:00:02", "same"),
		},
		hosts:   "10.100.0.3 b.prod.internal\n10.100.0.2 same.prod.internal a.prod.internal\n",
		skipped: []string{`running instance "b-0": hostname "same" is also instance "a-0"'s`},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := netdns.Render(dir, netdns.Desired{Network: network(), Local: tc.local, Running: tc.run})
			if err != nil {
				t.Fatal(err)
			}
			if got := string(f.DHCPHosts); got != tc.dhcp {
				t.Errorf("dhcp-hosts:\n%s\nwant:\n%s", got, tc.dhcp)
			}
			if got := string(f.Hosts); got != tc.hosts {
				t.Errorf("hosts:\n%s\nwant:\n%s", got, tc.hosts)
			}
			if len(f.Skipped) != len(tc.skipped) {
				t.Fatalf("skipped %d entries:\n%s\nwant %d", len(f.Skipped), strings.Join(f.Skipped, "\n"), len(tc.skipped))
			}
			for i, want := range tc.skipped {
				if !strings.Contains(f.Skipped[i], want) {
					t.Errorf("skipped[%d] = %q, want it to contain %q", i, f.Skipped[i], want)
				}
			}
			// The order of the caller's lists changes nothing.
			for range 20 {
				local, run := slices.Clone(tc.local), slices.Clone(tc.run)
				rand.Shuffle(len(local), func(i, j int) { local[i], local[j] = local[j], local[i] })
				rand.Shuffle(len(run), func(i, j int) { run[i], run[j] = run[j], run[i] })
				g, err := netdns.Render(dir, netdns.Desired{Network: network(), Local: local, Running: run})
				if err != nil {
					t.Fatal(err)
				}
				if string(g.DHCPHosts) != string(f.DHCPHosts) || string(g.Hosts) != string(f.Hosts) ||
					!slices.Equal(g.Skipped, f.Skipped) {
					t.Fatalf("shuffled input %v / %v rendered differently:\n%s%s", local, run, g.DHCPHosts, g.Hosts)
				}
			}
		})
	}
}

func TestRenderUpstreams(t *testing.T) {
	n := network()
	n.Upstreams = []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.53:53"),
		netip.MustParseAddrPort("10.100.0.1:53"), // the gateway: a loop
		netip.MustParseAddrPort("[2001:db8::1]:53"),
		netip.MustParseAddrPort("127.0.0.1:5353"),
		netip.MustParseAddrPort("127.0.0.53:53"),
		netip.MustParseAddrPort("[::ffff:192.0.2.1]:53"),
	}
	f, err := netdns.Render(dir, netdns.Desired{Network: n})
	if err != nil {
		t.Fatal(err)
	}
	var servers []string
	for l := range strings.Lines(string(f.Config)) {
		if strings.HasPrefix(l, "server=") {
			servers = append(servers, strings.TrimSpace(l))
		}
	}
	want := []string{"server=127.0.0.53", "server=2001:db8::1", "server=127.0.0.1#5353", "server=192.0.2.1"}
	if !slices.Equal(servers, want) {
		t.Errorf("servers %q, want %q", servers, want)
	}
	if len(f.Skipped) != 1 || !strings.Contains(f.Skipped[0], "10.100.0.1:53 is this server") {
		t.Errorf("skipped %q, want the gateway as a loop", f.Skipped)
	}
}

func TestRenderRefusesAnUnusableNetwork(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dir    string
		change func(*netdns.Network)
		want   string
	}{
		{"relative state directory", "netdns", func(*netdns.Network) {}, `state directory "netdns" must be an absolute path`},
		{"state directory with a space", "/var/lib/my dir", func(*netdns.Network) {}, "without spaces"},
		{"state directory with a newline would inject options", "/x\nserver=6.6.6.6", func(*netdns.Network) {}, "control characters"},
		{"bridge name too long", dir, func(n *netdns.Network) { n.Bridge = "a-very-long-bridge" }, `bridge "a-very-long-bridge" is not an interface name`},
		{"no bridge", dir, func(n *netdns.Network) { n.Bridge = "" }, `bridge "" is not an interface name`},
		{"domain with an uppercase label", dir, func(n *netdns.Network) { n.Domain = "Prod.internal" }, `domain "Prod.internal" is not a DNS name`},
		{"domain with an empty label", dir, func(n *netdns.Network) { n.Domain = "prod..internal" }, "is not a DNS name"},
		{"IPv6 network", dir, func(n *netdns.Network) { n.CIDR = netip.MustParsePrefix("fd00::/64") }, "is not an IPv4 prefix"},
		{"network too small", dir, func(n *netdns.Network) {
			n.CIDR, n.Gateway = netip.MustParsePrefix("10.0.0.0/31"), netip.MustParseAddr("10.0.0.1")
		}, "has no room for instances"},
		{"gateway not the first address", dir, func(n *netdns.Network) { n.Gateway = netip.MustParseAddr("10.100.0.254") },
			"gateway 10.100.0.254 is not the first host address of the cluster network 10.100.0.0/16 (10.100.0.1)"},
		{"upstream without a port", dir, func(n *netdns.Network) {
			n.Upstreams = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}
		}, "upstream resolver 192.0.2.1:0 is not an address and port"},
		{"unspecified upstream", dir, func(n *netdns.Network) { n.Upstreams = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")} },
			"upstream resolver 0.0.0.0:53"},
		{"MTU too small", dir, func(n *netdns.Network) { n.MTU = 100 }, "mtu 100 is outside 576..65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := network()
			tc.change(&n)
			f, err := netdns.Render(tc.dir, netdns.Desired{Network: n, Local: []netdns.Instance{web0}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if f.Config != nil || f.DHCPHosts != nil || f.Hosts != nil {
				t.Errorf("a refused network rendered files: %+v", f)
			}
		})
	}
}

func TestRenderReverseZonesCoverExactlyTheNetwork(t *testing.T) {
	for _, tc := range []struct {
		cidr  string
		first string
		last  string
		count int
	}{
		{"10.0.0.0/8", "10.in-addr.arpa", "10.in-addr.arpa", 1},
		{"10.128.0.0/9", "128.10.in-addr.arpa", "255.10.in-addr.arpa", 128},
		{"10.100.0.0/16", "100.10.in-addr.arpa", "100.10.in-addr.arpa", 1},
		{"10.100.16.0/20", "16.100.10.in-addr.arpa", "31.100.10.in-addr.arpa", 16},
		{"192.168.5.0/24", "5.168.192.in-addr.arpa", "5.168.192.in-addr.arpa", 1},
		{"192.168.5.32/28", "32.5.168.192.in-addr.arpa", "47.5.168.192.in-addr.arpa", 16},
	} {
		t.Run(tc.cidr, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.cidr)
			n := network()
			n.CIDR, n.Gateway = p, p.Addr().Next()
			f, err := netdns.Render(dir, netdns.Desired{Network: n})
			if err != nil {
				t.Fatal(err)
			}
			var zones []string
			for l := range strings.Lines(string(f.Config)) {
				if z, ok := strings.CutPrefix(strings.TrimSpace(l), "local=/"); ok && strings.HasSuffix(z, ".in-addr.arpa/") {
					zones = append(zones, strings.TrimSuffix(z, "/"))
				}
			}
			if len(zones) != tc.count || zones[0] != tc.first || zones[len(zones)-1] != tc.last {
				t.Errorf("%d reverse zones %q … %q, want %d from %q to %q", len(zones), zones[0], zones[len(zones)-1], tc.count, tc.first, tc.last)
			}
		})
	}
}

func TestDomain(t *testing.T) {
	for cluster, want := range map[string]string{
		"prod":  "prod.internal",
		"":      "blixard.internal",
		"prod-": "prod.internal",
		"a-b-c": "a-b-c.internal",
	} {
		if got := netdns.Domain(cluster); got != want {
			t.Errorf("Domain(%q) = %q, want %q", cluster, got, want)
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	conf := `# Generated by resolvconf
; another comment
search example.org
nameserver 127.0.0.53
nameserver	2001:db8::53  # trailing comment
nameserver not-an-address
nameserver
options edns0 trust-ad
nameserver 192.0.2.1
`
	got := netdns.ParseResolvConf([]byte(conf))
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.53:53"),
		netip.MustParseAddrPort("[2001:db8::53]:53"),
		netip.MustParseAddrPort("192.0.2.1:53"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("ParseResolvConf = %v, want %v", got, want)
	}
	if got := netdns.ParseResolvConf(nil); len(got) != 0 {
		t.Errorf("ParseResolvConf(nil) = %v, want none", got)
	}
}
