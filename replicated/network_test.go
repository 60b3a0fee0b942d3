package replicated

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/spec"
)

// The expected values below were computed outside Go, with
// `printf 'prod/web-0' | sha256sum`: the derivation is a documented
// function of the names (the Nix side computes attempt 0 the same way).
func TestDeriveIdentityVectors(t *testing.T) {
	tests := []struct {
		name     string
		got      string
		want     string
		describe string
	}{
		{"MAC of attempt 0 is 02 and the first five octets of sha256(CLUSTER/INSTANCE)",
			DeriveMAC("prod", "web-0", 0).String(), "02:04:91:75:c6:b0", "sha256(prod/web-0) = 049175c6b0…"},
		{"MAC of attempt 1 hashes CLUSTER/INSTANCE/1",
			DeriveMAC("prod", "web-0", 1).String(), "02:0c:0b:45:30:c4", "sha256(prod/web-0/1) = 0c0b4530c4…"},
		{"tap is bx and hex digits 10–22", DeriveTap("prod", "web-0", 0), "bx93a75970af78f", ""},
		{"tap of attempt 1", DeriveTap("prod", "web-0", 1), "bx657bb27a4de2f", ""},
		{"hostname of a name that is a DNS label is the name", DeriveHostname("prod", "web-0", 0), "web-0", ""},
		{"hostname of attempt 1 is derived", DeriveHostname("prod", "web-0", 1), "web-0-de6441", ""},
		{"hostname of a name ending in '-' is derived", DeriveHostname("prod", "web-", 0), "web-69a1b3", ""},
		{"an empty cluster name hashes /INSTANCE", DeriveMAC("", "a", 0).String(), "02:6a:50:dc:85:84", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %q, want %q %s", tt.got, tt.want, tt.describe)
			}
		})
	}
}

func TestDerivedIdentitiesAreWellFormed(t *testing.T) {
	names := []string{"a", "web-0", "web-", "a--", strings.Repeat("x", 63), strings.Repeat("y", 62) + "-", "db-999"}
	for _, cluster := range []string{"", "prod", strings.Repeat("c", 63)} {
		for _, name := range names {
			for attempt := range 3 {
				m := DeriveMAC(cluster, name, attempt)
				if !m.LocalUnicast() || m[0] != 0x02 {
					t.Errorf("DeriveMAC(%q, %q, %d) = %s: not 02:… locally administered unicast", cluster, name, attempt, m)
				}
				tap := DeriveTap(cluster, name, attempt)
				if len(tap) != MaxTapName || !strings.HasPrefix(tap, TapPrefix) || strings.Trim(tap[2:], "0123456789abcdef") != "" {
					t.Errorf("DeriveTap(%q, %q, %d) = %q: want %s and 13 hex digits", cluster, name, attempt, tap, TapPrefix)
				}
				h := DeriveHostname(cluster, name, attempt)
				if !spec.IsDNSLabel(h) {
					t.Errorf("DeriveHostname(%q, %q, %d) = %q: not a DNS label", cluster, name, attempt, h)
				}
				if again := DeriveMAC(cluster, name, attempt); again != m {
					t.Errorf("DeriveMAC is not stable: %s then %s", m, again)
				}
			}
			if DeriveMAC(cluster, name, 0) == DeriveMAC(cluster, name, 1) || DeriveTap(cluster, name, 0) == DeriveTap(cluster, name, 1) {
				t.Errorf("%s/%s: attempts 0 and 1 derive the same MAC or tap", cluster, name)
			}
		}
	}
}

func TestMACText(t *testing.T) {
	m := MAC{0x02, 0xab, 0, 0x10, 0xff, 1}
	b, err := json.Marshal(m)
	if err != nil || string(b) != `"02:ab:00:10:ff:01"` {
		t.Fatalf("json.Marshal = %s, %v; want \"02:ab:00:10:ff:01\"", b, err)
	}
	var back MAC
	if err := json.Unmarshal(b, &back); err != nil || back != m {
		t.Fatalf("round trip = %s, %v", back, err)
	}
	for _, bad := range []string{`"02:ab"`, `"zz:ab:00:10:ff:01"`, `"02:ab:00:10:ff:01:02:03"`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("Unmarshal(%s) accepted", bad)
		}
	}
	if (MAC{0x03}).LocalUnicast() || (MAC{0x00}).LocalUnicast() || !(MAC{0x06}).LocalUnicast() {
		t.Error("LocalUnicast misreads bits 0 and 1 of the first octet")
	}
}

func TestNetworkAddressArithmetic(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name      string
		cidr      netip.Prefix
		gateway   string
		instances int
		yes, no   []string
	}{
		{"default /16: gateway .0.1, instances .0.2 to .255.254", pfx("10.100.0.0/16"), "10.100.0.1", 65533,
			[]string{"10.100.0.2", "10.100.0.255", "10.100.1.0", "10.100.255.254"},
			[]string{"10.100.0.0", "10.100.0.1", "10.100.255.255", "10.101.0.2", "10.99.255.254", "::1", "::ffff:10.100.0.2"}},
		{"a /28 has 13 instance addresses", pfx("192.168.7.16/28"), "192.168.7.17", 13,
			[]string{"192.168.7.18", "192.168.7.30"}, []string{"192.168.7.16", "192.168.7.17", "192.168.7.31", "192.168.7.32"}},
		{"a /8", pfx("10.0.0.0/8"), "10.0.0.1", 1<<24 - 3, []string{"10.255.255.254"}, []string{"10.255.255.255"}},
		{"a /30 has one", pfx("10.0.0.4/30"), "10.0.0.5", 1, []string{"10.0.0.6"}, []string{"10.0.0.7"}},
		{"a /31 has none", pfx("10.0.0.4/31"), "", 0, nil, []string{"10.0.0.4", "10.0.0.5"}},
		{"IPv6 has none", pfx("fd00::/64"), "", 0, nil, []string{"fd00::2"}},
		{"the zero prefix has none", netip.Prefix{}, "", 0, nil, []string{"10.0.0.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw := Gateway(tt.cidr)
			if tt.gateway == "" && gw.IsValid() || tt.gateway != "" && gw != addr(tt.gateway) {
				t.Errorf("Gateway(%s) = %s, want %q", tt.cidr, gw, tt.gateway)
			}
			if n := InstanceAddrs(tt.cidr); n != tt.instances {
				t.Errorf("InstanceAddrs(%s) = %d, want %d", tt.cidr, n, tt.instances)
			}
			for _, a := range tt.yes {
				if !IsInstanceAddr(tt.cidr, addr(a)) {
					t.Errorf("IsInstanceAddr(%s, %s) = false", tt.cidr, a)
				}
			}
			for _, a := range tt.no {
				if IsInstanceAddr(tt.cidr, addr(a)) {
					t.Errorf("IsInstanceAddr(%s, %s) = true", tt.cidr, a)
				}
			}
		})
	}
}

// allocation is a compact view of a network: instance → address.
func allocation(n *Network) map[string]string {
	out := map[string]string{}
	for vm, id := range n.Identities {
		out[vm] = id.Address.String()
	}
	return out
}

func TestAllocateNetwork(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	def := pfx("10.100.0.0/16")
	ident := func(vm, a string) Identity {
		return Identity{Address: addr(a), MAC: DeriveMAC("t", vm, 0), Tap: DeriveTap("t", vm, 0), Hostname: DeriveHostname("t", vm, 0)}
	}
	net := func(cidr netip.Prefix, ids map[string]Identity) *Network {
		return &Network{CIDR: cidr, Gateway: Gateway(cidr), Identities: ids}
	}
	tests := []struct {
		name            string
		prev            *Network
		cidr            netip.Prefix
		instances       []string
		want            map[string]string
		wantUnaddressed []string
	}{
		{"new instances get the lowest addresses in name order", nil, def, []string{"c", "a", "b"},
			map[string]string{"a": "10.100.0.2", "b": "10.100.0.3", "c": "10.100.0.4"}, nil},
		{"an instance keeps its address when others are declared before it",
			net(def, map[string]Identity{"b": ident("b", "10.100.0.2")}), def, []string{"a", "b"},
			map[string]string{"a": "10.100.0.3", "b": "10.100.0.2"}, nil},
		{"a gap left by a removal is filled by the next new instance",
			net(def, map[string]Identity{"a": ident("a", "10.100.0.3"), "b": ident("b", "10.100.0.4")}), def, []string{"a", "b", "c", "d"},
			map[string]string{"a": "10.100.0.3", "b": "10.100.0.4", "c": "10.100.0.2", "d": "10.100.0.5"}, nil},
		{"the address of an instance the plan removes is not given out in that plan",
			net(def, map[string]Identity{"old": ident("old", "10.100.0.2")}), def, []string{"new"},
			map[string]string{"new": "10.100.0.3"}, nil},
		{"a CIDR change readdresses instances outside it and keeps those inside",
			net(pfx("10.100.0.0/16"), map[string]Identity{"in": ident("in", "10.100.0.9"), "out": ident("out", "10.100.1.2")}),
			pfx("10.100.0.0/24"), []string{"in", "out"},
			map[string]string{"in": "10.100.0.9", "out": "10.100.0.2"}, nil},
		{"a CIDR change readdresses an instance on the new broadcast address",
			net(pfx("10.100.0.0/23"), map[string]Identity{"b": ident("b", "10.100.0.255")}), pfx("10.100.0.0/24"), []string{"b"},
			map[string]string{"b": "10.100.0.2"}, nil},
		{"a CIDR change readdresses an instance on the new gateway address",
			net(pfx("10.100.0.0/24"), map[string]Identity{"g": ident("g", "10.100.0.1")}), pfx("10.100.0.0/23"), []string{"g"},
			map[string]string{"g": "10.100.0.2"}, nil},
		{"a /28 addresses 13 instances; the ones beyond it, by name, get none", nil, pfx("10.0.0.0/28"),
			[]string{"i00", "i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "i11", "i12", "i13", "i14"},
			map[string]string{"i00": "10.0.0.2", "i01": "10.0.0.3", "i02": "10.0.0.4", "i03": "10.0.0.5", "i04": "10.0.0.6",
				"i05": "10.0.0.7", "i06": "10.0.0.8", "i07": "10.0.0.9", "i08": "10.0.0.10", "i09": "10.0.0.11",
				"i10": "10.0.0.12", "i11": "10.0.0.13", "i12": "10.0.0.14"},
			[]string{"i13", "i14"}},
		{"on exhaustion running instances being readdressed go before new ones",
			net(pfx("10.1.0.0/16"), map[string]Identity{"z": ident("z", "10.1.0.2")}), pfx("10.0.0.0/28"),
			[]string{"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "b0", "b1", "b2", "z"},
			map[string]string{"z": "10.0.0.2", "a0": "10.0.0.3", "a1": "10.0.0.4", "a2": "10.0.0.5", "a3": "10.0.0.6", "a4": "10.0.0.7",
				"a5": "10.0.0.8", "a6": "10.0.0.9", "a7": "10.0.0.10", "a8": "10.0.0.11", "a9": "10.0.0.12", "b0": "10.0.0.13", "b1": "10.0.0.14"},
			[]string{"b2"}},
		{"no instances give an empty network", nil, def, nil, map[string]string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := mustJSON(t, tt.prev)
			got, unaddressed := AllocateNetwork(tt.prev, "t", tt.cidr, tt.instances)
			if a := allocation(got); !reflect.DeepEqual(a, tt.want) {
				t.Errorf("addresses = %v\nwant        %v", a, tt.want)
			}
			if !slices.Equal(unaddressed, tt.wantUnaddressed) {
				t.Errorf("unaddressed = %v, want %v", unaddressed, tt.wantUnaddressed)
			}
			if got.CIDR != tt.cidr || got.Gateway != Gateway(tt.cidr) {
				t.Errorf("network %s gateway %s, want %s gateway %s", got.CIDR, got.Gateway, tt.cidr, Gateway(tt.cidr))
			}
			if mustJSON(t, tt.prev) != before {
				t.Error("AllocateNetwork modified prev")
			}
			checkNetwork(t, got)
			if tt.prev != nil {
				for vm, was := range tt.prev.Identities {
					now, ok := got.Identities[vm]
					if ok && (now.MAC != was.MAC || now.Tap != was.Tap || now.Hostname != was.Hostname) {
						t.Errorf("%s: identity %+v changed to %+v", vm, was, now)
					}
				}
			}
		})
	}
}

func TestAllocateNetworkResolvesCollisions(t *testing.T) {
	cidr := netip.MustParsePrefix("10.100.0.0/16")
	// "other" already holds what "x" derives at attempt 0: its MAC, its
	// tap and (for the name "y") its hostname.
	prev := &Network{CIDR: cidr, Gateway: Gateway(cidr), Identities: map[string]Identity{
		"other": {Address: netip.MustParseAddr("10.100.0.2"), MAC: DeriveMAC("t", "x", 0), Tap: DeriveTap("t", "x", 0), Hostname: "y"},
	}}
	got, _ := AllocateNetwork(prev, "t", cidr, []string{"other", "x", "y"})
	x, y := got.Identities["x"], got.Identities["y"]
	if x.MAC != DeriveMAC("t", "x", 1) || x.Tap != DeriveTap("t", "x", 1) || x.Hostname != "x" {
		t.Errorf("x = %+v: want MAC and tap of attempt 1 and hostname x", x)
	}
	if y.Hostname != DeriveHostname("t", "y", 1) || y.MAC != DeriveMAC("t", "y", 0) {
		t.Errorf("y = %+v: want hostname of attempt 1 (y is taken) and MAC of attempt 0", y)
	}
	if got.Identities["other"] != prev.Identities["other"] {
		t.Errorf("the holder's identity changed: %+v", got.Identities["other"])
	}
	checkNetwork(t, got)

	// A name ending in '-' gets a derived hostname, which avoids the
	// plan's instance names: that name stays the hostname of its instance.
	derived := DeriveHostname("t", "web-", 0)
	got, _ = AllocateNetwork(nil, "t", cidr, []string{"web-", derived})
	if h := got.Identities[derived].Hostname; h != derived {
		t.Errorf("instance %s has hostname %q, want its own name", derived, h)
	}
	if h := got.Identities["web-"].Hostname; h != DeriveHostname("t", "web-", 1) {
		t.Errorf("instance web- has hostname %q, want attempt 1 %q (attempt 0 is another instance's name)", h, DeriveHostname("t", "web-", 1))
	}
	checkNetwork(t, got)
}

// checkNetwork checks the invariants of every allocated network: each
// address an instance address of the CIDR, and address, MAC, tap and
// hostname unique; MACs locally administered unicast, taps and hostnames
// well-formed.
func checkNetwork(t *testing.T, n *Network) {
	t.Helper()
	if n == nil {
		return
	}
	if n.Gateway != Gateway(n.CIDR) {
		t.Fatalf("gateway %s of %s, want %s", n.Gateway, n.CIDR, Gateway(n.CIDR))
	}
	addrs, macs, taps, hosts := map[netip.Addr]string{}, map[MAC]string{}, map[string]string{}, map[string]string{}
	for _, vm := range slices.Sorted(maps.Keys(n.Identities)) {
		id := n.Identities[vm]
		if !IsInstanceAddr(n.CIDR, id.Address) {
			t.Fatalf("%s has address %s, not an instance address of %s", vm, id.Address, n.CIDR)
		}
		if !id.MAC.LocalUnicast() || len(id.Tap) == 0 || len(id.Tap) > MaxTapName || !spec.IsDNSLabel(id.Hostname) {
			t.Fatalf("%s has a malformed identity %+v", vm, id)
		}
		for _, dup := range []struct {
			what  string
			other string
			ok    bool
		}{
			{"address " + id.Address.String(), addrs[id.Address], addrs[id.Address] != ""},
			{"MAC " + id.MAC.String(), macs[id.MAC], macs[id.MAC] != ""},
			{"tap " + id.Tap, taps[id.Tap], taps[id.Tap] != ""},
			{"hostname " + id.Hostname, hosts[id.Hostname], hosts[id.Hostname] != ""},
		} {
			if dup.ok {
				t.Fatalf("%s of %s is also %s's", dup.what, vm, dup.other)
			}
		}
		addrs[id.Address], macs[id.MAC], taps[id.Tap], hosts[id.Hostname] = vm, vm, vm, vm
	}
}

// propCIDRs are small, overlapping networks, so random plans run out of
// addresses and change networks often.
var propCIDRs = []string{"10.0.0.0/28", "10.0.0.0/27", "10.0.0.16/28", "10.0.0.0/26", "10.1.0.0/28", "10.0.0.0/24"}

// propNames is the pool random plans declare instances from: replicas,
// plain names and a name that is no DNS label.
func propNames() []string {
	var out []string
	for i := range 30 {
		out = append(out, fmt.Sprintf("web-%d", i))
	}
	for i := range 20 {
		out = append(out, fmt.Sprintf("vm%d", i))
	}
	return append(out, "odd-", "odd")
}

// TestAllocateNetworkProperties runs random sequences of plans (instances
// added, removed and rescaled, CIDR changes) through AllocateNetwork and
// checks, after each: the network invariants; stability (an instance
// keeps its identity, and its address while it is an instance address);
// freeing (nothing prev holds is given to a new holder in the same plan);
// lowest-free (the addresses given are the lowest free ones); exhaustion
// (an instance goes without an address only when no free one is left,
// running ones first); determinism (the order of the instances does not
// matter).
func TestAllocateNetworkProperties(t *testing.T) {
	pool := propNames()
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 0x0e7))
		var prev *Network
		cidr := netip.MustParsePrefix(propCIDRs[r.IntN(len(propCIDRs))])
		declared := map[string]bool{}
		for step := range 12 {
			name := fmt.Sprintf("seed=%d/step=%d", seed, step)
			switch op := r.IntN(6); {
			case op == 0:
				cidr = netip.MustParsePrefix(propCIDRs[r.IntN(len(propCIDRs))])
			case op <= 2: // add some
				for range 1 + r.IntN(12) {
					declared[pool[r.IntN(len(pool))]] = true
				}
			case op == 3: // remove some
				for vm := range declared {
					if r.IntN(3) == 0 {
						delete(declared, vm)
					}
				}
			case op == 4: // rescale web
				n := r.IntN(30)
				for i := range 30 {
					declared[fmt.Sprintf("web-%d", i)] = i < n
				}
			}
			var names []string
			for vm, ok := range declared {
				if ok {
					names = append(names, vm)
				}
			}
			got, unaddressed := AllocateNetwork(prev, "prop", cidr, names)
			checkNetwork(t, got)
			checkAllocationStep(t, name, prev, cidr, names, got, unaddressed)
			r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			again, unaddressed2 := AllocateNetwork(prev, "prop", cidr, names)
			if !reflect.DeepEqual(got, again) || !slices.Equal(unaddressed, unaddressed2) {
				t.Fatalf("%s: the order of the instances changed the allocation", name)
			}
			prev = got
		}
	}
}

func checkAllocationStep(t *testing.T, name string, prev *Network, cidr netip.Prefix, names []string, got *Network, unaddressed []string) {
	t.Helper()
	held := map[netip.Addr]bool{}
	var prevIDs map[string]Identity
	if prev != nil {
		prevIDs = prev.Identities
	}
	for _, id := range prevIDs {
		held[id.Address] = true
	}
	if len(got.Identities)+len(unaddressed) != len(names) {
		t.Fatalf("%s: %d identities and %d unaddressed for %d instances", name, len(got.Identities), len(unaddressed), len(names))
	}
	given := map[netip.Addr]bool{} // addresses given to new holders in this plan
	runningUnaddressed := false
	for _, vm := range names {
		id, ok := got.Identities[vm]
		was, had := prevIDs[vm]
		switch {
		case !ok:
			if had {
				runningUnaddressed = true
			}
			continue
		case had && (id.MAC != was.MAC || id.Tap != was.Tap || id.Hostname != was.Hostname):
			t.Fatalf("%s: %s's identity changed from %+v to %+v", name, vm, was, id)
		case had && IsInstanceAddr(cidr, was.Address) && id.Address != was.Address:
			t.Fatalf("%s: %s moved from %s to %s though %s is still an instance address of %s", name, vm, was.Address, id.Address, was.Address, cidr)
		case had && id.Address == was.Address:
			continue
		}
		if held[id.Address] {
			t.Fatalf("%s: %s got %s, which the committed network still holds", name, vm, id.Address)
		}
		given[id.Address] = true
	}
	// Lowest-free: no free address is left below the highest one given,
	// and none at all when an instance went without.
	var highest netip.Addr
	for a := range given {
		if !highest.IsValid() || highest.Less(a) {
			highest = a
		}
	}
	first, last, _ := ipv4Range(cidr)
	for v := first; v <= last && v >= first; v++ {
		a := fromIPv4(v)
		if len(unaddressed) == 0 && (!highest.IsValid() || !a.Less(highest)) {
			break
		}
		if !held[a] && !given[a] && !inUse(got, a) {
			t.Fatalf("%s: %s is free, but %s was given out or %v went without (unaddressed)", name, a, highest, unaddressed)
		}
	}
	// Running instances are readdressed before new ones are addressed.
	if runningUnaddressed {
		for _, vm := range names {
			if _, had := prevIDs[vm]; !had {
				if _, ok := got.Identities[vm]; ok {
					t.Fatalf("%s: new instance %s got an address while a running one went without", name, vm)
				}
			}
		}
	}
}

func inUse(n *Network, a netip.Addr) bool {
	for _, id := range n.Identities {
		if id.Address == a {
			return true
		}
	}
	return false
}

// netPlan is a CommitPlan of the given instances on parent, assigned
// round-robin to nodes 1–3 (shifted by move), with network cidr (zero:
// the default). Like the planner, it lists the instances the network has
// no address for as unschedulable.
func netPlan(s *State, commit string, cidr netip.Prefix, move int, instances ...string) Command {
	sp := &spec.Cluster{Name: "t", VMs: map[string]spec.VM{}, Network: spec.Network{CIDR: cidr}}
	_, unaddressed := AllocateNetwork(s.Network, sp.Name, sp.NetworkCIDR(), instances)
	c := &CommitPlan{Parent: s.revisionID(), Commit: commit, Spec: sp}
	for i, vm := range instances {
		a := asg(vm, uint64(1+(i+move)%3), "v1")
		sp.VMs[vm] = spec.VM{Runner: spec.Runner{Drv: a.Drv, Out: a.OutPath}, VCPU: a.VCPU, MemMiB: a.MemMiB, Replicas: 1, Autostart: true}
		if _, ok := slices.BinarySearch(unaddressed, vm); ok {
			c.Unschedulable = append(c.Unschedulable, Unschedulable{VM: vm, Reason: NoAddressReason(sp.NetworkCIDR())})
			continue
		}
		c.Assignments = append(c.Assignments, a)
	}
	slices.SortFunc(c.Assignments, func(a, b Assignment) int { return strings.Compare(a.VM, b.VM) })
	return cmdAt(t0, Command{Type: CmdCommitPlan, CommitPlan: c})
}

func addressOf(t *testing.T, s *State, vm string) string {
	t.Helper()
	id, ok := s.Identity(vm)
	if !ok {
		return "none"
	}
	return id.Address.String()
}

func TestApplyCommitPlanAllocatesTheNetwork(t *testing.T) {
	s := NewState()
	applyAll(t, s, reg(1), reg(2), reg(3))
	applyAll(t, s, netPlan(s, "c1", netip.Prefix{}, 0, "web-0", "web-1", "db"))
	if s.Network == nil || s.Network.CIDR.String() != spec.DefaultCIDR || s.Network.Gateway.String() != "10.100.0.1" {
		t.Fatalf("network after the first plan = %+v, want %s with gateway 10.100.0.1", s.Network, spec.DefaultCIDR)
	}
	want := map[string]string{"db": "10.100.0.2", "web-0": "10.100.0.3", "web-1": "10.100.0.4"}
	if got := allocation(s.Network); !reflect.DeepEqual(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
	first := s.Network.Identities

	t.Run("a move, a restart and a new revision keep every identity", func(t *testing.T) {
		applyAll(t, s, netPlan(s, "c2", netip.Prefix{}, 1, "web-0", "web-1", "db"))
		applyAll(t, s, cmdAt(t0, Command{Type: CmdSetVMRunState, SetVMRunState: &SetVMRunState{VM: "web-0", Restart: true}}))
		applyAll(t, s, plan(s.revisionID(), "c3", asg("web-0", 3, "v2"), asg("web-1", 3, "v2"), asg("db", 2, "v2")))
		if s.Assignments["web-0"].Node != 3 || !reflect.DeepEqual(s.Network.Identities, first) {
			t.Fatalf("identities changed:\n%v\nwant\n%v", s.Network.Identities, first)
		}
	})
	t.Run("a removed instance frees its address once its removal is committed", func(t *testing.T) {
		applyAll(t, s, netPlan(s, "c4", netip.Prefix{}, 0, "web-0", "db", "api"))
		if got := addressOf(t, s, "api"); got != "10.100.0.5" {
			t.Fatalf("api = %s, want 10.100.0.5: web-1's 10.100.0.4 is still held in the plan that removes it", got)
		}
		if _, ok := s.Identity("web-1"); ok {
			t.Fatal("web-1 keeps an identity after its removal committed")
		}
		applyAll(t, s, netPlan(s, "c5", netip.Prefix{}, 0, "web-0", "db", "api", "cache"))
		if got := addressOf(t, s, "cache"); got != "10.100.0.4" {
			t.Fatalf("cache = %s, want web-1's freed 10.100.0.4", got)
		}
	})
	t.Run("a CIDR change readdresses every instance outside it and keeps MACs", func(t *testing.T) {
		macs := map[string]MAC{}
		for vm, id := range s.Network.Identities {
			macs[vm] = id.MAC
		}
		applyAll(t, s, netPlan(s, "c6", netip.MustParsePrefix("10.200.0.0/24"), 0, "web-0", "db", "api", "cache"))
		want := map[string]string{"api": "10.200.0.2", "cache": "10.200.0.3", "db": "10.200.0.4", "web-0": "10.200.0.5"}
		if got := allocation(s.Network); !reflect.DeepEqual(got, want) || s.Network.Gateway.String() != "10.200.0.1" {
			t.Fatalf("addresses = %v gateway %s, want %v gateway 10.200.0.1", got, s.Network.Gateway, want)
		}
		for vm, id := range s.Network.Identities {
			if id.MAC != macs[vm] {
				t.Errorf("%s's MAC changed with the CIDR", vm)
			}
		}
	})
	t.Run("instances beyond a too small network are unschedulable and the rest keep their addresses", func(t *testing.T) {
		var names []string
		for i := range 16 {
			names = append(names, fmt.Sprintf("n%02d", i))
		}
		cmd := netPlan(s, "c7", netip.MustParsePrefix("10.200.0.0/28"), 0, append(names, "web-0", "db", "api", "cache")...)
		applyAll(t, s, cmd)
		if got := len(s.Network.Identities); got != 13 {
			t.Fatalf("%d identities, want 13 (a /28)", got)
		}
		if got := addressOf(t, s, "web-0"); got != "10.200.0.5" {
			t.Fatalf("web-0 = %s, want its 10.200.0.5", got)
		}
		if len(s.Unschedulable) != 7 || !strings.HasPrefix(s.Unschedulable[0].Reason, "network 10.200.0.0/28 has no free address") {
			t.Fatalf("unschedulable = %+v, want 7 with the network's reason", s.Unschedulable)
		}
		checkNetwork(t, s.Network)
	})
}

func TestApplyRefusesPlansTheNetworkCannotTake(t *testing.T) {
	base := func(t *testing.T) *State {
		s := NewState()
		applyAll(t, s, reg(1), reg(2), reg(3))
		applyAll(t, s, netPlan(s, "c1", netip.Prefix{}, 0, "a", "b"))
		return s
	}
	var many []Assignment
	for i := range 14 {
		many = append(many, asg(fmt.Sprintf("n%02d", i), 1, "v1"))
	}
	tests := []struct {
		name string
		cmd  func(s *State) Command
		want string
	}{
		{"an assigned instance the network has no address for", func(s *State) Command {
			c := plan(s.revisionID(), "c2", many...)
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("10.0.0.0/28")
			return c
		}, `CommitPlan: VM "n13" is assigned to node 1 but network 10.0.0.0/28 has no free address`},
		{"a CIDR with host bits", func(s *State) Command {
			c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("10.0.0.5/16")
			return c
		}, "CommitPlan: network.cidr: 10.0.0.5/16 is not a network address"},
		{"an IPv6 CIDR", func(s *State) Command {
			c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("fd00::/64")
			return c
		}, "CommitPlan: network.cidr: fd00::/64 is not IPv4"},
		{"a /30", func(s *State) Command {
			c := plan(s.revisionID(), "c2", asg("a", 1, "v1"))
			c.CommitPlan.Spec.Network.CIDR = netip.MustParsePrefix("10.0.0.0/30")
			return c
		}, "CommitPlan: network.cidr: 10.0.0.0/30 has prefix length /30"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base(t)
			before := s.Clone()
			r := s.Apply(s.Applied+1, tt.cmd(s))
			if r.Code != ResultInvalid || !strings.HasPrefix(r.Message, tt.want) {
				t.Fatalf("result %s %q, want invalid %q…", r.Code, r.Message, tt.want)
			}
			before.Applied = s.Applied
			if !reflect.DeepEqual(s, before) {
				t.Fatal("a refused plan changed the state")
			}
		})
	}
}

// TestReplicasAgreeOnTheNetwork applies random sequences of plans (added,
// removed and rescaled instances, moves, CIDR changes, exhaustion) as
// encoded entries to three replicas, one of which is recovered from a
// snapshot halfway. They must end byte-identical, and every step must keep
// the network's invariants and agree with AllocateNetwork on the entry's
// state.
func TestReplicasAgreeOnTheNetwork(t *testing.T) {
	pool := propNames()
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 0x5eed))
		replicas := []*State{NewState(), NewState(), NewState()}
		var entries [][]byte
		apply := func(cmd Command) {
			data, err := EncodeCommand(cmd)
			if err != nil {
				t.Fatal(err)
			}
			entries = append(entries, data)
			for i, s := range replicas {
				if res := s.ApplyEntry(uint64(len(entries)), data); !res.OK() {
					t.Fatalf("seed %d, replica %d, entry %d (%s): %s %s", seed, i, len(entries), cmd.Type, res.Code, res.Message)
				}
			}
		}
		for id := range uint64(3) {
			apply(reg(id + 1))
		}
		cidr := netip.Prefix{}
		declared := map[string]bool{}
		for step := range 16 {
			switch op := r.IntN(6); {
			case op == 0:
				cidr = netip.MustParsePrefix(propCIDRs[r.IntN(len(propCIDRs))])
			case op <= 2:
				for range 1 + r.IntN(10) {
					declared[pool[r.IntN(len(pool))]] = true
				}
			case op == 3:
				for vm := range declared {
					if r.IntN(3) == 0 {
						delete(declared, vm)
					}
				}
			case op == 4:
				n := r.IntN(30)
				for i := range 30 {
					declared[fmt.Sprintf("web-%d", i)] = i < n
				}
			}
			var names []string
			for vm, ok := range declared {
				if ok {
					names = append(names, vm)
				}
			}
			slices.Sort(names)
			s := replicas[0]
			want, _ := AllocateNetwork(s.Network, "t", specCIDR(cidr), names)
			apply(netPlan(s, fmt.Sprintf("c%d", step), cidr, r.IntN(3), names...))
			if !reflect.DeepEqual(s.Network, want) {
				t.Fatalf("seed %d step %d: Apply committed\n%v\nAllocateNetwork on the same state gives\n%v", seed, step, s.Network, want)
			}
			checkNetwork(t, s.Network)
			for _, a := range s.Assignments {
				if _, ok := s.Identity(a.VM); !ok {
					t.Fatalf("seed %d step %d: assigned %s has no identity", seed, step, a.VM)
				}
			}
			if step == 8 {
				replicas[1] = snapshotRoundTrip(t, replicas[1])
			}
		}
		var snaps [3]bytes.Buffer
		for i, s := range replicas {
			if err := EncodeSnapshot(&snaps[i], s); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(snaps[0].Bytes(), snaps[1].Bytes()) || !bytes.Equal(snaps[0].Bytes(), snaps[2].Bytes()) {
			t.Fatalf("seed %d: replicas differ after the same entries", seed)
		}
		if got := snapshotRoundTrip(t, replicas[0]); !reflect.DeepEqual(got, replicas[0]) {
			t.Fatalf("seed %d: the network does not survive a snapshot round trip", seed)
		}
	}
}

func specCIDR(p netip.Prefix) netip.Prefix {
	return (&spec.Cluster{Network: spec.Network{CIDR: p}}).NetworkCIDR()
}

// BenchmarkAllocateNetwork10000 measures the allocation Apply runs for
// every CommitPlan (and the planner for every plan) with 10,000 instances:
// all new (the first plan), and all kept (a re-plan).
func BenchmarkAllocateNetwork10000(b *testing.B) {
	cidr := netip.MustParsePrefix(spec.DefaultCIDR)
	names := make([]string, 10000)
	for i := range names {
		names[i] = fmt.Sprintf("vm%d-%d", i/3, i%3)
	}
	first, _ := AllocateNetwork(nil, "bench", cidr, names)
	b.Run("fresh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AllocateNetwork(nil, "bench", cidr, names)
		}
	})
	b.Run("stable", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AllocateNetwork(first, "bench", cidr, names)
		}
	})
}
