package reconciler

import (
	"slices"
	"strconv"

	"github.com/blixard/blixard/replicated"
)

// Scoring of the nodes a new or moved instance may go to (rule 3 in
// plan.go). Hard constraints (readiness, placement.nodes and labels, Ceph,
// anti-affinity, free resources) decide whether a node may take the
// instance at all; among those that may, the best score wins. A score is
// compared field by field, in this order:
//
//  1. zone: fewer instances of the same declared VM in the node's value of
//     placement.spreadBy (nodes without that label form one group of their
//     own); always 0 without spreadBy;
//  2. here: fewer instances of the same declared VM on the node;
//  3. prefer: more placement.prefer.labels entries the node carries;
//  4. alloc: the node more allocated before this instance (bin-packing:
//     keep empty nodes empty for large VMs, and spread only what asks
//     for it);
//  5. the lower node id.
//
// Spreading comes first because it is what keeps one host (or zone)
// failure from taking every replica; preferences are wishes, so they
// yield to it; bin-packing decides everything else.

// nodeScore is what the planner knows about a node when it places an
// instance there.
type nodeScore struct {
	zone   int32 // instances of the declared VM in the node's spreadBy value
	here   int32 // instances of the declared VM on the node
	prefer int32 // prefer.labels entries the node carries
	alloc  int32 // allocation before the instance, parts per million (allocPPM)
}

// Bit widths of a packed score key. Counts saturate: replicas are at most
// spec.MaxReplicas (1000), far below 4095, and a flake with more than 255
// preferred labels gains nothing from telling more apart.
const (
	allocMax   = 1_000_000
	allocBits  = 20 // 2^20 > allocMax
	preferMax  = 255
	countMax   = 4095
	preferBits = 8
	countBits  = 12
)

// key packs s into an integer that orders scores as the rules above do:
// lower is better. Equal keys are broken by node id by the caller.
func (s nodeScore) key() uint64 {
	clamp := func(v, hi int32) uint64 { return uint64(min(max(v, 0), hi)) }
	return clamp(s.zone, countMax)<<(allocBits+preferBits+countBits) |
		clamp(s.here, countMax)<<(allocBits+preferBits) |
		(preferMax-clamp(s.prefer, preferMax))<<allocBits |
		(allocMax - clamp(s.alloc, allocMax))
}

// tier is the part of a key that comes before bin-packing.
func tier(key uint64) uint64 { return key >> allocBits }

// allocPPM is how much of a node is allocated, in parts per million: the
// mean of its memory and vCPU shares in use. A resource the node has none
// of counts as fully used.
func allocPPM(capacity replicated.Resources, freeMem, freeCPU int) int32 {
	share := func(free, total int) int64 {
		if total <= 0 {
			return allocMax
		}
		return min(max(int64(total-free)*allocMax/int64(total), 0), allocMax)
	}
	return int32((share(freeMem, capacity.MemMiB) + share(freeCPU, capacity.VCPU)) / 2)
}

// scoreIndex is what scoring needs beyond the scheduler's free resources.
// Choosing a node must not score every node for every instance (10,000
// instances on 1,000 nodes), so each class with more than small eligible
// nodes keeps them in bin-packing order (classOrder): the first node of
// that order that fits and has the best spread and preference the
// instance can get is the best, and the search stops there. Smaller
// classes are scanned whole.
type scoreIndex struct {
	small int // classes with at most this many eligible nodes keep no order (smallClass)

	alloc []int32 // per node: allocPPM
	here  []int32 // per node: scratch count of the declared VM being placed

	orders []classOrder // per class; nil order for small classes
	// member lists, per node, the classes whose order it is in: those of
	// node n are member[memberStart[n]:memberStart[n+1]].
	memberStart []int32
	member      []int32

	soft    []softRules // per declared VM
	on      []int32     // the on lists of softRules, back to back
	spreads []spreadState
	keys    []spreadKey
	prefers []preferSet

	plain [101]string // "binpack: N% used", made once per N: most reasons are just that
}

// smallClass is the most eligible nodes a class has that choose scans
// whole instead of keeping them in order.
const smallClass = 64

// classOrder is a class's eligible nodes, most allocated first and, among
// equally allocated ones, by id: the order bin-packing prefers them in.
// Allocation only grows while place runs, so a node only ever moves
// towards the front.
type classOrder struct {
	order []int32
	pos   []int32 // per node index: its position in order (eligible nodes only)
	// Per chunk of orderChunk positions, the largest free memory and the
	// largest free vCPU of its nodes: a chunk where no node has the
	// memory, or none the vCPU, is skipped whole. Nodes full in one
	// resource gather at the front, where every search would walk them.
	chunkMem []int
	chunkCPU []int
}

// orderChunk is the number of positions of a class order summarised
// together.
const orderChunk = 32

// summarize recomputes the chunks of positions from to to (inclusive).
func (o *classOrder) summarize(s *scheduler, from, to int32) {
	for ch := from / orderChunk; ch <= to/orderChunk; ch++ {
		mem, cpu := -1, -1
		for _, n := range o.order[ch*orderChunk : min(int(ch+1)*orderChunk, len(o.order))] {
			mem, cpu = max(mem, s.freeMem[n]), max(cpu, s.freeCPU[n])
		}
		o.chunkMem[ch], o.chunkCPU[ch] = mem, cpu
	}
}

// softRules is a declared VM's part in scoring. It holds no pointers, so
// that the collector need not scan one per declared VM.
type softRules struct {
	many bool // the VM has more than one instance: its replicas spread
	// The nodes of its instances placed so far, with repeats (only when
	// many), are scoreIndex.on[onStart : onStart+onLen].
	onStart, onLen int32
	// spread is an index into scoreIndex.spreads, -1 without spreadBy (or
	// without replicas to spread).
	spread int32
	// prefer is an index into scoreIndex.prefers, -1 without
	// prefer.labels; bestPrefer the most entries any node of its class
	// carries (-1: not computed yet).
	prefer     int32
	bestPrefer int32
}

// spreadState is what a VM that spreads by a label key counts.
type spreadState struct {
	key    int32   // index into scoreIndex.keys
	zones  []int32 // instances per value index (spreadKey.of)
	groups []bool  // per value index: a node of the VM's class has it (leastZone; nil until needed)
}

// onOf is the nodes of r's instances placed so far.
func (x *scoreIndex) onOf(r *softRules) []int32 { return x.on[r.onStart : r.onStart+r.onLen] }

// spreadKey is one label key that some VM spreads by, with every node's
// value of it as an index into values; nodes without the label have
// index len(values).
type spreadKey struct {
	key    string
	values []string
	of     []int32
}

// valueName names value index v of k in reasons.
func (k *spreadKey) valueName(v int32) string {
	if int(v) == len(k.values) {
		return "nodes without " + k.key
	}
	return k.key + "=" + k.values[v]
}

// preferSet is one distinct placement.prefer.labels map and, per node, how
// many of its entries the node carries.
type preferSet struct {
	text  string // "k=v,k2=v2"
	total int
	match []uint8
}

// buildScoring prepares scoring: which declared VMs spread (and by what)
// and which have preferences. Allocation and the class orders are built
// by indexNodes once keep has run.
func (s *scheduler) buildScoring() {
	x := &s.score
	x.soft = make([]softRules, len(s.decls))
	counts := make([]int32, len(s.decls))
	for i := range s.insts {
		counts[s.insts[i].decl]++
	}
	// Each instance is assigned at most once, so a VM's on list never
	// outgrows its count of instances.
	var on int32
	keyIdx := map[string]int32{}
	preferIdx := map[string]int32{}
	for d := range s.decls {
		p := s.decls[d].placement
		r := softRules{many: counts[d] > 1, spread: -1, prefer: -1, bestPrefer: -1}
		if r.many {
			r.onStart = on
			on += counts[d]
		}
		if r.many && p.SpreadBy != "" {
			k, ok := keyIdx[p.SpreadBy]
			if !ok {
				k = int32(len(x.keys))
				keyIdx[p.SpreadBy] = k
				x.keys = append(x.keys, s.newSpreadKey(p.SpreadBy))
			}
			r.spread = int32(len(x.spreads))
			x.spreads = append(x.spreads, spreadState{key: k, zones: make([]int32, len(x.keys[k].values)+1)})
		}
		if len(p.Prefer.Labels) > 0 {
			text := labelString(p.Prefer.Labels)
			i, ok := preferIdx[text]
			if !ok {
				i = int32(len(x.prefers))
				preferIdx[text] = i
				x.prefers = append(x.prefers, s.newPreferSet(p.Prefer.Labels, text))
			}
			r.prefer = i
		}
		x.soft[d] = r
	}
	x.on = make([]int32, on)
	x.here = make([]int32, len(s.nodes))
}

func (s *scheduler) newSpreadKey(key string) spreadKey {
	k := spreadKey{key: key, of: make([]int32, len(s.nodes))}
	for _, n := range s.nodes {
		if v, ok := n.Labels[key]; ok {
			k.values = append(k.values, v)
		}
	}
	slices.Sort(k.values)
	k.values = slices.Compact(k.values)
	for i, n := range s.nodes {
		v, ok := n.Labels[key]
		if !ok {
			k.of[i] = int32(len(k.values))
			continue
		}
		j, _ := slices.BinarySearch(k.values, v)
		k.of[i] = int32(j)
	}
	return k
}

func (s *scheduler) newPreferSet(labels map[string]string, text string) preferSet {
	p := preferSet{text: text, total: len(labels), match: make([]uint8, len(s.nodes))}
	for i, n := range s.nodes {
		m := 0
		for k, v := range labels {
			if got, ok := n.Labels[k]; ok && got == v {
				m++
			}
		}
		p.match[i] = uint8(min(m, preferMax))
	}
	return p
}

// indexNodes computes every node's allocation and the class orders from
// what keep left on the nodes.
func (s *scheduler) indexNodes() {
	x := &s.score
	x.alloc = make([]int32, len(s.nodes))
	for n := range s.nodes {
		x.alloc[n] = allocPPM(s.nodes[n].Capacity, s.freeMem[n], s.freeCPU[n])
	}
	x.orders = make([]classOrder, len(s.classes))
	x.memberStart = make([]int32, len(s.nodes)+1)
	for c := range s.classes {
		if e := s.classes[c].eligible; len(e) > x.small {
			for _, n := range e {
				x.memberStart[n+1]++
			}
		}
	}
	for n := range s.nodes {
		x.memberStart[n+1] += x.memberStart[n]
	}
	x.member = make([]int32, x.memberStart[len(s.nodes)])
	next := slices.Clone(x.memberStart[:len(s.nodes)])
	for c := range s.classes {
		e := s.classes[c].eligible
		if len(e) <= x.small {
			continue
		}
		o := &x.orders[c]
		o.order = slices.Clone(e)
		slices.SortFunc(o.order, func(a, b int32) int {
			if x.alloc[a] != x.alloc[b] {
				return int(x.alloc[b]) - int(x.alloc[a])
			}
			return int(a - b)
		})
		o.pos = make([]int32, len(s.nodes))
		for i, n := range o.order {
			o.pos[n] = int32(i)
			x.member[next[n]] = int32(c)
			next[n]++
		}
		chunks := (len(o.order) + orderChunk - 1) / orderChunk
		o.chunkMem, o.chunkCPU = make([]int, chunks), make([]int, chunks)
		o.summarize(s, 0, int32(len(o.order)-1))
	}
}

// reindex updates node n's allocation and moves it forward in the class
// orders after an instance was placed there (during place; keep runs
// before indexNodes).
func (s *scheduler) reindex(n int32) {
	x := &s.score
	a := allocPPM(s.nodes[n].Capacity, s.freeMem[n], s.freeCPU[n])
	x.alloc[n] = a
	for _, c := range x.member[x.memberStart[n]:x.memberStart[n+1]] {
		o := &x.orders[c]
		was := o.pos[n]
		i := was
		for ; i > 0; i-- {
			prev := o.order[i-1]
			if pa := x.alloc[prev]; pa > a || pa == a && prev < n {
				break
			}
			o.order[i] = prev
			o.pos[prev] = i
		}
		o.order[i] = n
		o.pos[n] = i
		o.summarize(s, i, was)
	}
}

// placed records that an instance of declared VM d went to node n, for
// spreading; called by assign for kept and placed instances alike.
func (s *scheduler) placed(d, n int32) {
	x := &s.score
	r := &x.soft[d]
	if !r.many {
		return
	}
	x.on[r.onStart+r.onLen] = n
	r.onLen++
	if r.spread >= 0 {
		sp := &x.spreads[r.spread]
		sp.zones[x.keys[sp.key].of[n]]++
	}
}

// scoreOf is node n's score for an instance of declared VM d. here must
// hold d's counts (choose fills it).
func (s *scheduler) scoreOf(d, n int32) nodeScore {
	x := &s.score
	r := &x.soft[d]
	sc := nodeScore{here: x.here[n], alloc: x.alloc[n]}
	if r.spread >= 0 {
		sp := &x.spreads[r.spread]
		sc.zone = sp.zones[x.keys[sp.key].of[n]]
	}
	if r.prefer >= 0 {
		sc.prefer = int32(x.prefers[r.prefer].match[n])
	}
	return sc
}

// bestPrefer is the most prefer.labels entries an eligible node of d's
// class carries: a node with that many, and nothing of d yet, cannot be
// beaten but by a more allocated one.
func (s *scheduler) bestPrefer(d int32) int32 {
	r := &s.score.soft[d]
	if r.prefer < 0 {
		return 0
	}
	if r.bestPrefer < 0 {
		r.bestPrefer = 0
		match := s.score.prefers[r.prefer].match
		for _, n := range s.classes[s.decls[d].class].eligible {
			r.bestPrefer = max(r.bestPrefer, int32(match[n]))
		}
	}
	return r.bestPrefer
}

// choose returns the best node for it by the scoring rules, and its score,
// or -1 when no eligible node may take it.
func (s *scheduler) choose(it *instance) (int32, nodeScore) {
	x := &s.score
	d := it.decl
	on := x.onOf(&x.soft[d])
	for _, n := range on {
		x.here[n]++
	}
	c := s.decls[d].class
	var best int32
	if o := &x.orders[c]; o.order == nil {
		best = s.scan(it, s.classes[c].eligible)
	} else {
		best = s.search(it, o)
	}
	var sc nodeScore
	if best >= 0 {
		sc = s.scoreOf(d, best)
	}
	for _, n := range on {
		x.here[n] = 0
	}
	return best, sc
}

// admits reports whether node n has the room for it and runs nothing it
// has anti-affinity with (eligibility is the caller's).
func (s *scheduler) admits(it *instance, n int32) bool {
	return s.freeMem[n] >= it.spec.MemMiB && s.freeCPU[n] >= it.spec.VCPU &&
		(len(s.decls[it.decl].conflicts) == 0 || s.conflictOn(it.decl, n) < 0)
}

// scan returns the node of nodes (in id order) that admits it with the
// lowest key, the first of equal ones, or -1.
func (s *scheduler) scan(it *instance, nodes []int32) int32 {
	best, bestKey := int32(-1), uint64(0)
	for _, n := range nodes {
		if !s.admits(it, n) {
			continue
		}
		if k := s.scoreOf(it.decl, n).key(); best < 0 || k < bestKey {
			best, bestKey = n, k
		}
	}
	return best
}

// search is scan over a class order. No node scores a better tier than
// the fewest instances of the VM in any spreadBy group, none on the node,
// and the most preferred labels any node of the class carries; the first
// node in bin-packing order that reaches that tier cannot be beaten by a
// later one (less allocated, or as allocated with a higher id), so the
// search stops there.
func (s *scheduler) search(it *instance, o *classOrder) int32 {
	d := it.decl
	target := tier(nodeScore{zone: s.leastZone(d), prefer: s.bestPrefer(d)}.key())
	mem, cpu := it.spec.MemMiB, it.spec.VCPU
	best, bestKey := int32(-1), uint64(0)
	for ch := range o.chunkMem {
		if o.chunkMem[ch] < mem || o.chunkCPU[ch] < cpu {
			continue
		}
		for _, n := range o.order[ch*orderChunk : min((ch+1)*orderChunk, len(o.order))] {
			if !s.admits(it, n) {
				continue
			}
			k := s.scoreOf(d, n).key()
			if best < 0 || k < bestKey {
				best, bestKey = n, k
			}
			if tier(k) == target {
				return best
			}
		}
	}
	return best
}

// leastZone is the fewest instances of declared VM d in any spreadBy
// group that has a node of d's class: no node can score a lower zone.
func (s *scheduler) leastZone(d int32) int32 {
	r := &s.score.soft[d]
	if r.spread < 0 {
		return 0
	}
	sp := &s.score.spreads[r.spread]
	if sp.groups == nil {
		k := &s.score.keys[sp.key]
		sp.groups = make([]bool, len(sp.zones))
		for _, n := range s.classes[s.decls[d].class].eligible {
			sp.groups[k.of[n]] = true
		}
	}
	least := int32(-1)
	for g, ok := range sp.groups {
		if ok && (least < 0 || sp.zones[g] < least) {
			least = sp.zones[g]
		}
	}
	return max(least, 0)
}

// placeWhy is what a placement reason says: the score of the chosen node
// and what the VM's rules name.
type placeWhy struct {
	declared string
	spread   bool   // the VM has replicas: say how they spread
	zone     string // the node's spreadBy group ("zone=b", "nodes without zone"); "" without spreadBy
	prefer   string // prefer.labels as "k=v,…"; "" without
	total    int    // entries in prefer.labels
	score    nodeScore
}

// String is the reason a placed instance went to its node, e.g.
// "spread: 0 of web here, 0 in zone=b; prefer disk=ssd: 1 of 1 match; binpack: 40% used".
func (w placeWhy) String() string {
	b := make([]byte, 0, 96)
	if w.spread {
		b = append(b, "spread: "...)
		b = strconv.AppendInt(b, int64(w.score.here), 10)
		b = append(b, " of "...)
		b = append(b, w.declared...)
		b = append(b, " here"...)
		if w.zone != "" {
			b = append(b, ", "...)
			b = strconv.AppendInt(b, int64(w.score.zone), 10)
			b = append(b, " in "...)
			b = append(b, w.zone...)
		}
		if w.score.here > 0 || w.score.zone > 0 {
			b = append(b, " (the fewest where it fits)"...)
		}
		b = append(b, "; "...)
	}
	if w.prefer != "" {
		b = append(b, "prefer "...)
		b = append(b, w.prefer...)
		b = append(b, ": "...)
		b = strconv.AppendInt(b, int64(w.score.prefer), 10)
		b = append(b, " of "...)
		b = strconv.AppendInt(b, int64(w.total), 10)
		b = append(b, " match; "...)
	}
	b = append(b, "binpack: "...)
	b = strconv.AppendInt(b, int64(w.score.alloc/(allocMax/100)), 10)
	b = append(b, "% used"...)
	return string(b)
}

// why describes the placement of it (placed by choose).
func (s *scheduler) why(it *instance) string {
	x := &s.score
	r := &x.soft[it.decl]
	if !r.many && r.prefer < 0 {
		pct := it.score.alloc / (allocMax / 100)
		if x.plain[pct] == "" {
			x.plain[pct] = placeWhy{score: it.score}.String()
		}
		return x.plain[pct]
	}
	w := placeWhy{declared: it.spec.Declared, spread: r.many, score: it.score}
	if r.spread >= 0 {
		k := &x.keys[x.spreads[r.spread].key]
		w.zone = k.valueName(k.of[it.node])
	}
	if r.prefer >= 0 {
		p := &x.prefers[r.prefer]
		w.prefer, w.total = p.text, p.total
	}
	return w.String()
}

// keptWhy is the placement reason of an instance that stays on its node.
func keptWhy(node uint64) string { return "kept on node " + strconv.FormatUint(node, 10) }
