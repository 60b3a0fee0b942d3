package reconciler

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// genConfig sizes a random input.
type genConfig struct {
	nodes, declared int
	maxReplicas     int
	// constrained is the fraction of declared VMs with placement rules.
	constrained float64
	// readyOnly makes every node ready.
	readyOnly bool
	// bigNodes gives nodes room for many VMs (benchmarks).
	bigNodes bool
	// volumes is the fraction of declared VMs with a volume; when > 0, two
	// nodes in three have Ceph.
	volumes float64
	// soft is the fraction of declared VMs with placement.spreadBy or
	// placement.prefer.labels. 0 draws no random numbers for them, so
	// inputs made before these rules existed stay the same.
	soft float64
}

var nodeStates = []replicated.NodeState{
	replicated.NodeReady, replicated.NodeReady, replicated.NodeReady, replicated.NodeReady,
	replicated.NodeCordoned, replicated.NodeDraining, replicated.NodeDown,
}

// randomNodes returns cfg.nodes nodes with ids 1..n (a few ids skipped).
func randomNodes(r *rand.Rand, cfg genConfig) map[uint64]*replicated.Node {
	nodes := make(map[uint64]*replicated.Node, cfg.nodes)
	id := uint64(0)
	for range cfg.nodes {
		id += 1 + uint64(r.IntN(2))
		st := replicated.NodeReady
		if !cfg.readyOnly {
			st = nodeStates[r.IntN(len(nodeStates))]
		}
		vcpu, mem := 2+r.IntN(15), 1024*(2+r.IntN(31))
		if cfg.bigNodes {
			vcpu, mem = 64, 256*1024
		}
		n := mkNode(id, st, vcpu, mem)
		n.Ceph = cfg.volumes > 0 && r.IntN(3) != 0
		if r.IntN(2) == 0 {
			n.Labels = map[string]string{"zone": []string{"a", "b", "c"}[r.IntN(3)]}
			if r.IntN(3) == 0 {
				n.Labels["disk"] = "ssd"
			}
		}
		nodes[id] = n
	}
	return nodes
}

// randomCluster returns cfg.declared VMs, some with replicas and placement
// rules, referring to node ids up to maxID (and a few beyond: unknown ids).
func randomCluster(r *rand.Rand, cfg genConfig, maxID uint64) *spec.Cluster {
	c := &spec.Cluster{Name: "prop", VMs: map[string]spec.VM{}}
	names := make([]string, cfg.declared)
	for i := range names {
		names[i] = fmt.Sprintf("vm%d", i)
	}
	for _, name := range names {
		v := mkVM(fmt.Sprintf("%s-r%d", name, r.IntN(3)), 1+r.IntN(8), 256*(1+r.IntN(32)))
		if cfg.maxReplicas > 1 && r.IntN(3) == 0 {
			v.Replicas = 1 + r.IntN(cfg.maxReplicas)
		}
		if r.Float64() < cfg.constrained {
			switch r.IntN(4) {
			case 0:
				for range 1 + r.IntN(3) {
					v.Placement.Nodes = append(v.Placement.Nodes, 1+uint64(r.IntN(int(maxID)+3)))
				}
			case 1:
				v.Placement.Labels = map[string]string{"zone": []string{"a", "b", "c", "x"}[r.IntN(4)]}
			case 2:
				v.Placement.Labels = map[string]string{"disk": "ssd"}
			case 3:
				v.Placement.AntiAffinity = []string{names[r.IntN(len(names))], "undeclared"}
			}
		}
		if cfg.volumes > 0 && r.Float64() < cfg.volumes {
			v = withVolume(v, "data", 64)
		}
		if cfg.soft > 0 && r.Float64() < cfg.soft {
			v.Placement = randomSoft(r, v.Placement)
		}
		c.VMs[name] = v
	}
	return c
}

// randomSoft adds spreadBy and prefer rules to p over the labels
// randomNodes gives (and a key no node has).
func randomSoft(r *rand.Rand, p spec.Placement) spec.Placement {
	switch r.IntN(4) {
	case 0:
		p.SpreadBy = "zone"
	case 1:
		p.SpreadBy = []string{"disk", "rack"}[r.IntN(2)]
	case 2:
		p.Prefer.Labels = map[string]string{"disk": "ssd"}
	case 3:
		p.SpreadBy = "zone"
		p.Prefer.Labels = map[string]string{"zone": []string{"a", "b", "c"}[r.IntN(3)], "disk": "ssd"}
	}
	return p
}

// randomCurrent returns assignments of some desired instances and some
// undeclared VMs to random (possibly unknown) nodes, possibly over capacity.
func randomCurrent(r *rand.Rand, c *spec.Cluster, maxID uint64) map[string]replicated.Assignment {
	cur := map[string]replicated.Assignment{}
	for _, it := range c.Instances() {
		if r.IntN(2) == 0 {
			continue
		}
		a := replicated.Assignment{VM: it.Name, Declared: it.Declared, Node: 1 + uint64(r.IntN(int(maxID)+2)), Drv: it.Runner.Drv,
			OutPath: it.Runner.Out, VCPU: it.VCPU, MemMiB: it.MemMiB, Generation: uint64(1 + r.IntN(100))}
		if r.IntN(4) == 0 {
			a.OutPath, a.MemMiB = "/nix/store/older", a.MemMiB/2
		}
		cur[a.VM] = a
	}
	for i := range r.IntN(3) {
		cur[fmt.Sprintf("gone%d", i)] = mkAssign(fmt.Sprintf("gone%d", i), 1, "gone", 1, 512, 1)
	}
	return cur
}

func maxNodeID(nodes map[uint64]*replicated.Node) uint64 {
	var m uint64
	for id := range nodes {
		m = max(m, id)
	}
	return m
}

// mutate changes some node states, capacities, runners and resources and
// drops some VMs, as a later commit and a later cluster would.
func mutate(r *rand.Rand, in Input) Input {
	out := deepCopyInput(in)
	for _, id := range slices.Sorted(maps.Keys(out.Nodes)) {
		n := out.Nodes[id]
		switch r.IntN(8) {
		case 0:
			n.State = nodeStates[r.IntN(len(nodeStates))]
		case 1:
			n.Capacity.MemMiB /= 2
		case 2:
			delete(out.Nodes, id)
		}
	}
	if out.Desired != nil {
		for _, name := range slices.Sorted(maps.Keys(out.Desired.VMs)) {
			v := out.Desired.VMs[name]
			switch r.IntN(8) {
			case 0:
				v.Runner.Out += "-new"
			case 1:
				v.MemMiB *= 2
			case 2:
				v.VCPU = 1
			case 3:
				delete(out.Desired.VMs, name)
				continue
			}
			out.Desired.VMs[name] = v
		}
	}
	return out
}

func deepCopyInput(in Input) Input {
	out := Input{}
	if in.Desired != nil {
		c := *in.Desired
		c.VMs = make(map[string]spec.VM, len(in.Desired.VMs))
		for k, v := range in.Desired.VMs {
			v.Placement.Nodes = slices.Clone(v.Placement.Nodes)
			v.Placement.Labels = maps.Clone(v.Placement.Labels)
			v.Placement.AntiAffinity = slices.Clone(v.Placement.AntiAffinity)
			v.Placement.Prefer.Labels = maps.Clone(v.Placement.Prefer.Labels)
			c.VMs[k] = v
		}
		out.Desired = &c
	}
	if in.Nodes != nil {
		out.Nodes = make(map[uint64]*replicated.Node, len(in.Nodes))
		for k, n := range in.Nodes {
			c := *n
			c.Labels = maps.Clone(n.Labels)
			out.Nodes[k] = &c
		}
	}
	out.Current = maps.Clone(in.Current)
	return out
}

func asCurrent(as []replicated.Assignment, gen uint64) map[string]replicated.Assignment {
	m := make(map[string]replicated.Assignment, len(as))
	for _, a := range as {
		if a.Generation == 0 {
			a.Generation = gen // as replicated fills it on commit
		}
		m[a.VM] = a
	}
	return m
}

// checkInvariants checks what every plan must satisfy, whatever the input.
func checkInvariants(t *testing.T, in Input, p Plan) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("invariant broken: "+format, args...)
	}
	var insts []spec.Instance
	if in.Desired != nil {
		insts = in.Desired.Instances()
	}
	desired := map[string]spec.Instance{}
	for _, it := range insts {
		desired[it.Name] = it
	}
	declOf := map[string]string{}
	for _, it := range insts {
		declOf[it.Name] = it.Declared
	}

	// Lists are sorted by VM and each VM appears at most once per list.
	sortedVMs := func(what string, vms []string) {
		if !slices.IsSorted(vms) || len(slices.Compact(slices.Clone(vms))) != len(vms) {
			fail("%s not sorted and unique: %v", what, vms)
		}
	}
	vmsOf := func(cs []Change) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.VM)
		}
		return out
	}
	var assigned []string
	for _, a := range p.Assignments {
		assigned = append(assigned, a.VM)
	}
	sortedVMs("assignments", assigned)
	sortedVMs("added", vmsOf(p.Added))
	sortedVMs("removed", vmsOf(p.Removed))
	sortedVMs("changed", vmsOf(p.Changed))
	sortedVMs("moved", vmsOf(p.Moved))
	var unsched []string
	for _, u := range p.Unschedulable {
		unsched = append(unsched, u.VM)
		if u.Reason == "" {
			fail("%s is unschedulable without a reason", u.VM)
		}
	}
	sortedVMs("unschedulable", unsched)

	// (b) every desired instance is assigned exactly once or unschedulable;
	// nothing else is assigned.
	byVM := map[string]replicated.Assignment{}
	for _, a := range p.Assignments {
		byVM[a.VM] = a
		it, ok := desired[a.VM]
		if !ok {
			fail("%s is assigned but not desired", a.VM)
		}
		if a.OutPath != it.Runner.Out || a.Drv != it.Runner.Drv || a.OwnRunner != it.OwnRunner() || a.VCPU != it.VCPU || a.MemMiB != it.MemMiB {
			fail("assignment %+v does not carry the desired runner and resources", a)
		}
	}
	for name := range desired {
		_, a := byVM[name]
		u := slices.Contains(unsched, name)
		if a == u {
			fail("%s: assigned=%v unschedulable=%v, want exactly one", name, a, u)
		}
	}

	// (a) no node's capacity is exceeded, and every rule holds.
	usedMem, usedCPU := map[uint64]int{}, map[uint64]int{}
	onNode := map[uint64]map[string]bool{} // declared names per node
	for _, a := range p.Assignments {
		n, ok := in.Nodes[a.Node]
		if !ok {
			fail("%s assigned to unregistered node %d", a.VM, a.Node)
		}
		old, had := in.Current[a.VM]
		kept := had && old.Node == a.Node
		switch {
		case n.State == replicated.NodeReady:
		case n.State == replicated.NodeCordoned && kept:
		default:
			fail("%s assigned to node %d which is %s (kept=%v)", a.VM, a.Node, n.State, kept)
		}
		usedMem[a.Node] += a.MemMiB
		usedCPU[a.Node] += a.VCPU
		pl := desired[a.VM].Placement
		if len(pl.Nodes) > 0 && !slices.Contains(pl.Nodes, a.Node) {
			fail("%s on node %d, not in placement.nodes %v", a.VM, a.Node, pl.Nodes)
		}
		if !hasLabels(n, pl.Labels) {
			fail("%s on node %d lacking labels %v", a.VM, a.Node, pl.Labels)
		}
		if len(desired[a.VM].Volumes) > 0 && !n.Ceph {
			fail("%s has volumes but is on node %d, which has no Ceph", a.VM, a.Node)
		}
		if onNode[a.Node] == nil {
			onNode[a.Node] = map[string]bool{}
		}
		onNode[a.Node][declOf[a.VM]] = true
	}
	for id, m := range usedMem {
		if c := in.Nodes[id].Capacity; m > c.MemMiB || usedCPU[id] > c.VCPU {
			fail("node %d over capacity: %d MiB/%d vCPU used of %d/%d", id, m, usedCPU[id], c.MemMiB, c.VCPU)
		}
	}
	for _, a := range p.Assignments {
		d := declOf[a.VM]
		for _, other := range desired[a.VM].Placement.AntiAffinity {
			if other == d {
				continue // self: checked by counting below
			}
			if onNode[a.Node][other] {
				fail("%s shares node %d with %s despite anti-affinity", a.VM, a.Node, other)
			}
		}
		if slices.Contains(desired[a.VM].Placement.AntiAffinity, d) {
			for _, b := range p.Assignments {
				if b.VM != a.VM && b.Node == a.Node && declOf[b.VM] == d {
					fail("%s and %s share node %d despite self anti-affinity", a.VM, b.VM, a.Node)
				}
			}
		}
	}

	// Every added or moved instance says why it went to its node, every
	// changed one that it stayed.
	for _, c := range slices.Concat(p.Added, p.Moved) {
		if !strings.Contains(c.Placement, "binpack: ") {
			fail("%s placed on node %d without a placement reason: %q", c.VM, c.Node, c.Placement)
		}
	}
	for _, c := range p.Changed {
		if c.Placement != fmt.Sprintf("kept on node %d", c.Node) {
			fail("changed %s on node %d has placement reason %q", c.VM, c.Node, c.Placement)
		}
	}

	// The change lists describe exactly the difference to Current.
	want := map[string]string{}
	for _, a := range p.Assignments {
		old, had := in.Current[a.VM]
		switch {
		case !had:
			want[a.VM] = "added"
		case old.Node != a.Node:
			want[a.VM] = "moved"
		case !old.SameWorkload(a):
			want[a.VM] = "changed"
			if a.Generation != 0 {
				fail("changed %s kept generation %d", a.VM, a.Generation)
			}
		default:
			if a.Generation != old.Generation {
				fail("unchanged %s has generation %d, want %d", a.VM, a.Generation, old.Generation)
			}
		}
	}
	for name := range in.Current {
		if _, ok := byVM[name]; !ok {
			want[name] = "removed"
		}
	}
	got := map[string]string{}
	for kind, cs := range map[string][]Change{"added": p.Added, "moved": p.Moved, "changed": p.Changed, "removed": p.Removed} {
		for _, c := range cs {
			if prev, dup := got[c.VM]; dup {
				fail("%s is both %s and %s", c.VM, prev, kind)
			}
			got[c.VM] = kind
			if (kind == "moved" || kind == "removed") && c.Reason == "" {
				fail("%s %s without a reason", c.VM, kind)
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		fail("changes %v, want %v", got, want)
	}
	// Volumes are created or grown only for placed instances.
	for _, v := range p.Volumes {
		if _, ok := byVM[v.VM]; !ok {
			fail("volume %s/%s listed for %s, which is not placed", v.VM, v.Volume, v.VM)
		}
	}
	if p.HasChanges() != (len(want) > 0 || len(p.Volumes) > 0 || len(p.Readdressed) > 0 || p.OldCIDR.IsValid() ||
		len(p.Reidentified) > 0 || len(p.NodeAddrs) > 0) {
		fail("HasChanges() = %v with changes %v, %d volume changes, %d identity and %d node address changes",
			p.HasChanges(), want, len(p.Volumes), len(p.Reidentified), len(p.NodeAddrs))
	}
}

// TestComputeProperties checks the invariants on random clusters, first
// from random (partly invalid) assignments, then again after the cluster
// and the spec change under the committed plan.
func TestComputeProperties(t *testing.T) {
	seeds := 400
	if testing.Short() {
		seeds = 50
	}
	for seed := range uint64(seeds) {
		r := rand.New(rand.NewPCG(seed, 0xb11a))
		cfg := genConfig{nodes: r.IntN(12), declared: r.IntN(25), maxReplicas: 4, constrained: 0.4, volumes: 0.3, soft: 0.4}
		nodes := randomNodes(r, cfg)
		maxID := max(maxNodeID(nodes), 1)
		c := randomCluster(r, cfg, maxID)
		in := Input{Desired: c, Nodes: nodes, Current: randomCurrent(r, c, maxID)}
		if r.IntN(20) == 0 {
			in.Desired = nil
		}

		for step := range 3 {
			name := fmt.Sprintf("seed=%d/step=%d", seed, step)
			p := Compute(in)
			checkInvariants(t, in, p)

			// (c) deterministic: the same input (in fresh maps) gives the same plan.
			if again := Compute(deepCopyInput(in)); !reflect.DeepEqual(p, again) {
				t.Fatalf("%s: Compute is not deterministic:\n%+v\n%+v", name, p, again)
			}

			// (d) idempotent: the plan's own assignments need no change.
			next := in
			next.Current = asCurrent(p.Assignments, 1000+uint64(step))
			next.Previous = in.Desired // committed with the plan: its volumes exist
			p2 := Compute(next)
			if p2.HasChanges() {
				t.Fatalf("%s: re-planning a committed plan changes it: %s\n%s", name, p2.Summary(), renderString(p2))
			}
			if !slices.Equal(vmNames(p.Unschedulable), vmNames(p2.Unschedulable)) {
				t.Fatalf("%s: unschedulable set changed on re-plan: %v → %v", name, p.Unschedulable, p2.Unschedulable)
			}

			// The cluster and the spec change under the committed plan.
			in = mutate(r, next)
		}
	}
}

func vmNames(us []replicated.Unschedulable) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.VM)
	}
	return out
}

func renderString(p Plan) string {
	var b strings.Builder
	_ = p.Render(&b, false)
	return b.String()
}

// TestComputeKeepsValidAssignments: an assignment on a ready node that
// satisfies its rules and is alone there is always kept, whatever else changes.
func TestComputeKeepsValidAssignments(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 7))
		cfg := genConfig{nodes: 1 + r.IntN(10), declared: 1 + r.IntN(20), maxReplicas: 3, constrained: 0.3, soft: 0.3}
		nodes := randomNodes(r, cfg)
		c := randomCluster(r, cfg, maxNodeID(nodes))
		in := Input{Desired: c, Nodes: nodes}
		p := Compute(in)
		// Take one placed instance, give it a node of its own, and re-plan
		// with a different spec for everything else.
		if len(p.Assignments) == 0 {
			continue
		}
		a := p.Assignments[r.IntN(len(p.Assignments))]
		lone := deepCopyInput(in)
		lone.Current = map[string]replicated.Assignment{a.VM: a}
		for _, n := range lone.Nodes {
			if n.ID != a.Node && n.State == replicated.NodeReady && r.IntN(2) == 0 {
				n.State = replicated.NodeCordoned
			}
		}
		p2 := Compute(lone)
		if got := placements(p2)[a.VM]; got != a.Node {
			t.Fatalf("seed %d: valid assignment of %s to node %d not kept (now %d):\n%s", seed, a.VM, a.Node, got, renderString(p2))
		}
		checkInvariants(t, lone, p2)
	}
}

func TestInstancesOfExpandsReplicasSortedByName(t *testing.T) {
	c := mkCluster(map[string]spec.VM{
		"a":    withReplicas(mkVM("a", 1, 512), 12),
		"a-1b": mkVM("a-1b", 1, 512),
		"b":    withReplicas(mkVM("b", 1, 512), 0),
		"c":    withReplicas(mkVM("c", 1, 512), 2),
	})
	var got []string
	for _, it := range c.Instances() {
		got = append(got, it.Name+"<"+it.Declared)
	}
	want := []string{"a-0<a", "a-1<a", "a-10<a", "a-11<a", "a-1b<a-1b", "a-2<a", "a-3<a", "a-4<a", "a-5<a",
		"a-6<a", "a-7<a", "a-8<a", "a-9<a", "b<b", "c-0<c", "c-1<c"}
	if !slices.Equal(got, want) {
		t.Fatalf("instances = %v, want %v", got, want)
	}
}
