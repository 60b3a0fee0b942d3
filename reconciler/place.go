package reconciler

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// scheduler is the working state of one Compute call. Nodes are addressed by
// their index in ascending id order, declared VMs by their index in name
// order; resources and anti-affinity are kept in slices so that a placement
// check allocates nothing.
type scheduler struct {
	in Input

	ids     []uint64           // node ids, ascending
	nodes   []*replicated.Node // by index; non-nil
	nodeIdx map[uint64]int32   // id → index
	freeMem []int              // per node: capacity minus what is kept or placed on it
	freeCPU []int

	insts   []instance // sorted by name
	decls   []declared // sorted by name
	classes []class

	// present is, per declared VM, the set of nodes (a bitset over node
	// indices) running one of its instances in the plan. It is nil for a
	// declared VM that takes no part in anti-affinity.
	present [][]uint64

	score scoreIndex // what choosing among eligible nodes needs (score.go)
}

// instance is one desired instance and its fate in the plan.
type instance struct {
	spec  *spec.Instance
	decl  int32
	cur   replicated.Assignment
	has   bool   // cur is set: the instance has a committed assignment
	node  int32  // node index in the plan; -1 when not (yet) placed
	leave string // why cur could not be kept; "" when kept or new
	why   string // why it is unschedulable
	// score is the chosen node's score when place chose it (a new or
	// moved instance), for the plan's reason.
	score nodeScore
	// fn is the function the instance belongs to ("" for a VM's);
	// fnWhy why placeFunctions chose its node (function.go).
	fn, fnWhy string
}

// declared is one VM as declared in the spec (before replica expansion).
type declared struct {
	name      string
	placement *spec.Placement
	// volumes: the VM declares volumes, so it needs a node with Ceph.
	volumes bool
	class   int32
	// conflicts are the declared VMs this one must not share a node with
	// (anti-affinity, made symmetric), sorted, without duplicates.
	conflicts []int32
}

// class is a distinct combination of placement.nodes, placement.labels and
// the need for Ceph; declared VMs with equal constraints share one.
type class struct {
	allowed  []uint64 // bitset: nodes satisfying placement.nodes and placement.labels (and with Ceph, if needed)
	eligible []int32  // allowed nodes that are ready, ascending: where new instances may go
	reason   string   // why eligible is empty (computed once)
}

func newScheduler(in Input) *scheduler {
	s := &scheduler{in: in}

	ids := make([]uint64, 0, len(in.Nodes))
	for id, n := range in.Nodes {
		if n != nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	s.ids = ids
	s.nodes = make([]*replicated.Node, len(ids))
	s.nodeIdx = make(map[uint64]int32, len(ids))
	s.freeMem = make([]int, len(ids))
	s.freeCPU = make([]int, len(ids))
	for i, id := range ids {
		n := in.Nodes[id]
		s.nodes[i] = n
		s.nodeIdx[id] = int32(i)
		s.freeMem[i], s.freeCPU[i] = n.Capacity.MemMiB, n.Capacity.VCPU
	}

	var specs []spec.Instance
	var fnOf map[string]string // function instance → function
	if in.Desired != nil {
		specs = in.Desired.Instances()
		var fns []spec.Instance
		if fns, fnOf = functionInstances(in.Desired, in.Functions); len(fns) > 0 {
			// Stable: a VM instance of the same name (an invalid spec) keeps
			// the name, and the function's is skipped below.
			specs = append(specs, fns...)
			slices.SortStableFunc(specs, byInstanceName)
		}
	}
	// Instances returns them sorted by name; everything below relies on it.
	// Declared VMs, by name.
	declIdx := make(map[string]int32, len(specs))
	for i := range specs {
		if i > 0 && specs[i].Declared == specs[i-1].Declared {
			continue // replicas are mostly adjacent: skip the map
		}
		if _, ok := declIdx[specs[i].Declared]; !ok {
			declIdx[specs[i].Declared] = -1
			s.decls = append(s.decls, declared{name: specs[i].Declared, placement: &specs[i].Placement,
				volumes: len(specs[i].Volumes) > 0})
		}
	}
	slices.SortFunc(s.decls, func(a, b declared) int { return strings.Compare(a.name, b.name) })
	for i := range s.decls {
		declIdx[s.decls[i].name] = int32(i)
	}

	s.insts = make([]instance, 0, len(specs))
	for i := range specs {
		if i > 0 && specs[i].Name == specs[i-1].Name {
			continue // an invalid spec; spec validation rejects duplicate names
		}
		it := instance{spec: &specs[i], node: -1}
		if n := len(s.insts); n > 0 && specs[i].Declared == s.insts[n-1].spec.Declared {
			it.decl = s.insts[n-1].decl
		} else {
			it.decl = declIdx[specs[i].Declared]
		}
		it.cur, it.has = in.Current[specs[i].Name]
		if fn := fnOf[specs[i].Name]; fn != "" && fn == specs[i].Declared {
			it.fn = fn
		}
		s.insts = append(s.insts, it)
	}

	s.buildAntiAffinity(declIdx)
	s.buildClasses()
	s.buildScoring()
	return s
}

// buildAntiAffinity fills decls[].conflicts and present. Names that are not
// declared are ignored: they have no instances to avoid.
func (s *scheduler) buildAntiAffinity(declIdx map[string]int32) {
	s.present = make([][]uint64, len(s.decls))
	words := (len(s.nodes) + 63) / 64
	for d := range s.decls {
		for _, name := range s.decls[d].placement.AntiAffinity {
			e, ok := declIdx[name]
			if !ok {
				continue
			}
			s.decls[d].conflicts = append(s.decls[d].conflicts, e)
			if int(e) != d {
				s.decls[e].conflicts = append(s.decls[e].conflicts, int32(d))
			}
		}
	}
	n := 0
	for d := range s.decls {
		if c := s.decls[d].conflicts; len(c) > 0 {
			slices.Sort(c)
			s.decls[d].conflicts = slices.Compact(c)
			n++
		}
	}
	bits := make([]uint64, n*words) // one allocation for every bitset
	for d := range s.decls {
		if len(s.decls[d].conflicts) > 0 {
			s.present[d], bits = bits[:words:words], bits[words:]
		}
	}
}

// buildClasses groups declared VMs by their node and label constraints and
// their need for Ceph, and computes, once per group, which nodes satisfy them.
func (s *scheduler) buildClasses() {
	byKey := make(map[string]int32)
	var key []byte
	for d := range s.decls {
		p, ceph := s.decls[d].placement, s.decls[d].volumes
		key = key[:0]
		if ceph {
			key = append(key, 'c')
		}
		for _, id := range sortedIDs(p.Nodes) {
			key = strconv.AppendUint(key, id, 10)
			key = append(key, ',')
		}
		key = append(key, '|')
		if len(p.Labels) > 0 {
			for _, k := range sortedKeys(p.Labels) {
				key = append(key, k...)
				key = append(key, 0)
				key = append(key, p.Labels[k]...)
				key = append(key, 0)
			}
		}
		c, ok := byKey[string(key)]
		if !ok {
			c = int32(len(s.classes))
			byKey[string(key)] = c
			s.classes = append(s.classes, s.newClass(p, ceph))
		}
		s.decls[d].class = c
	}
}

func (s *scheduler) newClass(p *spec.Placement, ceph bool) class {
	c := class{allowed: make([]uint64, (len(s.nodes)+63)/64)}
	// withoutCeph counts the ready nodes that would be eligible but for
	// their lack of Ceph, to say so when none is left.
	withoutCeph := 0
	consider := func(n int32) {
		if hasBit(c.allowed, n) || !hasLabels(s.nodes[n], p.Labels) {
			return
		}
		if ceph && !s.nodes[n].Ceph {
			if s.nodes[n].State == replicated.NodeReady {
				withoutCeph++
			}
			return
		}
		setBit(c.allowed, n)
	}
	if len(p.Nodes) > 0 {
		for _, id := range p.Nodes {
			if n, ok := s.nodeIdx[id]; ok {
				consider(n)
			}
		}
	} else {
		for n := range s.nodes {
			consider(int32(n))
		}
	}
	for n := range s.nodes {
		if hasBit(c.allowed, int32(n)) && s.nodes[n].State == replicated.NodeReady {
			c.eligible = append(c.eligible, int32(n))
		}
	}
	switch {
	case len(c.eligible) > 0:
	case withoutCeph > 0:
		c.reason = cephReason(p)
	default:
		c.reason = s.staticReason(p)
	}
	return c
}

// cephReason says that the ready nodes placement p allows lack Ceph,
// which an instance with volumes needs.
func cephReason(p *spec.Placement) string {
	where := "ready node"
	if len(p.Nodes) > 0 {
		where += fmt.Sprintf(" in placement.nodes %v", sortedIDs(p.Nodes))
	}
	if len(p.Labels) > 0 {
		where += " carrying labels " + labelString(p.Labels)
	}
	return fmt.Sprintf("needs Ceph for volume data: no %s has Ceph configured (start nodes with `blixard serve --ceph-config-file …`, or remove the VM's volumes)", where)
}

// keep keeps every assigned instance on its node where the rules allow it
// (rule 2 in plan.go) and records why the others must leave.
func (s *scheduler) keep() {
	order := make([]int32, 0, len(s.insts))
	for _, grown := range []bool{false, true} {
		for i := range s.insts {
			it := &s.insts[i]
			if it.has && it.why == "" && grew(it) == grown {
				order = append(order, int32(i))
			}
		}
	}
	for _, i := range order {
		it := &s.insts[i]
		n, why := s.keepable(it)
		if why != "" {
			it.leave = why
			continue
		}
		s.assign(it, n)
	}
}

func grew(it *instance) bool {
	return it.spec.MemMiB > it.cur.MemMiB || it.spec.VCPU > it.cur.VCPU
}

// keepable returns the node index of the instance's current assignment, or why the
// instance may not stay there.
func (s *scheduler) keepable(it *instance) (int32, string) {
	id := it.cur.Node
	n, ok := s.nodeIdx[id]
	if !ok {
		return -1, fmt.Sprintf("node %d is no longer registered", id)
	}
	node := s.nodes[n]
	switch node.State {
	case replicated.NodeReady, replicated.NodeCordoned:
	case replicated.NodeDraining, replicated.NodeDown:
		return -1, fmt.Sprintf("node %d is %s", id, node.State)
	default:
		return -1, fmt.Sprintf("node %d is in unknown state %q", id, node.State)
	}
	d := &s.decls[it.decl]
	if !hasBit(s.classes[d.class].allowed, n) {
		p := d.placement
		if len(p.Nodes) > 0 && !slices.Contains(p.Nodes, id) {
			return -1, fmt.Sprintf("node %d is not in placement.nodes %v", id, sortedIDs(p.Nodes))
		}
		if !hasLabels(node, p.Labels) {
			return -1, fmt.Sprintf("node %d does not carry labels %s", id, missingLabels(node, p.Labels))
		}
		return -1, fmt.Sprintf("node %d has no Ceph configured, which the VM's volumes need", id)
	}
	if e := s.conflictOn(it.decl, n); e >= 0 {
		return -1, fmt.Sprintf("anti-affinity with %s, which already runs on node %d", s.decls[e].name, id)
	}
	if !s.fits(it, n) {
		return -1, fmt.Sprintf("no longer fits on node %d: needs %d MiB memory and %d vCPU, %d MiB and %d vCPU free",
			id, it.spec.MemMiB, it.spec.VCPU, s.freeMem[n], s.freeCPU[n])
	}
	return n, ""
}

// place places every instance not kept, largest first, each on the node
// that scores best (rule 3, score.go).
func (s *scheduler) place() {
	defer s.placeFunctions() // after every VM instance (function.go)
	// insts are sorted by name, so the index breaks ties by name.
	type key struct{ mem, cpu, i int }
	var order []key
	for i := range s.insts {
		if it := &s.insts[i]; it.node < 0 && it.why == "" && it.fn == "" { // why: no network address (allocateNetwork)
			order = append(order, key{it.spec.MemMiB, it.spec.VCPU, i})
		}
	}
	slices.SortFunc(order, func(a, b key) int {
		if a.mem != b.mem {
			return cmp.Compare(b.mem, a.mem)
		}
		if a.cpu != b.cpu {
			return cmp.Compare(b.cpu, a.cpu)
		}
		return cmp.Compare(a.i, b.i)
	})
	if len(order) == 0 {
		return
	}
	s.indexNodes()
	for _, k := range order {
		it := &s.insts[k.i]
		n, sc := s.choose(it)
		if n < 0 {
			it.why = s.unschedulableReason(it)
			continue
		}
		it.score = sc
		s.assign(it, n)
		s.reindex(n)
	}
}

func (s *scheduler) fits(it *instance, n int32) bool {
	return s.freeMem[n] >= it.spec.MemMiB && s.freeCPU[n] >= it.spec.VCPU
}

func (s *scheduler) assign(it *instance, n int32) {
	it.node = n
	s.freeMem[n] -= it.spec.MemMiB
	s.freeCPU[n] -= it.spec.VCPU
	if p := s.present[it.decl]; p != nil {
		setBit(p, n)
	}
	s.placed(it.decl, n)
}

// conflictOn returns a declared VM on node n that d has anti-affinity with,
// or -1.
func (s *scheduler) conflictOn(d int32, n int32) int32 {
	for _, e := range s.decls[d].conflicts {
		if hasBit(s.present[e], n) {
			return e
		}
	}
	return -1
}

// unschedulableReason says why no node can take it, at the point where
// placement gave up on it.
func (s *scheduler) unschedulableReason(it *instance) string {
	d := &s.decls[it.decl]
	c := &s.classes[d.class]
	if len(c.eligible) == 0 {
		return c.reason
	}
	best, blocked := int32(-1), 0
	for _, n := range c.eligible {
		if s.conflictOn(it.decl, n) >= 0 {
			blocked++
			continue
		}
		if best < 0 || s.freeMem[n] > s.freeMem[best] {
			best = n
		}
	}
	if best < 0 {
		names := make([]string, len(d.conflicts))
		for i, e := range d.conflicts {
			names[i] = s.decls[e].name
		}
		return fmt.Sprintf("every eligible node already runs a VM it has anti-affinity with (%s)", strings.Join(names, ", "))
	}
	r := fmt.Sprintf("needs %d MiB memory and %d vCPU; largest free on an eligible node: %d MiB memory and %d vCPU (node %d)",
		it.spec.MemMiB, it.spec.VCPU, s.freeMem[best], s.freeCPU[best], s.ids[best])
	if blocked > 0 {
		r += fmt.Sprintf("; anti-affinity rules out %d more eligible %s", blocked, plural(blocked, "node", "nodes"))
	}
	return r
}

// staticReason says why no node is eligible for new instances with
// placement p, whatever their resources.
func (s *scheduler) staticReason(p *spec.Placement) string {
	if len(s.nodes) == 0 {
		return "no nodes are registered"
	}
	var cands []int32
	var known, unknown []uint64
	if len(p.Nodes) > 0 {
		for _, id := range sortedIDs(p.Nodes) {
			if n, ok := s.nodeIdx[id]; ok {
				cands = append(cands, n)
				known = append(known, id)
			} else {
				unknown = append(unknown, id)
			}
		}
		if len(cands) == 0 {
			return fmt.Sprintf("placement.nodes %v %s not registered", unknown, plural(len(unknown), "is", "are"))
		}
	} else {
		for n := range s.nodes {
			cands = append(cands, int32(n))
		}
	}
	var notReady []string
	ready := 0
	for _, n := range cands {
		if st := s.nodes[n].State; st == replicated.NodeReady {
			ready++
		} else {
			notReady = append(notReady, fmt.Sprintf("node %d is %s", s.ids[n], st))
		}
	}
	var r string
	switch {
	case ready == 0 && len(p.Nodes) > 0:
		r = fmt.Sprintf("no node in placement.nodes %v is ready (%s)", known, strings.Join(notReady, ", "))
	case ready == 0:
		r = fmt.Sprintf("no eligible nodes: all %d %s cordoned, draining or down",
			len(cands), plural(len(cands), "node is", "nodes are"))
	case len(p.Nodes) > 0:
		r = fmt.Sprintf("no ready node in placement.nodes %v carries labels %s", known, labelString(p.Labels))
	default:
		r = fmt.Sprintf("no ready node carries labels %s", labelString(p.Labels))
	}
	if len(unknown) > 0 {
		r += fmt.Sprintf("; placement.nodes %v %s not registered", unknown, plural(len(unknown), "is", "are"))
	}
	return r
}

// plan turns the scheduler's outcome into a Plan.
func (s *scheduler) plan() Plan {
	var p Plan
	p.Assignments = make([]replicated.Assignment, 0, len(s.insts))
	added, matched := 0, 0
	for i := range s.insts {
		switch it := &s.insts[i]; {
		case it.has:
			matched++
		case it.node >= 0:
			added++
		}
	}
	if added > 0 {
		p.Added = make([]Change, 0, added)
	}
	for i := range s.insts {
		it := &s.insts[i]
		var old *replicated.Assignment
		if it.has {
			old = &it.cur
		}
		if it.node < 0 {
			p.Unschedulable = append(p.Unschedulable, replicated.Unschedulable{VM: it.spec.Name, Declared: it.spec.Declared, Reason: it.why})
			if old != nil {
				p.Removed = append(p.Removed, changeOf(it.spec.Name, old, nil, it.leave))
			}
			continue
		}
		a := replicated.Assignment{
			VM:        it.spec.Name,
			Declared:  it.spec.Declared,
			OwnRunner: it.spec.OwnRunner(),
			Node:      s.ids[it.node],
			Drv:       it.spec.Runner.Drv,
			OutPath:   it.spec.Runner.Out,
			VCPU:      it.spec.VCPU,
			MemMiB:    it.spec.MemMiB,
			Health:    it.spec.Health,
			Function:  it.fn,
			Snapshot:  functionSnapshot(s.in.Desired, it.fn),
		}
		if len(it.spec.Volumes) > 0 {
			a.Volumes = s.in.Desired.VolumesOf(*it.spec)
		}
		switch {
		case old == nil:
			c := changeOf(a.VM, nil, &a, "")
			c.Placement = s.placeWhy(it)
			p.Added = append(p.Added, c)
		case old.Node != a.Node:
			c := changeOf(a.VM, old, &a, it.leave)
			c.Placement = s.placeWhy(it)
			p.Moved = append(p.Moved, c)
		case !old.SameWorkload(a):
			c := changeOf(a.VM, old, &a, "")
			c.Placement = keptWhy(a.Node)
			p.Changed = append(p.Changed, c)
		default:
			a.Generation = old.Generation
		}
		p.Assignments = append(p.Assignments, a)
	}
	// Assignments of VMs no longer declared: every other one matched an
	// instance, so there are none when the counts agree.
	if matched < len(s.in.Current) {
		var gone []string
		for name := range s.in.Current {
			if !s.isDesired(name) {
				gone = append(gone, name)
			}
		}
		slices.Sort(gone)
		for _, name := range gone {
			old := s.in.Current[name]
			p.Removed = append(p.Removed, changeOf(name, &old, nil, ReasonNotDeclared))
		}
		slices.SortFunc(p.Removed, func(a, b Change) int { return strings.Compare(a.VM, b.VM) })
	}
	return p
}

// isDesired reports whether name is a desired instance.
func (s *scheduler) isDesired(name string) bool {
	_, ok := slices.BinarySearchFunc(s.insts, name, func(it instance, name string) int {
		return strings.Compare(it.spec.Name, name)
	})
	return ok
}

func hasLabels(n *replicated.Node, want map[string]string) bool {
	for k, v := range want {
		if got, ok := n.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// missingLabels lists the labels of want that n does not carry, "k=v,k2=v2".
func missingLabels(n *replicated.Node, want map[string]string) string {
	var out []string
	for _, k := range sortedKeys(want) {
		if got, ok := n.Labels[k]; !ok || got != want[k] {
			out = append(out, k+"="+want[k])
		}
	}
	return strings.Join(out, ",")
}

func labelString(m map[string]string) string {
	var out []string
	for _, k := range sortedKeys(m) {
		out = append(out, k+"="+m[k])
	}
	return strings.Join(out, ",")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortedIDs(ids []uint64) []uint64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func hasBit(set []uint64, n int32) bool { return set[n>>6]&(1<<(uint(n)&63)) != 0 }
func setBit(set []uint64, n int32)      { set[n>>6] |= 1 << (uint(n) & 63) }
