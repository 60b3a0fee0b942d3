package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requestTimeout bounds each netlink request: the kernel answers in
// microseconds, so a request that takes this long is stuck, and Sync must
// return (with an error) rather than block the agent's pass forever.
const requestTimeout = 10 * time.Second

// dumpAttempts is how often Observe repeats a dump the kernel interrupted
// (a link or entry changed during it) before giving up.
const dumpAttempts = 5

// Host is the imperative shell: it observes and changes one network
// namespace through netlink. A Host is safe for concurrent use (calls are
// serialised); its one owner is the node agent.
type Host struct {
	log *slog.Logger

	mu sync.Mutex // serialises use of nl: one netlink socket, one request at a time
	nl *netlink.Handle
	// ns is the namespace's handle for NewAt (tap creation must run in the
	// namespace itself), netns.None() for the current one. Owned: Close
	// closes it.
	ns netns.NsHandle
}

// New returns a Host for the current network namespace. Close it when done.
func New(log *slog.Logger) (*Host, error) {
	return NewAt(netns.None(), log)
}

// NewAt returns a Host for the network namespace ns (netns.None() for the
// current one). The Host keeps its own duplicate of ns; the caller may
// close its handle.
func NewAt(ns netns.NsHandle, log *slog.Logger) (*Host, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	own := netns.None()
	if ns.IsOpen() {
		fd, err := unix.Dup(int(ns))
		if err != nil {
			return nil, fmt.Errorf("hostnet: duplicate namespace handle: %w", err)
		}
		own = netns.NsHandle(fd)
	}
	h, err := netlink.NewHandleAt(own, unix.NETLINK_ROUTE)
	if err != nil {
		if own.IsOpen() {
			_ = own.Close()
		}
		return nil, fmt.Errorf("hostnet: open netlink socket (needs CAP_NET_ADMIN): %w", err)
	}
	if err := h.SetSocketTimeout(requestTimeout); err != nil {
		h.Close()
		if own.IsOpen() {
			_ = own.Close()
		}
		return nil, fmt.Errorf("hostnet: set netlink timeout: %w", err)
	}
	return &Host{log: log, nl: h, ns: own}, nil
}

// Close releases the netlink socket and the namespace handle.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nl.Close()
	if h.ns.IsOpen() {
		return h.ns.Close()
	}
	return nil
}

// Sync makes the namespace carry cfg and want: Observe, Plan, Apply. It
// returns the operations it carried out (none when the host already
// matched). On a *ConflictError nothing was changed; on another error the
// returned operations were applied before it, and the next Sync continues
// from whatever state that left.
func (h *Host) Sync(ctx context.Context, cfg Config, want Desired) ([]Op, error) {
	have, err := h.Observe(ctx)
	if err != nil {
		return nil, err
	}
	ops, err := Plan(cfg, want, have)
	if err != nil {
		return nil, err
	}
	done, err := h.Apply(ctx, ops)
	if len(done) > 0 {
		h.log.Info("host network changed", "bridge", cfg.withDefaults().Bridge, "operations", len(done), "planned", len(ops))
	}
	return done, err
}

// AddMissingTaps creates those of taps that do not exist, with the
// operations Plan gives a missing tap (created with mtu, attached to
// cfg's bridge, up, a static entry for the guest's MAC), asking the kernel
// about those taps alone: the fast lane of a start waiting for its tap,
// where Sync observes the whole namespace first. A tap that exists (made
// ahead, as a spare) is left to Sync, and so is everything else, but one
// Sync would replace (its owner, group or queues differ, it is not
// persistent) is an error: the caller's instance waits for that Sync
// rather than open a tap about to go. Without cfg.CreateTaps (taps made
// by microvm.nix's units) it does nothing. mtu is the bridge's (Sync's
// result; see LinkMTU).
func (h *Host) AddMissingTaps(ctx context.Context, cfg Config, mtu int, taps []Tap) ([]Op, error) {
	cfg = cfg.withDefaults()
	if !cfg.CreateTaps || len(taps) == 0 {
		return nil, nil
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("hostnet: %w", err)
	}
	if err := (Desired{LocalTaps: taps}).validate(cfg); err != nil {
		return nil, fmt.Errorf("hostnet: %w", err)
	}
	if mtu <= 0 {
		return nil, fmt.Errorf("hostnet: the bridge's MTU is not known yet (%d): Sync first", mtu)
	}
	var ops []Op
	h.mu.Lock()
	for _, t := range taps {
		l, err := h.nl.LinkByName(t.Name)
		var missing netlink.LinkNotFoundError
		switch {
		case errors.As(err, &missing):
			ops = append(ops, newTapOps(cfg.Bridge, mtu, t)...)
		case err != nil:
			h.mu.Unlock()
			return nil, fmt.Errorf("hostnet: link %s: %w", t.Name, err)
		default:
			if tt, ok := l.(*netlink.Tuntap); ok && !tapMatches(*tapInfo(tt), t) {
				h.mu.Unlock()
				return nil, fmt.Errorf("hostnet: tap %s exists with other settings (owner %d, group %d, multi_queue %t; want %d, %d, %t): Sync replaces it",
					t.Name, tt.Owner, tt.Group, tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0, t.Owner, t.Group, t.MultiQueue)
			}
		}
	}
	h.mu.Unlock()
	return h.Apply(ctx, ops)
}

// LinkMTU is the MTU of link name: one netlink request, where Observe
// dumps the whole namespace.
func (h *Host) LinkMTU(name string) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, err := h.nl.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("hostnet: link %s: %w", name, err)
	}
	return l.Attrs().MTU, nil
}

// Observe reads what Plan needs from the namespace: links with their
// addresses and settings, the VXLAN devices' own FDB entries, static bridge
// entries and permanent neighbours on bridges, the IPv4 routes and the
// tables the policy rules look up.
func (h *Host) Observe(ctx context.Context) (State, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return State{}, fmt.Errorf("hostnet: observe: %w", err)
		}
		s, err := h.observeLocked()
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < dumpAttempts {
			continue // something changed during the dump: read again
		}
		if err != nil {
			return State{}, fmt.Errorf("hostnet: observe: %w", err)
		}
		return s, nil
	}
}

// observeLocked does one observation; h.mu must be held.
func (h *Host) observeLocked() (State, error) {
	links, err := h.nl.LinkList()
	if err != nil {
		return State{}, fmt.Errorf("list links: %w", err)
	}
	addrs, err := h.nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return State{}, fmt.Errorf("list addresses: %w", err)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	name := func(index int) string {
		if l, ok := byIndex[index]; ok {
			return l.Attrs().Name
		}
		return ""
	}
	addrsOf := map[int][]netip.Prefix{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		bits, _ := a.Mask.Size()
		addrsOf[a.LinkIndex] = append(addrsOf[a.LinkIndex], netip.PrefixFrom(ip.Unmap(), bits))
	}

	var s State
	for _, l := range links {
		a := l.Attrs()
		out := Link{
			Name:   a.Name,
			Kind:   l.Type(),
			MTU:    a.MTU,
			Up:     a.Flags&net.FlagUp != 0,
			MAC:    a.HardwareAddr,
			Master: name(a.MasterIndex),
			Alias:  a.Alias,
			Addrs:  addrsOf[a.Index],
		}
		switch d := l.(type) {
		case *netlink.Vxlan:
			out.VXLAN = &VXLANInfo{
				ID:       uint32(d.VxlanId),
				Port:     d.Port,
				Local:    addrOf(d.SrcAddr),
				Dev:      name(d.VtepDevIndex),
				Learning: d.Learning,
				Group:    addrOf(d.Group),
			}
			if a.MasterIndex != 0 {
				pi, err := h.nl.LinkGetProtinfo(l)
				if err != nil {
					return State{}, fmt.Errorf("read bridge port flags of %s: %w", a.Name, err)
				}
				out.Port = &PortFlags{Learning: pi.Learning, NeighSuppress: pi.NeighSuppress}
			}
		case *netlink.Tuntap:
			out.Tap = tapInfo(d)
		}
		s.Links = append(s.Links, out)
	}

	fdb, err := h.nl.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return State{}, fmt.Errorf("list forwarding entries: %w", err)
	}
	for _, e := range fdb {
		dev, ok := byIndex[e.LinkIndex]
		if !ok {
			continue
		}
		switch {
		case e.MasterIndex != 0:
			// A bridge's entry for one of its ports: only static ones are
			// programmed (local entries are the ports' own addresses,
			// others are learned).
			if e.State&netlink.NUD_NOARP != 0 && e.State&netlink.NUD_PERMANENT == 0 && dev.Attrs().MasterIndex != 0 {
				s.FDB = append(s.FDB, FDBEntry{Dev: dev.Attrs().Name, MAC: e.HardwareAddr, Master: true})
			}
		case dev.Type() == "vxlan":
			s.FDB = append(s.FDB, FDBEntry{Dev: dev.Attrs().Name, MAC: e.HardwareAddr, Dst: addrOf(e.IP)})
		}
	}

	neigh, err := h.nl.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		return State{}, fmt.Errorf("list neighbours: %w", err)
	}
	for _, n := range neigh {
		dev, ok := byIndex[n.LinkIndex]
		if !ok || dev.Type() != "bridge" || n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		s.Neighbours = append(s.Neighbours, Neighbour{Dev: dev.Attrs().Name, IP: addrOf(n.IP), MAC: n.HardwareAddr})
	}

	// Every table, not only main (netlink's default): a policy table such
	// as Tailscale's 52 can take overlay traffic too (see Plan).
	routes, err := h.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return State{}, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		out := Route{Type: routeType(r.Type), Gateway: addrOf(r.Gw), Dev: name(r.LinkIndex), Table: r.Table}
		if r.Dst != nil {
			ip, ok := netip.AddrFromSlice(r.Dst.IP)
			bits, _ := r.Dst.Mask.Size()
			if !ok {
				continue
			}
			out.Dst = netip.PrefixFrom(ip.Unmap(), bits)
		}
		for _, nh := range r.MultiPath {
			out.Nexthops = append(out.Nexthops, Nexthop{Gateway: addrOf(nh.Gw), Dev: name(nh.LinkIndex)})
		}
		s.Routes = append(s.Routes, out)
	}
	rules, err := h.nl.RuleList(netlink.FAMILY_V4)
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP):
		// A kernel without policy routing: local and main only, as
		// without rules of its own.
		rules = []netlink.Rule{{Table: tableLocal}, {Table: tableMain}}
	case err != nil:
		return State{}, fmt.Errorf("list routing rules: %w", err)
	}
	for _, r := range rules {
		if r.Table > 0 && !slices.Contains(s.RuleTables, r.Table) {
			s.RuleTables = append(s.RuleTables, r.Table)
		}
	}
	return s, nil
}

// routeType names a route type as ip-route(8) does.
func routeType(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_NAT:
		return "nat"
	}
	return fmt.Sprintf("type%d", t)
}

// Apply carries out ops in order and returns the ones it completed. It stops
// at the first failure (or when ctx ends) and returns that error naming the
// operation; the rest is left for the next Sync, which plans from what is
// there.
func (h *Host) Apply(ctx context.Context, ops []Op) ([]Op, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	idx := map[string]int{} // link name → index, so 1,000 entries cost 1,000 requests, not 2,000
	for i, op := range ops {
		if err := ctx.Err(); err != nil {
			return ops[:i], fmt.Errorf("hostnet: stopped before %s: %w", op, err)
		}
		if err := h.applyLocked(op, idx); err != nil {
			return ops[:i], fmt.Errorf("hostnet: %s: %w", op, err)
		}
		h.log.Debug("host network", "op", op.String())
	}
	return ops, nil
}

// applyLocked carries out one op; h.mu must be held.
func (h *Host) applyLocked(op Op, idx map[string]int) error {
	link := func(name string) (netlink.Link, error) {
		if i, ok := idx[name]; ok {
			return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, Index: i}}, nil
		}
		l, err := h.nl.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("find link %s: %w", name, err)
		}
		idx[name] = l.Attrs().Index
		return l, nil
	}
	switch op.Kind {
	case OpCreateBridge:
		return h.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: op.Link, MTU: op.MTU, HardwareAddr: op.MAC}})
	case OpCreateVXLAN:
		v := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: op.Link, MTU: op.MTU},
			VxlanId:   int(op.VXLAN.ID),
			SrcAddr:   net.IP(op.VXLAN.Local.AsSlice()),
			Port:      op.VXLAN.Port,
			Learning:  false,
		}
		if op.VXLAN.Dev != "" {
			dev, err := link(op.VXLAN.Dev)
			if err != nil {
				return err
			}
			v.VtepDevIndex = dev.Attrs().Index
		}
		return h.nl.LinkAdd(v)
	case OpCreateTap:
		return h.createTapLocked(op)
	case OpDeleteLink:
		l, err := link(op.Link)
		if err != nil {
			return err
		}
		delete(idx, op.Link)
		return h.nl.LinkDel(l)
	}

	l, err := link(op.Link)
	if err != nil {
		return err
	}
	switch op.Kind {
	case OpAddAddr, OpDeleteAddr:
		p := op.Prefix
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if op.Kind == OpAddAddr {
			return h.nl.AddrAdd(l, a)
		}
		return h.nl.AddrDel(l, a)
	case OpSetMAC:
		return h.nl.LinkSetHardwareAddr(l, op.MAC)
	case OpSetMTU:
		return h.nl.LinkSetMTU(l, op.MTU)
	case OpSetUp:
		return h.nl.LinkSetUp(l)
	case OpSetMaster:
		m, err := link(op.Master)
		if err != nil {
			return err
		}
		return h.nl.LinkSetMasterByIndex(l, m.Attrs().Index)
	case OpSetNoMaster:
		return h.nl.LinkSetNoMaster(l)
	case OpSetPortFlags:
		if err := h.nl.LinkSetLearning(l, false); err != nil {
			return err
		}
		return h.nl.LinkSetBrNeighSuppress(l, true)
	case OpFDBReplace, OpFDBDelete:
		n := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			State:        netlink.NUD_PERMANENT,
			IP:           net.IP(op.Dst.AsSlice()),
			HardwareAddr: op.MAC,
		}
		if op.Kind == OpFDBReplace {
			return h.nl.NeighSet(n)
		}
		return h.nl.NeighDel(n)
	case OpFDBStaticReplace, OpFDBStaticDelete:
		// NUD_NOARP is "static": NUD_PERMANENT would make it a local entry,
		// delivered to the host instead of forwarded to the port.
		n := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_MASTER,
			State:        netlink.NUD_NOARP,
			HardwareAddr: op.MAC,
		}
		if op.Kind == OpFDBStaticReplace {
			return h.nl.NeighSet(n)
		}
		return h.nl.NeighDel(n)
	case OpNeighReplace, OpNeighDelete:
		n := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			IP:           net.IP(op.IP.AsSlice()),
			HardwareAddr: op.MAC,
		}
		if op.Kind == OpNeighReplace {
			return h.nl.NeighSet(n)
		}
		return h.nl.NeighDel(n)
	}
	return fmt.Errorf("unknown operation kind %d", op.Kind)
}

// createTapLocked creates a persistent tap owned by op.Tap's user and group,
// gives it the MTU and marks it as hostnet's. A tap is created through
// /dev/net/tun, whose ioctl acts on the calling thread's namespace, not on
// the netlink socket's: for another namespace it runs on a thread of its own
// that enters the namespace and is discarded afterwards. h.mu must be held.
func (h *Host) createTapLocked(op Op) error {
	flags := netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR
	if op.Tap.MultiQueue {
		flags |= netlink.TUNTAP_MULTI_QUEUE
	}
	t := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: op.Link},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     flags,
		Owner:     op.Tap.Owner,
		Group:     op.Tap.Group,
	}
	create := func() error { return h.nl.LinkAdd(t) }
	if h.ns.IsOpen() {
		create = func() error { return inNamespace(h.ns, func() error { return h.nl.LinkAdd(t) }) }
	}
	if err := create(); err != nil {
		return err
	}
	l, err := h.nl.LinkByName(op.Link)
	if err != nil {
		return fmt.Errorf("find new tap: %w", err)
	}
	if err := h.nl.LinkSetMTU(l, op.MTU); err != nil {
		return fmt.Errorf("set MTU: %w", err)
	}
	if err := h.nl.LinkSetAlias(l, tapAlias); err != nil {
		return fmt.Errorf("mark as hostnet's: %w", err)
	}
	return nil
}

// inNamespace runs f on a new OS thread that has entered ns. The thread is
// never unlocked, so Go discards it when the goroutine ends instead of
// reusing a thread left in another namespace.
func inNamespace(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// tapInfo is what Plan compares of a tap netlink reports.
func tapInfo(d *netlink.Tuntap) *TapInfo {
	return &TapInfo{
		Tap:        d.Mode == netlink.TUNTAP_MODE_TAP,
		Owner:      d.Owner,
		Group:      d.Group,
		MultiQueue: d.Flags&netlink.TUNTAP_MULTI_QUEUE != 0,
		Persistent: !d.NonPersist,
	}
}
