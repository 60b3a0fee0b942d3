package hostnet

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// State is the kernel's network state as [Host.Observe] saw it: the input of
// [Plan] next to Config and Desired. It holds only what Plan reads, and only
// entries someone programmed: learned FDB entries and resolved (non-static)
// neighbours belong to the kernel and are left out.
type State struct {
	// Links are all interfaces of the namespace.
	Links []Link
	// FDB are the forwarding entries of every VXLAN device (its own table,
	// "self") and the static bridge entries ("master") of every bridge port.
	FDB []FDBEntry
	// Neighbours are the permanent neighbour (ARP) entries on bridges.
	Neighbours []Neighbour
	// Routes are the IPv4 routes of every routing table (cached clones
	// left out): Plan refuses an overlay that one of them overlaps.
	Routes []Route
	// RuleTables are the tables the IPv4 policy rules look up (by default
	// local, main and default; Tailscale adds 52, wg-quick its fwmark
	// table). A route in a table no rule looks up routes nothing.
	RuleTables []int
}

// The routing tables Linux always has (rtnetlink.h).
const (
	tableDefault = 253
	tableMain    = 254
	tableLocal   = 255
)

// Route is one IPv4 route, as ip-route(8) shows it.
type Route struct {
	// Dst is the destination; 0.0.0.0/0 for a default route.
	Dst netip.Prefix
	// Type is the route type as ip-route(8) names it ("unicast", "local",
	// "broadcast", "blackhole", "unreachable", "prohibit", "throw", …); ""
	// means unicast.
	Type string
	// Gateway is the next hop, invalid for a route without one (a
	// connected or device route).
	Gateway netip.Addr
	// Dev is the outgoing interface, "" when there is none (a blackhole)
	// or the route has several Nexthops.
	Dev string
	// Nexthops are the paths of a multipath route; Gateway and Dev are
	// then empty.
	Nexthops []Nexthop
	// Table is the routing table; 0 stands for main (254).
	Table int
}

// Nexthop is one path of a multipath route.
type Nexthop struct {
	Gateway netip.Addr
	Dev     string
}

// String reads like ip-route(8): "10.100.0.0/16 via 192.168.1.1 dev wg0",
// "blackhole 10.0.0.0/8 table 52".
func (r Route) String() string {
	var b strings.Builder
	if r.Type != "" && r.Type != "unicast" {
		b.WriteString(r.Type + " ")
	}
	if r.Dst.Bits() == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	hop := func(gw netip.Addr, dev string) {
		if gw.IsValid() {
			b.WriteString(" via " + gw.String())
		}
		if dev != "" {
			b.WriteString(" dev " + dev)
		}
	}
	hop(r.Gateway, r.Dev)
	for _, nh := range r.Nexthops {
		b.WriteString(" nexthop")
		hop(nh.Gateway, nh.Dev)
	}
	switch r.table() {
	case tableMain:
	case tableLocal:
		b.WriteString(" table local")
	case tableDefault:
		b.WriteString(" table default")
	default:
		b.WriteString(" table " + strconv.Itoa(r.Table))
	}
	return b.String()
}

// table is r.Table with 0 read as main.
func (r Route) table() int {
	if r.Table == 0 {
		return tableMain
	}
	return r.Table
}

// Link is one interface.
type Link struct {
	Name string
	// Kind is netlink's link type: "bridge", "vxlan", "tuntap", "veth",
	// "device", …
	Kind string
	MTU  int
	// Up is the administrative state (IFF_UP), not the carrier.
	Up bool
	// MAC is the interface's own address.
	MAC net.HardwareAddr
	// Master is the bridge this link is a port of, "" if none.
	Master string
	// Alias is the interface alias; hostnet marks the taps it creates.
	Alias string
	// Addrs are the interface's addresses with their prefix lengths.
	Addrs []netip.Prefix
	// VXLAN is set for Kind "vxlan".
	VXLAN *VXLANInfo
	// Tap is set for Kind "tuntap".
	Tap *TapInfo
	// Port is set for a VXLAN device that is a bridge port: its bridge port
	// flags.
	Port *PortFlags
}

// VXLANInfo are the settings of a VXLAN device that Plan compares.
type VXLANInfo struct {
	ID       uint32
	Port     int
	Local    netip.Addr
	Dev      string // the interface it is pinned to, "" if none
	Learning bool
	// Group is the multicast group or default remote, if any: hostnet's own
	// device has none.
	Group netip.Addr
}

// TapInfo are the settings of a tun/tap device.
type TapInfo struct {
	Tap          bool // a tap (Ethernet), not a tun
	Owner, Group uint32
	MultiQueue   bool
	Persistent   bool
}

// PortFlags are the bridge port flags hostnet sets on the VXLAN port.
type PortFlags struct {
	Learning      bool
	NeighSuppress bool
}

// FDBEntry is one forwarding entry.
type FDBEntry struct {
	// Dev is the device the entry is on (the VXLAN device or a bridge port).
	Dev string
	MAC net.HardwareAddr
	// Dst is the remote VTEP of a VXLAN device's own entry; invalid for
	// bridge entries.
	Dst netip.Addr
	// Master is true for a bridge entry ("master"), false for the device's
	// own table ("self").
	Master bool
}

// Neighbour is one permanent neighbour (ARP) entry.
type Neighbour struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
}

// link returns the link named name, or nil.
func (s State) link(name string) *Link {
	for i := range s.Links {
		if s.Links[i].Name == name {
			return &s.Links[i]
		}
	}
	return nil
}
