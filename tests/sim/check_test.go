package sim

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// checker holds the invariants. Those about the log are checked on every
// apply; those about runners on every runner change; the rest every
// checkEvery ms of virtual time and at the end.
type checker struct {
	w *world

	failure string   // the first violation: the run stops there
	known   []string // violations of known, reported issues (see knownIssues)

	// (a) the committed revisions, in order.
	revs     []replicated.Revision
	revIndex map[uint64]int // revision ID → position in revs
	first    uint64         // highest index applied anywhere

	// Availability: the leader of the term could commit. availTotal is
	// the virtual time during which it could, up to availFrom.
	availTotal int64
	availFrom  int64 // -1: not available now
	termAvail  int64 // availability clock when the current term began
	termSeen   int
	heardAt    map[uint64]int64  // availability clock at a node's last committed heartbeat (or registration)
	judgedSeq  map[uint64]uint64 // the heartbeat sequence at which the leader last judged a node silent

	// (b) double runs.
	overlapStart map[string]int64
	overlapNodes map[string][]uint64
	// overlapExcused: the open double run has been excused throughout
	// (all copies but one on nodes whose blixard could not fence).
	overlapExcused map[string]bool
	// acted: the node's agent has made a pass since its blixard last
	// froze, died or booted; until then it cannot have fenced itself.
	acted        map[uint64]bool
	impaired     map[uint64]bool
	lastImpaired map[uint64]int64
	maxExcused   overlapRecord
	maxIsolated  overlapRecord
	maxHandoff   overlapRecord
	overlaps     int
	idle         map[string]int64 // "node/vm": time a healthy agent has let an unwanted runner run

	// (c) convergence.
	healAt      int64 // -1 until heal
	convergedAt int64 // -1 while not converged
	lastReason  string
	done        bool

	downs int
}

type overlapRecord struct {
	dur   int64
	vm    string
	nodes []uint64
	start int64
}

func newChecker(w *world) *checker {
	return &checker{w: w, revIndex: map[uint64]int{}, availFrom: -1, heardAt: map[uint64]int64{}, judgedSeq: map[uint64]uint64{},
		overlapStart: map[string]int64{}, overlapNodes: map[string][]uint64{}, overlapExcused: map[string]bool{},
		acted: map[uint64]bool{}, impaired: map[uint64]bool{},
		lastImpaired: map[uint64]int64{}, idle: map[string]int64{}, healAt: -1, convergedAt: -1}
}

// failf records a violation; the first one ends the run.
func (c *checker) failf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.w.tracef("VIOLATION: %s", msg)
	if c.failure == "" {
		c.failure = msg
	}
}

// knownf records a violation of a known issue: reported, the run goes on.
func (c *checker) knownf(issue, format string, args ...any) {
	msg := issue + ": " + fmt.Sprintf(format, args...)
	c.w.tracef("KNOWN ISSUE: %s", msg)
	if !c.w.cfg.EnforceKnown {
		c.known = append(c.known, msg)
		return
	}
	c.failf("%s", msg)
}

func (c *checker) availNow() int64 {
	if c.availFrom < 0 {
		return c.availTotal
	}
	return c.availTotal + c.w.now - c.availFrom
}

// tick closes the current availability interval (before a change).
func (c *checker) tick() {
	if c.availFrom >= 0 {
		c.availTotal += c.w.now - c.availFrom
		c.availFrom = -1
	}
}

// healthChanged reopens the availability interval and records which nodes
// are impaired (cannot learn or act on the plan), after any change.
func (c *checker) healthChanged() {
	w := c.w
	c.tick()
	if w.available() {
		c.availFrom = w.now
	}
	if w.term != c.termSeen {
		c.termSeen = w.term
		c.termAvail = c.availNow()
	}
	for _, n := range w.nodes {
		imp := !n.procUp || n.frozen || !n.registered || !w.available() || !w.reach(n, w.leader) || n.slowUntil > w.now
		if imp || c.impaired[n.id] {
			c.lastImpaired[n.id] = w.now
		}
		c.impaired[n.id] = imp
	}
}

// applied runs after node n applied e with result res.
func (c *checker) applied(n *node, e *entry, res replicated.Result) {
	if e.index > c.first {
		c.first = e.index
		c.firstApply(n, e, res)
	}
	if e.cmd.Type != replicated.CmdCommitPlan || !res.OK() {
		return
	}
	// (a) The node's history is the committed revisions, in order, up to
	// this one (the last MaxRevisionHistory of them).
	pos, ok := c.revIndex[e.index]
	h := n.st.History
	if !ok || len(h) == 0 || h[len(h)-1].ID != e.index {
		c.failf("history: node %d applied revision %d but its history ends %v", n.id, e.index, lastIDs(h))
		return
	}
	want := c.revs[max(0, pos+1-replicated.MaxRevisionHistory) : pos+1]
	if len(h) != len(want) || h[0].ID != want[0].ID || h[len(h)-1].Commit != want[len(want)-1].Commit {
		c.failf("history: node %d's history %v is not the committed revisions %v", n.id, lastIDs(h), lastIDs(want))
	}
}

func lastIDs(h []replicated.Revision) []uint64 {
	var ids []uint64
	for _, r := range h[max(0, len(h)-5):] {
		ids = append(ids, r.ID)
	}
	return ids
}

// firstApply runs once per entry, on the first node that applies it (the
// leader, at commit).
func (c *checker) firstApply(n *node, e *entry, res replicated.Result) {
	w := c.w
	switch e.cmd.Type {
	case replicated.CmdNodeHeartbeat:
		if res.OK() {
			c.heardAt[e.cmd.NodeHeartbeat.ID] = c.availNow()
		}
	case replicated.CmdRegisterNode:
		if _, ok := c.heardAt[e.cmd.RegisterNode.ID]; !ok {
			c.heardAt[e.cmd.RegisterNode.ID] = c.availNow()
		}
	case replicated.CmdSetNodeState:
		sn := e.cmd.SetNodeState
		if !res.OK() || sn.State != replicated.NodeDown || e.cmd.Actor != "" ||
			strings.Contains(res.Message, "is already") { // a duplicate of an applied mark changes nothing
			break
		}
		node := n.st.Nodes[sn.ID]
		seq, ok := c.judgedSeq[sn.ID]
		if sn.HeartbeatSeq != 0 {
			// The command names the judgement it was made on (several
			// leaders may have judged the node).
			seq, ok = sn.HeartbeatSeq, true
		}
		if ok && node.LastHeartbeatSeq != seq {
			c.knownf("down-after-heartbeat",
				"node %d marked down (%s) although heartbeats %d..%d of it committed after the leader judged it silent at heartbeat %d (command made at heartbeat %d) (rule: pass.go markStaleNodesDown proposes SetNodeState{down} without a condition on the node's heartbeat sequence; a pass's proposals go one after another, so a slow one lets the judgement go stale; a retried proposal can apply it again, even after `blixard node ready`)",
				sn.ID, sn.Reason, seq+1, node.LastHeartbeatSeq, seq, sn.HeartbeatSeq)
		}
		c.downs++
		w.cover("a node marked down")
	case replicated.CmdCommitPlan:
		if !res.OK() {
			return
		}
		rev := *n.st.Revision
		c.revIndex[rev.ID] = len(c.revs)
		c.revs = append(c.revs, rev)
		c.checkPlacement(n.st)
		if strings.Contains(rev.Summary, "unschedulable") && !strings.Contains(rev.Summary, " 0 unschedulable") {
			w.cover("a plan with unschedulable instances")
		}
		if !strings.Contains(rev.Summary, " 0 moved") {
			w.cover("a plan that moves VMs")
		}
		w.tracef("revision %d (commit %s) applied first on node %d: %s", rev.ID, rev.Commit, n.id, rev.Summary)
	}
}

// checkPlacement is (d): a committed plan respects capacity,
// anti-affinity and placement constraints of the nodes it was applied to.
func (c *checker) checkPlacement(st *replicated.State) {
	used := map[uint64]replicated.Resources{}
	onNode := map[uint64]map[string]bool{} // node → declared VMs on it
	for _, name := range sortedKeys(st.Assignments) {
		a := st.Assignments[name]
		r := used[a.Node]
		r.VCPU += a.VCPU
		r.MemMiB += a.MemMiB
		used[a.Node] = r
		if onNode[a.Node] == nil {
			onNode[a.Node] = map[string]bool{}
		}
		onNode[a.Node][a.Declared] = true
		vm, ok := st.Desired.VMs[a.Declared]
		if !ok {
			c.failf("placement: revision %d assigns %s of undeclared VM %s", st.Revision.ID, name, a.Declared)
			continue
		}
		n := st.Nodes[a.Node]
		for k, v := range vm.Placement.Labels {
			if n.Labels[k] != v {
				c.failf("placement: revision %d puts %s on node %d, which lacks label %s=%s", st.Revision.ID, name, a.Node, k, v)
			}
		}
		if len(vm.Placement.Nodes) > 0 && !slices.Contains(vm.Placement.Nodes, a.Node) {
			c.failf("placement: revision %d puts %s on node %d, not in placement.nodes %v", st.Revision.ID, name, a.Node, vm.Placement.Nodes)
		}
	}
	for _, id := range sortedKeys(used) {
		u, capy := used[id], st.Nodes[id].Capacity
		if u.VCPU > capy.VCPU || u.MemMiB > capy.MemMiB {
			c.failf("capacity: revision %d places %d vCPU / %d MiB on node %d, which has %d / %d",
				st.Revision.ID, u.VCPU, u.MemMiB, id, capy.VCPU, capy.MemMiB)
		}
	}
	// Anti-affinity: symmetric, between declared names, per node.
	for _, id := range sortedKeys(onNode) {
		decls := onNode[id]
		for _, d := range sortedKeys(decls) {
			for _, other := range st.Desired.VMs[d].Placement.AntiAffinity {
				if other == d {
					n := 0
					for _, a := range st.Assignments {
						if a.Node == id && a.Declared == d {
							n++
						}
					}
					if n > 1 {
						c.failf("anti-affinity: revision %d puts %d replicas of %s on node %d", st.Revision.ID, n, d, id)
					}
				} else if decls[other] {
					c.failf("anti-affinity: revision %d puts %s and %s on node %d", st.Revision.ID, d, other, id)
				}
			}
		}
	}
}

// judged checks the leader's decision that node id is stale (liveness):
// a leader must have been able to hear from a node for NodeTimeout of its
// own term — the cluster able to commit — before it judges it. A new
// leader gives every node that grace (reconciler.Heartbeats); a leader
// that kept its term while it could not commit (frozen, with no majority
// to elect another) must too.
func (c *checker) judged(id uint64, leader *node, seq uint64) {
	c.judgedSeq[id] = seq
	w := c.w
	nt := msOf(w.cfg.NodeTimeout)
	basis := max(c.heardAt[id], c.termAvail)
	heard := c.availNow() - basis
	if heard < nt-1000 {
		n := w.node(id)
		health := "cut off, frozen or down"
		if n.procUp && n.registered && !n.frozen && w.reach(n, leader) {
			health = "up and connected to the leader"
		}
		c.knownf("stale-heartbeat-record",
			"node %d judged node %d (now %s) silent for the node timeout (%s) after only %.1fs in which the cluster could commit since the node's last heartbeat or the term began (rule: reconciler/liveness.go: the loop's Heartbeats record, with ObserveHeartbeats/StaleNodes in pass.go markStaleNodesDown, spans time in which the leader could not hear anyone — frozen while keeping its term, or its loop blocked in a proposal across a quorum loss — and counts it as the node's silence)",
			leader.id, id, health, w.cfg.NodeTimeout, float64(heard)/1000)
	}
}

// runningOn lists the nodes where VM name's runner runs.
func (w *world) runningOn(name string) []uint64 {
	var on []uint64
	for _, n := range w.nodes {
		if u := n.host.units[name]; u != nil && u.alive {
			on = append(on, n.id)
		}
	}
	return on
}

// runnersChanged updates the double-run record of VM name.
func (c *checker) runnersChanged(name string) {
	w := c.w
	on := w.runningOn(name)
	start, open := c.overlapStart[name]
	switch {
	case len(on) >= 2 && !open:
		c.overlapStart[name] = w.now
		c.overlapNodes[name] = on
		c.overlapExcused[name] = true
		c.overlaps++
		w.tracef("double run: %s runs on nodes %v", name, on)
		c.checkOverlap(name, on)
	case len(on) >= 2:
		for _, id := range on {
			if !slices.Contains(c.overlapNodes[name], id) {
				c.overlapNodes[name] = append(c.overlapNodes[name], id)
			}
		}
		c.checkOverlap(name, on)
	case open:
		c.closeOverlap(name, start)
	}
}

// cannotFence: node id's blixard cannot have fenced itself: it is frozen
// or not running, or its agent has made no pass since it was.
func (c *checker) cannotFence(id uint64) bool {
	n := c.w.node(id)
	return !n.procUp || n.frozen || !c.acted[id]
}

// blixardStopped is called when node n's blixard freezes or stops.
func (c *checker) blixardStopped(n *node) { c.acted[n.id] = false }

// agentPassed is called after every pass of node n's agent: from now on
// its node can fence itself, so its open double runs are checked again.
func (c *checker) agentPassed(n *node) {
	if c.acted[n.id] {
		return
	}
	c.acted[n.id] = true
	for _, name := range sortedKeys(c.overlapStart) {
		c.checkOverlap(name, c.w.runningOn(name))
	}
}

// checkOverlap checks a double run of VM name on nodes on: with
// StrictOneCopy it is a violation unless every copy but one runs on a
// node whose blixard cannot fence (frozen or not running, or without an
// agent pass since: see doc.go).
func (c *checker) checkOverlap(name string, on []uint64) {
	if len(on) < 2 {
		return
	}
	able := 0
	for _, id := range on {
		if !c.cannotFence(id) {
			able++
		}
	}
	if able <= 1 {
		return
	}
	c.overlapExcused[name] = false
	if c.w.cfg.StrictOneCopy {
		c.failf("one copy: %s runs on nodes %v at once, %d of them with a blixard that has made an agent pass since it last froze or started (StrictOneCopy)",
			name, on, able)
	}
}

// closeOverlap ends a double run and files it: excused when every copy
// but one ran on a node whose blixard could not fence all along; else
// (only without StrictOneCopy) isolated when one of its nodes could not
// learn or act on the plan (cut off from the leader, frozen, down,
// replicating slowly) during it or the node timeout before it, or a
// handoff (a move between healthy nodes: the new copy starts before the
// old one has stopped).
func (c *checker) closeOverlap(name string, start int64) {
	w := c.w
	delete(c.overlapStart, name)
	nodes := c.overlapNodes[name]
	delete(c.overlapNodes, name)
	excused := c.overlapExcused[name]
	delete(c.overlapExcused, name)
	rec := overlapRecord{dur: w.now - start, vm: name, nodes: nodes, start: start}
	isolated := false
	for _, id := range nodes {
		if c.impaired[id] || c.lastImpaired[id] >= start-msOf(w.cfg.NodeTimeout)-5000 {
			isolated = true
		}
	}
	kind := "handoff"
	defer func() { w.cover("a double run (" + kind + ")") }()
	switch {
	case excused:
		kind = "blixard frozen or not running"
		if rec.dur > c.maxExcused.dur {
			c.maxExcused = rec
		}
	case isolated:
		kind = "isolated"
		if rec.dur > c.maxIsolated.dur {
			c.maxIsolated = rec
		}
	default:
		if rec.dur > c.maxHandoff.dur {
			c.maxHandoff = rec
		}
	}
	w.tracef("double run of %s on %v ended after %.3fs (%s)", name, nodes, float64(rec.dur)/1000, kind)
}

// staleCopyBound: how long a healthy agent may let a runner run that its
// own replica no longer assigns to it (a pass within Interval, a failed
// action retried after Interval, a build cancelled).
const staleCopyBound = 3*agentInterval + 2000

// periodic is the check every checkEvery ms.
func (c *checker) periodic() {
	w := c.w
	c.healthChanged()
	// (b) A healthy agent stops what its replica no longer assigns to it.
	for _, n := range w.nodes {
		healthy := n.procUp && n.registered && !n.frozen && n.agent != nil && n.st.Revision != nil
		for _, name := range sortedKeys(n.host.units) {
			key := fmt.Sprintf("%d/%s", n.id, name)
			u := n.host.units[name]
			a, ok := n.st.Assignments[name]
			wanted := ok && a.Node == n.id && a.Stopped == ""
			stopping := false
			if healthy {
				if v := n.agent.rec[name]; v != nil && v.op != nil &&
					(v.op.kind == nodeagent.ActStop || v.op.kind == nodeagent.ActRestart) {
					stopping = true
				}
			}
			if !u.alive || wanted || !healthy || stopping {
				delete(c.idle, key)
				continue
			}
			c.idle[key] += checkEvery
			if c.idle[key] > staleCopyBound {
				c.failf("stale copy: node %d's agent has let %s run for %.1fs although its replica (applied %d) assigns it to %s",
					n.id, name, float64(c.idle[key])/1000, n.applied, assignedTo(a, ok))
				delete(c.idle, key)
			}
		}
	}
	// (c) Convergence after heal.
	if c.healAt < 0 {
		return
	}
	reason := c.converged()
	if reason == "" {
		if c.convergedAt < 0 {
			c.convergedAt = w.now
			w.tracef("converged")
		}
		if w.now-c.convergedAt >= stableFor {
			c.done = true
		}
		return
	}
	if c.convergedAt >= 0 {
		w.tracef("no longer converged: %s", reason)
	}
	c.convergedAt, c.lastReason = -1, reason
	if w.now > c.healAt+c.bound() {
		c.failf("convergence: not converged %.1fs after heal (bound %.1fs): %s",
			float64(w.now-c.healAt)/1000, float64(c.bound())/1000, reason)
	}
}

func assignedTo(a replicated.Assignment, ok bool) string {
	switch {
	case !ok:
		return "no node"
	case a.Stopped != "":
		return fmt.Sprintf("node %d, kept stopped (%s)", a.Node, a.Stopped)
	}
	return fmt.Sprintf("node %d", a.Node)
}

func (c *checker) healed() { c.healAt = c.w.now }

// bound is the convergence bound after heal:
//
//	node timeout (a leader elected at heal judges nobody before it)
//	+ operator readies the nodes (within 2 s) + election (2 s)
//	+ poll (5 s) + the longest evaluation (12 s)
//	+ the longest wait of an agent: a build that failed just before heal is
//	  retried after BuildRetry (30 s) and takes up to 15 s; a hung stop
//	  takes 40 s; a crashed runner is restarted within 30 s
//	+ two heartbeat periods for the statuses to reach the state + 5 s slack.
//	+ the rollouts of the final spec: up to maxRolloutWaves waves one
//	  after the other, each a build (15 s), a start and two heartbeats,
//	  and minHealthySeconds (3 s).
func (c *checker) bound() int64 {
	return msOf(c.w.cfg.NodeTimeout) + 2000 + electionMax + pollEvery + 12000 +
		max(buildRetry+15000, hungStop, maxRestartBackoff) + 2*c.w.heartbeatEvery + 5000 +
		maxRolloutWaves*(15000+3000+2*c.w.heartbeatEvery+1000)
}

// maxRolloutWaves: at most 3 replicas, waves of at least one.
const maxRolloutWaves = 3

// converged says why the cluster has not converged ("" when it has):
// the leader's revision is the head commit, every node is ready and runs
// exactly the instances assigned to it, running their committed runner (or
// stopped when kept stopped), every restart asked for was carried out
// after it was asked, nothing is unschedulable, and the observed statuses
// in the state show no drift.
func (c *checker) converged() string {
	w := c.w
	l := w.leader
	if l == nil || !w.available() {
		return "no leader"
	}
	st := l.st
	if st.Revision == nil || st.Revision.Commit != w.repo.head {
		return fmt.Sprintf("the revision is not the head commit %s", w.repo.head)
	}
	for _, n := range w.nodes {
		if !n.procUp || n.frozen || !n.registered {
			return fmt.Sprintf("node %d's blixard is not running", n.id)
		}
		if s := st.Nodes[n.id].State; s != replicated.NodeReady {
			return fmt.Sprintf("node %d is %s", n.id, s)
		}
	}
	if len(st.Unschedulable) > 0 {
		return fmt.Sprintf("unschedulable: %v", st.Unschedulable)
	}
	for _, name := range sortedKeys(st.Assignments) {
		a := st.Assignments[name]
		if a.Stopped != "" {
			continue
		}
		u := w.node(a.Node).host.units[name]
		if u == nil || !u.alive || u.booted != a.OutPath {
			return fmt.Sprintf("%s does not run %s on node %d", name, a.OutPath, a.Node)
		}
		if a.Restart > 0 && u.spawnedAt < w.log[a.Restart-1].at {
			return fmt.Sprintf("restart %d of %s not carried out", a.Restart, name)
		}
	}
	for _, n := range w.nodes {
		for _, name := range sortedKeys(n.host.units) {
			if !n.host.units[name].alive {
				continue
			}
			if a, ok := st.Assignments[name]; !ok || a.Node != n.id || a.Stopped != "" {
				return fmt.Sprintf("%s runs on node %d, assigned to %s", name, n.id, assignedTo(a, ok))
			}
		}
	}
	for _, vm := range sortedKeys(st.Rollouts) {
		// The final push gives every rolling VM a new runner: its rollout
		// must have succeeded in the healed cluster.
		if r := st.Rollouts[vm]; !r.Done() {
			return fmt.Sprintf("the rollout of %s is at wave %d", vm, r.Waves)
		} else if r.To == w.repo.head && r.Phase != replicated.RolloutSucceeded {
			return fmt.Sprintf("the rollout of %s to the head commit %s: %s", vm, r.Phase, r.Error)
		}
	}
	if d := reconciler.ComputeDrift(st); len(d) > 0 {
		return fmt.Sprintf("drift: %s %s", d[0].VM, d[0].Reason)
	}
	return ""
}

// final checks the end state: every replica applied the whole log and
// holds the same state (Apply is deterministic), whose history is the
// committed revisions; open double runs are closed.
func (c *checker) final() {
	w := c.w
	for _, name := range sortedKeys(c.overlapStart) {
		c.closeOverlap(name, c.overlapStart[name])
	}
	if c.failure != "" || !c.done {
		return
	}
	ref, err := json.Marshal(w.leader.st)
	if err != nil {
		c.failf("encoding the leader's state: %v", err)
		return
	}
	for _, n := range w.nodes {
		w.applyUpTo(n, len(w.log))
		got, _ := json.Marshal(n.st)
		if string(got) != string(ref) {
			c.failf("determinism: node %d's state after the whole log differs from the leader's:\n%s", n.id, firstDiff(string(got), string(ref)))
		}
	}
	h := w.leader.st.History
	want := c.revs[max(0, len(c.revs)-replicated.MaxRevisionHistory):]
	if len(h) != len(want) {
		c.failf("history: %d revisions kept, want %d", len(h), len(want))
		return
	}
	for i := range h {
		if h[i].ID != want[i].ID || h[i].Commit != want[i].Commit {
			c.failf("history: revision %d is %d (%s), want %d (%s)", i, h[i].ID, h[i].Commit, want[i].ID, want[i].Commit)
			return
		}
	}
}

func firstDiff(a, b string) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	lo := max(0, i-80)
	return fmt.Sprintf("got  …%s…\nwant …%s…", a[lo:min(len(a), i+80)], b[lo:min(len(b), i+80)])
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
