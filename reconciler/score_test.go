package reconciler

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestNodeScoreOrder(t *testing.T) {
	tests := []struct {
		name          string
		better, worse nodeScore
	}{
		{"fewer in the zone beats fewer on the node", nodeScore{zone: 0, here: 3}, nodeScore{zone: 1, here: 0}},
		{"fewer on the node beats preferences", nodeScore{here: 0, prefer: 0}, nodeScore{here: 1, prefer: 5}},
		{"preferences beat bin-packing", nodeScore{prefer: 1, alloc: 0}, nodeScore{prefer: 0, alloc: allocMax}},
		{"more preferred labels win", nodeScore{prefer: 2}, nodeScore{prefer: 1}},
		{"the more allocated node wins", nodeScore{alloc: 400_000}, nodeScore{alloc: 399_999}},
		{"a full node beats an empty one", nodeScore{alloc: allocMax}, nodeScore{alloc: 0}},
		{"counts saturate without wrapping into the next field", nodeScore{here: countMax}, nodeScore{zone: 1}},
		{"replicas up to spec.MaxReplicas are told apart", nodeScore{here: spec.MaxReplicas - 1}, nodeScore{here: spec.MaxReplicas}},
		{"preferences saturate", nodeScore{prefer: 1000}, nodeScore{prefer: preferMax - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, w := tt.better.key(), tt.worse.key(); b >= w {
				t.Fatalf("key(%+v) = %#x, not below key(%+v) = %#x", tt.better, b, tt.worse, w)
			}
		})
	}
	for _, sc := range []nodeScore{{}, {alloc: 123_456}, {zone: 2, here: 1, prefer: 3, alloc: allocMax}} {
		if got, want := tier(sc.key()), tier(nodeScore{zone: sc.zone, here: sc.here, prefer: sc.prefer}.key()); got != want {
			t.Errorf("tier(key(%+v)) = %#x depends on alloc (want %#x)", sc, got, want)
		}
	}
}

func TestAllocPPM(t *testing.T) {
	tests := []struct {
		name             string
		capacity         replicated.Resources
		freeMem, freeCPU int
		want             int32
	}{
		{"empty", replicated.Resources{VCPU: 8, MemMiB: 8192}, 8192, 8, 0},
		{"full", replicated.Resources{VCPU: 8, MemMiB: 8192}, 0, 0, allocMax},
		{"the mean of memory and vCPU shares", replicated.Resources{VCPU: 4, MemMiB: 4096}, 1024, 4, 375_000},
		{"no vCPU at all counts as fully used", replicated.Resources{VCPU: 0, MemMiB: 4096}, 4096, 0, 500_000},
		{"over capacity is clamped", replicated.Resources{VCPU: 2, MemMiB: 1024}, -1024, -2, allocMax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := allocPPM(tt.capacity, tt.freeMem, tt.freeCPU); got != tt.want {
				t.Fatalf("allocPPM = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestPlaceWhy(t *testing.T) {
	tests := []struct {
		name string
		why  placeWhy
		want string
	}{
		{"a lone VM is bin-packed", placeWhy{declared: "db", score: nodeScore{alloc: 400_000}}, "binpack: 40% used"},
		{"replicas say how they spread", placeWhy{declared: "web", spread: true, score: nodeScore{alloc: 999_999}},
			"spread: 0 of web here; binpack: 99% used"},
		{"spreadBy names the group", placeWhy{declared: "web", spread: true, zone: "zone=b", score: nodeScore{}},
			"spread: 0 of web here, 0 in zone=b; binpack: 0% used"},
		{"a crowded choice says it was the best left", placeWhy{declared: "web", spread: true, zone: "nodes without zone",
			score: nodeScore{zone: 2, here: 1}}, "spread: 1 of web here, 2 in nodes without zone (the fewest where it fits); binpack: 0% used"},
		{"preferences count what matched", placeWhy{declared: "db", prefer: "disk=ssd,zone=a", total: 2, score: nodeScore{prefer: 1, alloc: 120_000}},
			"prefer disk=ssd,zone=a: 1 of 2 match; binpack: 12% used"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.why.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

// zoned returns a ready 8 vCPU, 8 GiB node with labels.
func zoned(id uint64, labels ...string) *replicated.Node {
	return mkNode(id, replicated.NodeReady, 8, 8192, labels...)
}

// reasons maps every added or moved instance to its placement reason.
func reasons(p Plan) map[string]string {
	m := map[string]string{}
	for _, c := range slices.Concat(p.Added, p.Moved) {
		m[c.VM] = c.Placement
	}
	return m
}

func TestComputeScoring(t *testing.T) {
	web := func(replicas int, p spec.Placement) spec.VM {
		return withReplicas(withPlacement(mkVM("web", 1, 1024), p), replicas)
	}
	tests := []struct {
		name        string
		in          Input
		wantNodes   map[string]uint64
		wantReasons map[string]string // of added and moved instances; nil: not checked
	}{
		{
			name: "issue 14: replicas = 3 on three empty nodes land on three nodes",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{})}),
				Nodes:   mkNodes(ready(1), ready(2), ready(3)),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 2, "web-2": 3},
			wantReasons: map[string]string{
				"web-0": "spread: 0 of web here; binpack: 0% used",
				"web-1": "spread: 0 of web here; binpack: 0% used",
				"web-2": "spread: 0 of web here; binpack: 0% used",
			},
		},
		{
			name: "issue 14: spreadBy zone puts replicas in both zones",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{SpreadBy: "zone"})}),
				Nodes:   mkNodes(zoned(1, "zone=a"), zoned(2, "zone=a"), zoned(3, "zone=a"), zoned(4, "zone=b")),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 4, "web-2": 2},
			wantReasons: map[string]string{
				"web-0": "spread: 0 of web here, 0 in zone=a; binpack: 0% used",
				"web-1": "spread: 0 of web here, 0 in zone=b; binpack: 0% used",
				"web-2": "spread: 0 of web here, 1 in zone=a (the fewest where it fits); binpack: 0% used",
			},
		},
		{
			name: "without spreadBy the same replicas spread over nodes only, and zone b may stay empty",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{})}),
				Nodes:   mkNodes(zoned(1, "zone=a"), zoned(2, "zone=a"), zoned(3, "zone=a"), zoned(4, "zone=b")),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 2, "web-2": 3},
		},
		{
			name: "more replicas than zones: zones first, then nodes within them",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(4, spec.Placement{SpreadBy: "zone"})}),
				Nodes:   mkNodes(zoned(1, "zone=a"), zoned(2, "zone=a"), zoned(3, "zone=b"), zoned(4, "zone=b")),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 3, "web-2": 2, "web-3": 4},
		},
		{
			name: "nodes without the spreadBy label are one group of their own",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{SpreadBy: "zone"})}),
				Nodes:   mkNodes(zoned(1, "zone=a"), ready(2), ready(3), zoned(4, "zone=a")),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 2, "web-2": 3},
			wantReasons: map[string]string{
				"web-0": "spread: 0 of web here, 0 in zone=a; binpack: 0% used",
				"web-1": "spread: 0 of web here, 0 in nodes without zone; binpack: 0% used",
				"web-2": "spread: 0 of web here, 1 in nodes without zone (the fewest where it fits); binpack: 0% used",
			},
		},
		{
			name: "replicas share a node only when no other fits, and say so",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{})}),
				Nodes:   mkNodes(ready(1), ready(2)),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 2, "web-2": 1},
			wantReasons: map[string]string{
				"web-0": "spread: 0 of web here; binpack: 0% used",
				"web-1": "spread: 0 of web here; binpack: 0% used",
				"web-2": "spread: 1 of web here (the fewest where it fits); binpack: 12% used",
			},
		},
		{
			name: "kept replicas count: a new replica avoids their nodes",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{})}),
				Nodes:   mkNodes(ready(1), ready(2), ready(3)),
				Current: mkCurrent(mkAssign("web-0", 1, "web", 1, 1024, 1), mkAssign("web-1", 3, "web", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"web-0": 1, "web-1": 3, "web-2": 2},
			wantReasons: map[string]string{"web-2": "spread: 0 of web here; binpack: 0% used"},
		},
		{
			name: "a preferred label wins over bin-packing",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"db":  withPlacement(mkVM("db", 1, 1024), spec.Placement{Prefer: spec.Preference{Labels: map[string]string{"disk": "ssd"}}}),
					"big": mkVM("big", 4, 4096),
				}),
				Nodes: mkNodes(zoned(1), zoned(2, "disk=ssd")),
			},
			wantNodes: map[string]uint64{"big": 1, "db": 2},
			wantReasons: map[string]string{
				"big": "binpack: 0% used",
				"db":  "prefer disk=ssd: 1 of 1 match; binpack: 0% used",
			},
		},
		{
			name: "a preference is soft: without a matching node the VM is placed all the same",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"db": withPlacement(mkVM("db", 1, 1024), spec.Placement{Prefer: spec.Preference{Labels: map[string]string{"disk": "nvme"}}}),
				}),
				Nodes: mkNodes(zoned(1, "disk=ssd")),
			},
			wantNodes:   map[string]uint64{"db": 1},
			wantReasons: map[string]string{"db": "prefer disk=nvme: 0 of 1 match; binpack: 0% used"},
		},
		{
			name: "spreading wins over a preference",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(2, spec.Placement{Prefer: spec.Preference{Labels: map[string]string{"disk": "ssd"}}})}),
				Nodes:   mkNodes(zoned(1), zoned(2, "disk=ssd")),
			},
			wantNodes: map[string]uint64{"web-0": 2, "web-1": 1},
			wantReasons: map[string]string{
				"web-0": "spread: 0 of web here; prefer disk=ssd: 1 of 1 match; binpack: 0% used",
				"web-1": "spread: 0 of web here; prefer disk=ssd: 0 of 1 match; binpack: 0% used",
			},
		},
		{
			name: "more matched preferences win",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": withPlacement(mkVM("db", 1, 1024),
					spec.Placement{Prefer: spec.Preference{Labels: map[string]string{"disk": "ssd", "zone": "a"}}})}),
				Nodes: mkNodes(zoned(1, "disk=ssd"), zoned(2, "disk=ssd", "zone=a"), zoned(3, "zone=a")),
			},
			wantNodes:   map[string]uint64{"db": 2},
			wantReasons: map[string]string{"db": "prefer disk=ssd,zone=a: 2 of 2 match; binpack: 0% used"},
		},
		{
			name: "bin-packing: the most allocated node that fits, not the lowest id",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": mkVM("a", 1, 1024), "b": mkVM("b", 1, 1024), "c": mkVM("c", 2, 7680),
				}),
				Nodes:   mkNodes(ready(1), ready(2), ready(3)),
				Current: mkCurrent(mkAssign("a", 2, "a", 1, 1024, 1), mkAssign("c", 3, "c", 2, 7680, 1)),
			},
			// Node 3 is the most allocated but has no room for b.
			wantNodes:   map[string]uint64{"a": 2, "b": 2, "c": 3},
			wantReasons: map[string]string{"b": "binpack: 12% used"},
		},
		{
			name: "anti-affinity stays a hard rule: the spread tie-break never overrides it",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"web": web(2, spec.Placement{AntiAffinity: []string{"db"}}),
					"db":  mkVM("db", 1, 2048),
				}),
				Nodes: mkNodes(ready(1), ready(2), ready(3)),
			},
			wantNodes: map[string]uint64{"db": 1, "web-0": 2, "web-1": 3},
		},
		{
			name: "a drained node's replica goes where its siblings are not",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"web": web(3, spec.Placement{})}),
				Nodes:   mkNodes(ready(1), ready(2), mkNode(3, replicated.NodeDraining, 8, 8192), ready(4)),
				Current: mkCurrent(mkAssign("web-0", 1, "web", 1, 1024, 1), mkAssign("web-1", 2, "web", 1, 1024, 1),
					mkAssign("web-2", 3, "web", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"web-0": 1, "web-1": 2, "web-2": 4},
			wantReasons: map[string]string{"web-2": "spread: 0 of web here; binpack: 0% used"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Compute(tt.in)
			checkInvariants(t, tt.in, p)
			if got := placements(p); !reflect.DeepEqual(got, tt.wantNodes) {
				t.Errorf("placements = %v, want %v\n%s", got, tt.wantNodes, renderString(p))
			}
			if tt.wantReasons != nil {
				if got := reasons(p); !reflect.DeepEqual(got, tt.wantReasons) {
					t.Errorf("reasons = %q, want %q", got, tt.wantReasons)
				}
			}
		})
	}
}

// TestComputeNoChurn: placement never moves an instance that may stay, so
// an existing cluster is not reshuffled when the rules would place it
// differently today, and a new node takes nothing from the others.
func TestComputeNoChurn(t *testing.T) {
	// Three replicas on one node, as first-fit used to place them.
	in := Input{
		Desired: mkCluster(map[string]spec.VM{"web": withReplicas(withPlacement(mkVM("web", 1, 1024),
			spec.Placement{SpreadBy: "zone"}), 3)}),
		Nodes: mkNodes(zoned(1, "zone=a"), zoned(2, "zone=b"), zoned(3, "zone=c")),
		Current: mkCurrent(mkAssign("web-0", 1, "web", 1, 1024, 1), mkAssign("web-1", 1, "web", 1, 1024, 1),
			mkAssign("web-2", 1, "web", 1, 1024, 1)),
	}
	if p := Compute(in); p.HasChanges() {
		t.Fatalf("re-planning kept replicas moves them:\n%s", renderString(p))
	}

	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 0xc4a2))
		cfg := genConfig{nodes: 1 + r.IntN(12), declared: r.IntN(25), maxReplicas: 4, constrained: 0.4, volumes: 0.2, soft: 0.5}
		nodes := randomNodes(r, cfg)
		c := randomCluster(r, cfg, maxNodeID(nodes))
		in := Input{Desired: c, Nodes: nodes}
		p := Compute(in)
		next := deepCopyInput(in)
		next.Current = asCurrent(p.Assignments, 1)
		next.Previous = c
		// A new, empty node, ready and with room for anything.
		id := maxNodeID(nodes) + 1
		n := mkNode(id, replicated.NodeReady, 1024, 1<<30, "zone="+[]string{"a", "b", "c", "d"}[r.IntN(4)], "disk=ssd")
		n.Ceph = true
		next.Nodes[id] = n
		p2 := Compute(next)
		checkInvariants(t, next, p2)
		if len(p2.Moved)+len(p2.Removed)+len(p2.Changed) > 0 {
			t.Fatalf("seed %d: adding node %d churns the cluster:\n%s", seed, id, renderString(p2))
		}
		before := placements(p)
		for vm, node := range placements(p2) {
			if was, ok := before[vm]; ok && was != node {
				t.Fatalf("seed %d: %s moved from node %d to %d", seed, vm, was, node)
			}
		}
	}
}

// TestComputeSpreadsEvenly: when capacity is no constraint, a fresh
// placement gives every node (with spreadBy: every group of nodes) a share
// of each VM's replicas that differs from any other by at most one.
func TestComputeSpreadsEvenly(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 0x5e7d))
		cfg := genConfig{nodes: 1 + r.IntN(12), declared: 1 + r.IntN(20), maxReplicas: 30, readyOnly: true, bigNodes: true, soft: 0.6}
		nodes := randomNodes(r, cfg)
		for _, n := range nodes {
			n.Capacity = replicated.Resources{VCPU: 1 << 20, MemMiB: 1 << 30}
		}
		c := randomCluster(r, cfg, maxNodeID(nodes))
		in := Input{Desired: c, Nodes: nodes}
		p := Compute(in)
		checkInvariants(t, in, p)
		if len(p.Unschedulable) > 0 {
			t.Fatalf("seed %d: big nodes left %v unschedulable", seed, p.Unschedulable)
		}
		counts := map[string]map[string]int{} // declared → group → instances
		for _, it := range c.Instances() {
			if it.Replicas < 2 {
				continue
			}
			if counts[it.Declared] == nil {
				counts[it.Declared] = map[string]int{}
				for id, n := range nodes {
					counts[it.Declared][group(it.Placement.SpreadBy, id, n)] = 0
				}
			}
		}
		for _, a := range p.Assignments {
			if m := counts[a.Declared]; m != nil {
				m[group(c.VMs[a.Declared].Placement.SpreadBy, a.Node, nodes[a.Node])]++
			}
		}
		for _, d := range slices.Sorted(maps.Keys(counts)) {
			lo, hi := -1, 0
			for _, k := range counts[d] {
				hi = max(hi, k)
				if lo < 0 || k < lo {
					lo = k
				}
			}
			if hi-lo > 1 {
				t.Fatalf("seed %d: %s (spreadBy %q) is spread unevenly: %v\n%s", seed, d, c.VMs[d].Placement.SpreadBy,
					counts[d], renderString(p))
			}
		}
	}
}

// group is the spreading group of node n: its id without spreadBy, else
// its value of the label.
func group(spreadBy string, id uint64, n *replicated.Node) string {
	if spreadBy == "" {
		return fmt.Sprint(id)
	}
	if v, ok := n.Labels[spreadBy]; ok {
		return spreadBy + "=" + v
	}
	return "unset"
}

// TestComputePropertiesAtScale checks the invariants, determinism and
// idempotence on the benchmark's 1,000 nodes and 10,000 instances, with
// spreadBy and preferences on a fifth of the VMs, and a drain of a tenth
// of the nodes afterwards.
func TestComputePropertiesAtScale(t *testing.T) {
	in := softBenchInput(t)
	p := Compute(in)
	checkInvariants(t, in, p)
	if again := Compute(deepCopyInput(in)); !reflect.DeepEqual(p, again) {
		t.Fatal("Compute is not deterministic at scale")
	}
	if scanned := compute(in, math.MaxInt); !reflect.DeepEqual(p, scanned) {
		t.Fatal("at scale, the search in bin-packing order plans differently from a scan of every node")
	}
	next := in
	next.Current = asCurrent(p.Assignments, 1)
	next.Previous = in.Desired
	if p2 := Compute(next); p2.HasChanges() {
		t.Fatalf("re-planning a committed plan at scale changes it: %s", p2.Summary())
	}
	drained := drainInput(next)
	p3 := Compute(drained)
	checkInvariants(t, drained, p3)
	if len(p3.Moved) == 0 {
		t.Fatal("draining a tenth of the nodes moved nothing")
	}
	if scanned := compute(drained, math.MaxInt); !reflect.DeepEqual(p3, scanned) {
		t.Fatal("after a drain, the search in bin-packing order plans differently from a scan of every node")
	}
}

// TestSearchMatchesScan: the search in bin-packing order (classOrder)
// finds exactly the node a scan of every eligible node finds, so the plan
// is the same whether a class keeps an order or not (classes with more
// than smallClass nodes do).
func TestSearchMatchesScan(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 0x7ee))
		cfg := genConfig{nodes: 1 + r.IntN(150), declared: r.IntN(60), maxReplicas: 6, constrained: 0.4, volumes: 0.2, soft: 0.5}
		nodes := randomNodes(r, cfg)
		maxID := max(maxNodeID(nodes), 1)
		c := randomCluster(r, cfg, maxID)
		in := Input{Desired: c, Nodes: nodes, Current: randomCurrent(r, c, maxID)}
		scanned := compute(in, math.MaxInt)
		for _, small := range []int{0, 7} {
			if p := compute(in, small); !reflect.DeepEqual(p, scanned) {
				t.Fatalf("seed %d: orders from %d nodes up plan differently from a scan:\n%s\n---\n%s", seed, small+1,
					renderString(p), renderString(scanned))
			}
		}
		checkInvariants(t, in, scanned)
	}
}

// softBenchInput is benchInput with spreadBy and preferences on a fifth
// of the declared VMs.
func softBenchInput(tb testing.TB) Input {
	r := rand.New(rand.NewPCG(1, 2))
	cfg := genConfig{nodes: 1000, declared: 5000, maxReplicas: 3, constrained: 0.2, readyOnly: true, bigNodes: true, soft: 0.2}
	nodes := randomNodes(r, cfg)
	c := randomCluster(r, cfg, maxNodeID(nodes))
	n := len(c.Instances())
	if n > 10000 {
		tb.Fatalf("generator made %d instances, want at most 10000", n)
	}
	for i := 0; n < 10000; i++ {
		c.VMs[fillName(i)] = mkVM(fillName(i), 1+r.IntN(8), 256*(1+r.IntN(32)))
		n++
	}
	return Input{Desired: c, Nodes: nodes}
}

// drainInput marks every tenth node of in draining.
func drainInput(in Input) Input {
	out := deepCopyInput(in)
	for _, id := range slices.Sorted(maps.Keys(out.Nodes)) {
		if id%10 == 0 {
			out.Nodes[id].State = replicated.NodeDraining
		}
	}
	out.Previous = in.Previous
	return out
}

func TestPlanJSONCarriesPlacement(t *testing.T) {
	p := Compute(Input{
		Desired: mkCluster(map[string]spec.VM{"web": withReplicas(mkVM("web", 1, 1024), 2)}),
		Nodes:   mkNodes(ready(1), ready(2)),
	})
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"placement":"spread: 0 of web here; binpack: 0% used"`) {
		t.Fatalf("plan JSON lacks the placement reason:\n%s", data)
	}
}

// BenchmarkPlanSoft1000Nodes10000VMs is BenchmarkPlan1000Nodes10000VMs
// with spreadBy and preferences on a fifth of the VMs, plus a drain of a
// tenth of the nodes (about 1,000 instances move).
func BenchmarkPlanSoft1000Nodes10000VMs(b *testing.B) {
	in := softBenchInput(b)
	first := Compute(in)
	b.Run("fresh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Compute(in)
		}
	})
	stable := in
	stable.Current = asCurrent(first.Assignments, 1)
	stable.Previous = in.Desired
	b.Run("drain", func(b *testing.B) {
		drained := drainInput(stable)
		b.ReportAllocs()
		for b.Loop() {
			Compute(drained)
		}
	})
}
