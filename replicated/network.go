package replicated

// Network identities. Every desired instance gets an IPv4 address from the
// cluster's network (spec network.cidr), a MAC address, a tap interface name
// and a hostname, and keeps them for as long as it is declared: across
// moves, restarts and new revisions. They are allocated by AllocateNetwork,
// which runs inside Apply of the CommitPlan (so every replica computes the
// same, and two instances never hold one address) and, with the same
// inputs, in the planner (so a preview shows them, and an instance the
// network has no address for is planned unschedulable instead of placed).
//
// They are replicated state rather than pure functions of the instance
// name because collisions must be resolved against what is already
// handed out: a MAC or tap name, once given, never changes when another
// instance that hashes alike is declared later. A flake may declare an
// instance's MAC, tap and hostname (spec.InstanceEntry: lib.mkCluster bakes
// them into the instance's own runner); those are used as they are.
//
// Every registered node gets an address in the same network too
// (Network.NodeAddrs): its bridge's own address, from which the host
// reaches instances on other nodes. Nodes take the highest free addresses,
// instances the lowest.

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/blixard/blixard/spec"
)

// MaxTapName is the longest Linux interface name: IFNAMSIZ (16) less the
// terminating NUL.
const MaxTapName = spec.MaxTapName

// TapPrefix starts every tap interface name DeriveTap makes, so an
// operator tells Blixard's taps from others at a glance.
const TapPrefix = "bx"

// MAC is an Ethernet address; it encodes as text, "02:1a:2b:3c:4d:5e".
type MAC [6]byte

// String is the colon-separated lower-case hex form.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// HardwareAddr is m as the standard library (and netlink) takes it.
func (m MAC) HardwareAddr() net.HardwareAddr { return slices.Clone(m[:]) }

// LocalUnicast reports whether m is a locally administered (bit 1 of the
// first octet set) unicast (bit 0 clear) address: one no vendor assigns,
// so it cannot clash with a physical NIC.
func (m MAC) LocalUnicast() bool { return m[0]&0x03 == 0x02 }

// MarshalText encodes m as String does.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses a six-octet address in any form net.ParseMAC reads.
func (m *MAC) UnmarshalText(text []byte) error {
	hw, err := net.ParseMAC(string(text))
	if err != nil {
		return fmt.Errorf("MAC address %q: %w", text, err)
	}
	if len(hw) != len(m) {
		return fmt.Errorf("MAC address %q has %d octets, want %d", text, len(hw), len(m))
	}
	copy(m[:], hw)
	return nil
}

// Identity is one instance's place on the cluster network.
type Identity struct {
	// Address is the instance's IPv4 address in Network.CIDR: never its
	// network, gateway or broadcast address, never another instance's.
	Address netip.Addr `json:"address"`
	// MAC is the guest NIC's address (locally administered unicast),
	// unique in the cluster; DHCP leases and VXLAN forwarding key on it.
	MAC MAC `json:"mac"`
	// Tap is the host-side tap interface name: at most MaxTapName
	// characters, unique in the cluster, so any instance may run on any
	// node next to any other.
	Tap string `json:"tap"`
	// Hostname is the instance name when it is a DNS label (it is unless
	// the name ends with '-'), else one derived from it; unique.
	Hostname string `json:"hostname"`
}

// Network is the committed cluster network.
type Network struct {
	// CIDR is the revision's network.cidr (spec.Cluster.NetworkCIDR).
	CIDR netip.Prefix `json:"cidr"`
	// Gateway is CIDR's first host address: every node's bridge has it.
	Gateway netip.Addr `json:"gateway"`
	// Identities are by instance name: every desired instance (assigned or
	// unschedulable) that has an address. An instance the network had no
	// free address for, or whose declared identity is another's, has none,
	// and is unschedulable.
	Identities map[string]Identity `json:"identities,omitempty"`
	// NodeAddrs are the registered nodes' own addresses in CIDR, by node
	// id: the address a node's bridge carries besides the gateway, from
	// which the host itself (an ingress proxy, a health probe) reaches
	// instances on other nodes (hostnet's Config.NodeAddr). They are
	// handed out from the top of CIDR downwards, never an instance's
	// address; a node has none only while every address is taken.
	NodeAddrs map[uint64]netip.Addr `json:"nodeAddrs,omitempty"`
	// Retiring are the addresses of instances that plans removed and that
	// their nodes may still run (assigned when the plan removed them, or
	// reported starting, running or stopping since; see RetiringAddrs), by
	// instance: no other instance gets one of them (a guest still answering
	// there would take its traffic and pass its health checks) until a
	// plan finds its instance stopped.
	Retiring map[string]netip.Addr `json:"retiring,omitempty"`
}

func (n *Network) clone() *Network {
	if n == nil {
		return nil
	}
	c := *n
	c.Identities = maps.Clone(n.Identities)
	c.NodeAddrs = maps.Clone(n.NodeAddrs)
	c.Retiring = maps.Clone(n.Retiring)
	return &c
}

// NodeAddr returns node id's own overlay address, if it has one.
func (s *State) NodeAddr(id uint64) (netip.Addr, bool) {
	if s.Network == nil {
		return netip.Addr{}, false
	}
	a, ok := s.Network.NodeAddrs[id]
	return a, ok
}

// Identity returns instance vm's network identity, if it has one.
func (s *State) Identity(vm string) (Identity, bool) {
	if s.Network == nil {
		return Identity{}, false
	}
	id, ok := s.Network.Identities[vm]
	return id, ok
}

// ipv4Range returns the numeric range of p's instance addresses: from
// the address after the gateway to the one before broadcast. ok is false
// when p has none (not IPv4, or /31 and longer).
func ipv4Range(p netip.Prefix) (first, last uint32, ok bool) {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 {
		return 0, 0, false
	}
	b := p.Masked().Addr().As4()
	base := binary.BigEndian.Uint32(b[:])
	size := uint64(1) << (32 - p.Bits())
	return base + 2, uint32(uint64(base) + size - 2), true
}

func ipv4(a netip.Addr) (uint32, bool) {
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:]), true
}

func fromIPv4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// Gateway is the first host address of IPv4 network p (10.100.0.1 for
// 10.100.0.0/16): the bridge's address on every node, and the instances'
// default route. It is the zero Addr when p has no host addresses.
func Gateway(p netip.Prefix) netip.Addr {
	first, _, ok := ipv4Range(p)
	if !ok {
		return netip.Addr{}
	}
	return fromIPv4(first - 1)
}

// IsInstanceAddr reports whether a may be given to an instance of network
// p: inside p and none of its network, gateway or broadcast addresses.
func IsInstanceAddr(p netip.Prefix, a netip.Addr) bool {
	first, last, ok := ipv4Range(p)
	v, is4 := ipv4(a)
	return ok && is4 && first <= v && v <= last
}

// InstanceAddrs is how many instance addresses network p has: its size
// less the network, gateway and broadcast addresses (13 for a /28).
func InstanceAddrs(p netip.Prefix) int {
	first, last, ok := ipv4Range(p)
	if !ok || last < first {
		return 0
	}
	return int(last-first) + 1
}

// NoAddressReason is the Unschedulable reason of an instance network p had
// no free address for.
func NoAddressReason(p netip.Prefix) string {
	return fmt.Sprintf("network %s has no free address: its %d instance addresses are taken (a removed instance's address is free once the plan that removes it is committed); widen network.cidr in the flake or declare fewer instances",
		p, InstanceAddrs(p))
}

// identityHash is the SHA-256 of "CLUSTER/INSTANCE", or of
// "CLUSTER/INSTANCE/N" for attempt N > 0 (names never hold '/').
func identityHash(cluster, instance string, attempt int) [sha256.Size]byte {
	key := cluster + "/" + instance
	if attempt > 0 {
		key += "/" + strconv.Itoa(attempt)
	}
	return sha256.Sum256([]byte(key))
}

// identityHex is identityHash in lower-case hex, as Nix's
// builtins.hashString "sha256" writes it.
func identityHex(cluster, instance string, attempt int) string {
	sum := identityHash(cluster, instance, attempt)
	return hex.EncodeToString(sum[:])
}

// DeriveMAC is the MAC of instance in cluster at a collision attempt
// (0 first): 02 followed by the first five octets of identityHash. The
// first octet 02 makes it locally administered unicast. Nix computes
// attempt 0 the same way: with h = builtins.hashString "sha256"
// "CLUSTER/INSTANCE", the MAC is "02:" and h's first ten hex digits in
// pairs.
func DeriveMAC(cluster, instance string, attempt int) MAC {
	sum := identityHash(cluster, instance, attempt)
	return MAC{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// DeriveTap is the tap interface name of instance in cluster at a
// collision attempt: TapPrefix and hex digits 10 to 22 of identityHash
// (13 digits, 52 bits), 15 characters (MaxTapName) whatever the names'
// lengths.
func DeriveTap(cluster, instance string, attempt int) string {
	return TapPrefix + identityHex(cluster, instance, attempt)[10:23]
}

// DeriveHostname is the hostname of instance in cluster at a collision
// attempt: the instance name itself at attempt 0 when it is a DNS label;
// else the name without trailing '-', cut to 56 characters, then '-' and
// hex digits 23 to 28 of identityHash (at most 63 characters).
func DeriveHostname(cluster, instance string, attempt int) string {
	if attempt == 0 && spec.IsDNSLabel(instance) {
		return instance
	}
	base := strings.TrimRight(instance, "-")
	if len(base) > 56 {
		base = strings.TrimRight(base[:56], "-")
	}
	if base == "" {
		base = "vm"
	}
	return base + "-" + identityHex(cluster, instance, attempt)[23:29]
}

// freeAddrs hands out the free instance addresses of a network: instances
// take the lowest, nodes the highest, so the two meet only when the
// network is full.
type freeAddrs struct {
	lo, hi uint64   // every free address lies in [lo, hi]
	taken  []uint32 // sorted
	tlo    int      // taken[:tlo] are below lo
	thi    int      // taken[thi:] are above hi
}

// newFreeAddrs hands out the instance addresses of p that no identity of
// held, no address of nodes and none of reserved has.
func newFreeAddrs(p netip.Prefix, held map[string]Identity, nodes map[uint64]netip.Addr, reserved []netip.Addr) *freeAddrs {
	first, last, ok := ipv4Range(p)
	if !ok {
		return &freeAddrs{lo: 1, hi: 0}
	}
	f := &freeAddrs{lo: uint64(first), hi: uint64(last)}
	add := func(a netip.Addr) {
		if v, ok := ipv4(a); ok && first <= v && v <= last {
			f.taken = append(f.taken, v)
		}
	}
	for _, id := range held {
		add(id.Address)
	}
	for _, a := range nodes {
		add(a)
	}
	for _, a := range reserved {
		add(a)
	}
	slices.Sort(f.taken)
	f.thi = len(f.taken)
	return f
}

// take returns the lowest free address left, or false when none is.
func (f *freeAddrs) take() (netip.Addr, bool) {
	for ; f.lo <= f.hi; f.lo++ {
		for f.tlo < len(f.taken) && uint64(f.taken[f.tlo]) < f.lo {
			f.tlo++
		}
		if f.tlo < len(f.taken) && uint64(f.taken[f.tlo]) == f.lo {
			continue
		}
		a := fromIPv4(uint32(f.lo))
		f.lo++
		return a, true
	}
	return netip.Addr{}, false
}

// takeHighest returns the highest free address left, or false when none is.
func (f *freeAddrs) takeHighest() (netip.Addr, bool) {
	for ; f.lo <= f.hi; f.hi-- {
		for f.thi > 0 && uint64(f.taken[f.thi-1]) > f.hi {
			f.thi--
		}
		if f.thi > 0 && uint64(f.taken[f.thi-1]) == f.hi {
			continue
		}
		a := fromIPv4(uint32(f.hi))
		f.hi--
		return a, true
	}
	return netip.Addr{}, false
}

// DeclaredIdentity is the part of an instance's identity its flake fixes
// (spec.InstanceEntry: lib.mkCluster bakes MAC, tap and hostname into the
// instance's own runner). Zero fields are derived.
type DeclaredIdentity struct {
	MAC      MAC    // the zero MAC: derived
	Tap      string // "": derived
	Hostname string // "": derived
}

// IsZero reports whether d declares nothing.
func (d DeclaredIdentity) IsZero() bool { return d == DeclaredIdentity{} }

// apply returns id with d's declared parts.
func (d DeclaredIdentity) apply(id Identity) Identity {
	if d.MAC != (MAC{}) {
		id.MAC = d.MAC
	}
	if d.Tap != "" {
		id.Tap = d.Tap
	}
	if d.Hostname != "" {
		id.Hostname = d.Hostname
	}
	return id
}

// DeclaredIdentities returns the identities c's instances entries declare,
// by instance name (entries that declare nothing are left out). It checks
// each part as spec's Validate does, because Apply must not trust a plan's
// spec to have been validated; the error names the first bad entry.
func DeclaredIdentities(c *spec.Cluster) (map[string]DeclaredIdentity, error) {
	if c == nil {
		return nil, nil
	}
	var vms []string // those with entries: most VMs have none
	for name, vm := range c.VMs {
		if len(vm.Instances) > 0 {
			vms = append(vms, name)
		}
	}
	slices.Sort(vms)
	var out map[string]DeclaredIdentity
	for _, vm := range vms {
		entries := c.VMs[vm].Instances
		for _, inst := range slices.Sorted(maps.Keys(entries)) {
			e := entries[inst]
			if e.MAC == "" && e.Tap == "" && e.Hostname == "" {
				continue
			}
			where := fmt.Sprintf("vms.%s.instances.%s", vm, inst)
			var d DeclaredIdentity
			if e.MAC != "" {
				if err := spec.ValidMAC(e.MAC); err != nil {
					return nil, fmt.Errorf("%s.mac: %w", where, err)
				}
				if err := d.MAC.UnmarshalText([]byte(e.MAC)); err != nil {
					return nil, fmt.Errorf("%s.mac: %w", where, err)
				}
			}
			if e.Tap != "" {
				if err := spec.ValidTap(e.Tap); err != nil {
					return nil, fmt.Errorf("%s.tap: %w", where, err)
				}
				d.Tap = e.Tap
			}
			if e.Hostname != "" {
				if !spec.IsDNSLabel(e.Hostname) {
					return nil, fmt.Errorf("%s.hostname: %q is not a DNS label", where, e.Hostname)
				}
				d.Hostname = e.Hostname
			}
			if out == nil {
				out = map[string]DeclaredIdentity{}
			}
			out[inst] = d
		}
	}
	return out, nil
}

// NetworkRequest is what the network of one plan is allocated from.
type NetworkRequest struct {
	// Cluster is the cluster's name; it seeds the derived identities.
	Cluster string
	// CIDR is the plan's network.cidr (spec.Cluster.NetworkCIDR).
	CIDR netip.Prefix
	// Instances are the plan's desired instances, assigned or not, in any
	// order.
	Instances []string
	// Declared are the identities the flake fixes, by instance
	// (DeclaredIdentities); instances not listed derive theirs.
	Declared map[string]DeclaredIdentity
	// Nodes are the registered nodes' ids, in any order.
	Nodes []uint64
	// Reserved are addresses no instance gets unless it holds it already
	// (Network.Retiring), in any order.
	Reserved []netip.Addr
}

// Unaddressed is an instance a plan's network gives no identity, and why:
// the reason the planner lists it Unschedulable with.
type Unaddressed struct {
	VM     string `json:"vm"`
	Reason string `json:"reason"`
}

// claims records who holds each MAC, tap and hostname during one plan.
type claims struct {
	macs  map[MAC]string
	taps  map[string]string
	hosts map[string]string
}

func newClaims(held map[string]Identity, extra int) *claims {
	c := &claims{
		macs:  make(map[MAC]string, len(held)+extra),
		taps:  make(map[string]string, len(held)+extra),
		hosts: make(map[string]string, len(held)+extra),
	}
	for vm, id := range held {
		c.macs[id.MAC], c.taps[id.Tap], c.hosts[id.Hostname] = vm, vm, vm
	}
	return c
}

// conflict says why instance vm may not have its declared parts d: one is
// held by another instance, or the hostname is another instance's name
// (names are the plan's instances, sorted). "" means it may.
func (c *claims) conflict(vm string, d DeclaredIdentity, names []string) string {
	taken := func(what, value, owner string) string {
		return fmt.Sprintf("its declared %s %s is instance %s's: a declared identity is used as it is, and the instance holding it keeps it (it is free once the plan that removes %s is committed); give the two instances different %ss in the flake",
			what, value, owner, owner, what)
	}
	if owner, ok := c.macs[d.MAC]; ok && d.MAC != (MAC{}) && owner != vm {
		return taken("MAC", d.MAC.String(), owner)
	}
	if owner, ok := c.taps[d.Tap]; ok && d.Tap != "" && owner != vm {
		return taken("tap", d.Tap, owner)
	}
	if owner, ok := c.hosts[d.Hostname]; ok && d.Hostname != "" && owner != vm {
		return taken("hostname", d.Hostname, owner)
	}
	if h := d.Hostname; h != "" && h != vm {
		if _, isName := slices.BinarySearch(names, h); isName {
			return fmt.Sprintf("its declared hostname %s is the name of instance %s, which DNS resolves to that instance; declare another hostname", h, h)
		}
	}
	return ""
}

func (c *claims) claim(vm string, d DeclaredIdentity) {
	if d.MAC != (MAC{}) {
		c.macs[d.MAC] = vm
	}
	if d.Tap != "" {
		c.taps[d.Tap] = vm
	}
	if d.Hostname != "" {
		c.hosts[d.Hostname] = vm
	}
}

// release undoes claim, for an instance that got no address after all.
func (c *claims) release(vm string, d DeclaredIdentity) {
	if c.macs[d.MAC] == vm {
		delete(c.macs, d.MAC)
	}
	if c.taps[d.Tap] == vm {
		delete(c.taps, d.Tap)
	}
	if c.hosts[d.Hostname] == vm {
		delete(c.hosts, d.Hostname)
	}
}

// derive gives a new instance the parts of its identity it does not
// declare: DeriveMAC, DeriveTap and DeriveHostname at the lowest attempt
// whose result nobody holds; a derived hostname also avoids the plan's
// instance names (sorted), so a name that is a DNS label stays its own
// instance's hostname.
func (c *claims) derive(cluster, vm string, id Identity, d DeclaredIdentity, names []string) Identity {
	if d.MAC == (MAC{}) {
		for i := 0; ; i++ {
			if m := DeriveMAC(cluster, vm, i); c.macs[m] == "" {
				id.MAC, c.macs[m] = m, vm
				break
			}
		}
	}
	if d.Tap == "" {
		for i := 0; ; i++ {
			if t := DeriveTap(cluster, vm, i); c.taps[t] == "" {
				id.Tap, c.taps[t] = t, vm
				break
			}
		}
	}
	if d.Hostname == "" {
		for i := 0; ; i++ {
			h := DeriveHostname(cluster, vm, i)
			own := h == vm // only at attempt 0, for a name that is a DNS label
			if _, isName := slices.BinarySearch(names, h); c.hosts[h] == "" && (own || !isName) {
				id.Hostname, c.hosts[h] = h, vm
				break
			}
		}
	}
	return id
}

// AllocateNetwork is the one allocation rule: the network a plan commits,
// given the committed network prev (nil: none yet). It returns the new
// network and, sorted by VM, the instances it gives no identity and why.
// It is pure and deterministic; the order of req's lists does not matter,
// and prev is not modified.
//
//  1. An instance of prev keeps its identity, but for the parts it now
//     declares differently (req.Declared); it keeps its address too when
//     that is an instance address of req.CIDR (IsInstanceAddr), else it
//     is readdressed. A registered node of prev keeps its node address
//     on the same terms.
//  2. Everything prev holds stays taken during this plan, also what the
//     plan drops: a removed instance still runs until its node acts on
//     the plan (and a removed node may still carry its address), so its
//     address, MAC, tap and hostname are free only for the plans after
//     the one that removes it.
//  3. Declared parts are used as they are, before anything is derived. A
//     declared part another instance holds (committed, or declared
//     earlier by name in this plan), or a declared hostname that is
//     another instance's name, leaves the instance without an identity:
//     the newer instance is unschedulable with that reason, and the
//     holder keeps what it has. Nothing is re-derived in its place.
//  4. Node addresses go first: every registered node without one gets
//     the highest free address of req.CIDR, by id.
//  5. Readdressed instances, then new ones, each group by name, get the
//     lowest free instance address of req.CIDR. When none is left the
//     instance gets no identity (NoAddressReason): the instances already
//     running keep theirs.
//  6. A new instance's undeclared parts are DeriveMAC, DeriveTap and
//     DeriveHostname at the lowest attempt (0, 1, …) whose result is not
//     taken; a derived hostname also avoids every instance name of the
//     plan, so an instance whose name is a DNS label is its own hostname.
func AllocateNetwork(prev *Network, req NetworkRequest) (*Network, []Unaddressed) {
	cidr := req.CIDR
	names := slices.Clone(req.Instances)
	slices.Sort(names)
	names = slices.Compact(names)
	nodes := slices.Clone(req.Nodes)
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)
	var held map[string]Identity
	var heldNodes map[uint64]netip.Addr
	if prev != nil {
		held, heldNodes = prev.Identities, prev.NodeAddrs
	}
	out := &Network{CIDR: cidr, Gateway: Gateway(cidr)}

	ids := make(map[string]Identity, len(names))
	var readdress, fresh, redeclared []string
	for _, n := range names {
		id, ok := held[n]
		switch {
		case !ok:
			fresh = append(fresh, n)
		case req.Declared[n].apply(id) != id:
			redeclared = append(redeclared, n)
		case IsInstanceAddr(cidr, id.Address):
			ids[n] = id
		default:
			readdress = append(readdress, n)
		}
	}
	nodeAddrs := make(map[uint64]netip.Addr, len(nodes))
	var homeless []uint64 // nodes that need an address
	for _, id := range nodes {
		if a, ok := heldNodes[id]; ok && IsInstanceAddr(cidr, a) {
			nodeAddrs[id] = a
		} else {
			homeless = append(homeless, id)
		}
	}
	if len(readdress)+len(fresh)+len(redeclared)+len(homeless) == 0 {
		// A re-plan: the rest is for newcomers only.
		out.Identities, out.NodeAddrs = nilIfEmptyMap(ids), nilIfEmptyMap(nodeAddrs)
		return out, nil
	}

	var refused []Unaddressed
	cl := newClaims(held, len(fresh))
	pending := make(map[string]Identity, len(readdress)+len(redeclared)) // identities waiting for an address
	for _, n := range readdress {
		pending[n] = held[n]
	}
	for _, n := range redeclared {
		d := req.Declared[n]
		if why := cl.conflict(n, d, names); why != "" {
			refused = append(refused, Unaddressed{VM: n, Reason: why})
			continue
		}
		cl.claim(n, d)
		id := d.apply(held[n])
		if IsInstanceAddr(cidr, id.Address) {
			ids[n] = id
			continue
		}
		pending[n] = id
		readdress = append(readdress, n)
	}
	slices.Sort(readdress)
	addressable := fresh[:0:0]
	for _, n := range fresh {
		d, ok := req.Declared[n]
		if !ok {
			addressable = append(addressable, n)
			continue
		}
		if why := cl.conflict(n, d, names); why != "" {
			refused = append(refused, Unaddressed{VM: n, Reason: why})
			continue
		}
		cl.claim(n, d)
		addressable = append(addressable, n)
	}

	free := newFreeAddrs(cidr, held, heldNodes, req.Reserved)
	for _, id := range homeless {
		if a, ok := free.takeHighest(); ok {
			nodeAddrs[id] = a
		}
	}
	for _, n := range readdress {
		a, ok := free.take()
		if !ok {
			refused = append(refused, Unaddressed{VM: n, Reason: NoAddressReason(cidr)})
			continue
		}
		id := pending[n]
		id.Address = a
		ids[n] = id
	}
	for _, n := range addressable {
		a, ok := free.take()
		if !ok {
			cl.release(n, req.Declared[n])
			refused = append(refused, Unaddressed{VM: n, Reason: NoAddressReason(cidr)})
			continue
		}
		d := req.Declared[n]
		ids[n] = cl.derive(req.Cluster, n, d.apply(Identity{Address: a}), d, names)
	}
	slices.SortFunc(refused, func(a, b Unaddressed) int { return strings.Compare(a.VM, b.VM) })
	out.Identities, out.NodeAddrs = nilIfEmptyMap(ids), nilIfEmptyMap(nodeAddrs)
	return out, refused
}

// retiring is RetiringAddrs of the state for a plan of names.
func (s *State) retiring(names []string) map[string]netip.Addr {
	return RetiringAddrs(s.Network, names, s.Assignments, s.Observed, s.Nodes)
}

// RetiringAddrs are the addresses (Network.Retiring) of the instances prev
// holds, as identities or retiring, that a plan of names drops but whose
// nodes may still run them: those assigned (their node has not seen the
// plan yet), and those a node that is not down reports starting, running
// or stopping. Pure: Apply and the planner compute the same.
func RetiringAddrs(prev *Network, names []string, assignments map[string]Assignment, observed map[string]VMStatus,
	nodes map[uint64]*Node) map[string]netip.Addr {
	if prev == nil {
		return nil
	}
	kept := make(map[string]bool, len(names))
	for _, n := range names {
		kept[n] = true
	}
	runs := func(vm string) bool {
		if kept[vm] {
			return false // desired again: its identity is allocated anew, as any other's
		}
		if _, ok := assignments[vm]; ok {
			return true
		}
		obs, ok := observed[vm]
		if !ok {
			return false
		}
		if n := nodes[obs.Node]; n == nil || n.State == NodeDown {
			return false
		}
		return obs.Phase == PhaseStarting || obs.Phase == PhaseRunning || obs.Phase == PhaseStopping
	}
	out := map[string]netip.Addr{}
	for vm, id := range prev.Identities {
		if id.Address.IsValid() && runs(vm) {
			out[vm] = id.Address
		}
	}
	for vm, a := range prev.Retiring {
		if _, ok := out[vm]; !ok && runs(vm) {
			out[vm] = a
		}
	}
	return out
}

// planNetwork allocates the network of plan c, whose (canonical, copied)
// spec is desired, against the committed one and the registered nodes. It
// refuses a network.cidr or a declared identity the spec rules refuse, and
// a plan that assigns an instance the network gives no identity: the
// planner lists such an instance unschedulable.
func (s *State) planNetwork(c *CommitPlan, desired *spec.Cluster) (*Network, error) {
	cidr := desired.NetworkCIDR()
	if err := spec.ValidCIDR(cidr); err != nil {
		return nil, fmt.Errorf("network.cidr: %w", err)
	}
	declared, err := DeclaredIdentities(desired)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(c.Assignments)+len(c.Unschedulable))
	for _, a := range c.Assignments {
		names = append(names, a.VM)
	}
	for _, u := range c.Unschedulable {
		names = append(names, u.VM)
	}
	retiring := s.retiring(names)
	network, refused := AllocateNetwork(s.Network, NetworkRequest{
		Cluster: desired.Name, CIDR: cidr, Instances: names, Declared: declared, Nodes: slices.Collect(maps.Keys(s.Nodes)),
		Reserved: slices.Collect(maps.Values(retiring)),
	})
	if len(retiring) > 0 {
		network.Retiring = retiring
	}
	for _, a := range c.Assignments {
		if i, ok := slices.BinarySearchFunc(refused, a.VM, func(u Unaddressed, vm string) int { return strings.Compare(u.VM, vm) }); ok {
			return nil, fmt.Errorf("VM %q is assigned to node %d but %s; the planner lists such an instance as unschedulable: plan again against the current state",
				a.VM, a.Node, refused[i].Reason)
		}
	}
	return network, nil
}
