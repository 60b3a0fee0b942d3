package node

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/hostnet"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// netState is a state of three nodes (underlays 192.168.7.1-3, overlay
// addresses 10.100.255.253 downwards) on 10.100.0.0/16 with the given
// assignments (instance → node) and observations.
func netState(assigned map[string]uint64, observed map[string]replicated.VMStatus) *replicated.State {
	s := &replicated.State{
		Nodes:       map[uint64]*replicated.Node{},
		Desired:     &spec.Cluster{Name: "prod"},
		Assignments: map[string]replicated.Assignment{},
		Observed:    observed,
		Network: &replicated.Network{CIDR: netip.MustParsePrefix("10.100.0.0/16"), Gateway: netip.MustParseAddr("10.100.0.1"),
			Identities: map[string]replicated.Identity{}, NodeAddrs: map[uint64]netip.Addr{}},
	}
	for id := uint64(1); id <= 3; id++ {
		s.Nodes[id] = &replicated.Node{ID: id, RaftAddr: fmt.Sprintf("192.168.7.%d:7001", id), State: replicated.NodeReady}
		s.Network.NodeAddrs[id] = netip.AddrFrom4([4]byte{10, 100, 255, byte(254 - id)})
	}
	i := 0
	for _, name := range slices.Sorted(maps.Keys(assigned)) { // addresses in name order, as the tests expect
		node := assigned[name]
		i++
		declared, _, _ := strings.Cut(name, "-")
		s.Assignments[name] = replicated.Assignment{VM: name, Declared: declared, Node: node}
		s.Network.Identities[name] = replicated.Identity{Address: netip.AddrFrom4([4]byte{10, 100, 0, byte(1 + i)}),
			MAC: replicated.DeriveMAC("prod", name, 0), Tap: replicated.DeriveTap("prod", name, 0), Hostname: name}
	}
	return s
}

func underlay(id uint64) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 7, byte(id)}) }

func settingsOf(self uint64) netSettings {
	return netSettings{self: self, bridge: "blixard0", vxlanID: 42, vxlanPort: 4789, underlay: underlay(self), createTaps: true}
}

func inputsOf(self uint64) netInputs {
	in := netInputs{underlays: map[uint64]netip.Addr{}, owner: 1000, group: 100}
	for id := uint64(1); id <= 3; id++ {
		if id != self {
			in.underlays[id] = underlay(id)
		}
	}
	return in
}

func running(node uint64) replicated.VMStatus {
	return replicated.VMStatus{Node: node, Phase: replicated.PhaseRunning}
}

// summary is a plan as readable lines: "tap NAME", "remote IP@NODE",
// "lease NAME", "dns NAME", "skip …".
func summary(p netPlan) []string {
	var out []string
	for _, t := range p.want.LocalTaps {
		out = append(out, "tap "+t.Name)
	}
	for _, r := range p.want.Remote {
		out = append(out, "remote "+r.IP.String()+"@"+r.Node.String())
	}
	for _, i := range p.dns.Local {
		out = append(out, "lease "+i.Name)
	}
	for _, i := range p.dns.Running {
		out = append(out, "dns "+i.VM+"/"+i.Name)
	}
	for _, s := range p.skipped {
		out = append(out, "skip "+s)
	}
	return out
}

func TestPlanNetwork(t *testing.T) {
	tap := func(name string) string { return "tap " + replicated.DeriveTap("prod", name, 0) }
	nodeRemotes := func(self uint64) []string {
		var out []string
		for id := uint64(1); id <= 3; id++ {
			if id != self {
				out = append(out, "remote "+netip.AddrFrom4([4]byte{10, 100, 255, byte(254 - id)}).String()+"@"+underlay(id).String())
			}
		}
		return out
	}
	tests := []struct {
		name     string
		self     uint64
		state    *replicated.State
		change   func(s *replicated.State, in *netInputs)
		want     []string // summary; node remotes are appended unless noNodes
		noNodes  bool
		wantSkip string // a substring of one skipped entry
	}{
		{name: "an instance assigned here gets a tap and a lease, one elsewhere a remote entry at its node", self: 1,
			state: netState(map[string]uint64{"web-0": 1, "web-1": 2}, map[string]replicated.VMStatus{"web-0": running(1), "web-1": running(2)}),
			want:  append([]string{tap("web-0"), "remote 10.100.0.3@192.168.7.2"}, "lease web-0", "dns web/web-0", "dns web/web-1")},
		{name: "an instance not yet running here has a tap and a lease but no DNS name", self: 1,
			state: netState(map[string]uint64{"db": 1}, nil),
			want:  []string{tap("db"), "lease db"}},
		{name: "during a move other nodes keep sending to the old node while its copy runs", self: 3,
			state: netState(map[string]uint64{"db": 2}, map[string]replicated.VMStatus{"db": running(1)}),
			want:  []string{"remote 10.100.0.2@192.168.7.1"}},
		{name: "during a move the old node keeps the tap of the copy it still runs", self: 1,
			state: netState(map[string]uint64{"db": 2}, map[string]replicated.VMStatus{"db": {Node: 1, Phase: replicated.PhaseStopping}}),
			want:  []string{tap("db"), "lease db"}},
		{name: "during a move the new node prepares the tap and lease", self: 2,
			state: netState(map[string]uint64{"db": 2}, map[string]replicated.VMStatus{"db": running(1)}),
			want:  []string{tap("db"), "lease db"}},
		{name: "once the old copy stopped every node points at the new node", self: 3,
			state: netState(map[string]uint64{"db": 2}, map[string]replicated.VMStatus{"db": {Node: 1, Phase: replicated.PhaseStopped}}),
			want:  []string{"remote 10.100.0.2@192.168.7.2"}},
		{name: "a copy on a node marked down does not count: it was fenced", self: 3,
			state:  netState(map[string]uint64{"db": 2}, map[string]replicated.VMStatus{"db": running(1)}),
			change: func(s *replicated.State, _ *netInputs) { s.Nodes[1].State = replicated.NodeDown },
			want:   []string{"remote 10.100.0.2@192.168.7.2"}},
		{name: "an instance kept stopped keeps its tap but has no DNS name", self: 1,
			state: netState(map[string]uint64{"db": 1}, map[string]replicated.VMStatus{"db": {Node: 1, Phase: replicated.PhaseStopped}}),
			change: func(s *replicated.State, _ *netInputs) {
				a := s.Assignments["db"]
				a.Stopped = replicated.StoppedByOperator
				s.Assignments["db"] = a
			},
			want: []string{tap("db"), "lease db"}},
		{name: "an instance on a node whose underlay is unknown is left out, saying why", self: 1,
			state:  netState(map[string]uint64{"db": 2}, nil),
			change: func(_ *replicated.State, in *netInputs) { delete(in.underlays, 2) },
			want:   []string{"remote 10.100.255.251@192.168.7.3"}, noNodes: true, wantSkip: "node 2's underlay address is unknown"},
		{name: "a node with this node's underlay address is left out instead of failing the table", self: 1,
			state:  netState(map[string]uint64{"db": 2}, nil),
			change: func(_ *replicated.State, in *netInputs) { in.underlays[2] = underlay(1) },
			want:   []string{"remote 10.100.255.251@192.168.7.3"}, noNodes: true, wantSkip: "node 2 has this node's underlay address"},
		{name: "an assignment without an identity is left out, saying why", self: 1,
			state:  netState(map[string]uint64{"db": 1}, nil),
			change: func(s *replicated.State, _ *netInputs) { delete(s.Network.Identities, "db") },
			want:   nil, wantSkip: "instance db has no network identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := inputsOf(tt.self)
			if tt.change != nil {
				tt.change(tt.state, &in)
			}
			p, ok := planNetwork(tt.state, settingsOf(tt.self), in)
			if !ok {
				t.Fatal("planNetwork: no plan for a state with a network")
			}
			want := tt.want
			if !tt.noNodes {
				// Node remotes follow the instances' entries.
				var inst, rest []string
				for _, w := range want {
					if strings.HasPrefix(w, "tap ") || strings.HasPrefix(w, "remote ") {
						inst = append(inst, w)
					} else {
						rest = append(rest, w)
					}
				}
				want = append(append(inst, nodeRemotes(tt.self)...), rest...)
			}
			got := summary(p)
			var skips []string
			got = slices.DeleteFunc(got, func(l string) bool {
				if strings.HasPrefix(l, "skip ") {
					skips = append(skips, l)
					return true
				}
				return false
			})
			if !slices.Equal(got, want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, want)
			}
			if tt.wantSkip == "" && len(skips) > 0 {
				t.Errorf("skipped %q", skips)
			}
			if tt.wantSkip != "" && !slices.ContainsFunc(skips, func(s string) bool { return strings.Contains(s, tt.wantSkip) }) {
				t.Errorf("skipped %q, want an entry saying %q", skips, tt.wantSkip)
			}
			if p.host.NodeAddr != tt.state.Network.NodeAddrs[tt.self] || p.host.Gateway != netip.MustParsePrefix("10.100.0.1/16") ||
				p.host.Underlay != underlay(tt.self) || !p.host.CreateTaps {
				t.Errorf("hostnet config %+v", p.host)
			}
			if p.dns.Network.Domain != "prod.internal" || p.dns.Network.Gateway != netip.MustParseAddr("10.100.0.1") {
				t.Errorf("dnsmasq network %+v", p.dns.Network)
			}
			for _, tp := range p.want.LocalTaps {
				if tp.Owner != 1000 || tp.Group != 100 {
					t.Errorf("tap %+v: want the state directory's owner", tp)
				}
			}
		})
	}
}

func TestPlanNetworkMultiQueueAndEnv(t *testing.T) {
	s := netState(map[string]uint64{"db": 1}, nil)
	in := inputsOf(1)
	in.multiQueue = map[string]bool{"db": true}
	p, _ := planNetwork(s, settingsOf(1), in)
	if len(p.want.LocalTaps) != 1 || !p.want.LocalTaps[0].MultiQueue {
		t.Fatalf("taps %+v, want db's with multi_queue", p.want.LocalTaps)
	}
	id := s.Network.Identities["db"]
	want := "# Written by blixard: this instance's network identity. Do not edit.\n" +
		"BLIXARD_TAP=" + id.Tap + "\nBLIXARD_MAC=" + id.MAC.String() + "\nBLIXARD_IP=10.100.0.2\nBLIXARD_PREFIX=16\n" +
		"BLIXARD_GATEWAY=10.100.0.1\nBLIXARD_DNS=10.100.0.1\nBLIXARD_HOSTNAME=db\nBLIXARD_DOMAIN=prod.internal\nBLIXARD_MTU=1450\n"
	if got := string(p.env["db"].render(1450)); got != want {
		t.Errorf("network.env:\n%s\nwant:\n%s", got, want)
	}
	if got := string(p.env["db"].render(0)); strings.Contains(got, "MTU") {
		t.Errorf("network.env names an MTU before it is known:\n%s", got)
	}
}

func TestPlanNetworkWithoutANetworkIsNothing(t *testing.T) {
	for _, s := range []*replicated.State{nil, {}, {Network: &replicated.Network{}}} {
		if _, ok := planNetwork(s, settingsOf(1), inputsOf(1)); ok {
			t.Errorf("planNetwork(%+v) planned a network", s)
		}
	}
}

// TestPlanNetworkIsAcceptedByHostnet checks planNetwork's output against
// hostnet's own rules: every plan of the cases above must pass Plan's
// validation with an observed host that has only the underlay.
func TestPlanNetworkIsAcceptedByHostnet(t *testing.T) {
	states := []*replicated.State{
		netState(map[string]uint64{"web-0": 1, "web-1": 2, "db": 3}, map[string]replicated.VMStatus{"web-0": running(1), "db": running(1)}),
		netState(map[string]uint64{"a": 1, "b": 1, "c": 2}, nil),
	}
	for i, s := range states {
		for self := uint64(1); self <= 3; self++ {
			p, _ := planNetwork(s, settingsOf(self), inputsOf(self))
			have := hostnet.State{Links: []hostnet.Link{{Name: "eth0", Kind: "veth", MTU: 1500, Up: true,
				Addrs: []netip.Prefix{netip.PrefixFrom(underlay(self), 24)}}}}
			if _, err := hostnet.Plan(p.host, p.want, have); err != nil {
				t.Errorf("state %d, node %d: hostnet refuses the plan: %v", i, self, err)
			}
		}
	}
}

func TestNetworkConfigCheck(t *testing.T) {
	base := func() Config {
		return Config{NodeID: 1, DataDir: "/d", RaftAddr: "192.168.7.1:7001", APIAddr: "127.0.0.1:7070", StateDir: "/s", Backend: BackendProcess,
			Insecure: true, Network: NetworkConfig{Enable: true, Masquerade: true}}
	}
	tests := []struct {
		name   string
		change func(c *Config)
		want   string // "" valid
		check  func(t *testing.T, n NetworkConfig)
	}{
		{"defaults: blixard0, VNI 4242 on 4789, the Raft host as underlay, dnsmasq under the data directory", func(*Config) {}, "",
			func(t *testing.T, n NetworkConfig) {
				if n.Bridge != "blixard0" || n.VXLANID != DefaultVXLANID || n.VXLANPort != 4789 || n.UnderlayAddr != netip.MustParseAddr("192.168.7.1") ||
					n.DNSDir != "/d/netdns" {
					t.Errorf("defaults: %+v", n)
				}
			}},
		{"an explicit underlay address wins", func(c *Config) { c.Network.UnderlayAddr = netip.MustParseAddr("100.64.0.1") }, "",
			func(t *testing.T, n NetworkConfig) {
				if n.UnderlayAddr != netip.MustParseAddr("100.64.0.1") {
					t.Errorf("underlay %v", n.UnderlayAddr)
				}
			}},
		{"a Raft host name needs --underlay-addr", func(c *Config) { c.RaftAddr, c.Members = "node1.example.org:7001", nil }, "pass --underlay-addr", nil},
		{"a VNI beyond 24 bits is refused", func(c *Config) { c.Network.VXLANID = 1 << 24 }, "--vxlan-id 16777216: want 1..16777215", nil},
		{"a VXLAN port beyond 65535 is refused", func(c *Config) { c.Network.VXLANPort = 70000 }, "--vxlan-port 70000", nil},
		{"a bridge name Linux cannot take is refused", func(c *Config) { c.Network.Bridge = "a-very-long-bridge" }, "--bridge", nil},
		{"a bridge named like the instances' taps is refused", func(c *Config) { c.Network.Bridge = "bx0" }, "names instances' taps", nil},
		{"an unspecified underlay address is refused", func(c *Config) { c.Network.UnderlayAddr = netip.IPv4Unspecified() }, "not a unicast address", nil},
		{"an ingress address without a port is refused", func(c *Config) { c.Network.IngressAddr = "0.0.0.0" }, "--ingress-addr", nil},
		{"an ingress address on port 0 is refused", func(c *Config) { c.Network.IngressAddr = ":0" }, "is not 1..65535", nil},
		{"an ingress address on every interface is valid", func(c *Config) { c.Network.IngressAddr = ":80" }, "", nil},
		{"settings of a disabled network are not checked", func(c *Config) { c.Network = NetworkConfig{VXLANID: 1 << 30} }, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.change(&c)
			got, err := c.withDefaults()
			if tt.want == "" && err != nil {
				t.Fatalf("withDefaults: %v", err)
			}
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("withDefaults: %v, want an error with %q", err, tt.want)
			}
			if tt.check != nil {
				tt.check(t, got.Network)
			}
		})
	}
}

// BenchmarkPlanNetwork plans node 1's network for 10,000 running instances
// on 100 nodes: the pure part of one pass.
func BenchmarkPlanNetwork(b *testing.B) {
	s := &replicated.State{Nodes: map[uint64]*replicated.Node{}, Desired: &spec.Cluster{Name: "prod"},
		Assignments: map[string]replicated.Assignment{}, Observed: map[string]replicated.VMStatus{},
		Network: &replicated.Network{CIDR: netip.MustParsePrefix("10.100.0.0/16"), Gateway: netip.MustParseAddr("10.100.0.1"),
			Identities: map[string]replicated.Identity{}, NodeAddrs: map[uint64]netip.Addr{}}}
	in := netInputs{underlays: map[uint64]netip.Addr{}}
	for id := uint64(1); id <= 100; id++ {
		s.Nodes[id] = &replicated.Node{ID: id, State: replicated.NodeReady}
		s.Network.NodeAddrs[id] = netip.AddrFrom4([4]byte{10, 100, 255, byte(254 - id)})
		in.underlays[id] = netip.AddrFrom4([4]byte{192, 168, 7, byte(id)})
	}
	delete(in.underlays, 1)
	for i := range 10000 {
		name := fmt.Sprintf("vm-%d", i)
		node := uint64(i%100 + 1)
		s.Assignments[name] = replicated.Assignment{VM: name, Declared: fmt.Sprintf("vm%d", i/10), Node: node}
		s.Observed[name] = replicated.VMStatus{Node: node, Phase: replicated.PhaseRunning}
		s.Network.Identities[name] = replicated.Identity{Address: netip.AddrFrom4([4]byte{10, 100, byte(1 + i/250), byte(1 + i%250)}),
			MAC: replicated.DeriveMAC("prod", name, 0), Tap: replicated.DeriveTap("prod", name, 0), Hostname: name}
	}
	set := netSettings{self: 1, bridge: "blixard0", vxlanID: 42, vxlanPort: 4789, underlay: netip.MustParseAddr("192.168.7.1")}
	b.ReportAllocs()
	for b.Loop() {
		p, _ := planNetwork(s, set, in)
		if len(p.want.Remote) != 9900+99 || len(p.skipped) != 0 {
			b.Fatalf("%d remotes, skipped %v", len(p.want.Remote), p.skipped)
		}
	}
}

// fnState is netState with function f (maxInstances max, placed by
// placement) declared and every node able to hold 4 vCPUs and 4 GiB.
func fnState(assigned map[string]uint64, max int, placement spec.Placement) *replicated.State {
	s := netState(assigned, nil)
	for _, n := range s.Nodes {
		n.Capacity = replicated.Resources{VCPU: 4, MemMiB: 4096}
	}
	s.Desired.Functions = map[string]spec.Function{"f": {Runner: spec.Runner{Out: "/nix/store/f-runner"}, VCPU: 1, MemMiB: 64,
		MaxInstances: max, Placement: placement}}
	return s
}

// snapshot makes function fn of s a snapshot function with restoreAhead
// ahead.
func snapshot(s *replicated.State, fn string, ahead int) {
	f := s.Desired.Functions[fn]
	f.Snapshot, f.RestoreAhead = true, ahead
	s.Desired.Functions[fn] = f
}

func TestPlanNetworkSpareTaps(t *testing.T) {
	tap := func(name string) string { return replicated.DeriveTap("prod", name, 0) }
	// The spares of f and of the first maxSpareTaps-1 functions g000…:
	// each one's next instance.
	firstInstancesSpares := map[string]string{tap("fn-f-0"): "fn-f-0"}
	for i := range maxSpareTaps - 1 {
		name := replicated.FunctionInstance(fmt.Sprintf("g%03d", i), 0)
		firstInstancesSpares[tap(name)] = name
	}
	tests := []struct {
		name   string
		self   uint64
		state  *replicated.State
		change func(s *replicated.State, set *netSettings, in *netInputs)
		want   map[string]string // spare tap → instance
	}{
		{name: "no instance yet: every node that may run it keeps a tap for fn-f-0", self: 1,
			state: fnState(nil, 3, spec.Placement{}),
			want:  map[string]string{tap("fn-f-0"): "fn-f-0"}},
		{name: "fn-f-0 placed elsewhere: the spare is fn-f-1's", self: 1,
			state: fnState(map[string]uint64{"fn-f-0": 2}, 3, spec.Placement{}),
			want:  map[string]string{tap("fn-f-1"): "fn-f-1"}},
		{name: "the node running fn-f-0 keeps fn-f-1's too", self: 2,
			state: fnState(map[string]uint64{"fn-f-0": 2}, 3, spec.Placement{}),
			want:  map[string]string{tap("fn-f-1"): "fn-f-1"}},
		{name: "the lowest instance assigned nowhere is next", self: 1,
			state: fnState(map[string]uint64{"fn-f-0": 2, "fn-f-2": 3}, 4, spec.Placement{}),
			want:  map[string]string{tap("fn-f-1"): "fn-f-1"}},
		{name: "at maxInstances there is no next instance", self: 1,
			state: fnState(map[string]uint64{"fn-f-0": 2, "fn-f-1": 3}, 2, spec.Placement{})},
		{name: "a node the placement leaves out has none", self: 1,
			state: fnState(nil, 3, spec.Placement{Nodes: []uint64{2}})},
		{name: "nor a node too small for an instance", self: 1, state: fnState(nil, 3, spec.Placement{}),
			change: func(s *replicated.State, _ *netSettings, _ *netInputs) { s.Nodes[1].Capacity.VCPU = 0 }},
		{name: "nor where microvm.nix makes the taps", self: 1, state: fnState(nil, 3, spec.Placement{}),
			change: func(_ *replicated.State, set *netSettings, _ *netInputs) { set.createTaps = false }},
		{name: "the next instance's identity, when it has one, names the tap", self: 1, state: fnState(nil, 3, spec.Placement{}),
			change: func(s *replicated.State, _ *netSettings, _ *netInputs) {
				s.Network.Identities["fn-f-0"] = replicated.Identity{Address: netip.MustParseAddr("10.100.0.9"),
					MAC: replicated.DeriveMAC("prod", "fn-f-0", 1), Tap: "bxdeclared", Hostname: "fn-f-0"}
			},
			want: map[string]string{"bxdeclared": "fn-f-0"}},
		{name: "a tap name another instance holds is not made ahead", self: 1, state: fnState(map[string]uint64{"db": 1}, 3, spec.Placement{}),
			change: func(s *replicated.State, _ *netSettings, _ *netInputs) {
				id := s.Network.Identities["db"]
				id.Tap = tap("fn-f-0")
				s.Network.Identities["db"] = id
			}},
		{name: "nor a MAC another instance holds", self: 1, state: fnState(map[string]uint64{"db": 2}, 3, spec.Placement{}),
			change: func(s *replicated.State, _ *netSettings, _ *netInputs) {
				id := s.Network.Identities["db"]
				id.MAC = replicated.DeriveMAC("prod", "fn-f-0", 0)
				s.Network.Identities["db"] = id
			}},
		{name: "a snapshot function keeps spares for its next restoreAhead instances", self: 1,
			state: fnState(map[string]uint64{"fn-f-1": 2}, 4, spec.Placement{}),
			change: func(s *replicated.State, set *netSettings, _ *netInputs) {
				snapshot(s, "f", 2)
				set.restorePool = 4
			},
			want: map[string]string{tap("fn-f-0"): "fn-f-0", tap("fn-f-2"): "fn-f-2"}},
		{name: "at most the node's restore pool", self: 1, state: fnState(nil, 4, spec.Placement{}),
			change: func(s *replicated.State, set *netSettings, _ *netInputs) {
				snapshot(s, "f", 3)
				set.restorePool = 2
			},
			want: map[string]string{tap("fn-f-0"): "fn-f-0", tap("fn-f-1"): "fn-f-1"}},
		{name: "and one without a restore pool, or with restoreAhead 0, as for a function without snapshots", self: 1,
			state: fnState(nil, 4, spec.Placement{}),
			change: func(s *replicated.State, set *netSettings, _ *netInputs) {
				snapshot(s, "f", 3)
				set.restorePool = 0
				s.Desired.Functions["g"] = s.Desired.Functions["f"]
				snapshot(s, "g", 0)
				s.Desired.Functions["h"] = s.Desired.Functions["f"]
				snapshot(s, "h", 3)
				f := s.Desired.Functions["h"]
				f.Snapshot = false
				s.Desired.Functions["h"] = f
			},
			want: map[string]string{tap("fn-f-0"): "fn-f-0", tap("fn-g-0"): "fn-g-0", tap("fn-h-0"): "fn-h-0"}},
		{name: "every function's next instance before any function's second", self: 1, state: fnState(nil, 4, spec.Placement{}),
			change: func(s *replicated.State, set *netSettings, _ *netInputs) {
				snapshot(s, "f", 2)
				set.restorePool = 2
				for i := range maxSpareTaps - 1 {
					s.Desired.Functions[fmt.Sprintf("g%03d", i)] = s.Desired.Functions["f"]
				}
			},
			want: firstInstancesSpares},
		{name: "at most maxSpareTaps, by function name", self: 1, state: fnState(nil, 3, spec.Placement{}),
			change: func(s *replicated.State, _ *netSettings, _ *netInputs) {
				for i := range maxSpareTaps + 5 {
					s.Desired.Functions[fmt.Sprintf("g%03d", i)] = s.Desired.Functions["f"]
				}
			},
			want: firstInstancesSpares},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, in := settingsOf(tt.self), inputsOf(tt.self)
			if tt.change != nil {
				tt.change(tt.state, &set, &in)
			}
			p, ok := planNetwork(tt.state, set, in)
			if !ok {
				t.Fatal("no plan")
			}
			if !maps.Equal(p.spares, tt.want) && len(p.spares)+len(tt.want) > 0 {
				t.Errorf("spares %v, want %v", p.spares, tt.want)
			}
			// Each spare is a local tap with the instance's MAC, and no
			// lease, DNS name or network.env.
			taps := map[string]hostnet.Tap{}
			for _, tp := range p.want.LocalTaps {
				taps[tp.Name] = tp
			}
			for name, inst := range p.spares {
				tp, ok := taps[name]
				if !ok {
					t.Errorf("spare %s (%s) is not among the local taps", name, inst)
					continue
				}
				if id, ok := tt.state.Network.Identities[inst]; ok && tp.MAC.String() != id.MAC.String() ||
					!ok && tp.MAC.String() != replicated.DeriveMAC("prod", inst, 0).String() {
					t.Errorf("spare %s has MAC %s, not %s's", name, tp.MAC, inst)
				}
				if _, ok := p.env[inst]; ok {
					t.Errorf("spare %s's instance %s has a network.env", name, inst)
				}
				for _, l := range p.dns.Local {
					if l.Name == inst {
						t.Errorf("spare %s's instance %s has a lease", name, inst)
					}
				}
			}
			have := hostnet.State{Links: []hostnet.Link{{Name: "eth0", Kind: "veth", MTU: 1500, Up: true,
				Addrs: []netip.Prefix{netip.PrefixFrom(underlay(tt.self), 24)}}}}
			if _, err := hostnet.Plan(p.host, p.want, have); err != nil {
				t.Errorf("hostnet refuses the plan: %v", err)
			}
		})
	}
}

func TestPlanNetworkSpareTapQueuesFollowTheRunner(t *testing.T) {
	s := fnState(nil, 3, spec.Placement{})
	in := inputsOf(1)
	in.multiQueueRunners = map[string]bool{"/nix/store/f-runner": true}
	p, _ := planNetwork(s, settingsOf(1), in)
	if len(p.want.LocalTaps) != 1 || !p.want.LocalTaps[0].MultiQueue || p.want.LocalTaps[0].Owner != 1000 || p.want.LocalTaps[0].Group != 100 {
		t.Fatalf("taps %+v, want fn-f-0's spare with multi_queue, owned by 1000:100", p.want.LocalTaps)
	}
}

// TestMultiQueueTapsBeforeTheRunnerIsLinked: a new instance's tap takes
// its flags from the assignment's runner until the agent links
// STATE/NAME/current, and from current once it is there.
func TestMultiQueueTapsBeforeTheRunnerIsLinked(t *testing.T) {
	dir := t.TempDir()
	runner := func(name string, flags string) string {
		out := filepath.Join(dir, "store", name)
		if err := os.MkdirAll(filepath.Join(out, "share", "microvm"), 0o755); err != nil {
			t.Fatal(err)
		}
		if flags != "" {
			if err := os.WriteFile(filepath.Join(out, "share", "microvm", "tap-flags"), []byte(flags+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	mq, plain := runner("mq", "multi_queue vnet_hdr"), runner("plain", "")
	state := filepath.Join(dir, "state")
	s := netState(map[string]uint64{"new": 1, "linked": 1, "elsewhere": 2}, nil)
	for name, out := range map[string]string{"new": mq, "linked": mq, "elsewhere": mq} {
		a := s.Assignments[name]
		a.OutPath = out
		s.Assignments[name] = a
	}
	// linked's current is another runner (the one it runs), without flags.
	if err := os.MkdirAll(filepath.Join(state, "linked"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(plain, filepath.Join(state, "linked", "current")); err != nil {
		t.Fatal(err)
	}
	got := multiQueueTaps(state, s, 1)
	if want := map[string]bool{"new": true}; !maps.Equal(got, want) {
		t.Errorf("multiQueueTaps = %v, want %v (new from its assignment's runner, linked from its current, elsewhere not here)", got, want)
	}
}

// TestLaneTaps: the fast lane asks the kernel only about the new
// instances' taps that the last successful Sync did not make exactly as
// wanted.
func TestLaneTaps(t *testing.T) {
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, b} }
	spare := hostnet.Tap{Name: "bxspare", MAC: mac(1), Owner: 1000, Group: 100}
	other := hostnet.Tap{Name: "bxother", MAC: mac(2), Owner: 1000, Group: 100}
	fresh := hostnet.Tap{Name: "bxfresh", MAC: mac(3), Owner: 1000, Group: 100}
	with := func(t hostnet.Tap, f func(*hostnet.Tap)) hostnet.Tap { f(&t); return t }
	local := []hostnet.Tap{spare, other, fresh}
	for _, tc := range []struct {
		name    string
		lane    []string
		synced  []hostnet.Tap
		ask     []string
		trusted int
	}{
		{"nothing synced yet: every lane tap is asked about", []string{"bxspare", "bxfresh"}, nil, []string{"bxspare", "bxfresh"}, 0},
		{"a spare the Sync made is trusted", []string{"bxspare"}, []hostnet.Tap{spare, other}, nil, 1},
		{"a tap the Sync did not make is asked about", []string{"bxspare", "bxfresh"}, []hostnet.Tap{spare}, []string{"bxfresh"}, 1},
		{"taps outside the lane are left to the pass", []string{"bxfresh"}, []hostnet.Tap{spare, other}, []string{"bxfresh"}, 0},
		{"another MAC", []string{"bxspare"}, []hostnet.Tap{with(spare, func(t *hostnet.Tap) { t.MAC = mac(9) })}, []string{"bxspare"}, 0},
		{"another owner", []string{"bxspare"}, []hostnet.Tap{with(spare, func(t *hostnet.Tap) { t.Owner = 0 })}, []string{"bxspare"}, 0},
		{"another group", []string{"bxspare"}, []hostnet.Tap{with(spare, func(t *hostnet.Tap) { t.Group = 0 })}, []string{"bxspare"}, 0},
		{"multi-queue now", []string{"bxspare"}, []hostnet.Tap{with(spare, func(t *hostnet.Tap) { t.MultiQueue = true })}, []string{"bxspare"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lane := map[string]bool{}
			for _, n := range tc.lane {
				lane[n] = true
			}
			synced := map[string]hostnet.Tap{}
			for _, s := range tc.synced {
				synced[s.Name] = s
			}
			ask, trusted := laneTaps(local, lane, synced)
			var names []string
			for _, a := range ask {
				names = append(names, a.Name)
			}
			if !slices.Equal(names, tc.ask) || trusted != tc.trusted {
				t.Errorf("laneTaps = ask %v, trusted %d; want ask %v, trusted %d", names, trusted, tc.ask, tc.trusted)
			}
		})
	}
}
