package hostnet

import (
	"net"
	"net/netip"
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
