package sim

import (
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// loop is reconciler.Reconciler's loop (loop.go, pass.go, result.go) on
// the simulated cluster: the same steps in the same order, built from the
// package's exported pure parts (ObserveHeartbeats, StaleNodes, PlanSpec,
// Compute, Plan.HasChanges, TerminalError, EvalDue, RetryWait) and copies of
// the small unexported rules (waitAfter, joinErrors), because the real loop
// owns goroutines and timers. Every node's process runs one; it passes only
// while its replica leads. Not modelled: commit signatures (no Verifier),
// force-pushes, RequestSync from followers (pushes are found by polling),
// fencing (no Ceph).
type loop struct {
	w *world
	n *node

	leading   bool
	termStart int64
	fetchDue  bool
	lastFetch int64
	syncSeen  uint64
	commit    string // the last good fetch's commit; kept across terms
	fetchErr  string // this term's last fetch error ("" after a good one)
	fetched   bool
	// fetchFailing is when this term's run of failed fetches began (-1:
	// none), for the retry wait (loop.go's nextFetch).
	fetchFailing int64
	heartbeats   reconciler.Heartbeats
	observed     time.Time // when heartbeats was last updated from a read
	eval         *evalRun
	outcome      *outcome
	refused      *replicated.CommitPlan
	refusedErr   error
	backoff      int64

	gen       int      // the scheduled step in force
	inPass    bool     // a pass waits on a proposal or a read
	evalReady *outcome // an evaluation that finished during a pass
	lastErr   string
}

type evalRun struct {
	commit    string
	cancelled bool
	token     int // which completion event is in force
}

type outcome struct {
	commit string
	spec   *spec.Cluster
	hash   string
	err    error
	at     int64
	acted  bool
}

func newLoop(w *world, n *node) *loop {
	return &loop{w: w, n: n, lastFetch: -1 << 40, fetchFailing: -1}
}

func (l *loop) start() { l.step() }

// schedule runs the next step after d ms, replacing any step scheduled.
func (l *loop) schedule(d int64) {
	l.gen++
	g := l.gen
	l.w.afterOn(l.n, d, func() {
		if g == l.gen && l.n.loop == l {
			l.step()
		}
	})
}

// step is Reconciler.step followed by Start's wait (afterPass).
func (l *loop) step() {
	w := l.w
	if w.leader != l.n {
		l.follow()
		l.schedule(resyncEvery)
		return
	}
	if !l.leading {
		l.leading, l.termStart, l.fetchDue = true, w.now, true
		w.tracef("node %d: reconciler leads", l.n.id)
	}
	now := w.now
	l.inPass = true
	l.reconcile(now, func(requeue int64, evaluate string, err error) {
		l.inPass = false
		if evaluate != "" {
			l.startEvaluation(evaluate)
		}
		if err == nil {
			if untilPoll := l.nextFetch() - w.now; requeue <= 0 || untilPoll < requeue {
				requeue = max(untilPoll, 1)
			}
		}
		wait, backoff := waitAfter(requeue, err, l.backoff, resyncEvery)
		l.backoff = backoff
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != l.lastErr {
			l.lastErr = msg
			if msg != "" {
				w.tracef("node %d: pass failed (terminal %v): %s", l.n.id, reconciler.IsTerminal(err), msg)
			}
		}
		if o := l.evalReady; o != nil {
			l.evalReady = nil
			l.finishEvaluation(o)
			wait = 0
		}
		l.schedule(wait)
	})
}

// follow ends this replica's term, if it had one.
func (l *loop) follow() {
	if l.leading {
		l.w.tracef("node %d: reconciler no longer leads", l.n.id)
	}
	l.cancelEvaluation()
	l.leading, l.fetched, l.fetchErr, l.fetchFailing, l.syncSeen = false, false, "", -1, 0
	l.heartbeats, l.outcome, l.refused, l.refusedErr = nil, nil, nil, nil
	l.observed = time.Time{}
}

// read is Store.Read: linearizable, so it waits for a leader and for the
// local replica to apply everything committed.
func (l *loop) read(then func(*replicated.State)) {
	w := l.w
	if !w.available() || !w.reach(l.n, w.leader) {
		w.afterOn(l.n, noLeaderRetry, func() { l.read(then) })
		return
	}
	w.applyUpTo(l.n, len(w.log))
	then(l.n.st.Clone())
}

// propose is Reconciler.propose: an unknown outcome is transient, a
// refusal terminal.
func (l *loop) propose(what string, cmd replicated.Command, then func(replicated.Result, error)) {
	l.w.propose(l.n, cmd, leaderProposalTTL, func(res replicated.Result, err error) {
		if err != nil {
			then(res, fmt.Errorf("%s: %w", what, err))
			return
		}
		then(res, nil)
	})
}

func (l *loop) proposeOK(what string, cmd replicated.Command, then func(error)) {
	l.propose(what, cmd, func(res replicated.Result, err error) {
		switch {
		case err != nil:
			then(err)
		case !res.OK():
			then(reconciler.TerminalError(fmt.Errorf("%s: %w", what, res.Err())))
		default:
			then(nil)
		}
	})
}

// reconcile is one pass (pass.go's reconcile).
func (l *loop) reconcile(now int64, done func(requeue int64, evaluate string, err error)) {
	l.read(func(state *replicated.State) {
		// 2. Fetch.
		if l.fetchDue || now >= l.nextFetch() || state.SyncRequests != l.syncSeen {
			l.fetch(now)
			l.syncSeen = state.SyncRequests
		}
		// 3. Liveness.
		l.markStaleNodesDown(state, now, func(errs []error, marked bool) {
			rest := func(state *replicated.State) {
				// 4. FetchFailed.
				l.reconcileFetchFailed(state, now, func(err error) {
					if err != nil {
						errs = append(errs, err)
					}
					// 5. Which evaluation to act on, start or wait for.
					act, evaluate, requeue := l.nextEvaluation(state, now)
					// 6. Trust: no Verifier. 7. Plan.
					l.reconcilePlan(state, act, now, func(err error) {
						if err != nil {
							errs = append(errs, err)
						}
						// 8. Rollouts.
						l.reconcileRollouts(state, now, func(rolled int64, err error) {
							if err != nil {
								errs = append(errs, err)
							}
							if len(errs) > 0 {
								done(0, evaluate, joinErrors(errs))
								return
							}
							if rolled > 0 && (requeue <= 0 || rolled < requeue) {
								requeue = rolled
							}
							done(requeue, evaluate, nil)
						})
					})
				})
			}
			if marked {
				l.read(rest) // plan against the node states just committed
				return
			}
			rest(state)
		})
	})
}

// nextFetch is loop.go's: Poll after the last fetch, sooner after a failed
// one.
func (l *loop) nextFetch() int64 {
	if l.fetchErr == "" || l.fetchFailing < 0 {
		return l.lastFetch + pollEvery
	}
	wait := reconciler.RetryWait(msDuration(l.lastFetch-l.fetchFailing), msDuration(resyncEvery), msDuration(pollEvery))
	return l.lastFetch + wait.Milliseconds()
}

func (l *loop) fetch(now int64) {
	l.fetchDue, l.lastFetch = false, now
	l.fetched = true
	head, err := l.w.repo.fetch()
	if err != nil {
		if l.fetchErr == "" {
			l.fetchFailing = now
		}
		l.fetchErr = err.Error()
		return
	}
	l.fetchErr, l.fetchFailing = "", -1
	if head != l.commit {
		l.w.tracef("node %d: fetched %s", l.n.id, head)
	}
	l.commit = head
}

// markStaleNodesDown is pass.go's: each stale node is marked down in turn
// (no Fencer: no Ceph).
func (l *loop) markStaleNodesDown(state *replicated.State, now int64, done func([]error, bool)) {
	nt := l.w.cfg.NodeTimeout
	if nt <= 0 {
		done(nil, false)
		return
	}
	l.heartbeats = reconciler.DiscountBlindness(l.heartbeats, l.observed, at(now), 2*time.Duration(resyncEvery)*time.Millisecond)
	l.heartbeats = reconciler.ObserveHeartbeats(l.heartbeats, state.Nodes, at(now))
	l.observed = at(now)
	stale := reconciler.StaleNodes(l.heartbeats, state.Nodes, at(now), nt)
	judgedSeq := map[uint64]uint64{} // as pass.go: the sequence each judgement saw
	for _, id := range stale {
		judgedSeq[id] = l.heartbeats[id].Seq
		l.w.chk.judged(id, l.n, l.heartbeats[id].Seq)
	}
	var errs []error
	marked := false
	var next func(i int)
	next = func(i int) {
		if i == len(stale) {
			done(errs, marked)
			return
		}
		id := stale[i]
		silent := at(now).Sub(l.heartbeats[id].At).Round(time.Second)
		reason := fmt.Sprintf("no heartbeat for %s", silent)
		l.w.tracef("node %d: reconciler marks node %d down (%s)", l.n.id, id, reason)
		l.propose(fmt.Sprintf("marking node %d down", id), replicated.Command{Type: replicated.CmdSetNodeState, At: at(now),
			SetNodeState: &replicated.SetNodeState{ID: id, State: replicated.NodeDown, Reason: reason,
				HeartbeatSeq: judgedSeq[id]}}, func(res replicated.Result, err error) {
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("marking node %d down: %w", id, err))
			case res.Code == replicated.ResultStaleParent:
				l.w.tracef("node %d: node %d heartbeated after it was judged silent; not marked down", l.n.id, id)
			case !res.OK():
				errs = append(errs, reconciler.TerminalError(fmt.Errorf("marking node %d down: %w", id, res.Err())))
			default:
				marked = true
			}
			next(i + 1)
		})
	}
	next(0)
}

func (l *loop) reconcileFetchFailed(state *replicated.State, now int64, done func(error)) {
	if !l.fetched {
		done(nil)
		return
	}
	cond, set := state.Condition(replicated.FetchFailed)
	if l.fetchErr == "" {
		if !set {
			done(nil)
			return
		}
		l.proposeOK("clearing FetchFailed", replicated.Command{Type: replicated.CmdClearCondition, At: at(now),
			ClearCondition: &replicated.ClearCondition{Type: replicated.FetchFailed}}, done)
		return
	}
	if set && cond.Message == l.fetchErr {
		done(nil)
		return
	}
	commit := l.commit
	if commit == "" && state.Revision != nil {
		commit = state.Revision.Commit
	}
	l.w.cover("FetchFailed recorded")
	l.proposeOK("recording FetchFailed", replicated.Command{Type: replicated.CmdSetCondition, At: at(now),
		SetCondition: &replicated.SetCondition{Type: replicated.FetchFailed, Commit: commit, Message: l.fetchErr, Retryable: true}}, done)
}

// nextEvaluation is pass.go's.
func (l *loop) nextEvaluation(state *replicated.State, now int64) (act *outcome, evaluate string, requeue int64) {
	target, running := l.commit, ""
	if state.Revision != nil {
		running = state.Revision.Commit
	}
	if target == "" || target == running {
		l.cancelEvaluation()
		return nil, "", 0
	}
	if c, ok := state.Condition(replicated.SignatureRefused); ok && c.Commit == target {
		l.cancelEvaluation()
		return nil, "", 0
	}
	if l.eval != nil {
		if l.eval.commit != target {
			l.cancelEvaluation()
		}
		return nil, "", 0
	}
	var lastTry time.Time
	if o := l.outcome; o != nil && o.commit == target {
		if !o.acted {
			return o, "", 0
		}
		lastTry = at(o.at)
	}
	cond, failed := state.Condition(replicated.EvalFailed)
	due, next := reconciler.EvalDue(cond, failed, target, at(now), at(l.termStart), lastTry, msDuration(resyncEvery), msDuration(pollEvery))
	switch {
	case due:
		return nil, target, 0
	case !next.IsZero():
		return nil, "", next.Sub(at(now)).Milliseconds()
	}
	return nil, "", 0
}

// reconcilePlan is pass.go's.
func (l *loop) reconcilePlan(state *replicated.State, act *outcome, now int64, done func(error)) {
	desired, hash, commit := state.Desired, "", ""
	if state.Revision != nil {
		hash, commit = state.Revision.EvalHash, state.Revision.Commit
	}
	if act != nil {
		pv, err := planOutcome(state, act)
		if err != nil {
			l.recordEvalFailed(state, act.commit, err, now, func(rerr error) {
				if rerr != nil {
					done(rerr)
					return
				}
				act.acted = true
				l.commitPlan(state, desired, hash, commit, nil, nil, now, done)
			})
			return
		}
		// Instances of VMs with an update block move through rollouts.
		plan := reconciler.HoldBack(pv.Plan, state.Assignments, pv.Spec, act.commit)
		l.commitPlan(state, pv.Spec, pv.Hash, act.commit, &plan, act, now, done)
		return
	}
	l.commitPlan(state, desired, hash, commit, nil, nil, now, done)
}

// commitPlan is the second half of reconcilePlan: act (with its plan) is
// a newly evaluated commit; otherwise the running revision is re-planned
// and committed only when the plan changes assignments.
func (l *loop) commitPlan(state *replicated.State, desired *spec.Cluster, hash, commit string, plan *reconciler.Plan,
	act *outcome, now int64, done func(error)) {
	if commit == "" {
		done(nil)
		return
	}
	newCommit := act != nil
	if !newCommit {
		p := reconciler.Compute(reconciler.Input{Desired: desired, Nodes: state.Nodes, Current: state.Assignments, Previous: state.Desired})
		p = reconciler.HoldBack(p, state.Assignments, desired, commit)
		if !p.HasChanges() {
			done(nil)
			return
		}
		plan = &p
	}
	var parent uint64
	if state.Revision != nil {
		parent = state.Revision.ID
	}
	cp := &replicated.CommitPlan{
		Parent: parent, Commit: commit, Ref: "refs/heads/main", EvalHash: hash,
		Summary: plan.Summary(), Spec: desired, Assignments: plan.Assignments, Unschedulable: plan.Unschedulable,
	}
	if l.refused != nil && reflect.DeepEqual(l.refused, cp) {
		done(l.refusedErr)
		return
	}
	l.propose("proposing the plan for "+commit, replicated.Command{Type: replicated.CmdCommitPlan, At: at(now), CommitPlan: cp},
		func(res replicated.Result, err error) {
			if err != nil {
				done(err)
				return
			}
			switch res.Code {
			case replicated.ResultOK:
				l.w.tracef("node %d: plan of %s committed as revision %d (parent %d): %s", l.n.id, commit, res.Revision, parent, cp.Summary)
				if newCommit {
					act.acted = true
				}
				l.refused, l.refusedErr = nil, nil
				done(nil)
			case replicated.ResultStaleParent:
				l.w.cover("a plan refused as a stale parent")
				l.w.tracef("node %d: plan of %s not committed: stale parent %d", l.n.id, commit, parent)
				done(nil)
			default:
				err := reconciler.TerminalError(fmt.Errorf("the plan for %s was refused: %w", commit, res.Err()))
				l.refused, l.refusedErr = cp, err
				l.w.chk.failf("node %d: the cluster refused the leader's plan for %s: %s", l.n.id, commit, res.Message)
				done(err)
			}
		})
}

// reconcileRollouts is rollout.go's: when a rollout may run, re-read the
// state and propose each rolling VM's next step (NextRolloutStep), one
// after the other. It returns the requeue (ms; 0: none) and the errors.
func (l *loop) reconcileRollouts(state *replicated.State, now int64, done func(int64, error)) {
	if !reconciler.MayRoll(state) {
		done(0, nil)
		return
	}
	l.read(func(st *replicated.State) {
		var requeue int64
		var errs []error
		sooner := func(ms int64) {
			if ms > 0 && (requeue <= 0 || ms < requeue) {
				requeue = ms
			}
		}
		vms := sortedKeys(st.Rollouts)
		var next func(i int)
		next = func(i int) {
			if i == len(vms) {
				done(requeue, joinErrors(errs))
				return
			}
			vm := vms[i]
			d := reconciler.NextRolloutStep(st, vm, at(now))
			if d.Step == nil {
				if d.After > 0 {
					sooner(max(msOf(d.After), 1))
				}
				next(i + 1)
				return
			}
			l.w.cover("rollout step " + string(d.Step.Action))
			l.propose(fmt.Sprintf("proposing the %s step of %s's rollout", d.Step.Action, vm),
				replicated.Command{Type: replicated.CmdRolloutStep, At: at(now), RolloutStep: d.Step},
				func(res replicated.Result, err error) {
					switch {
					case err != nil:
						errs = append(errs, err)
					case res.Code == replicated.ResultStaleParent:
						l.w.cover("a rollout step refused as stale")
					case !res.OK():
						errs = append(errs, reconciler.TerminalError(fmt.Errorf("the %s step of %s's rollout was refused: %w", d.Step.Action, vm, res.Err())))
						l.w.chk.failf("node %d: the cluster refused the leader's %s step of %s's rollout: %s", l.n.id, d.Step.Action, vm, res.Message)
					default:
						l.w.tracef("node %d: rollout of %s: %s %v %s", l.n.id, vm, d.Step.Action, d.Step.Instances, d.Step.Error)
						sooner(1)
					}
					next(i + 1)
				})
		}
		next(0)
	})
}

func planOutcome(state *replicated.State, o *outcome) (reconciler.Preview, error) {
	if o.err != nil {
		return reconciler.Preview{}, o.err
	}
	return reconciler.PlanSpec(state, o.commit, reconciler.Evaluation{Spec: o.spec, Hash: o.hash})
}

type temporary interface{ Temporary() bool }

func (l *loop) recordEvalFailed(state *replicated.State, commit string, err error, now int64, done func(error)) {
	var tmp temporary
	retryable := errors.As(err, &tmp) && tmp.Temporary()
	msg := err.Error()
	if c, ok := state.Condition(replicated.EvalFailed); ok && c.Commit == commit && c.Message == msg && c.Retryable == retryable {
		done(nil)
		return
	}
	l.w.tracef("node %d: evaluation of %s failed (retryable %v): %s", l.n.id, commit, retryable, msg)
	l.w.cover(fmt.Sprintf("EvalFailed recorded (retryable %v)", retryable))
	l.proposeOK("recording the evaluation failure of "+commit, replicated.Command{Type: replicated.CmdSetCondition, At: at(now),
		SetCondition: &replicated.SetCondition{Type: replicated.EvalFailed, Commit: commit, Message: msg, Retryable: retryable}}, done)
}

// startEvaluation runs the evaluator "beside" the loop: its outcome comes
// back after the evaluation's duration.
func (l *loop) startEvaluation(commit string) {
	w := l.w
	e := &evalRun{commit: commit}
	l.eval = e
	w.tracef("node %d: evaluating %s", l.n.id, commit)
	l.evalDone(e, w.evalDuration())
}

func (l *loop) evalDone(e *evalRun, d int64) {
	e.token++
	tok := e.token
	l.w.afterOn(l.n, d, func() {
		if e.token != tok || l.eval != e || l.n.loop != l {
			return
		}
		o := &outcome{commit: e.commit}
		if !e.cancelled {
			o.spec, o.hash, o.err = l.w.repo.evaluate(e.commit)
		}
		if l.inPass {
			l.evalReady = o
			return
		}
		l.finishEvaluation(o)
		l.schedule(0)
	})
}

// finishEvaluation keeps a finished evaluation for the next pass, unless
// it was cancelled.
func (l *loop) finishEvaluation(o *outcome) {
	e := l.eval
	l.eval = nil
	if e == nil || e.cancelled || !l.leading {
		return
	}
	o.at = l.w.now
	l.outcome = o
}

// cancelEvaluation cancels the running evaluation; it returns shortly.
func (l *loop) cancelEvaluation() {
	e := l.eval
	if e == nil || e.cancelled {
		return
	}
	e.cancelled = true
	l.evalDone(e, l.w.rnd(10, 100))
}

// waitAfter is a copy of result.go's waitAfter, in ms.
func waitAfter(requeue int64, err error, backoff, resync int64) (wait, nextBackoff int64) {
	switch {
	case err == nil:
		wait = resync
		if requeue > 0 && requeue < wait {
			wait = requeue
		}
		return wait, 0
	case reconciler.IsTerminal(err):
		return resync, 0
	}
	limit := max(int64(maxPassBackoff), resync)
	switch {
	case backoff < resync:
		backoff = resync
	case backoff > limit/2:
		backoff = limit
	default:
		backoff *= 2
	}
	return backoff, backoff
}

// joinErrors is a copy of result.go's joinErrors.
func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	all := true
	for _, err := range errs {
		all = all && reconciler.IsTerminal(err)
	}
	if all {
		return errors.Join(errs...)
	}
	out := make([]error, len(errs))
	for i, err := range errs {
		out[i] = err
		if reconciler.IsTerminal(err) {
			out[i] = errors.New(err.Error())
		}
	}
	return errors.Join(out...)
}

func msDuration(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }
