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
// instance that hashes alike is declared later.

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
const MaxTapName = 15

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
	// free address for has none, and is unschedulable.
	Identities map[string]Identity `json:"identities,omitempty"`
}

func (n *Network) clone() *Network {
	if n == nil {
		return nil
	}
	c := *n
	c.Identities = maps.Clone(n.Identities)
	return &c
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

// freeAddrs hands out the free instance addresses of a network in
// ascending order.
type freeAddrs struct {
	next, last uint64
	taken      []uint32 // sorted, within [next, last]
}

// newFreeAddrs hands out the instance addresses of p that no identity of
// held has.
func newFreeAddrs(p netip.Prefix, held map[string]Identity) *freeAddrs {
	first, last, ok := ipv4Range(p)
	if !ok {
		return &freeAddrs{next: 1, last: 0}
	}
	f := &freeAddrs{next: uint64(first), last: uint64(last)}
	for _, id := range held {
		if v, ok := ipv4(id.Address); ok && first <= v && v <= last {
			f.taken = append(f.taken, v)
		}
	}
	slices.Sort(f.taken)
	return f
}

// take returns the lowest free address left, or false when none is.
func (f *freeAddrs) take() (netip.Addr, bool) {
	for ; f.next <= f.last; f.next++ {
		for len(f.taken) > 0 && uint64(f.taken[0]) < f.next {
			f.taken = f.taken[1:]
		}
		if len(f.taken) > 0 && uint64(f.taken[0]) == f.next {
			continue
		}
		a := fromIPv4(uint32(f.next))
		f.next++
		return a, true
	}
	return netip.Addr{}, false
}

// AllocateNetwork is the one allocation rule: the network a plan of the
// given instances commits in cluster (its name seeds the derivations) with
// network cidr, given the committed network prev (nil: none yet). It
// returns the new network and, sorted, the instances it has no address
// for. It is pure and deterministic; the order of instances does not
// matter, and prev is not modified.
//
//  1. An instance of prev keeps its identity; it keeps its address too
//     when that is an instance address of cidr (IsInstanceAddr), else it
//     is readdressed.
//  2. Everything prev holds stays taken during this plan, also for the
//     instances the plan drops: a removed instance still runs until its
//     node acts on the plan, so its address, MAC, tap and hostname are free
//     only for the plans after the one that removes it.
//  3. Readdressed instances, then new ones, each group by name, get the
//     lowest free instance address of cidr. When none is left the
//     instance gets no identity (and the planner lists it unschedulable
//     with NoAddressReason): the instances already running keep theirs.
//  4. A new instance's MAC, tap and hostname are DeriveMAC, DeriveTap and
//     DeriveHostname at the lowest attempt (0, 1, …) whose result is not
//     taken; a derived hostname also avoids every instance name of the
//     plan, so an instance whose name is a DNS label is its own hostname.
func AllocateNetwork(prev *Network, cluster string, cidr netip.Prefix, instances []string) (*Network, []string) {
	names := slices.Clone(instances)
	slices.Sort(names)
	names = slices.Compact(names)
	var held map[string]Identity
	if prev != nil {
		held = prev.Identities
	}
	ids := make(map[string]Identity, len(names))
	var readdress, fresh []string
	for _, n := range names {
		id, ok := held[n]
		switch {
		case !ok:
			fresh = append(fresh, n)
		case IsInstanceAddr(cidr, id.Address):
			ids[n] = id
		default:
			readdress = append(readdress, n)
		}
	}
	out := &Network{CIDR: cidr, Gateway: Gateway(cidr)}
	if len(readdress)+len(fresh) == 0 {
		out.Identities = nilIfEmptyMap(ids) // a re-plan: the rest is for newcomers only
		return out, nil
	}
	free := newFreeAddrs(cidr, held)
	var unaddressed []string
	for _, n := range readdress {
		a, ok := free.take()
		if !ok {
			unaddressed = append(unaddressed, n)
			continue
		}
		id := held[n]
		id.Address = a
		ids[n] = id
	}
	macs := make(map[MAC]bool, len(held)+len(fresh))
	taps := make(map[string]bool, len(held)+len(fresh))
	hosts := make(map[string]bool, len(held)+len(fresh))
	for _, id := range held {
		macs[id.MAC], taps[id.Tap], hosts[id.Hostname] = true, true, true
	}
	for _, n := range fresh {
		a, ok := free.take()
		if !ok {
			unaddressed = append(unaddressed, n)
			continue
		}
		id := Identity{Address: a}
		for i := 0; ; i++ {
			if m := DeriveMAC(cluster, n, i); !macs[m] {
				id.MAC, macs[m] = m, true
				break
			}
		}
		for i := 0; ; i++ {
			if t := DeriveTap(cluster, n, i); !taps[t] {
				id.Tap, taps[t] = t, true
				break
			}
		}
		for i := 0; ; i++ {
			h := DeriveHostname(cluster, n, i)
			own := h == n // only at attempt 0, for a name that is a DNS label
			if _, isName := slices.BinarySearch(names, h); !hosts[h] && (own || !isName) {
				id.Hostname, hosts[h] = h, true
				break
			}
		}
		ids[n] = id
	}
	slices.Sort(unaddressed)
	out.Identities = nilIfEmptyMap(ids)
	return out, unaddressed
}

// planNetwork allocates the network of plan c, whose (canonical, copied)
// spec is desired, against the committed one. It refuses a network.cidr
// the spec rules refuse and a plan that assigns an instance the network
// has no address for: the planner lists such an instance unschedulable.
func (s *State) planNetwork(c *CommitPlan, desired *spec.Cluster) (*Network, error) {
	cidr := desired.NetworkCIDR()
	if err := spec.ValidCIDR(cidr); err != nil {
		return nil, fmt.Errorf("network.cidr: %w", err)
	}
	names := make([]string, 0, len(c.Assignments)+len(c.Unschedulable))
	for _, a := range c.Assignments {
		names = append(names, a.VM)
	}
	for _, u := range c.Unschedulable {
		names = append(names, u.VM)
	}
	network, unaddressed := AllocateNetwork(s.Network, desired.Name, cidr, names)
	for _, a := range c.Assignments {
		if _, ok := slices.BinarySearch(unaddressed, a.VM); ok {
			return nil, fmt.Errorf("VM %q is assigned to node %d but %s; the planner lists such an instance as unschedulable: plan again with a planner of this version",
				a.VM, a.Node, NoAddressReason(cidr))
		}
	}
	return network, nil
}
