package hostnet_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/blixard/blixard/hostnet"
)

// desired is what the agent on node self derives from the replicated state:
// its own instances' taps, every other instance with its node's underlay
// address, and the other nodes' own overlay addresses.
func desired(l *lab, self int, placement map[*instance]int) hostnet.Desired {
	var d hostnet.Desired
	for i, nd := range l.nodes {
		if i != self {
			d.Remote = append(d.Remote, hostnet.NodeRemote(nd.addr, nd.underlay))
		}
	}
	for in, at := range placement {
		if at == self {
			d.LocalTaps = append(d.LocalTaps, hostnet.Tap{Name: in.tap, MAC: in.mac})
		} else {
			d.Remote = append(d.Remote, hostnet.Remote{MAC: in.mac, IP: in.ip, Node: l.nodes[at].underlay})
		}
	}
	return d
}

// syncAll runs Sync on every node with the desired tables of placement and
// returns how many operations each carried out.
func syncAll(ctx context.Context, t *testing.T, l *lab, placement map[*instance]int) []int {
	t.Helper()
	counts := make([]int, len(l.nodes))
	for i, nd := range l.nodes {
		ops, err := nd.host.Sync(ctx, nd.config(), desired(l, i, placement))
		if err != nil {
			t.Fatalf("Sync on node %d: %v", i+1, err)
		}
		counts[i] = len(ops)
	}
	return counts
}

// TestNetnsThreeNodesPingAcrossTheOverlayAndAfterAMove is the overlay end to
// end on real kernel networking: three nodes on an underlay bridge, instance
// A on node 1 pings instance B on node 2 through the VXLAN devices; B moves
// to node 3 (same MAC and address), every node syncs, and A reaches B again.
func TestNetnsThreeNodesPingAcrossTheOverlayAndAfterAMove(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	l := newLab(t, 3)
	a := newInstance(t, "vm-a", mac("52:54:00:00:00:0a"), netip.MustParseAddr("10.100.1.10"))
	b := newInstance(t, "vm-b", mac("52:54:00:00:00:0b"), netip.MustParseAddr("10.100.1.11"))
	a.plug(t, l.nodes[0])
	b.plug(t, l.nodes[1])
	placement := map[*instance]int{a: 0, b: 1}

	start := time.Now()
	syncAll(ctx, t, l, placement)
	took, err := ping(ctx, a.ns, b.ip)
	if err != nil {
		t.Fatalf("A on node 1 → B on node 2: %v", err)
	}
	t.Logf("first setup: Sync of 3 nodes to first echo reply A→B: %v (ping alone %v)", time.Since(start), took)
	if counts := syncAll(ctx, t, l, placement); slices.Max(counts) != 0 {
		t.Fatalf("second Sync changed something: operations per node %v", counts)
	}
	// The node's host reaches a remote instance too (an ingress proxy
	// would): its source is node 1's own overlay address.
	if _, err := ping(ctx, l.nodes[0].ns, b.ip); err != nil {
		t.Fatalf("node 1's host → B on node 2: %v", err)
	}

	// B moves to node 3: its VM stops on node 2 (the tap goes), starts on
	// node 3 with the same identity, and every node syncs the new table.
	b.unplug(t, l.nodes[1])
	b.plug(t, l.nodes[2])
	placement[b] = 2
	start = time.Now()
	counts := syncAll(ctx, t, l, placement)
	if _, err := ping(ctx, a.ns, b.ip); err != nil {
		t.Fatalf("A on node 1 → B moved to node 3: %v", err)
	}
	t.Logf("move: Sync of 3 nodes (operations %v) to first echo reply A→B: %v", counts, time.Since(start))
	if _, err := ping(ctx, l.nodes[0].ns, b.ip); err != nil {
		t.Fatalf("node 1's host → B moved to node 3: %v", err)
	}
	if counts := syncAll(ctx, t, l, placement); slices.Max(counts) != 0 {
		t.Fatalf("Sync after the move changed something again: operations per node %v", counts)
	}

	have, err := l.nodes[0].host.Observe(ctx)
	must(t, err)
	var dsts []netip.Addr
	for _, e := range have.FDB {
		if e.Dev == "blxvx42" && !e.Master && slices.Equal(e.MAC, b.mac) {
			dsts = append(dsts, e.Dst)
		}
	}
	if !slices.Equal(dsts, []netip.Addr{l.nodes[2].underlay}) {
		t.Fatalf("node 1's VXLAN entries for B = %v, want only node 3 (%s)", dsts, l.nodes[2].underlay)
	}

	// B is removed from the cluster: its entries go everywhere.
	b.unplug(t, l.nodes[2])
	delete(placement, b)
	syncAll(ctx, t, l, placement)
	for i, nd := range l.nodes {
		have, err := nd.host.Observe(ctx)
		must(t, err)
		for _, e := range have.FDB {
			if slices.Equal(e.MAC, b.mac) {
				t.Errorf("node %d still has %+v for removed instance B", i+1, e)
			}
		}
		for _, n := range have.Neighbours {
			if n.IP == b.ip {
				t.Errorf("node %d still has neighbour %+v for removed instance B", i+1, n)
			}
		}
	}
}

// TestNetnsArpForRemoteInstanceIsAnsweredLocally checks the no-multicast
// model: instance A learns B's MAC although no broadcast crosses the
// underlay (the VXLAN device has no flood entry); node 1's bridge answers.
func TestNetnsArpForRemoteInstanceIsAnsweredLocally(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	l := newLab(t, 2)
	a := newInstance(t, "vm-a", mac("52:54:00:00:00:0a"), netip.MustParseAddr("10.100.1.10"))
	b := newInstance(t, "vm-b", mac("52:54:00:00:00:0b"), netip.MustParseAddr("10.100.1.11"))
	a.plug(t, l.nodes[0])
	b.plug(t, l.nodes[1])
	placement := map[*instance]int{a: 0, b: 1}
	syncAll(ctx, t, l, placement)
	if _, err := ping(ctx, a.ns, b.ip); err != nil {
		t.Fatal(err)
	}
	neigh, err := a.nl.NeighList(0, netlink.FAMILY_V4)
	must(t, err)
	i := slices.IndexFunc(neigh, func(n netlink.Neigh) bool { return n.IP.Equal(b.ip.AsSlice()) })
	if i < 0 || !slices.Equal(neigh[i].HardwareAddr, b.mac) {
		t.Fatalf("A's ARP cache has no entry B → %s: %v", b.mac, neigh)
	}
	// A's request could only have been answered on node 1: node 1's VXLAN
	// device has no all-zeros (flood) entry to send a broadcast anywhere.
	have, err := l.nodes[0].host.Observe(ctx)
	must(t, err)
	for _, e := range have.FDB {
		if e.Dev == "blxvx42" && slices.Equal(e.MAC, make([]byte, 6)) {
			t.Fatalf("node 1 has a flood entry %+v", e)
		}
	}
}

// TestNetnsConflictsChangeNothing: a bridge with another address and a
// VXLAN id held by another device are refused with the action to take, and
// the namespace is left as it was.
func TestNetnsConflictsChangeNothing(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, 1)
	nd := l.nodes[0]
	want := hostnet.Desired{Remote: []hostnet.Remote{{MAC: mac("52:54:00:00:00:0b"), IP: netip.MustParseAddr("10.100.1.11"), Node: netip.MustParseAddr("192.168.77.2")}}}

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "blixard0"}}
	must(t, nd.nl.LinkAdd(br))
	addAddr(t, nd.nl, br, netip.MustParsePrefix("192.168.1.1/24"))
	before, err := nd.host.Observe(ctx)
	must(t, err)
	ops, err := nd.host.Sync(ctx, nd.config(), want)
	var conflict *hostnet.ConflictError
	if !errors.As(err, &conflict) || err.Error() != "bridge blixard0 exists with address 192.168.1.1/24, not 10.100.0.1/16: pick --bridge or remove it" {
		t.Fatalf("Sync with a foreign bridge: %v (%T)", err, err)
	}
	after, err := nd.host.Observe(ctx)
	must(t, err)
	if len(ops) != 0 || len(after.Links) != len(before.Links) {
		t.Fatalf("refused Sync changed the host: operations %q, links %d → %d", strs(ops), len(before.Links), len(after.Links))
	}
	must(t, nd.nl.LinkDel(br))

	other := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1"}, VxlanId: vni, Port: 4789, SrcAddr: nd.underlay.AsSlice()}
	must(t, nd.nl.LinkAdd(other))
	ops, err = nd.host.Sync(ctx, nd.config(), want)
	if !errors.As(err, &conflict) || err.Error() != "vxlan id 42 (port 4789) is in use by device flannel.1: pick another --vxlan-id" {
		t.Fatalf("Sync with a foreign VXLAN device: %v (%T)", err, err)
	}
	if len(ops) != 0 {
		t.Fatalf("refused Sync changed the host: %q", strs(ops))
	}
	if _, err := nd.nl.LinkByName("blixard0"); err == nil {
		t.Fatal("refused Sync created the bridge")
	}
}

// TestNetnsRoutesOverlappingTheOverlayChangeNothing: a route that overlaps
// the overlay — through a VPN in main, a tailnet's subnet route in
// Tailscale's policy table 52, one that appears after the setup — makes
// Sync refuse with the route named, and the namespace is left as it was.
// The kernel's own routes of the bridge are no conflict.
func TestNetnsRoutesOverlappingTheOverlayChangeNothing(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, 1)
	nd := l.nodes[0]
	want := hostnet.Desired{Remote: []hostnet.Remote{{MAC: mac("52:54:00:00:00:0b"), IP: netip.MustParseAddr("10.100.1.11"), Node: netip.MustParseAddr("192.168.77.2")}}}
	eth0, err := nd.nl.LinkByName("eth0")
	must(t, err)
	refused := func(what, msg string) {
		t.Helper()
		before := routing(t, nd)
		ops, err := nd.host.Sync(ctx, nd.config(), want)
		var conflict *hostnet.ConflictError
		if !errors.As(err, &conflict) || err.Error() != msg {
			t.Fatalf("Sync with %s: %v (%T), want the conflict %q", what, err, err, msg)
		}
		if after := routing(t, nd); len(ops) != 0 || after != before {
			t.Fatalf("refused Sync with %s changed the host: operations %q\nbefore:\n%s\nafter:\n%s", what, strs(ops), before, after)
		}
	}

	vpn := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet("10.100.0.0/16"), Gw: netip.MustParseAddr("192.168.77.254").AsSlice()}
	must(t, nd.nl.RouteAdd(vpn))
	refused("a VPN's route to the overlay",
		"route 10.100.0.0/16 via 192.168.77.254 dev eth0 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route")
	if _, err := nd.nl.LinkByName("blixard0"); err == nil {
		t.Fatal("refused Sync created the bridge")
	}
	must(t, nd.nl.RouteDel(vpn))

	// Tailscale: the tailnet's routes in table 52, looked up by a rule
	// before main's.
	// A veth stands in for tailscale0 (a tun): routes only need a device.
	ts := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tailscale0", MTU: 1280}, PeerName: "ts-peer"}
	must(t, nd.nl.LinkAdd(ts))
	addAddr(t, nd.nl, ts, netip.MustParsePrefix("100.64.0.1/32"))
	for _, name := range []string{"tailscale0", "ts-peer"} {
		l, err := nd.nl.LinkByName(name)
		must(t, err)
		must(t, nd.nl.LinkSetUp(l))
	}
	must(t, nd.nl.RouteAdd(&netlink.Route{LinkIndex: ts.Attrs().Index, Dst: ipNet("10.100.4.0/24"), Table: 52}))
	rule := netlink.NewRule()
	rule.Family, rule.Priority, rule.Table = netlink.FAMILY_V4, 5270, 52
	must(t, nd.nl.RuleAdd(rule))
	refused("a tailnet subnet route in table 52",
		"route 10.100.4.0/24 dev tailscale0 table 52 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route")

	// Without its rule table 52 routes nothing: the overlay is set up, and
	// the kernel's routes of the bridge (connected, local, broadcast) are
	// not taken for a conflict on the next Sync.
	must(t, nd.nl.RuleDel(rule))
	if _, err := nd.host.Sync(ctx, nd.config(), want); err != nil {
		t.Fatalf("Sync once table 52 is no rule's: %v", err)
	}
	if ops, err := nd.host.Sync(ctx, nd.config(), want); err != nil || len(ops) != 0 {
		t.Fatalf("second Sync: %q, %v; want nothing to do", strs(ops), err)
	}

	// A VPN comes up later with a route into the overlay.
	must(t, nd.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet("10.100.9.0/24"), Gw: netip.MustParseAddr("192.168.77.9").AsSlice()}))
	refused("a route that appeared after the setup",
		"route 10.100.9.0/24 via 192.168.77.9 dev eth0 overlaps the overlay network 10.100.0.0/16: pick another network.cidr, or remove the route")
}

// routing describes what Plan compares in nd's namespace — links with
// their masters and IPv4 addresses, forwarding and neighbour entries,
// routes and rule tables — without what the kernel changes on its own
// (IPv6 link-local addresses, carrier).
func routing(t *testing.T, nd *node) string {
	t.Helper()
	st, err := nd.host.Observe(t.Context())
	must(t, err)
	var b strings.Builder
	for _, l := range st.Links {
		fmt.Fprintf(&b, "link %s %s master=%q mtu=%d up=%v", l.Name, l.Kind, l.Master, l.MTU, l.Up)
		for _, a := range l.Addrs {
			if a.Addr().Is4() {
				fmt.Fprintf(&b, " %s", a)
			}
		}
		b.WriteString("\n")
	}
	for _, e := range st.FDB {
		fmt.Fprintf(&b, "fdb %+v\n", e)
	}
	for _, n := range st.Neighbours {
		fmt.Fprintf(&b, "neigh %+v\n", n)
	}
	for _, r := range st.Routes {
		fmt.Fprintf(&b, "route %s\n", r)
	}
	fmt.Fprintf(&b, "rule tables %v\n", st.RuleTables)
	return b.String()
}

func ipNet(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// TestNetnsProcessBackendCreatesOwnedTapsAndDeletesThem: with CreateTaps
// hostnet creates a persistent tap owned by the VM's user (checked with
// ip(8)), attaches it, and deletes it when no longer wanted; a tap it did
// not create is only detached.
func TestNetnsProcessBackendCreatesOwnedTapsAndDeletesThem(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, 1)
	nd := l.nodes[0]
	cfg := nd.config()
	cfg.CreateTaps = true
	own := hostnet.Tap{Name: "vm-c", MAC: mac("52:54:00:00:00:0c"), Owner: 4242, Group: 4343, MultiQueue: true}

	foreign := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-f"}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
	must(t, inNS(nd.ns, func() error { return nd.nl.LinkAdd(foreign) }))

	ops, err := nd.host.Sync(ctx, cfg, hostnet.Desired{LocalTaps: []hostnet.Tap{own, {Name: "vm-f", MAC: mac("52:54:00:00:00:0f")}}})
	must(t, err)
	if !slices.Contains(strs(ops), "tuntap add vm-c mode tap user 4242 group 4343 vnet_hdr multi_queue mtu 1450") {
		t.Fatalf("Sync did not create vm-c: %q", strs(ops))
	}
	out := ipIn(t, nd, "-d", "link", "show", "vm-c")
	for _, want := range []string{"master blixard0", "mtu 1450", "tun type tap", "user 4242", "group 4343", "multi_queue", "persist on", "alias blixard-tap"} {
		if !strings.Contains(out, want) {
			t.Errorf("ip -d link show vm-c lacks %q:\n%s", want, out)
		}
	}
	if out := ipIn(t, nd, "link", "show", "vm-f"); !strings.Contains(out, "master blixard0") {
		t.Errorf("vm-f is not attached:\n%s", out)
	}
	fdb := ipIn(t, nd, "fdb")
	if !strings.Contains(fdb, "52:54:00:00:00:0c dev vm-c master blixard0 static") {
		t.Errorf("no static entry for vm-c's guest:\n%s", fdb)
	}

	ops, err = nd.host.Sync(ctx, cfg, hostnet.Desired{})
	must(t, err)
	if got, want := strs(ops), []string{"link del vm-c", "link set vm-f nomaster"}; !slices.Equal(got, want) {
		t.Fatalf("Sync without taps: %q, want %q", got, want)
	}
	if _, err := nd.nl.LinkByName("vm-c"); err == nil {
		t.Error("vm-c still exists")
	}
	if l, err := nd.nl.LinkByName("vm-f"); err != nil || l.Attrs().MasterIndex != 0 {
		t.Errorf("vm-f after detaching: %v, master index %d; want it kept and detached", err, l.Attrs().MasterIndex)
	}
}

// TestNetnsAddMissingTapsIsWhatSyncWouldDo: the fast lane creates only
// the taps that are missing, exactly as Sync would (the next Sync finds
// nothing to do for them), leaves an existing tap and everything else to
// Sync, and does nothing without CreateTaps or before the MTU is known.
func TestNetnsAddMissingTapsIsWhatSyncWouldDo(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, 1)
	nd := l.nodes[0]
	cfg := nd.config()
	cfg.CreateTaps = true
	old := hostnet.Tap{Name: "vm-o", MAC: mac("52:54:00:00:00:01")}
	if _, err := nd.host.Sync(ctx, cfg, hostnet.Desired{LocalTaps: []hostnet.Tap{old}}); err != nil {
		t.Fatal(err)
	}
	mtu, err := nd.host.LinkMTU("blixard0")
	must(t, err)
	fresh := hostnet.Tap{Name: "vm-n", MAC: mac("52:54:00:00:00:02"), Owner: 4242, Group: 4343}
	// Without CreateTaps (microvm.nix makes the taps) nothing happens.
	if ops, err := nd.host.AddMissingTaps(ctx, nd.config(), mtu, []hostnet.Tap{fresh}); err != nil || len(ops) != 0 {
		t.Fatalf("AddMissingTaps without CreateTaps: %q, %v; want nothing", strs(ops), err)
	}
	if _, err := nd.host.AddMissingTaps(ctx, cfg, 0, []hostnet.Tap{fresh}); err == nil {
		t.Fatal("AddMissingTaps with an unknown MTU: no error")
	}
	if _, err := nd.host.AddMissingTaps(ctx, cfg, mtu, []hostnet.Tap{{Name: "blixard0", MAC: fresh.MAC}}); err == nil {
		t.Fatal("AddMissingTaps with the bridge's name for a tap: no error")
	}
	ops, err := nd.host.AddMissingTaps(ctx, cfg, mtu, []hostnet.Tap{old, fresh})
	must(t, err)
	if got, want := strs(ops), []string{
		"tuntap add vm-n mode tap user 4242 group 4343 vnet_hdr mtu 1450", "link set vm-n master blixard0", "link set vm-n up",
		"fdb replace 52:54:00:00:00:02 dev vm-n master static",
	}; !slices.Equal(got, want) {
		t.Fatalf("AddMissingTaps: %q, want %q", got, want)
	}
	out := ipIn(t, nd, "-d", "link", "show", "vm-n")
	for _, want := range []string{"master blixard0", "mtu 1450", "UP>", "user 4242", "alias blixard-tap"} {
		if !strings.Contains(out, want) {
			t.Errorf("ip -d link show vm-n lacks %q:\n%s", want, out)
		}
	}
	ops, err = nd.host.Sync(ctx, cfg, hostnet.Desired{LocalTaps: []hostnet.Tap{old, fresh}})
	must(t, err)
	if len(ops) != 0 {
		t.Errorf("Sync after AddMissingTaps: %q, want nothing left to do", strs(ops))
	}
	// A tap made ahead with other settings than the instance's (here its
	// owner) is one Sync would replace: an error, and nothing is done, so
	// the instance waits for the Sync instead of opening a tap about to go.
	otherOwner := old
	otherOwner.Owner = 4242
	third := hostnet.Tap{Name: "vm-t", MAC: mac("52:54:00:00:00:03")}
	if ops, err := nd.host.AddMissingTaps(ctx, cfg, mtu, []hostnet.Tap{third, otherOwner}); err == nil || !strings.Contains(err.Error(), "other settings") {
		t.Errorf("AddMissingTaps for a tap with another owner: %q, %v; want an error about its settings", strs(ops), err)
	}
	if out := ipIn(t, nd, "link", "show"); strings.Contains(out, "vm-t") {
		t.Errorf("AddMissingTaps that failed created vm-t:\n%s", out)
	}
	ops, err = nd.host.Sync(ctx, cfg, hostnet.Desired{LocalTaps: []hostnet.Tap{otherOwner, fresh}})
	must(t, err)
	if got := strs(ops); !slices.Contains(got, "link del vm-o") {
		t.Errorf("Sync with vm-o's new owner: %q, want it replaced", got)
	}
}

// TestNetnsTapMadeLaterIsAttachedByTheNextSync: under systemd a wanted tap
// that microvm-tap-interfaces@ has not created yet is skipped, and the next
// Sync attaches it.
func TestNetnsTapMadeLaterIsAttachedByTheNextSync(t *testing.T) {
	ctx := t.Context()
	l := newLab(t, 1)
	nd := l.nodes[0]
	want := hostnet.Desired{LocalTaps: []hostnet.Tap{{Name: "vm-a", MAC: mac("52:54:00:00:00:0a")}}}
	if _, err := nd.host.Sync(ctx, nd.config(), want); err != nil {
		t.Fatal(err)
	}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-a"}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
	must(t, inNS(nd.ns, func() error { return nd.nl.LinkAdd(tap) }))
	ops, err := nd.host.Sync(ctx, nd.config(), want)
	must(t, err)
	if got, want := strs(ops), []string{
		"link set vm-a mtu 1450", "link set vm-a master blixard0", "link set vm-a up",
		"fdb replace 52:54:00:00:00:0a dev vm-a master static",
	}; !slices.Equal(got, want) {
		t.Fatalf("Sync after the tap appeared: %q, want %q", got, want)
	}
}

// ipIn runs ip(8) (or bridge(8) for "fdb") inside nd's namespace, for
// inspection only.
func ipIn(t *testing.T, nd *node, args ...string) string {
	t.Helper()
	prog := "ip"
	if args[0] == "fdb" {
		prog, args = "bridge", []string{"fdb", "show"}
	}
	cmd := exec.CommandContext(t.Context(), "nsenter", append([]string{"--net=/proc/self/fd/3", prog}, args...)...)
	ns, err := dupFile(nd)
	must(t, err)
	defer ns.Close()
	cmd.ExtraFiles = append(cmd.ExtraFiles, ns)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s (needs util-linux nsenter and iproute2)", prog, strings.Join(args, " "), err, out)
	}
	return string(out)
}
