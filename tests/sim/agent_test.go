package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// agent is nodeagent.Agent around the real nodeagent.Decide: the observe
// step (nodeagent's observeVMs), the records (records.go), the executor
// (execute, startOp, finish, kill), the lease (startLease, leaseState, the
// expiry timer, the renewal in sendHeartbeat) and the pipelined heartbeat
// reporter (report, nextHeartbeat, sendHeartbeat, keptStatus, markSent,
// forgetCommitted), rewritten line by line on the
// simulated host because those parts of the agent are unexported and do
// I/O. It lives as long as its blixard process: its records and statuses
// die with it.
type agent struct {
	w *world
	n *node

	rec      map[string]*vmRecord
	statuses map[string]*vmStatus
	opSeq    int

	passPending bool
	// The heartbeat reporter (report's loop): what it waits for, how many
	// heartbeats are unanswered (at most hbMax), when it last sent one,
	// the periodic tick in force, and the order of this process's
	// heartbeats (epoch, the last seq).
	hbStarted  bool
	hbState    hbState
	hbInFlight int
	hbMax      int
	hbLast     int64
	hbGen      int
	hbEpoch    uint64
	hbSeq      uint64
	// holdStarts: after a fence no VM starts until this heartbeat or a
	// later one committed (0: none held).
	holdStarts uint64

	// The lease (Options.Lease): renewed is when the last committed
	// heartbeat was sent; fenced, whether the last pass found it run out;
	// expiryAt, the expiry the timer is set for (expiryGen, which timer).
	renewed   int64
	fenced    bool
	expiryAt  int64
	expiryGen int
	fencedBy  string // why the pass is (or the last one was) fenced; "": it is not
}

// vmRecord is nodeagent's vmRecord.
type vmRecord struct {
	rooted    string
	attached  []spec.VolumeRef
	restarted uint64
	op        *opState
	build     *nodeagent.Failure
	volumes   *nodeagent.Failure
	unit      *nodeagent.Failure
}

type opState struct {
	id       int
	kind     nodeagent.ActionKind
	out      string
	vols     []spec.VolumeRef
	restart  uint64
	progress string
	canceled bool
}

// vmStatus is nodeagent's vmStatus.
type vmStatus struct {
	replicated.VMStatus
	forget    bool
	stoppedIn uint64 // the first heartbeat that carried it stopped and to be forgotten
}

func (s *vmStatus) forgettable() bool { return s.forget && s.Phase == replicated.PhaseStopped }

// hbState is where report's loop waits.
type hbState int

const (
	hbIdle       hbState = iota // for the tick or a change
	hbDebouncing                // a change is debounced: ticks are dropped, further changes ride along
	hbBlocked                   // hbMax heartbeats are unanswered: the next waits for one
)

func newAgent(w *world, n *node) *agent {
	a := &agent{w: w, n: n, rec: map[string]*vmRecord{}, statuses: map[string]*vmStatus{},
		hbEpoch: w.rng.Uint64N(1<<53-1) + 1, hbLast: -1 << 40}
	// report: max(2, ⌈timeout/period⌉) in flight.
	a.hbMax = max(2, int((a.hbTimeout()+w.heartbeatEvery-1)/w.heartbeatEvery))
	return a
}

// hbTimeout is Agent.heartbeatTimeout: the lease, 10 s without one.
func (a *agent) hbTimeout() int64 {
	if a.w.lease > 0 {
		return a.w.lease
	}
	return 10000
}

// start is Agent.Start: the lease, a first pass, the resync ticker and the
// reporter, whose first heartbeat goes at once (carrying the first pass's
// changes).
func (a *agent) start() {
	a.startLease()
	a.pass()
	var tick func()
	tick = func() {
		a.pass()
		a.w.afterOn(a.n, agentInterval, tick)
	}
	a.w.afterOn(a.n, agentInterval, tick)
	a.hbStarted = true
	a.trySend()
}

// notify is Agent.Notify: a pass soon, coalesced.
func (a *agent) notify() {
	if a.passPending || a.n.agent != a {
		return
	}
	a.passPending = true
	a.w.afterOn(a.n, 1, func() {
		a.passPending = false
		a.pass()
	})
}

// startLease is Agent.startLease: the lease runs from this node's last
// committed heartbeat in its local replica (the time it sent it), or from
// now when it has sent none.
func (a *agent) startLease() {
	a.renewed = a.w.now
	if nd, ok := a.n.st.Nodes[a.n.id]; ok && nd.LastHeartbeatSeq > 0 {
		a.renewed = nd.LastHeartbeatAt.Sub(base).Milliseconds()
	}
}

// leaseState is Agent.leaseState: why the node is fenced ("" while the
// lease holds).
func (a *agent) leaseState() string {
	if a.w.lease <= 0 {
		return ""
	}
	silent := a.w.now - a.renewed
	a.fenced = silent > a.w.lease
	if !a.fenced {
		return ""
	}
	return nodeagent.FenceReason(msDuration(silent), msDuration(a.w.lease))
}

// armLease is the expiry timer's Reset after a pass: a pass just past the
// expiry, none while fenced (a committed heartbeat notifies instead).
func (a *agent) armLease() {
	if a.w.lease <= 0 || a.fenced {
		return
	}
	expiry := a.renewed + a.w.lease + 1
	if expiry == a.expiryAt {
		return
	}
	a.expiryAt = expiry
	a.expiryGen++
	gen := a.expiryGen
	a.w.afterOn(a.n, expiry-a.w.now, func() {
		if gen == a.expiryGen {
			a.pass()
		}
	})
}

// pass observes, decides and acts once.
func (a *agent) pass() {
	if a.n.agent != a {
		return
	}
	in := a.observe()
	in.Fenced = a.leaseState()
	if nd := a.n.st.Nodes[a.n.id]; in.Fenced == "" && a.w.lease > 0 && nd != nil && nd.State == replicated.NodeDown {
		in.Fenced = nodeagent.MarkedDownReason(a.n.id)
	}
	was := a.fencedBy
	a.fencedBy = in.Fenced
	d := nodeagent.Decide(in)
	a.w.mix(uint64(len(d.VMs)), a.n.id)
	// Resuming after a fence, starts wait for a heartbeat made after this
	// pass to commit (Agent.pass).
	resuming := in.Fenced == "" && was != ""
	if resuming {
		a.holdStarts = math.MaxUint64
	}
	killed := a.execute(d)
	if resuming {
		a.holdStarts = a.hbSeq + 1
	}
	switch {
	case in.Fenced != "" && was == "":
		why := "marked down"
		if a.fenced {
			why = fmt.Sprintf("lease expired, last committed heartbeat sent at %.3fs", float64(a.renewed)/1000)
			a.w.cover("a node fenced itself (lease expired)")
			if w := a.w; w.chk.acted[a.n.id] && w.available() && w.reach(a.n, w.leader) && a.n.slowUntil <= w.now {
				// Its heartbeats were slow to commit (lost messages, an
				// election), not cut off: the safe side, at a price.
				a.w.cover("a node connected to the leader fenced itself (lease expired)")
				why += ", connected to the leader"
				if w.now-w.chk.lastImpaired[a.n.id] > w.lease {
					// Not one moment of the lease cut off, frozen, slow or
					// without a leader that could commit.
					a.w.cover("a node connected to the leader all lease long fenced itself")
					why += " all lease long"
				}
				if killed > 0 {
					a.w.cover("a node connected to the leader fenced itself and killed runners")
				}
			}
		} else {
			a.w.cover("a node fenced itself (marked down)")
		}
		a.w.tracef("node %d: fenced (%s): %d runners killed", a.n.id, why, killed)
		if killed > 0 {
			a.w.cover("a fenced node killed its runners")
		}
	case in.Fenced != "" && killed > 0:
		a.w.tracef("node %d: fenced: %d runners killed", a.n.id, killed)
	case in.Fenced == "" && was != "":
		a.w.tracef("node %d: no longer fenced", a.n.id)
	}
	a.armLease()
	a.w.chk.agentPassed(a.n)
}

// observe is Agent.observe with observeVMs: the local replica's plan, the
// backend's units, STATE/NAME/current and the agent's records.
func (a *agent) observe() nodeagent.Input {
	w, n, st := a.w, a.n, a.n.st
	in := nodeagent.Input{
		Now:         at(w.now),
		Node:        n.id,
		Planned:     st.Revision != nil,
		Assignments: st.Assignments,
		Units:       w.list(n),
		VMs:         map[string]nodeagent.Observed{},
	}
	if st.Revision != nil {
		in.Commit = st.Revision.Commit
	}
	mine := map[string]bool{}
	for name, as := range st.Assignments {
		if as.Node == n.id {
			mine[name] = true
		}
	}
	listed := map[string]bool{}
	for _, name := range in.Units {
		listed[name] = true
	}
	names := map[string]bool{}
	for _, set := range []map[string]bool{mine, listed} {
		for name := range set {
			names[name] = true
		}
	}
	for name := range a.rec {
		names[name] = true
	}
	for name := range a.statuses {
		names[name] = true
	}
	for name := range names {
		var o nodeagent.Observed
		if c, ok := st.Observed[name]; ok && c.Node == n.id && mine[name] {
			o.Restarted = c.Restart
		}
		if c, ok := st.Observed[name]; ok && c.Node != n.id && c.Phase != replicated.PhaseStopped {
			if nd := st.Nodes[c.Node]; nd != nil && nd.State != replicated.NodeDown {
				o.Elsewhere = &c
			}
		}
		a.observeRecord(name, &o)
		if s, ok := a.statuses[name]; ok {
			r := s.VMStatus
			o.Reported = &r
		}
		if o.Op == nil && (mine[name] || listed[name]) {
			o.Unit = w.status(n, name)
		}
		if mine[name] {
			o.Current = n.host.current[name]
		}
		o.LogHint = "STATE/" + name + "/console.log"
		in.VMs[name] = o
	}
	return in
}

// observeRecord is records.observe.
func (a *agent) observeRecord(name string, o *nodeagent.Observed) {
	v := a.rec[name]
	if v == nil {
		return
	}
	o.Rooted, o.Attached = v.rooted, slices.Clone(v.attached)
	o.Restarted = max(o.Restarted, v.restarted)
	o.BuildFailure, o.VolumeFailure, o.UnitFailure = copyFailure(v.build), copyFailure(v.volumes), copyFailure(v.unit)
	if v.op != nil {
		o.Op = &nodeagent.Op{Kind: v.op.kind, Out: v.op.out, Progress: v.op.progress}
	}
}

func copyFailure(f *nodeagent.Failure) *nodeagent.Failure {
	if f == nil {
		return nil
	}
	c := *f
	return &c
}

func (a *agent) record(name string) *vmRecord {
	v := a.rec[name]
	if v == nil {
		v = &vmRecord{}
		a.rec[name] = v
	}
	return v
}

// execute is Agent.execute: statuses, then each VM's actions in order,
// then the kills (Agent.kill: SIGKILL and the exit take milliseconds,
// modelled as immediate, within the pass). It returns how many runners it
// killed.
func (a *agent) execute(d nodeagent.Decision) int {
	keep := make(map[string]bool, len(d.VMs))
	var kills []string
	for _, vd := range d.VMs {
		keep[vd.VM] = true
		a.set(vd)
		background := 0
	actions:
		for i, act := range vd.Actions {
			switch act.Kind {
			case nodeagent.ActKill:
				kills = append(kills, act.VM)
			case nodeagent.ActCancel:
				a.cancel(act.VM)
			case nodeagent.ActSwitchCurrent:
				a.n.host.current[act.VM] = act.Out
			default:
				// Decide's contract: one background action, the last, and
				// none while the VM has an operation in flight (the
				// executor would lose track of the first).
				background++
				if v := a.rec[act.VM]; v != nil && v.op != nil {
					a.w.chk.failf("nodeagent.Decide on node %d returned %s for %s while its %s operation is in flight",
						a.n.id, act.Kind, act.VM, v.op.kind)
				}
				if i != len(vd.Actions)-1 || background > 1 {
					a.w.chk.failf("nodeagent.Decide on node %d returned background action %s for %s that is not its last action: %v",
						a.n.id, act.Kind, act.VM, vd.Actions)
				}
				if act.Kind == nodeagent.ActStart && a.holdStarts != 0 {
					a.w.cover("a start after a fence waited for a heartbeat to commit")
					break actions
				}
				a.startOp(act)
			}
		}
	}
	for name, v := range a.rec {
		if !keep[name] && v.op == nil && len(v.attached) == 0 {
			delete(a.rec, name)
		}
	}
	killed := 0
	for _, name := range kills {
		if a.w.killUnit(a.n, name) {
			killed++
		}
	}
	return killed
}

// set is Agent.set: record the decided status, signal the reporter when it
// changed.
func (a *agent) set(vd nodeagent.VMDecision) {
	old := a.statuses[vd.VM]
	if vd.Status == nil {
		if old != nil {
			delete(a.statuses, vd.VM)
			a.changed()
		}
		return
	}
	st := *vd.Status
	if old == nil || old.Phase != st.Phase || old.Message != st.Message || old.BootedOut != st.BootedOut ||
		old.Generation != st.Generation {
		a.changed()
	}
	// keptStatus.
	next := &vmStatus{VMStatus: st, forget: vd.Forget}
	if old != nil && old.forgettable() && next.forgettable() {
		next.stoppedIn = old.stoppedIn
	}
	a.statuses[st.VM] = next
}

// cancel is records.cancel: the operation's context ends; its result
// (context.Canceled) comes back shortly.
func (a *agent) cancel(name string) {
	v := a.rec[name]
	if v == nil || v.op == nil || v.op.canceled {
		return
	}
	op := v.op
	op.canceled = true
	if a.fencedBy != "" {
		a.w.cover("a fenced node cancelled an operation")
	} else {
		a.w.cover("a build the plan no longer wants cancelled")
	}
	a.w.afterOn(a.n, a.w.rnd(5, 50), func() {
		if v.op == op {
			a.finish(name, op, context.Canceled)
		}
	})
}

// startOp begins act as its VM's one operation, with the simulated
// duration and outcome of its I/O.
func (a *agent) startOp(act nodeagent.Action) {
	w, n := a.w, a.n
	a.opSeq++
	op := &opState{id: a.opSeq, kind: act.Kind, out: act.Out, vols: act.Volumes, restart: act.Restart}
	v := a.record(act.VM)
	v.op = op
	name := act.VM
	done := func(d int64, effect func() error) {
		w.afterOn(n, d, func() {
			if v.op != op || op.canceled {
				return
			}
			var err error
			if effect != nil {
				err = effect()
			}
			a.finish(name, op, err)
		})
	}
	switch act.Kind {
	case nodeagent.ActRealise:
		if n.host.store[act.Out] {
			done(w.rnd(20, 200), nil)
			return
		}
		op.progress = "from " + act.Drv
		a.notify()
		done(w.rnd(1000, 15000), func() error {
			switch {
			case w.repo.unbuildable[act.Out]:
				return fmt.Errorf("builder for '%s' failed with exit code 1", act.Drv)
			case w.faulty() && w.chance(0.05):
				return errors.New("nix build: cannot connect to the daemon (transient)")
			}
			n.host.store[act.Out] = true
			return nil
		})
	case nodeagent.ActStart:
		done(w.rnd(20, 200), func() error {
			if w.faulty() && w.chance(0.02) {
				return errors.New("runner exited at once with code 1")
			}
			return w.spawn(n, name)
		})
	case nodeagent.ActRestart:
		stop := w.stopDuration()
		w.afterOn(n, stop, func() {
			if v.op == op {
				w.stopUnit(n, name)
			}
		})
		done(stop+w.rnd(20, 200), func() error { return w.spawn(n, name) })
	case nodeagent.ActStop:
		done(w.stopDuration(), func() error {
			w.stopUnit(n, name)
			return nil
		})
	default: // attach, detach: no volumes are modelled
		done(10, nil)
	}
}

// stopDuration is how long stopping a runner takes: microvm-shutdown
// usually returns within seconds; rarely it hangs and SIGKILL ends it.
func (w *world) stopDuration() int64 {
	if w.faulty() && w.chance(0.02) {
		return hungStop
	}
	return w.rnd(200, 3000)
}

// finish is Agent.finish with records.finish, then a pass.
func (a *agent) finish(name string, op *opState, err error) {
	now := at(a.w.now)
	v := a.record(name)
	v.op = nil
	a.w.mix(uint64(op.kind), uint64(op.id))
	switch {
	case errors.Is(err, context.Canceled) || (err != nil && op.canceled):
	case err != nil:
		a.w.tracef("node %d: %s %s failed: %v", a.n.id, op.kind, name, err)
		a.w.cover(op.kind.String() + " failed")
		f := &nodeagent.Failure{Action: op.kind, Out: op.out, Err: err.Error()}
		switch op.kind {
		case nodeagent.ActRealise:
			f.RetryAt = now.Add(msDuration(buildRetry))
			v.build = f
		case nodeagent.ActAttach, nodeagent.ActDetach:
			f.RetryAt = now.Add(msDuration(volumeRetry))
			v.volumes = f
		default:
			f.RetryAt = now.Add(msDuration(agentInterval))
			v.unit = f
		}
	default:
		switch op.kind {
		case nodeagent.ActRealise:
			v.rooted = op.out
			if v.build != nil && v.build.Out == op.out {
				v.build = nil
			}
		case nodeagent.ActAttach:
			v.attached = slices.Clone(op.vols)
			v.volumes = nil
		case nodeagent.ActDetach:
			if slices.Equal(v.attached, op.vols) {
				v.attached = nil
			}
			v.volumes = nil
		case nodeagent.ActStart, nodeagent.ActRestart:
			if op.restart > v.restarted {
				a.w.cover("vm restart carried out")
			}
			v.restarted = max(v.restarted, op.restart)
			v.unit = nil
		case nodeagent.ActStop:
			v.unit = nil
		}
	}
	a.pass()
}

// changed is the reporter's "changed" signal: a heartbeat ~100 ms later
// (at least half a period, up to 1 s, after the last one). While a change
// is debounced or the reporter waits for an answer, the signal waits in
// the channel and the coming heartbeat, made after it, drains it.
func (a *agent) changed() {
	if !a.hbStarted || a.hbState != hbIdle {
		return
	}
	a.hbState = hbDebouncing
	minGap := min(max(a.w.heartbeatEvery/2, heartbeatDebounce), 1000)
	a.w.afterOn(a.n, max(heartbeatDebounce, a.hbLast+minGap-a.w.now), a.trySend)
}

// resetHeartbeatTick restarts the period after a heartbeat (report's
// t.Reset).
func (a *agent) resetHeartbeatTick() {
	a.hbGen++
	gen := a.hbGen
	a.w.afterOn(a.n, a.w.heartbeatEvery, func() {
		// A tick while a change is debounced or the reporter waits for an
		// answer is dropped: the send that follows resets the ticker.
		if gen == a.hbGen && a.hbState == hbIdle {
			a.trySend()
		}
	})
}

// trySend sends a heartbeat unless hbMax are unanswered; then the next
// waits for an answer.
func (a *agent) trySend() {
	if a.hbInFlight >= a.hbMax {
		a.hbState = hbBlocked
		a.w.cover("the heartbeat reporter waited for an answer (every heartbeat in flight unanswered)")
		return
	}
	a.hbState = hbIdle
	a.sendHeartbeat()
}

// sendHeartbeat is nextHeartbeat and sendHeartbeat: one NodeHeartbeat with
// every status, numbered after every earlier one, proposed without waiting
// for those. Once it committed it renews the lease to its send time (never
// backwards), and stopped VMs gone from this node are forgotten once a
// heartbeat numbered from their first stopped report on committed
// (forgetCommitted: Apply keeps the newest report, so Raft shows them
// stopped whichever it kept).
func (a *agent) sendHeartbeat() {
	if a.n.agent != a {
		return
	}
	a.hbSeq++
	seq := a.hbSeq
	snap := make([]replicated.VMStatus, 0, len(a.statuses))
	for _, name := range sortedKeys(a.statuses) {
		s := a.statuses[name]
		if s.forgettable() && s.stoppedIn == 0 {
			s.stoppedIn = seq
		}
		snap = append(snap, s.VMStatus)
	}
	a.hbInFlight++
	a.hbLast = a.w.now
	a.resetHeartbeatTick()
	sent := a.w.now
	cmd := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: at(sent),
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: a.n.id, Epoch: a.hbEpoch, Seq: seq, Statuses: snap}}
	a.w.propose(a.n, cmd, a.hbTimeout(), func(res replicated.Result, err error) {
		a.hbInFlight--
		if err == nil && res.OK() {
			// The lease runs from the send (the leader counts from later).
			if sent < a.renewed {
				a.w.cover("a heartbeat answered after a later one (the lease kept)")
			}
			a.renewed = max(a.renewed, sent)
			if a.fenced {
				a.notify()
			}
			for _, name := range sortedKeys(a.statuses) {
				if s := a.statuses[name]; s.forgettable() && s.stoppedIn != 0 && s.stoppedIn <= seq {
					delete(a.statuses, name)
				}
			}
			if a.holdStarts != 0 && seq >= a.holdStarts {
				a.holdStarts = 0
				a.notify()
			}
		} else if err == nil {
			a.w.chk.failf("node %d: heartbeat refused: %s", a.n.id, res.Message)
		}
		if a.hbState == hbBlocked {
			a.hbState = hbIdle
			a.sendHeartbeat()
		}
	})
}
