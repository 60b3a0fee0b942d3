package node

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/blixard/blixard/hostnet"
	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/netdns"
	"github.com/blixard/blixard/replicated"
)

// netSettings are this node's fixed network settings (Config.Network with
// its defaults, and what follows from the rest of Config).
type netSettings struct {
	self      uint64
	bridge    string
	vxlanID   uint32
	vxlanPort int
	underlay  netip.Addr
	// createTaps: the process backend, where nobody else creates taps.
	createTaps bool
	// restorePool is the node's --restore-pool: a snapshot function keeps
	// spare taps for up to that many of its next instances (its
	// restoreAhead), one for each guest the pool may restore ahead.
	restorePool int
}

// netInputs are what the shell observed for one pass, besides the state.
type netInputs struct {
	// underlays are the other nodes' underlay addresses by node id (the
	// host of their Raft address); a node missing here is unreachable
	// over the overlay until its address is known.
	underlays map[uint64]netip.Addr
	// multiQueue lists the local instances whose runner wants a tap with
	// multi_queue (microvm.nix's share/microvm/tap-flags).
	multiQueue map[string]bool
	// multiQueueRunners lists the function runners (out paths) that want
	// one: a spare tap (rule 6) is made as the instance's will be.
	multiQueueRunners map[string]bool
	// owner and group own the taps hostnet creates: the owner of the
	// state directory, whom the runners run as.
	owner, group uint32
	// upstreams are the host's resolvers, for names outside the cluster.
	upstreams []netip.AddrPort
}

// netPlan is everything one pass makes the host carry.
type netPlan struct {
	host hostnet.Config
	want hostnet.Desired
	dns  netdns.Desired
	// env are the identities of the local instances, for
	// STATE/NAME/network.env, by instance name.
	env map[string]instanceEnv
	// skipped says, one sentence each, what was left out and why.
	skipped []string
	// spares are the instances whose taps are made ahead (rule 6), by tap
	// name.
	spares map[string]string
}

// maxSpareTaps bounds the taps a node makes ahead (rule 6 of
// planNetwork): one per function it may run, in name order, up to this
// many, so a cluster of many functions does not fill the bridge with
// ports nobody uses.
const maxSpareTaps = 64

// planNetwork is the pure part of the node's network component: what this
// node's overlay, DHCP and DNS must carry for state s. ok is false while the
// state has no network yet (before the first plan commits).
//
// The rules:
//
//  1. An instance is local when it is assigned to this node, or when it
//     still runs here (starting, running or stopping) while it moves away:
//     its tap stays on the bridge until the old copy stopped. Local
//     instances get a tap, a DHCP lease and a network.env.
//  2. Every other assigned instance is remote, at the node that runs it:
//     the node it is observed on while an old copy still runs there (and
//     that node is not down), else the node it is assigned to. So during a
//     move every node keeps sending its traffic to the copy that runs, and
//     repoints once the new node runs it.
//  3. Every other node with an overlay address (Network.NodeAddrs) is a
//     remote too (hostnet.NodeRemote), so this host reaches instances on
//     that node and back from its own overlay address (ingress, probes).
//  4. DNS answers for the running instances of the cluster, as ingress
//     routes to them (ingress.RunningInstances): one rule for both.
//  5. Entries that would make hostnet refuse the whole table (a node with
//     this node's own underlay address, an address outside the network, a
//     node whose underlay address is unknown) are left out and listed in
//     skipped: one broken entry never cuts the rest of the cluster off.
//  6. Taps ahead: where this node makes the taps (the process backend),
//     every function it may run (replicated.FunctionMayRun) below its
//     maxInstances keeps a spare tap for its next instance, the lowest
//     numbered one assigned nowhere, named and with the MAC that instance
//     gets (its identity when it has one, else replicated.DeriveTap and
//     DeriveMAC at the first attempt, which AllocateNetwork gives unless
//     another instance holds them: then there is no spare). When the
//     instance is placed here its tap is on the bridge already and the
//     start's fast lane only writes its identity: creating a tap and making
//     it a bridge port is the netlink work a cold start would otherwise
//     wait for. Placed elsewhere, the spare goes and the next instance's
//     comes. No lease and no DNS name: nothing runs behind a spare. A
//     snapshot function keeps spares for its next restoreAhead instances
//     (at most the node's restore pool), on which the pool restores its
//     guests ahead: every function's next instance comes first, then the
//     second next ones, and so on, each round by function name, up to
//     maxSpareTaps.
func planNetwork(s *replicated.State, set netSettings, in netInputs) (netPlan, bool) {
	if s == nil || s.Network == nil || !s.Network.CIDR.IsValid() || !s.Network.Gateway.IsValid() {
		return netPlan{}, false
	}
	nw := s.Network
	p := netPlan{env: map[string]instanceEnv{}}
	skip := func(format string, args ...any) { p.skipped = append(p.skipped, fmt.Sprintf(format, args...)) }
	p.host = hostnet.Config{
		Bridge: set.bridge, Gateway: netip.PrefixFrom(nw.Gateway, nw.CIDR.Bits()), VXLANID: set.vxlanID,
		VXLANPort: set.vxlanPort, Underlay: set.underlay, CreateTaps: set.createTaps,
	}
	if a, ok := nw.NodeAddrs[set.self]; ok && usableOverlayAddr(nw, a) {
		p.host.NodeAddr = a
	}
	domain := netdns.Domain("")
	if s.Desired != nil {
		domain = netdns.Domain(s.Desired.Name)
	}
	p.dns.Network = netdns.Network{Bridge: set.bridge, Domain: domain, CIDR: nw.CIDR, Gateway: nw.Gateway, Upstreams: in.upstreams}

	// taken guards hostnet's rule that an address or MAC is listed once.
	takenIP := map[netip.Addr]string{nw.Gateway: "the gateway"}
	if p.host.NodeAddr.IsValid() {
		takenIP[p.host.NodeAddr] = "this node"
	}
	remoteAt := func(who string, node uint64) (netip.Addr, bool) {
		u, ok := in.underlays[node]
		switch {
		case !ok || !u.IsValid():
			skip("%s: node %d's underlay address is unknown (the host of its Raft address must be an IP address or resolve to one)", who, node)
			return netip.Addr{}, false
		case u.Unmap().Is4() != set.underlay.Unmap().Is4():
			skip("%s: node %d's underlay address %s is not of this node's family (%s)", who, node, u, set.underlay)
			return netip.Addr{}, false
		case u.Unmap() == set.underlay.Unmap():
			skip("%s: node %d has this node's underlay address %s: give every node its own (--underlay-addr, the host of --raft-addr)", who, node, u)
			return netip.Addr{}, false
		}
		return u, true
	}

	for _, name := range slices.Sorted(maps.Keys(s.Assignments)) {
		a := s.Assignments[name]
		id, ok := nw.Identities[name]
		if !ok || !id.Address.IsValid() {
			skip("instance %s has no network identity", name)
			continue
		}
		who := "instance " + name
		if !usableOverlayAddr(nw, id.Address) {
			skip("%s: address %s is not a host address of %s", who, id.Address, nw.CIDR)
			continue
		}
		if prev, dup := takenIP[id.Address]; dup {
			skip("%s: address %s is %s's too", who, id.Address, prev)
			continue
		}
		takenIP[id.Address] = who
		at := runsAt(s, name, a)
		if a.Node == set.self || at == set.self {
			p.want.LocalTaps = append(p.want.LocalTaps, hostnet.Tap{Name: id.Tap, MAC: id.MAC.HardwareAddr(),
				Owner: in.owner, Group: in.group, MultiQueue: in.multiQueue[name]})
			p.dns.Local = append(p.dns.Local, dnsInstance(name, a.Declared, id))
			p.env[name] = instanceEnv{tap: id.Tap, mac: id.MAC.String(), ip: id.Address, gateway: nw.Gateway,
				prefix: nw.CIDR.Bits(), hostname: id.Hostname, domain: domain}
			continue
		}
		u, ok := remoteAt(who, at)
		if !ok {
			continue
		}
		p.want.Remote = append(p.want.Remote, hostnet.Remote{MAC: id.MAC.HardwareAddr(), IP: id.Address, Node: u})
	}

	for _, node := range slices.Sorted(maps.Keys(nw.NodeAddrs)) {
		addr := nw.NodeAddrs[node]
		if node == set.self {
			continue
		}
		who := fmt.Sprintf("node %d's overlay address %s", node, addr)
		if !usableOverlayAddr(nw, addr) {
			skip("%s is not a host address of %s", who, nw.CIDR)
			continue
		}
		if prev, dup := takenIP[addr]; dup {
			skip("%s is %s's too", who, prev)
			continue
		}
		u, ok := remoteAt(who, node)
		if !ok {
			continue
		}
		takenIP[addr] = who
		p.want.Remote = append(p.want.Remote, hostnet.NodeRemote(addr, u))
	}

	if set.createTaps {
		p.spares = spareTaps(s, set, &p.want, in)
	}

	running := ingress.RunningInstances(s)
	for _, vm := range slices.Sorted(maps.Keys(running)) {
		for _, inst := range running[vm] {
			if id, ok := nw.Identities[inst.Name]; ok {
				p.dns.Running = append(p.dns.Running, dnsInstance(inst.Name, vm, id))
			}
		}
	}
	return p, true
}

// spareTaps is rule 6 of planNetwork: it adds the spare taps to want and
// returns their instances by tap name.
func spareTaps(s *replicated.State, set netSettings, want *hostnet.Desired, in netInputs) map[string]string {
	node := s.Nodes[set.self]
	if s.Desired == nil || len(s.Desired.Functions) == 0 || node == nil {
		return nil
	}
	// A spare's name and MAC must be nobody else's: hostnet refuses a
	// table that lists one twice.
	takenTap, takenMAC := map[string]bool{}, map[string]bool{}
	for _, id := range s.Network.Identities {
		takenTap[id.Tap], takenMAC[id.MAC.String()] = true, true
	}
	for _, t := range want.LocalTaps {
		takenTap[t.Name], takenMAC[t.MAC.String()] = true, true
	}
	for _, r := range want.Remote {
		takenMAC[r.MAC.String()] = true
	}
	// Each function's next instances, lowest first: those assigned nowhere,
	// as many as it keeps spares for.
	next := map[string][]string{}
	deepest := 0
	for fn, f := range s.Desired.Functions {
		if !replicated.FunctionMayRun(f, node) {
			continue
		}
		depth := 1
		if f.Snapshot {
			depth = max(1, min(f.RestoreAhead, set.restorePool))
		}
		for i := 0; i < f.MaxInstances && len(next[fn]) < depth; i++ {
			if _, assigned := s.Assignments[replicated.FunctionInstance(fn, i)]; !assigned {
				next[fn] = append(next[fn], replicated.FunctionInstance(fn, i))
			}
		}
		deepest = max(deepest, len(next[fn]))
	}
	names := slices.Sorted(maps.Keys(next))
	spares := map[string]string{}
	for d := range deepest {
		for _, fn := range names {
			if len(spares) == maxSpareTaps {
				return spares
			}
			if d >= len(next[fn]) {
				continue
			}
			inst := next[fn][d]
			tap, mac := replicated.DeriveTap(s.Desired.Name, inst, 0), replicated.DeriveMAC(s.Desired.Name, inst, 0)
			if id, ok := s.Network.Identities[inst]; ok {
				tap, mac = id.Tap, id.MAC
				delete(takenTap, tap) // its own
				delete(takenMAC, mac.String())
			}
			if takenTap[tap] || takenMAC[mac.String()] {
				continue
			}
			takenTap[tap], takenMAC[mac.String()] = true, true
			want.LocalTaps = append(want.LocalTaps, hostnet.Tap{Name: tap, MAC: mac.HardwareAddr(), Owner: in.owner, Group: in.group,
				MultiQueue: in.multiQueueRunners[s.Desired.Functions[fn].Runner.Out]})
			spares[tap] = inst
		}
	}
	return spares
}

// runsAt is the node whose copy of instance name traffic must reach: the
// node it is observed on while a copy still runs there during a move (the
// new node starts its copy only once that one stopped), else the node it
// is assigned to.
func runsAt(s *replicated.State, name string, a replicated.Assignment) uint64 {
	st, ok := s.Observed[name]
	if !ok || st.Node == a.Node || st.Node == 0 {
		return a.Node
	}
	switch st.Phase {
	case replicated.PhaseStarting, replicated.PhaseRunning, replicated.PhaseStopping:
	default:
		return a.Node
	}
	if n := s.Nodes[st.Node]; n == nil || n.State == replicated.NodeDown {
		return a.Node // a node marked down has been fenced: its copy is gone
	}
	return st.Node
}

// usableOverlayAddr: a an IPv4 host address of the network other than the
// gateway (hostnet refuses anything else).
func usableOverlayAddr(nw *replicated.Network, a netip.Addr) bool {
	if !a.Is4() || !nw.CIDR.Contains(a) || a == nw.Gateway || a == nw.CIDR.Masked().Addr() {
		return false
	}
	bcast := nw.CIDR.Masked().Addr().As4()
	host := 32 - nw.CIDR.Bits()
	v := uint32(bcast[0])<<24 | uint32(bcast[1])<<16 | uint32(bcast[2])<<8 | uint32(bcast[3])
	v |= uint32(uint64(1)<<host - 1)
	return a != netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func dnsInstance(name, declared string, id replicated.Identity) netdns.Instance {
	return netdns.Instance{Name: name, VM: declared, Address: id.Address, MAC: id.MAC.HardwareAddr(), Hostname: id.Hostname}
}

// instanceEnv is the identity a plain runner reads from
// STATE/NAME/network.env (see docs/architecture.md, Networking).
type instanceEnv struct {
	tap, mac         string
	ip, gateway      netip.Addr
	prefix           int
	hostname, domain string
}

// NetworkEnvFile is the file in STATE/NAME that gives a plain runner (one
// that is not microvm.nix's) its instance's network identity, as KEY=VALUE
// lines a shell can source and systemd's EnvironmentFile= reads.
const NetworkEnvFile = "network.env"

// render is the file's contents; mtu is left out while unknown (0). Every
// value is a tap name, an address, a number or a DNS name, so none needs
// quoting.
func (e instanceEnv) render(mtu int) []byte {
	var b strings.Builder
	line := func(k, v string) { b.WriteString("BLIXARD_" + k + "=" + v + "\n") }
	b.WriteString("# Written by blixard: this instance's network identity. Do not edit.\n")
	line("TAP", e.tap)
	line("MAC", e.mac)
	line("IP", e.ip.String())
	line("PREFIX", strconv.Itoa(e.prefix))
	line("GATEWAY", e.gateway.String())
	line("DNS", e.gateway.String())
	line("HOSTNAME", e.hostname)
	line("DOMAIN", e.domain)
	if mtu > 0 {
		line("MTU", strconv.Itoa(mtu))
	}
	return []byte(b.String())
}
