package hostnet

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// OpKind is what an [Op] does.
type OpKind int

// The operations [Plan] returns and [Host.Apply] carries out. Their String
// forms read like the equivalent ip(8)/bridge(8) commands.
const (
	OpCreateBridge     OpKind = iota + 1 // Link, MTU, MAC (if set)
	OpCreateVXLAN                        // Link, MTU, VXLAN (ID, Port, Local, Dev); learning off
	OpCreateTap                          // Link, MTU, Tap (Owner, Group, MultiQueue); persistent, vnet_hdr, marked as hostnet's
	OpDeleteLink                         // Link
	OpAddAddr                            // Link, Prefix
	OpDeleteAddr                         // Link, Prefix
	OpSetMTU                             // Link, MTU
	OpSetMAC                             // Link, MAC
	OpSetUp                              // Link
	OpSetMaster                          // Link, Master
	OpSetNoMaster                        // Link
	OpSetPortFlags                       // Link: bridge port learning off, neigh_suppress on
	OpFDBReplace                         // Link (VXLAN device), MAC, Dst: the device's own entry
	OpFDBDelete                          // Link (VXLAN device), MAC, Dst
	OpFDBStaticReplace                   // Link (bridge port), MAC: static bridge entry
	OpFDBStaticDelete                    // Link (bridge port), MAC
	OpNeighReplace                       // Link (bridge), IP, MAC: permanent
	OpNeighDelete                        // Link (bridge), IP
)

// Op is one change to the host's network. An Op carries everything Apply
// needs, so a list of them can be logged, tested and applied on its own.
type Op struct {
	Kind   OpKind
	Link   string
	Master string
	MTU    int
	Prefix netip.Prefix
	MAC    net.HardwareAddr
	IP     netip.Addr
	Dst    netip.Addr
	VXLAN  VXLANInfo
	Tap    Tap
}

func (o Op) String() string {
	switch o.Kind {
	case OpCreateBridge:
		s := fmt.Sprintf("link add %s type bridge mtu %d", o.Link, o.MTU)
		if o.MAC != nil {
			s += " address " + o.MAC.String()
		}
		return s
	case OpCreateVXLAN:
		s := fmt.Sprintf("link add %s type vxlan id %d local %s dstport %d nolearning", o.Link, o.VXLAN.ID, o.VXLAN.Local, o.VXLAN.Port)
		if o.VXLAN.Dev != "" {
			s += " dev " + o.VXLAN.Dev
		}
		return s + fmt.Sprintf(" mtu %d", o.MTU)
	case OpCreateTap:
		s := fmt.Sprintf("tuntap add %s mode tap user %d group %d vnet_hdr", o.Link, o.Tap.Owner, o.Tap.Group)
		if o.Tap.MultiQueue {
			s += " multi_queue"
		}
		return s + fmt.Sprintf(" mtu %d", o.MTU)
	case OpDeleteLink:
		return "link del " + o.Link
	case OpAddAddr:
		return fmt.Sprintf("addr add %s dev %s", o.Prefix, o.Link)
	case OpDeleteAddr:
		return fmt.Sprintf("addr del %s dev %s", o.Prefix, o.Link)
	case OpSetMTU:
		return fmt.Sprintf("link set %s mtu %d", o.Link, o.MTU)
	case OpSetMAC:
		return fmt.Sprintf("link set %s address %s", o.Link, o.MAC)
	case OpSetUp:
		return fmt.Sprintf("link set %s up", o.Link)
	case OpSetMaster:
		return fmt.Sprintf("link set %s master %s", o.Link, o.Master)
	case OpSetNoMaster:
		return fmt.Sprintf("link set %s nomaster", o.Link)
	case OpSetPortFlags:
		return fmt.Sprintf("bridge link set dev %s learning off neigh_suppress on", o.Link)
	case OpFDBReplace:
		return fmt.Sprintf("fdb replace %s dev %s dst %s self permanent", o.MAC, o.Link, o.Dst)
	case OpFDBDelete:
		return fmt.Sprintf("fdb del %s dev %s dst %s self", o.MAC, o.Link, o.Dst)
	case OpFDBStaticReplace:
		return fmt.Sprintf("fdb replace %s dev %s master static", o.MAC, o.Link)
	case OpFDBStaticDelete:
		return fmt.Sprintf("fdb del %s dev %s master", o.MAC, o.Link)
	case OpNeighReplace:
		return fmt.Sprintf("neigh replace %s lladdr %s dev %s nud permanent", o.IP, o.MAC, o.Link)
	case OpNeighDelete:
		return fmt.Sprintf("neigh del %s dev %s", o.IP, o.Link)
	}
	return fmt.Sprintf("op(%d) %s", int(o.Kind), o.Link)
}

// ConflictError is Plan's refusal to take over something on the host that
// hostnet does not own (a bridge with another address, a VXLAN id another
// device uses, an address or a route overlapping the overlay). Retrying
// cannot help: a person must act, and the message says how. Nothing was
// changed.
type ConflictError struct {
	Msg string
}

func (e *ConflictError) Error() string { return e.Msg }

func conflictf(format string, args ...any) error {
	return &ConflictError{Msg: fmt.Sprintf(format, args...)}
}

// Plan is the pure core of hostnet: the operations that take the observed
// state have to what cfg and want describe, in the order they must run. It
// reads no clock and does no I/O; applying its result and planning again
// yields no operations.
//
// The steps, in order:
//
//  1. Underlay: the address must be on an interface (UnderlayDev, if set);
//     the MTU defaults to that interface's minus the VXLAN overhead. No other
//     interface may have an address inside the overlay's prefix, and no
//     route may overlap it (see overlappingRoute).
//  2. Bridge: created with the gateway address (after the node's own one,
//     which must be the primary, with the bridge MAC derived from it, when
//     Config.NodeAddr is set) and the MTU, set up. An existing bridge is
//     adopted only if it has no other address.
//  3. VXLAN device: created on the underlay address with learning off,
//     enslaved to the bridge with bridge learning off and neigh_suppress on
//     (the bridge answers ARP for remote instances itself), set up. A device
//     of that name with other settings is replaced; another device with the
//     same VNI and port is a conflict.
//  4. Taps: each wanted tap is attached (created first when
//     cfg.CreateTaps), given the MTU, set up, and a static bridge entry for
//     its guest's MAC. Ports no longer wanted are detached, or deleted when
//     hostnet created them.
//  5. Remote instances: per instance the VXLAN device's own entry "MAC dst
//     NODE" (replaced in place when the instance moved: one operation per
//     node), a static bridge entry sending MAC to the VXLAN port, and a
//     permanent neighbour "IP lladdr MAC" on the bridge.
//  6. Stale entries: the ones hostnet owns that nothing wants any more are
//     deleted (a static entry whose MAC is now wanted on another port is
//     moved by step 4 or 5's replace instead).
func Plan(cfg Config, want Desired, have State) ([]Op, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("hostnet: %w", err)
	}
	if err := want.validate(cfg); err != nil {
		return nil, fmt.Errorf("hostnet: %w", err)
	}
	p := &planner{cfg: cfg, want: want, have: have, vx: cfg.VXLANDevice()}
	if err := p.underlay(); err != nil {
		return nil, err
	}
	if err := p.bridge(); err != nil {
		return nil, err
	}
	if err := p.vxlan(); err != nil {
		return nil, err
	}
	if err := p.taps(); err != nil {
		return nil, err
	}
	p.remotes()
	return p.ops, nil
}

type planner struct {
	cfg  Config
	want Desired
	have State
	vx   string // the VXLAN device's name
	mtu  int

	ops []Op
	// fresh holds links this plan creates (or re-creates): their observed
	// FDB entries and neighbours are gone, so nothing of them is kept or
	// deleted.
	fresh map[string]bool
	// gone holds links this plan detaches or deletes: the kernel drops their
	// static bridge entries with them.
	gone map[string]bool
	// placed maps a guest MAC to the port that carries its static bridge
	// entry after this plan (set by taps).
	placed map[string]string
}

func (p *planner) add(op Op) { p.ops = append(p.ops, op) }

func (p *planner) markFresh(name string) {
	if p.fresh == nil {
		p.fresh = map[string]bool{}
	}
	p.fresh[name] = true
}

func (p *planner) markGone(name string) {
	if p.gone == nil {
		p.gone = map[string]bool{}
	}
	p.gone[name] = true
}

// underlay is step 1.
func (p *planner) underlay() error {
	u := p.cfg.Underlay.Unmap()
	var carrier *Link
	for i := range p.have.Links {
		for _, a := range p.have.Links[i].Addrs {
			if a.Addr().Unmap() == u {
				carrier = &p.have.Links[i]
			}
		}
	}
	if dev := p.cfg.UnderlayDev; dev != "" {
		if p.have.link(dev) == nil {
			return conflictf("underlay device %s does not exist: check --underlay-dev", dev)
		}
		if carrier == nil || carrier.Name != dev {
			return conflictf("underlay address %s is not on %s: pass the address %s has, or another --underlay-dev", u, dev, dev)
		}
	}
	if carrier == nil {
		return conflictf("underlay address %s is not assigned to any interface on this host: pass this node's own address on the network between the nodes", u)
	}
	p.mtu = p.cfg.MTU
	if p.mtu == 0 {
		p.mtu = carrier.MTU - p.cfg.overhead()
	}
	overlay := p.cfg.Gateway.Masked()
	for _, l := range p.have.Links {
		if l.Name == p.cfg.Bridge {
			continue
		}
		for _, a := range l.Addrs {
			if a.Addr().Is4() && a.Overlaps(overlay) {
				return conflictf("address %s on %s overlaps the overlay network %s: pick another network.cidr", a, l.Name, overlay)
			}
		}
	}
	if r, ok := p.overlappingRoute(overlay); ok {
		return conflictf("route %s overlaps the overlay network %s: pick another network.cidr, or remove the route", r, overlay)
	}
	return nil
}

// overlappingRoute finds a route that would take traffic for overlay
// addresses away from the bridge, or that the bridge's connected route
// would take traffic from: a VPN's or a tailnet's route to the same range,
// a supernet such as 10.0.0.0/8 through another interface, a blackhole.
//
// Every table a policy rule looks up counts, not only main: Tailscale puts
// the tailnet's subnet routes in table 52, whose rule comes before main's,
// so such a route wins over the bridge's connected route in main. Rule
// selectors (from, fwmark, …) are not modelled: a route counts when any
// rule looks its table up, so a route used only for some sources is
// refused too — a person can tell, hostnet cannot. A table no rule looks
// up routes nothing and is ignored.
//
// Not conflicts:
//   - default routes (0.0.0.0/0): in main the bridge's more specific
//     route wins; in a policy table (a full-tunnel VPN, an exit node) the
//     tool that made it decides what stays local (wg-quick's "lookup main
//     suppress_prefixlength 0" rule keeps main's specific routes first).
//     Refusing every host with a full tunnel would be wrong more often
//     than right;
//   - throw routes: they send the lookup on to the next rule;
//   - routes through the bridge to addresses inside the overlay: the
//     kernel's own connected route of the bridge's subnet and the local
//     and broadcast routes of its addresses.
//
// Addresses of other interfaces inside the overlay are refused before this
// (with their interface named); their local routes would be found here
// too.
func (p *planner) overlappingRoute(overlay netip.Prefix) (Route, bool) {
	looked := map[int]bool{tableMain: true}
	for _, t := range p.have.RuleTables {
		looked[t] = true
	}
	for _, r := range p.have.Routes {
		switch {
		case !looked[r.table()]:
		case !r.Dst.Addr().Is4() || !r.Dst.Overlaps(overlay):
		case r.Dst.Bits() == 0:
		case r.Type == "throw":
		case r.Dev == p.cfg.Bridge && r.Dst.Bits() >= overlay.Bits():
		default:
			return r, true
		}
	}
	return Route{}, false
}

// bridge is step 2.
func (p *planner) bridge() error {
	name := p.cfg.Bridge
	// The first address of a subnet is its primary one, the kernel's source
	// for traffic into the overlay: the node's own address when it has one.
	addrs := []netip.Prefix{p.cfg.Gateway}
	var mac net.HardwareAddr
	if p.cfg.NodeAddr.IsValid() {
		addrs = []netip.Prefix{netip.PrefixFrom(p.cfg.NodeAddr, p.cfg.Gateway.Bits()), p.cfg.Gateway}
		mac = BridgeMAC(p.cfg.NodeAddr)
	}
	br := p.have.link(name)
	if br == nil {
		p.add(Op{Kind: OpCreateBridge, Link: name, MTU: p.mtu, MAC: mac})
		for _, a := range addrs {
			p.add(Op{Kind: OpAddAddr, Link: name, Prefix: a})
		}
		p.add(Op{Kind: OpSetUp, Link: name})
		p.markFresh(name)
		return nil
	}
	if br.Kind != "bridge" {
		return conflictf("link %s exists and is a %s, not a bridge: pick --bridge or remove it", name, br.Kind)
	}
	var other []string
	var have []netip.Prefix // the wanted addresses present, in the kernel's order
	for _, a := range br.Addrs {
		switch {
		case slices.Contains(addrs, a):
			have = append(have, a)
		case a.Addr().Is6() && a.Addr().IsLinkLocalUnicast():
			// The kernel's own IPv6 link-local address: harmless.
		default:
			other = append(other, a.String())
		}
	}
	if len(other) > 0 {
		return conflictf("bridge %s exists with address %s, not %s: pick --bridge or remove it", name, strings.Join(other, ", "), p.cfg.Gateway)
	}
	if !slices.Equal(have, addrs[:len(have)]) {
		// Wrong primary (the node address came later): remove and add in
		// order, secondaries first (removing a primary removes them).
		for i := len(have) - 1; i >= 0; i-- {
			p.add(Op{Kind: OpDeleteAddr, Link: name, Prefix: have[i]})
		}
		have = nil
	}
	for _, a := range addrs[len(have):] {
		p.add(Op{Kind: OpAddAddr, Link: name, Prefix: a})
	}
	if mac != nil && !sameMAC(br.MAC, mac) {
		p.add(Op{Kind: OpSetMAC, Link: name, MAC: mac})
	}
	if br.MTU != p.mtu {
		p.add(Op{Kind: OpSetMTU, Link: name, MTU: p.mtu})
	}
	if !br.Up {
		p.add(Op{Kind: OpSetUp, Link: name})
	}
	return nil
}

// vxlan is step 3.
func (p *planner) vxlan() error {
	wantInfo := VXLANInfo{ID: p.cfg.VXLANID, Port: p.cfg.VXLANPort, Local: p.cfg.Underlay.Unmap(), Dev: p.cfg.UnderlayDev}
	for _, l := range p.have.Links {
		if l.Name != p.vx && l.VXLAN != nil && l.VXLAN.ID == wantInfo.ID && l.VXLAN.Port == wantInfo.Port {
			return conflictf("vxlan id %d (port %d) is in use by device %s: pick another --vxlan-id", wantInfo.ID, wantInfo.Port, l.Name)
		}
	}
	l := p.have.link(p.vx)
	if l != nil && l.Kind != "vxlan" {
		return conflictf("link %s exists and is a %s, not hostnet's VXLAN device: remove it or pick another --vxlan-id", p.vx, l.Kind)
	}
	if l != nil && l.VXLAN != nil {
		got := *l.VXLAN
		got.Local = got.Local.Unmap()
		if got != wantInfo {
			// Settings of a VXLAN device cannot be changed in place; the
			// device is hostnet's (its name carries the VNI), so replace it.
			p.add(Op{Kind: OpDeleteLink, Link: p.vx})
			l = nil
		}
	}
	if l == nil {
		p.add(Op{Kind: OpCreateVXLAN, Link: p.vx, MTU: p.mtu, VXLAN: wantInfo})
		p.add(Op{Kind: OpSetMaster, Link: p.vx, Master: p.cfg.Bridge})
		p.add(Op{Kind: OpSetPortFlags, Link: p.vx})
		p.add(Op{Kind: OpSetUp, Link: p.vx})
		p.markFresh(p.vx)
		return nil
	}
	if l.MTU != p.mtu {
		p.add(Op{Kind: OpSetMTU, Link: p.vx, MTU: p.mtu})
	}
	enslave := l.Master != p.cfg.Bridge
	if enslave {
		p.add(Op{Kind: OpSetMaster, Link: p.vx, Master: p.cfg.Bridge})
	}
	// Enslaving resets the port flags to the bridge's defaults.
	if enslave || l.Port == nil || l.Port.Learning || !l.Port.NeighSuppress {
		p.add(Op{Kind: OpSetPortFlags, Link: p.vx})
	}
	if !l.Up {
		p.add(Op{Kind: OpSetUp, Link: p.vx})
	}
	return nil
}

// taps is step 4.
func (p *planner) taps() error {
	wanted := map[string]bool{}
	// owner maps a guest MAC to the port that will carry its static entry
	// after this plan: a stale entry for it elsewhere is moved by that
	// port's replace, not deleted.
	owner := map[string]string{}
	taps := slices.Clone(p.want.LocalTaps)
	slices.SortFunc(taps, func(a, b Tap) int { return cmp.Compare(a.Name, b.Name) })
	for _, t := range taps {
		wanted[t.Name] = true
		if p.cfg.CreateTaps || p.have.link(t.Name) != nil {
			owner[string(t.MAC)] = t.Name
		}
	}
	for _, r := range p.want.Remote {
		owner[string(r.MAC)] = p.vx
	}
	p.placed = owner
	static := p.staticByPort()

	for _, t := range taps {
		l := p.have.link(t.Name)
		if l != nil && p.cfg.CreateTaps && l.Alias == tapAlias && (l.Tap == nil || !tapMatches(*l.Tap, t)) {
			p.add(Op{Kind: OpDeleteLink, Link: t.Name})
			l = nil
		}
		if l == nil {
			if !p.cfg.CreateTaps {
				// microvm-tap-interfaces@ has not created it yet: the next
				// Sync attaches it.
				continue
			}
			p.ops = append(p.ops, newTapOps(p.cfg.Bridge, p.mtu, t)...)
			p.markFresh(t.Name)
			continue
		}
		if l.Kind != "tuntap" && l.Kind != "veth" || hasAddress(*l) {
			// Never enslave the uplink or another device by a wrong name.
			return conflictf("link %s is a %s with addresses %v, not a VM's tap: check the instance's tap name", t.Name, l.Kind, l.Addrs)
		}
		if l.Master != "" && l.Master != p.cfg.Bridge {
			return conflictf("tap %s is a port of bridge %s, not %s: remove it from %s in the host's network configuration", t.Name, l.Master, p.cfg.Bridge, l.Master)
		}
		if l.MTU != p.mtu {
			p.add(Op{Kind: OpSetMTU, Link: t.Name, MTU: p.mtu})
		}
		if l.Master != p.cfg.Bridge {
			p.add(Op{Kind: OpSetMaster, Link: t.Name, Master: p.cfg.Bridge})
		}
		if !l.Up {
			p.add(Op{Kind: OpSetUp, Link: t.Name})
		}
		macs := static[t.Name]
		if l.Master != p.cfg.Bridge || !macs.has[string(t.MAC)] {
			p.add(Op{Kind: OpFDBStaticReplace, Link: t.Name, MAC: t.MAC})
		}
		if l.Master == p.cfg.Bridge {
			for _, m := range macs.list {
				if !sameMAC(m, t.MAC) && owner[string(m)] == "" {
					p.add(Op{Kind: OpFDBStaticDelete, Link: t.Name, MAC: m})
				}
			}
		}
	}

	links := slices.Clone(p.have.Links)
	slices.SortFunc(links, func(a, b Link) int { return cmp.Compare(a.Name, b.Name) })
	for _, l := range links {
		if wanted[l.Name] || l.Name == p.vx || l.Name == p.cfg.Bridge {
			continue
		}
		switch {
		case l.Alias == tapAlias && l.Kind == "tuntap":
			p.add(Op{Kind: OpDeleteLink, Link: l.Name})
			p.markGone(l.Name)
		case l.Master == p.cfg.Bridge:
			p.add(Op{Kind: OpSetNoMaster, Link: l.Name})
			p.markGone(l.Name)
		}
	}
	return nil
}

// newTapOps creates tap t, attaches it to bridge and sends its guest's MAC
// there: what a tap that does not exist needs, in Plan and in
// [Host.AddMissingTaps].
func newTapOps(bridge string, mtu int, t Tap) []Op {
	return []Op{
		{Kind: OpCreateTap, Link: t.Name, MTU: mtu, Tap: t},
		{Kind: OpSetMaster, Link: t.Name, Master: bridge},
		{Kind: OpSetUp, Link: t.Name},
		{Kind: OpFDBStaticReplace, Link: t.Name, MAC: t.MAC},
	}
}

// remotes is steps 5 and 6.
func (p *planner) remotes() {
	remotes := slices.Clone(p.want.Remote)
	slices.SortFunc(remotes, func(a, b Remote) int { return a.IP.Compare(b.IP) })

	self := map[string][]netip.Addr{} // MAC → the VXLAN device's remotes for it
	var selfMACs []net.HardwareAddr
	neigh := map[netip.Addr]net.HardwareAddr{}
	if !p.fresh[p.vx] {
		for _, e := range p.have.FDB {
			if e.Dev == p.vx && !e.Master {
				k := string(e.MAC)
				if _, ok := self[k]; !ok {
					selfMACs = append(selfMACs, e.MAC)
				}
				self[k] = append(self[k], e.Dst.Unmap())
			}
		}
	}
	static := p.staticByPort()
	if !p.fresh[p.cfg.Bridge] {
		for _, n := range p.have.Neighbours {
			if n.Dev == p.cfg.Bridge {
				neigh[n.IP.Unmap()] = n.MAC
			}
		}
	}

	wantMAC := map[string]bool{}
	wantIP := map[netip.Addr]bool{}
	for _, r := range remotes {
		k := string(r.MAC)
		wantMAC[k] = true
		wantIP[r.IP] = true
		node := r.Node.Unmap()
		dsts := self[k]
		if !(len(dsts) == 1 && dsts[0] == node) {
			keep := false
			if len(dsts) > 1 {
				// Only hostnet writes this table and it never appends, so
				// several remotes for one MAC are someone else's edits: keep
				// the right one, drop the rest.
				for _, d := range dsts {
					if d == node {
						keep = true
					} else {
						p.add(Op{Kind: OpFDBDelete, Link: p.vx, MAC: r.MAC, Dst: d})
					}
				}
			}
			if !keep {
				// One replace repoints a moved instance atomically.
				p.add(Op{Kind: OpFDBReplace, Link: p.vx, MAC: r.MAC, Dst: node})
			}
		}
		if !static[p.vx].has[k] {
			p.add(Op{Kind: OpFDBStaticReplace, Link: p.vx, MAC: r.MAC})
		}
		if m, ok := neigh[r.IP]; !ok || !sameMAC(m, r.MAC) {
			p.add(Op{Kind: OpNeighReplace, Link: p.cfg.Bridge, IP: r.IP, MAC: r.MAC})
		}
	}

	slices.SortFunc(selfMACs, func(a, b net.HardwareAddr) int { return slices.Compare(a, b) })
	for _, m := range selfMACs {
		if wantMAC[string(m)] {
			continue
		}
		dsts := slices.Clone(self[string(m)])
		slices.SortFunc(dsts, netip.Addr.Compare)
		for _, d := range dsts {
			p.add(Op{Kind: OpFDBDelete, Link: p.vx, MAC: m, Dst: d})
		}
	}
	for _, m := range static[p.vx].list {
		// A MAC now wanted on a tap was moved there by the tap's replace.
		if !wantMAC[string(m)] && p.placed[string(m)] == "" {
			p.add(Op{Kind: OpFDBStaticDelete, Link: p.vx, MAC: m})
		}
	}
	var stale []netip.Addr
	for ip := range neigh {
		if !wantIP[ip] && p.cfg.Gateway.Masked().Contains(ip) {
			stale = append(stale, ip)
		}
	}
	slices.SortFunc(stale, netip.Addr.Compare)
	for _, ip := range stale {
		p.add(Op{Kind: OpNeighDelete, Link: p.cfg.Bridge, IP: ip})
	}
}

// macSet is a port's static bridge entries: sorted, and indexed by MAC.
type macSet struct {
	list []net.HardwareAddr
	has  map[string]bool
}

// staticByPort returns the static bridge entries of every port that this
// plan neither creates nor removes.
func (p *planner) staticByPort() map[string]macSet {
	out := map[string]macSet{}
	for _, e := range p.have.FDB {
		if e.Master && !p.fresh[e.Dev] && !p.gone[e.Dev] {
			set := out[e.Dev]
			if set.has == nil {
				set.has = map[string]bool{}
			}
			set.list = append(set.list, e.MAC)
			set.has[string(e.MAC)] = true
			out[e.Dev] = set
		}
	}
	for _, set := range out {
		slices.SortFunc(set.list, func(a, b net.HardwareAddr) int { return slices.Compare(a, b) })
	}
	return out
}

// hasAddress reports whether l has an address other than an IPv6
// link-local one (which the kernel gives every interface).
func hasAddress(l Link) bool {
	for _, a := range l.Addrs {
		if !(a.Addr().Is6() && a.Addr().IsLinkLocalUnicast()) {
			return true
		}
	}
	return false
}

func tapMatches(have TapInfo, want Tap) bool {
	return have.Tap && have.Persistent && have.Owner == want.Owner && have.Group == want.Group && have.MultiQueue == want.MultiQueue
}

func sameMAC(a, b net.HardwareAddr) bool { return slices.Equal(a, b) }
