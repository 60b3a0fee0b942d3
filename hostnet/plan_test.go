package hostnet_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/hostnet"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var (
	macA = mac("52:54:00:00:00:0a")
	macB = mac("52:54:00:00:00:0b")
	macC = mac("52:54:00:00:00:0c")
	ipA  = netip.MustParseAddr("10.100.1.10")
	ipB  = netip.MustParseAddr("10.100.1.11")
	n1   = netip.MustParseAddr("192.168.77.1")
	n2   = netip.MustParseAddr("192.168.77.2")
	n3   = netip.MustParseAddr("192.168.77.3")
)

func baseConfig() hostnet.Config {
	return hostnet.Config{
		Gateway:  netip.MustParsePrefix("10.100.0.1/16"),
		VXLANID:  42,
		Underlay: n1,
	}
}

// bareHost is a node before hostnet ran: loopback and the underlay NIC,
// their routes and the three default routing rules.
func bareHost(extra ...hostnet.Link) hostnet.State {
	pfx := netip.MustParsePrefix
	return hostnet.State{
		Links: append([]hostnet.Link{
			{Name: "lo", Kind: "device", MTU: 65536, Up: true, Addrs: []netip.Prefix{pfx("127.0.0.1/8")}},
			{Name: "eth0", Kind: "device", MTU: 1500, Up: true, Addrs: []netip.Prefix{pfx("192.168.77.1/24")}},
		}, extra...),
		Routes: []hostnet.Route{
			{Dst: pfx("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.168.77.254"), Dev: "eth0", Table: 254},
			{Dst: pfx("192.168.77.0/24"), Dev: "eth0", Table: 254},
			{Dst: pfx("127.0.0.0/8"), Type: "local", Dev: "lo", Table: 255},
			{Dst: pfx("127.0.0.1/32"), Type: "local", Dev: "lo", Table: 255},
			{Dst: pfx("192.168.77.1/32"), Type: "local", Dev: "eth0", Table: 255},
			{Dst: pfx("192.168.77.255/32"), Type: "broadcast", Dev: "eth0", Table: 255},
		},
		RuleTables: []int{255, 254, 253},
	}
}

// withRoutes returns bareHost with more routes and rule tables.
func withRoutes(routes []hostnet.Route, ruleTables ...int) func(*testing.T) hostnet.State {
	return func(*testing.T) hostnet.State {
		s := bareHost()
		s.Routes = append(s.Routes, routes...)
		s.RuleTables = append(s.RuleTables, ruleTables...)
		return s
	}
}

// veth is a tap stand-in that exists but is not attached yet.
func veth(name string) hostnet.Link {
	return hostnet.Link{Name: name, Kind: "veth", MTU: 1500}
}

func strs(ops []hostnet.Op) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = op.String()
	}
	return out
}

// converge plans from have and simulates the result, failing the test on
// any error: the starting state of a case that begins on a set-up host.
func converge(t *testing.T, cfg hostnet.Config, want hostnet.Desired, have hostnet.State) hostnet.State {
	t.Helper()
	ops, err := hostnet.Plan(cfg, want, have)
	if err != nil {
		t.Fatalf("setting up the starting state: %v", err)
	}
	s, err := simulate(have, ops)
	if err != nil {
		t.Fatalf("setting up the starting state: %v", err)
	}
	return s
}

func TestPlan(t *testing.T) {
	cfg := baseConfig()
	twoNodes := hostnet.Desired{
		LocalTaps: []hostnet.Tap{{Name: "vm-a", MAC: macA}},
		Remote:    []hostnet.Remote{{MAC: macB, IP: ipB, Node: n2}},
	}
	setUp := func(t *testing.T) hostnet.State {
		return converge(t, cfg, twoNodes, bareHost(veth("vm-a")))
	}
	processCfg := cfg
	processCfg.CreateTaps = true
	nodeCfg := cfg
	nodeCfg.NodeAddr = netip.MustParseAddr("10.100.0.2")

	cases := []struct {
		name string
		cfg  hostnet.Config
		want hostnet.Desired
		have func(t *testing.T) hostnet.State
		ops  []string
		err  string // a substring of the error; "" means none
	}{
		{
			name: "first setup creates bridge and vxlan, attaches the tap and programs the remote instance",
			cfg:  cfg, want: twoNodes,
			have: func(*testing.T) hostnet.State { return bareHost(veth("vm-a")) },
			ops: []string{
				"link add blixard0 type bridge mtu 1450",
				"addr add 10.100.0.1/16 dev blixard0",
				"link set blixard0 up",
				"link add blxvx42 type vxlan id 42 local 192.168.77.1 dstport 4789 nolearning mtu 1450",
				"link set blxvx42 master blixard0",
				"bridge link set dev blxvx42 learning off neigh_suppress on",
				"link set blxvx42 up",
				"link set vm-a mtu 1450",
				"link set vm-a master blixard0",
				"link set vm-a up",
				"fdb replace 52:54:00:00:00:0a dev vm-a master static",
				"fdb replace 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.2 self permanent",
				"fdb replace 52:54:00:00:00:0b dev blxvx42 master static",
				"neigh replace 10.100.1.11 lladdr 52:54:00:00:00:0b dev blixard0 nud permanent",
			},
		},
		{
			name: "set-up host planned again needs no operations",
			cfg:  cfg, want: twoNodes, have: setUp,
		},
		{
			name: "instance moving from node B to node C repoints its MAC with one replace",
			cfg:  cfg,
			want: hostnet.Desired{LocalTaps: twoNodes.LocalTaps, Remote: []hostnet.Remote{{MAC: macB, IP: ipB, Node: n3}}},
			have: setUp,
			ops:  []string{"fdb replace 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.3 self permanent"},
		},
		{
			name: "removed remote instance deletes its fdb, static and neighbour entries",
			cfg:  cfg, want: hostnet.Desired{LocalTaps: twoNodes.LocalTaps}, have: setUp,
			ops: []string{
				"fdb del 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.2 self",
				"fdb del 52:54:00:00:00:0b dev blxvx42 master",
				"neigh del 10.100.1.11 dev blixard0",
			},
		},
		{
			name: "removed local instance detaches a tap hostnet did not create and keeps it",
			cfg:  cfg, want: hostnet.Desired{Remote: twoNodes.Remote}, have: setUp,
			ops: []string{"link set vm-a nomaster"},
		},
		{
			name: "instance moving here moves its static entry onto its tap and drops the remote entries",
			cfg:  cfg,
			want: hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-a", MAC: macA}, {Name: "vm-b", MAC: macB}}},
			have: func(t *testing.T) hostnet.State {
				s := setUp(t)
				s.Links = append(s.Links, veth("vm-b"))
				return s
			},
			ops: []string{
				"link set vm-b mtu 1450",
				"link set vm-b master blixard0",
				"link set vm-b up",
				"fdb replace 52:54:00:00:00:0b dev vm-b master static",
				"fdb del 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.2 self",
				"neigh del 10.100.1.11 dev blixard0",
			},
		},
		{
			name: "instance moving away detaches its tap and programs it as remote",
			cfg:  cfg,
			want: hostnet.Desired{Remote: []hostnet.Remote{{MAC: macA, IP: ipA, Node: n2}, {MAC: macB, IP: ipB, Node: n2}}},
			have: setUp,
			ops: []string{
				"link set vm-a nomaster",
				"fdb replace 52:54:00:00:00:0a dev blxvx42 dst 192.168.77.2 self permanent",
				"fdb replace 52:54:00:00:00:0a dev blxvx42 master static",
				"neigh replace 10.100.1.10 lladdr 52:54:00:00:00:0a dev blixard0 nud permanent",
			},
		},
		{
			name: "address reused by another instance replaces the neighbour entry",
			cfg:  cfg,
			want: hostnet.Desired{LocalTaps: twoNodes.LocalTaps, Remote: []hostnet.Remote{{MAC: macC, IP: ipB, Node: n3}}},
			have: setUp,
			ops: []string{
				"fdb replace 52:54:00:00:00:0c dev blxvx42 dst 192.168.77.3 self permanent",
				"fdb replace 52:54:00:00:00:0c dev blxvx42 master static",
				"neigh replace 10.100.1.11 lladdr 52:54:00:00:00:0c dev blixard0 nud permanent",
				"fdb del 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.2 self",
				"fdb del 52:54:00:00:00:0b dev blxvx42 master",
			},
		},
		{
			name: "flood entry and extra remotes someone added are deleted",
			cfg:  cfg, want: twoNodes,
			have: func(t *testing.T) hostnet.State {
				s := setUp(t)
				s.FDB = append(s.FDB,
					hostnet.FDBEntry{Dev: "blxvx42", MAC: mac("00:00:00:00:00:00"), Dst: n2},
					hostnet.FDBEntry{Dev: "blxvx42", MAC: macB, Dst: n3})
				return s
			},
			ops: []string{
				"fdb del 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.3 self",
				"fdb del 00:00:00:00:00:00 dev blxvx42 dst 192.168.77.2 self",
			},
		},
		{
			name: "existing bridge with another address is refused",
			cfg:  cfg, want: twoNodes,
			have: func(*testing.T) hostnet.State {
				return bareHost(hostnet.Link{Name: "blixard0", Kind: "bridge", MTU: 1500, Up: true,
					Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.1.1/24"), netip.MustParsePrefix("fe80::1/64")}})
			},
			err: "bridge blixard0 exists with address 192.168.1.1/24, not 10.100.0.1/16: pick --bridge or remove it",
		},
		{
			name: "existing bridge without an address is adopted",
			cfg:  cfg, want: hostnet.Desired{},
			have: func(*testing.T) hostnet.State {
				return bareHost(hostnet.Link{Name: "blixard0", Kind: "bridge", MTU: 1450, Up: true})
			},
			ops: []string{
				"addr add 10.100.0.1/16 dev blixard0",
				"link add blxvx42 type vxlan id 42 local 192.168.77.1 dstport 4789 nolearning mtu 1450",
				"link set blxvx42 master blixard0",
				"bridge link set dev blxvx42 learning off neigh_suppress on",
				"link set blxvx42 up",
			},
		},
		{
			name: "node address becomes the bridge's primary address and gives the bridge its MAC",
			cfg:  nodeCfg, want: hostnet.Desired{Remote: []hostnet.Remote{hostnet.NodeRemote(netip.MustParseAddr("10.100.0.3"), n2)}},
			have: func(*testing.T) hostnet.State { return bareHost() },
			ops: []string{
				"link add blixard0 type bridge mtu 1450 address 0a:b1:0a:64:00:02",
				"addr add 10.100.0.2/16 dev blixard0",
				"addr add 10.100.0.1/16 dev blixard0",
				"link set blixard0 up",
				"link add blxvx42 type vxlan id 42 local 192.168.77.1 dstport 4789 nolearning mtu 1450",
				"link set blxvx42 master blixard0",
				"bridge link set dev blxvx42 learning off neigh_suppress on",
				"link set blxvx42 up",
				"fdb replace 0a:b1:0a:64:00:03 dev blxvx42 dst 192.168.77.2 self permanent",
				"fdb replace 0a:b1:0a:64:00:03 dev blxvx42 master static",
				"neigh replace 10.100.0.3 lladdr 0a:b1:0a:64:00:03 dev blixard0 nud permanent",
			},
		},
		{
			name: "node address added later re-adds the gateway behind it as secondary",
			cfg:  nodeCfg, want: twoNodes, have: setUp,
			ops: []string{
				"addr del 10.100.0.1/16 dev blixard0",
				"addr add 10.100.0.2/16 dev blixard0",
				"addr add 10.100.0.1/16 dev blixard0",
				"link set blixard0 address 0a:b1:0a:64:00:02",
			},
		},
		{
			name: "bridge name taken by another kind of link is refused",
			cfg:  cfg, want: twoNodes,
			have: func(*testing.T) hostnet.State { return bareHost(veth("blixard0")) },
			err:  "link blixard0 exists and is a veth, not a bridge: pick --bridge or remove it",
		},
		{
			name: "vxlan id in use by another device is refused",
			cfg:  cfg, want: twoNodes,
			have: func(*testing.T) hostnet.State {
				return bareHost(hostnet.Link{Name: "flannel.1", Kind: "vxlan", MTU: 1450,
					VXLAN: &hostnet.VXLANInfo{ID: 42, Port: 4789, Local: n1}})
			},
			err: "vxlan id 42 (port 4789) is in use by device flannel.1: pick another --vxlan-id",
		},
		{
			name: "vxlan device with another local address is replaced and reprogrammed",
			cfg:  cfg, want: twoNodes,
			have: func(t *testing.T) hostnet.State {
				s := setUp(t)
				for i := range s.Links {
					if s.Links[i].Name == "blxvx42" {
						s.Links[i].VXLAN.Local = netip.MustParseAddr("192.168.77.9")
					}
				}
				return s
			},
			ops: []string{
				"link del blxvx42",
				"link add blxvx42 type vxlan id 42 local 192.168.77.1 dstport 4789 nolearning mtu 1450",
				"link set blxvx42 master blixard0",
				"bridge link set dev blxvx42 learning off neigh_suppress on",
				"link set blxvx42 up",
				"fdb replace 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.2 self permanent",
				"fdb replace 52:54:00:00:00:0b dev blxvx42 master static",
			},
		},
		{
			name: "underlay address this host does not have is refused",
			cfg: func() hostnet.Config {
				c := cfg
				c.Underlay = netip.MustParseAddr("192.168.77.7")
				return c
			}(),
			want: twoNodes, have: func(*testing.T) hostnet.State { return bareHost() },
			err: "underlay address 192.168.77.7 is not assigned to any interface on this host",
		},
		{
			name: "address inside the overlay on another interface is refused",
			cfg:  cfg, want: twoNodes,
			have: func(*testing.T) hostnet.State {
				return bareHost(hostnet.Link{Name: "eth1", Kind: "device", MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("10.100.5.1/24")}})
			},
			err: "address 10.100.5.1/24 on eth1 overlaps the overlay network 10.100.0.0/16: pick another network.cidr",
		},
		{
			name: "route to the overlay through a VPN is refused, naming it",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.100.0.0/16"), Gateway: netip.MustParseAddr("10.8.0.1"), Dev: "wg0", Table: 254}}),
			err:  "route 10.100.0.0/16 via 10.8.0.1 dev wg0 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route",
		},
		{
			name: "supernet of the overlay through the uplink is refused",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.0.0.0/8"), Gateway: netip.MustParseAddr("192.168.77.253"), Dev: "eth0"}}),
			err:  "route 10.0.0.0/8 via 192.168.77.253 dev eth0 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route",
		},
		{
			name: "tailnet subnet route in Tailscale's table 52 is refused",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.100.4.0/24"), Dev: "tailscale0", Table: 52}}, 52),
			err:  "route 10.100.4.0/24 dev tailscale0 table 52 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route",
		},
		{
			name: "blackhole route for part of the overlay is refused",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.100.128.0/17"), Type: "blackhole", Table: 254}}),
			err:  "route blackhole 10.100.128.0/17 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route",
		},
		{
			name: "multipath route is refused naming every path",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.100.0.0/16"), Table: 254, Nexthops: []hostnet.Nexthop{
				{Gateway: netip.MustParseAddr("192.168.77.253"), Dev: "eth0"}, {Gateway: netip.MustParseAddr("192.168.77.254"), Dev: "eth0"}}}}),
			err: "route 10.100.0.0/16 nexthop via 192.168.77.253 dev eth0 nexthop via 192.168.77.254 dev eth0 overlaps the overlay network 10.100.0.0/16",
		},
		{
			name: "local route of the whole overlay (AnyIP) is refused",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.100.0.0/16"), Type: "local", Dev: "lo", Table: 255}}),
			err:  "route local 10.100.0.0/16 dev lo table local overlaps the overlay network 10.100.0.0/16",
		},
		{
			name: "route through the bridge beyond the overlay is refused",
			cfg:  cfg, want: twoNodes,
			have: withRoutes([]hostnet.Route{{Dst: netip.MustParsePrefix("10.0.0.0/8"), Dev: "blixard0", Table: 254}}),
			err:  "route 10.0.0.0/8 dev blixard0 overlaps the overlay network 10.100.0.0/16",
		},
		{
			name: "route that appeared after the setup is refused",
			cfg:  cfg, want: twoNodes,
			have: func(t *testing.T) hostnet.State {
				s := setUp(t)
				s.Routes = append(s.Routes, hostnet.Route{Dst: netip.MustParsePrefix("10.100.9.0/24"), Gateway: netip.MustParseAddr("192.168.77.9"), Dev: "eth0", Table: 254})
				return s
			},
			err: "route 10.100.9.0/24 via 192.168.77.9 dev eth0 overlaps the overlay network 10.100.0.0/16",
		},
		{
			name: "default routes, throw routes, other ranges and tables no rule looks up are no conflict",
			cfg:  cfg, want: hostnet.Desired{},
			have: withRoutes([]hostnet.Route{
				// wg-quick's full tunnel and a Tailscale exit node.
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "wg0", Table: 51820},
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "tailscale0", Table: 52},
				// Tailscale's way to keep a range local: on to the next rule.
				{Dst: netip.MustParsePrefix("10.0.0.0/8"), Type: "throw", Table: 52},
				{Dst: netip.MustParsePrefix("100.64.0.0/10"), Dev: "tailscale0", Table: 52},
				{Dst: netip.MustParsePrefix("10.101.0.0/16"), Gateway: netip.MustParseAddr("192.168.77.253"), Dev: "eth0"},
				// A table no rule looks up routes nothing.
				{Dst: netip.MustParsePrefix("10.100.0.0/16"), Dev: "wg1", Table: 100},
			}, 51820, 52),
			ops: []string{
				"link add blixard0 type bridge mtu 1450",
				"addr add 10.100.0.1/16 dev blixard0",
				"link set blixard0 up",
				"link add blxvx42 type vxlan id 42 local 192.168.77.1 dstport 4789 nolearning mtu 1450",
				"link set blxvx42 master blixard0",
				"bridge link set dev blxvx42 learning off neigh_suppress on",
				"link set blxvx42 up",
			},
		},
		{
			name: "tailnet underlay gives the overlay an MTU of 1230",
			cfg: func() hostnet.Config {
				c := cfg
				c.Underlay = netip.MustParseAddr("100.64.0.1")
				c.UnderlayDev = "tailscale0"
				return c
			}(),
			want: hostnet.Desired{},
			have: func(*testing.T) hostnet.State {
				return bareHost(hostnet.Link{Name: "tailscale0", Kind: "tun", MTU: 1280, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}})
			},
			ops: []string{
				"link add blixard0 type bridge mtu 1230",
				"addr add 10.100.0.1/16 dev blixard0",
				"link set blixard0 up",
				"link add blxvx42 type vxlan id 42 local 100.64.0.1 dstport 4789 nolearning dev tailscale0 mtu 1230",
				"link set blxvx42 master blixard0",
				"bridge link set dev blxvx42 learning off neigh_suppress on",
				"link set blxvx42 up",
			},
		},
		{
			name: "missing tap under systemd is left for microvm-tap-interfaces",
			cfg:  cfg, want: twoNodes,
			have: func(t *testing.T) hostnet.State {
				s := setUp(t)
				s.Links = slices.DeleteFunc(s.Links, func(l hostnet.Link) bool { return l.Name == "vm-a" })
				s.FDB = slices.DeleteFunc(s.FDB, func(e hostnet.FDBEntry) bool { return e.Dev == "vm-a" })
				return s
			},
		},
		{
			name: "missing tap under the process backend is created, attached and marked",
			cfg:  processCfg,
			want: hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-c", MAC: macC, Owner: 1000, Group: 100, MultiQueue: true}}},
			have: setUp,
			ops: []string{
				"tuntap add vm-c mode tap user 1000 group 100 vnet_hdr multi_queue mtu 1450",
				"link set vm-c master blixard0",
				"link set vm-c up",
				"fdb replace 52:54:00:00:00:0c dev vm-c master static",
				"link set vm-a nomaster",
				"fdb del 52:54:00:00:00:0b dev blxvx42 dst 192.168.77.2 self",
				"fdb del 52:54:00:00:00:0b dev blxvx42 master",
				"neigh del 10.100.1.11 dev blixard0",
			},
		},
		{
			name: "tap hostnet created and no longer wanted is deleted",
			cfg:  processCfg, want: hostnet.Desired{},
			have: func(t *testing.T) hostnet.State {
				return converge(t, processCfg, hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-c", MAC: macC}}}, bareHost())
			},
			ops: []string{"link del vm-c"},
		},
		{
			name: "tap hostnet created with other flags is re-created",
			cfg:  processCfg,
			want: hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-c", MAC: macC, MultiQueue: true}}},
			have: func(t *testing.T) hostnet.State {
				return converge(t, processCfg, hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-c", MAC: macC}}}, bareHost())
			},
			ops: []string{
				"link del vm-c",
				"tuntap add vm-c mode tap user 0 group 0 vnet_hdr multi_queue mtu 1450",
				"link set vm-c master blixard0",
				"link set vm-c up",
				"fdb replace 52:54:00:00:00:0c dev vm-c master static",
			},
		},
		{
			name: "tap that is a port of another bridge is refused",
			cfg:  cfg, want: twoNodes,
			have: func(*testing.T) hostnet.State {
				return bareHost(hostnet.Link{Name: "br9", Kind: "bridge", MTU: 1500}, hostnet.Link{Name: "vm-a", Kind: "tuntap", MTU: 1500, Master: "br9"})
			},
			err: "tap vm-a is a port of bridge br9, not blixard0",
		},
		{
			name: "tap name of the uplink is refused instead of enslaving it",
			cfg:  cfg, want: hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "eth0", MAC: macA}}},
			have: func(*testing.T) hostnet.State { return bareHost() },
			err:  "link eth0 is a device with addresses [192.168.77.1/24], not a VM's tap: check the instance's tap name",
		},
		{
			name: "remote instance said to run on this node is refused",
			cfg:  cfg, want: hostnet.Desired{Remote: []hostnet.Remote{{MAC: macB, IP: ipB, Node: n1}}},
			have: func(*testing.T) hostnet.State { return bareHost() },
			err:  "remote instance 10.100.1.11 is listed as remote but runs on this node (192.168.77.1): list it as a local tap",
		},
		{
			name: "two instances with one MAC are refused",
			cfg:  cfg,
			want: hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-a", MAC: macB}}, Remote: []hostnet.Remote{{MAC: macB, IP: ipB, Node: n2}}},
			have: func(*testing.T) hostnet.State { return bareHost() },
			err:  "tap vm-a and remote instance 10.100.1.11 have the same MAC 52:54:00:00:00:0b",
		},
		{
			name: "remote address outside the overlay is refused",
			cfg:  cfg, want: hostnet.Desired{Remote: []hostnet.Remote{{MAC: macB, IP: netip.MustParseAddr("10.101.0.5"), Node: n2}}},
			have: func(*testing.T) hostnet.State { return bareHost() },
			err:  "remote instance 10.101.0.5 is not a host address in the overlay 10.100.0.0/16",
		},
		{
			name: "zero vxlan id is refused with the flag to set",
			cfg: func() hostnet.Config {
				c := cfg
				c.VXLANID = 0
				return c
			}(),
			want: hostnet.Desired{}, have: func(*testing.T) hostnet.State { return bareHost() },
			err: "vxlan id 0 is outside 1..16777215: set --vxlan-id",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			have := tc.have(t)
			ops, err := hostnet.Plan(tc.cfg, tc.want, have)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Plan error = %v, want one containing %q", err, tc.err)
				}
				if ops != nil {
					t.Fatalf("Plan returned operations with its error: %q", strs(ops))
				}
				return
			}
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if got := strs(ops); !slices.Equal(got, tc.ops) {
				t.Fatalf("Plan operations:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.ops, "\n  "))
			}
			// Applying the plan and planning again yields nothing: Plan is
			// idempotent and its operations reach what it compares.
			after, err := simulate(have, ops)
			if err != nil {
				t.Fatalf("applying the plan: %v", err)
			}
			again, err := hostnet.Plan(tc.cfg, tc.want, after)
			if err != nil || len(again) != 0 {
				t.Fatalf("second Plan = %q, %v; want no operations", strs(again), err)
			}
		})
	}
}

func TestPlanConflictsAreConflictErrors(t *testing.T) {
	have := bareHost(hostnet.Link{Name: "blixard0", Kind: "bridge", MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.1.1/24")}})
	_, err := hostnet.Plan(baseConfig(), hostnet.Desired{}, have)
	var conflict *hostnet.ConflictError
	if !errors.As(err, &conflict) {
		t.Fatalf("Plan error = %v (%T), want a *hostnet.ConflictError", err, err)
	}
}

// simulate applies ops to s the way the kernel does, as far as Plan reads
// it: enough to check that a plan reaches what Plan compares. It fails
// where the kernel would (a missing link, deleting an entry that is not
// there). It does not model carrier, learning or anything Plan ignores.
func simulate(s hostnet.State, ops []hostnet.Op) (hostnet.State, error) {
	s = hostnet.State{
		Links:      slices.Clone(s.Links),
		FDB:        slices.Clone(s.FDB),
		Neighbours: slices.Clone(s.Neighbours),
		Routes:     slices.Clone(s.Routes),
		RuleTables: slices.Clone(s.RuleTables),
	}
	// The kernel's own routes of an address: its subnet's connected route
	// in main and its local route.
	kernelRoutes := func(dev string, p netip.Prefix) []hostnet.Route {
		return []hostnet.Route{
			{Dst: p.Masked(), Dev: dev, Table: 254},
			{Dst: netip.PrefixFrom(p.Addr(), 32), Type: "local", Dev: dev, Table: 255},
		}
	}
	syncRoutes := func(l *hostnet.Link) {
		s.Routes = slices.DeleteFunc(s.Routes, func(r hostnet.Route) bool { return r.Dev == l.Name })
		for _, a := range l.Addrs {
			for _, r := range kernelRoutes(l.Name, a) {
				if !slices.ContainsFunc(s.Routes, func(h hostnet.Route) bool { return h.Dst == r.Dst && h.Table == r.Table }) {
					s.Routes = append(s.Routes, r)
				}
			}
		}
	}
	find := func(name string) *hostnet.Link {
		for i := range s.Links {
			if s.Links[i].Name == name {
				return &s.Links[i]
			}
		}
		return nil
	}
	dropStatic := func(dev string) {
		s.FDB = slices.DeleteFunc(s.FDB, func(e hostnet.FDBEntry) bool { return e.Master && e.Dev == dev })
	}
	for _, op := range ops {
		l := find(op.Link)
		creates := op.Kind == hostnet.OpCreateBridge || op.Kind == hostnet.OpCreateVXLAN || op.Kind == hostnet.OpCreateTap
		if creates && l != nil {
			return s, fmt.Errorf("%s: file exists", op)
		}
		if !creates && l == nil {
			return s, fmt.Errorf("%s: no such link", op)
		}
		switch op.Kind {
		case hostnet.OpCreateBridge:
			s.Links = append(s.Links, hostnet.Link{Name: op.Link, Kind: "bridge", MTU: op.MTU, MAC: op.MAC})
		case hostnet.OpCreateVXLAN:
			info := op.VXLAN
			s.Links = append(s.Links, hostnet.Link{Name: op.Link, Kind: "vxlan", MTU: op.MTU, VXLAN: &info})
		case hostnet.OpCreateTap:
			s.Links = append(s.Links, hostnet.Link{Name: op.Link, Kind: "tuntap", MTU: op.MTU, Alias: "blixard-tap",
				Tap: &hostnet.TapInfo{Tap: true, Owner: op.Tap.Owner, Group: op.Tap.Group, MultiQueue: op.Tap.MultiQueue, Persistent: true}})
		case hostnet.OpDeleteLink:
			s.Links = slices.DeleteFunc(s.Links, func(x hostnet.Link) bool { return x.Name == op.Link })
			s.Routes = slices.DeleteFunc(s.Routes, func(r hostnet.Route) bool { return r.Dev == op.Link })
			s.FDB = slices.DeleteFunc(s.FDB, func(e hostnet.FDBEntry) bool { return e.Dev == op.Link })
			s.Neighbours = slices.DeleteFunc(s.Neighbours, func(n hostnet.Neighbour) bool { return n.Dev == op.Link })
			for i := range s.Links {
				if s.Links[i].Master == op.Link {
					s.Links[i].Master = ""
				}
			}
		case hostnet.OpAddAddr:
			if slices.Contains(l.Addrs, op.Prefix) {
				return s, fmt.Errorf("%s: file exists", op)
			}
			l.Addrs = append(slices.Clone(l.Addrs), op.Prefix)
			syncRoutes(l)
		case hostnet.OpDeleteAddr:
			i := slices.Index(l.Addrs, op.Prefix)
			if i < 0 {
				return s, fmt.Errorf("%s: no such address", op)
			}
			// Removing a subnet's primary address removes its secondaries.
			primary := slices.IndexFunc(l.Addrs, func(a netip.Prefix) bool { return a.Masked() == op.Prefix.Masked() }) == i
			l.Addrs = slices.DeleteFunc(slices.Clone(l.Addrs), func(a netip.Prefix) bool {
				return a == op.Prefix || primary && a.Masked() == op.Prefix.Masked()
			})
			syncRoutes(l)
		case hostnet.OpSetMAC:
			l.MAC = op.MAC
		case hostnet.OpSetMTU:
			l.MTU = op.MTU
		case hostnet.OpSetUp:
			l.Up = true
		case hostnet.OpSetMaster:
			if find(op.Master) == nil {
				return s, fmt.Errorf("%s: no such master", op)
			}
			dropStatic(op.Link)
			l.Master = op.Master
			if l.Kind == "vxlan" {
				l.Port = &hostnet.PortFlags{Learning: true}
			}
		case hostnet.OpSetNoMaster:
			dropStatic(op.Link)
			l.Master, l.Port = "", nil
		case hostnet.OpSetPortFlags:
			l.Port = &hostnet.PortFlags{Learning: false, NeighSuppress: true}
		case hostnet.OpFDBReplace:
			i := slices.IndexFunc(s.FDB, func(e hostnet.FDBEntry) bool { return !e.Master && e.Dev == op.Link && slices.Equal(e.MAC, op.MAC) })
			if i >= 0 {
				s.FDB[i].Dst = op.Dst
			} else {
				s.FDB = append(s.FDB, hostnet.FDBEntry{Dev: op.Link, MAC: op.MAC, Dst: op.Dst})
			}
		case hostnet.OpFDBDelete:
			n := len(s.FDB)
			s.FDB = slices.DeleteFunc(s.FDB, func(e hostnet.FDBEntry) bool {
				return !e.Master && e.Dev == op.Link && slices.Equal(e.MAC, op.MAC) && e.Dst == op.Dst
			})
			if len(s.FDB) == n {
				return s, fmt.Errorf("%s: no such entry", op)
			}
		case hostnet.OpFDBStaticReplace:
			if l.Master == "" {
				return s, fmt.Errorf("%s: not a bridge port", op)
			}
			// One bridge entry per MAC: replace moves it between ports.
			s.FDB = slices.DeleteFunc(s.FDB, func(e hostnet.FDBEntry) bool { return e.Master && slices.Equal(e.MAC, op.MAC) })
			s.FDB = append(s.FDB, hostnet.FDBEntry{Dev: op.Link, MAC: op.MAC, Master: true})
		case hostnet.OpFDBStaticDelete:
			n := len(s.FDB)
			s.FDB = slices.DeleteFunc(s.FDB, func(e hostnet.FDBEntry) bool {
				return e.Master && e.Dev == op.Link && slices.Equal(e.MAC, op.MAC)
			})
			if len(s.FDB) == n {
				return s, fmt.Errorf("%s: no such entry", op)
			}
		case hostnet.OpNeighReplace:
			s.Neighbours = slices.DeleteFunc(s.Neighbours, func(n hostnet.Neighbour) bool { return n.Dev == op.Link && n.IP == op.IP })
			s.Neighbours = append(s.Neighbours, hostnet.Neighbour{Dev: op.Link, IP: op.IP, MAC: op.MAC})
		case hostnet.OpNeighDelete:
			n := len(s.Neighbours)
			s.Neighbours = slices.DeleteFunc(s.Neighbours, func(n hostnet.Neighbour) bool { return n.Dev == op.Link && n.IP == op.IP })
			if len(s.Neighbours) == n {
				return s, fmt.Errorf("%s: no such entry", op)
			}
		default:
			return s, fmt.Errorf("%s: unknown operation", op)
		}
	}
	return s, nil
}
