package guestagent

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNamespace runs f on a thread of its own inside a new network
// namespace (needs root), so the ioctls reach only the test's interfaces;
// the thread is discarded afterwards.
func inNewNamespace(t *testing.T, f func(netns.NsHandle) error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		errc <- f(ns)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// The Linux system's NIC changes against a real kernel: a dummy interface
// in a namespace of the test's own.
func TestLinuxConfiguresTheNIC(t *testing.T) {
	inNewNamespace(t, func(guestNS netns.NsHandle) error {
		const iface = "bxg0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: iface}, PeerName: "bxg1"}); err != nil {
			t.Errorf("creating a veth pair (needs root): %v", err)
			return nil
		}
		var sys Linux
		mac, _ := net.ParseMAC("02:b1:00:00:00:07")
		must := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		}
		must("SetLink", sys.SetLink(iface, mac, 1400, true))
		must("AddAddr", sys.AddAddr(iface, netip.MustParsePrefix("10.9.0.5/24")))
		must("ReplaceDefaultRoute", sys.ReplaceDefaultRoute(iface, netip.MustParseAddr("10.9.0.1")))
		// A second time replaces the route rather than failing.
		must("ReplaceDefaultRoute again", sys.ReplaceDefaultRoute(iface, netip.MustParseAddr("10.9.0.2")))

		link, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		a := link.Attrs()
		if a.HardwareAddr.String() != mac.String() || a.MTU != 1400 || a.Flags&net.FlagUp == 0 {
			t.Errorf("after SetLink: MAC %s MTU %d flags %s; want %s 1400 up", a.HardwareAddr, a.MTU, a.Flags, mac)
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.9.0.5/24" {
			t.Errorf("addresses %v, want 10.9.0.5/24", addrs)
		}
		routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		var defaults []string
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				defaults = append(defaults, r.Gw.String())
			}
		}
		if len(defaults) != 1 || defaults[0] != "10.9.0.2" {
			t.Errorf("default routes via %v, want one via 10.9.0.2", defaults)
		}
		gotMAC, gotAddr, err := sys.Link(iface)
		if err != nil || gotMAC != mac.String() || gotAddr != netip.MustParseAddr("10.9.0.5") {
			t.Errorf("Link = %s %s %v, want %s 10.9.0.5", gotMAC, gotAddr, err, mac)
		}

		// Greet: the peer, in a namespace of its own as the node's bridge
		// would be, learns the guest's address and MAC from the ARP
		// request the datagram needs.
		peerNS, err := netns.New() // this thread moves there; back below
		if err != nil {
			return err
		}
		defer peerNS.Close()
		if err := netns.Set(guestNS); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("bxg1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(peerNS)); err != nil {
			return err
		}
		h, err := netlink.NewHandleAt(peerNS)
		if err != nil {
			return err
		}
		defer h.Close()
		if peer, err = h.LinkByName("bxg1"); err != nil {
			return err
		}
		must("peer address", h.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 0, 2), Mask: net.CIDRMask(24, 32)}}))
		must("peer up", h.LinkSetUp(peer))
		learnt := ""
		for range 100 {
			must("Greet", sys.Greet(netip.MustParseAddr("10.9.0.2")))
			neighs, _ := h.NeighList(peer.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range neighs {
				if n.IP.Equal(net.IPv4(10, 9, 0, 5)) && n.HardwareAddr != nil {
					learnt = n.HardwareAddr.String()
				}
			}
			if learnt != "" {
				break
			}
			time.Sleep(20 * time.Millisecond) // the peer's link comes up; polling, not synchronisation
		}
		if learnt != mac.String() {
			t.Errorf("after Greet the peer knows 10.9.0.5 at %q, want %s", learnt, mac)
		}

		// Two addresses (a lease's and the identity's) both go.
		must("AddAddr second", netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 1, 5), Mask: net.CIDRMask(24, 32)}}))
		must("Down", sys.Down(iface))
		link, _ = netlink.LinkByName(iface)
		addrs, _ = netlink.AddrList(link, netlink.FAMILY_V4)
		if len(addrs) != 0 || link.Attrs().Flags&net.FlagUp != 0 {
			t.Errorf("after Down: addresses %v, flags %s; want none, down", addrs, link.Attrs().Flags)
		}
		if _, addr, err := sys.Link(iface); err != nil || addr.IsValid() {
			t.Errorf("Link after Down: address %s, %v; want none", addr, err)
		}
		if err := sys.SetLink("nosuch0", nil, 0, true); err == nil {
			t.Error("SetLink of a missing interface: no error")
		}
		return nil
	})
}
