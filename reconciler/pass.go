package reconciler

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/blixard/blixard/replicated"
)

// reconcile is one level-triggered pass against the replicated state, the
// last fetch and the last finished evaluation (see the package doc for its
// steps). It returns the result for the loop owner, the evaluation the loop
// should start (a zero commit for none) and the pass's error.
// It never waits for an evaluation and never triggers itself.
func (r *Reconciler) reconcile(ctx context.Context, now time.Time) (Result, evalRequest, error) {
	// 1. Read.
	state, err := r.opts.Store.Read(ctx)
	if err != nil {
		return Result{}, evalRequest{}, fmt.Errorf("reading the replicated state: %w", err)
	}
	// 2. Fetch, after the read: the sync requests just read are answered
	// by this fetch, and any applied later make the next pass fetch again.
	if r.shouldFetch(state, now) {
		r.fetch(ctx, now)
		r.loop.syncSeen = state.SyncRequests
		if r.loop.fetchErr == nil {
			r.loop.push = watchPush(r.loop.push, r.loop.commit, runningCommit(state), now)
		}
	}
	// 2b. Push to running: has the watched commit converged?
	if done, d := pushDone(r.loop.push, state, now); done {
		if d > 0 {
			r.opts.Metrics.ObservePushToRunning(d)
		}
		r.loop.push = nil
	}
	// 3. Liveness.
	errs, marked := r.markStaleNodesDown(ctx, state, now)
	if marked {
		// Plan against the node states just committed.
		if state, err = r.opts.Store.Read(ctx); err != nil {
			return Result{}, evalRequest{}, joinErrors(append(errs, fmt.Errorf("reading the replicated state: %w", err)))
		}
	}
	// 3b. Lift the fences of nodes that are back with new Ceph clients.
	errs = append(errs, r.unfenceNodes(ctx, state, now)...)
	// 4. FetchFailed.
	if err := r.reconcileFetchFailed(ctx, state, now); err != nil {
		errs = append(errs, err)
	}
	// 4b. Following suspended: list the fetched commit as pending.
	if err := r.reconcilePending(ctx, state, now); err != nil {
		errs = append(errs, err)
	}
	// 5. Which evaluation to act on, start or wait for.
	act, commit, res := r.nextEvaluation(state, now)
	// 6. Trust: verify the commit to evaluate; record a refusal.
	evaluate, err := r.reconcileTrust(ctx, state, commit, now)
	if err != nil {
		errs = append(errs, err)
	}
	// 6b. Functions: scale idle ones in (function.go), so the plan below
	// already stops their instances.
	scaled, fnRes, err := r.reconcileFunctions(ctx, state, now)
	if err != nil {
		errs = append(errs, err)
	}
	if scaled {
		if state, err = r.opts.Store.Read(ctx); err != nil {
			return Result{}, evaluate, joinErrors(append(errs, fmt.Errorf("reading the replicated state: %w", err)))
		}
	}
	// 7. Commit a plan or record EvalFailed.
	if err := r.reconcilePlan(ctx, state, act, now); err != nil {
		errs = append(errs, err)
	}
	// 8. Rollouts: propose each rolling VM's next step.
	rolled, err := r.reconcileRollouts(ctx, state, now)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Result{}, evaluate, joinErrors(errs)
	}
	return sooner(sooner(res, rolled), fnRes), evaluate, nil
}

// markStaleNodesDown fences and marks down every node whose heartbeat stood
// still for longer than NodeTimeout. It returns the errors (a node that
// could not be fenced stays up) and whether it marked any node down.
func (r *Reconciler) markStaleNodesDown(ctx context.Context, state *replicated.State, now time.Time) ([]error, bool) {
	if r.opts.NodeTimeout <= 0 {
		return nil, false
	}
	l := &r.loop
	if gap := now.Sub(l.observed); !l.observed.IsZero() && gap > 2*r.opts.Resync {
		r.opts.Logger.Warn("this leader could not observe the cluster for a while; that time does not count as the nodes' silence",
			"gap", gap.Round(time.Millisecond))
	}
	l.heartbeats = DiscountBlindness(l.heartbeats, l.observed, now, 2*r.opts.Resync)
	l.heartbeats = ObserveHeartbeats(l.heartbeats, state.Nodes, now)
	l.observed = now
	marked := false
	var errs []error
	for _, id := range StaleNodes(l.heartbeats, state.Nodes, now, r.opts.NodeTimeout) {
		node := state.Nodes[id]
		silent := now.Sub(l.heartbeats[id].At).Round(time.Second)
		var fenced []string
		if r.opts.Fencer != nil {
			f, err := r.opts.Fencer.Fence(ctx, node)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %d has sent no heartbeat for %s but fencing it failed, so its VMs stay assigned to it: %w", id, silent, err))
				continue
			}
			fenced = f
		}
		reason := fmt.Sprintf("no heartbeat for %s", silent)
		res, err := r.opts.Store.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: now,
			SetNodeState: &replicated.SetNodeState{ID: id, State: replicated.NodeDown, Reason: reason, Fenced: fenced,
				HeartbeatSeq: l.heartbeats[id].Seq}})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("marking node %d down: %w", id, err))
			continue
		case res.Code == replicated.ResultStaleParent:
			// It sent a heartbeat after the judgement: it is alive. (Its
			// fenced addresses stay blocklisted: they are not recorded as
			// Fenced, so no leader lifts them; they expire.)
			r.opts.Logger.Info("node heartbeated after it was judged silent; not marked down", "node", id, "detail", res.Message)
			continue
		case !res.OK():
			errs = append(errs, TerminalError(fmt.Errorf("marking node %d down: %w", id, res.Err())))
			continue
		}
		r.opts.Logger.Warn("node marked down; its VMs will be placed elsewhere", "node", id, "reason", reason, "fenced", fenced)
		marked = true
	}
	return errs, marked
}

// reconcileFetchFailed makes the replicated FetchFailed condition match this
// term's last fetch: set (with the last known commit) after a failed fetch,
// unless it is already recorded with the same message, and cleared after a
// good one. Before this term fetched it changes nothing.
func (r *Reconciler) reconcileFetchFailed(ctx context.Context, state *replicated.State, now time.Time) error {
	l := &r.loop
	if !l.fetched {
		return nil
	}
	cond, set := state.Condition(replicated.FetchFailed)
	if l.fetchErr == nil {
		if !set {
			return nil
		}
		return r.propose(ctx, "clearing FetchFailed", replicated.Command{Type: replicated.CmdClearCondition, At: now,
			ClearCondition: &replicated.ClearCondition{Type: replicated.FetchFailed}})
	}
	msg := l.fetchErr.Error()
	if msg == "" {
		msg = "fetching the tracked ref failed without a message"
	}
	if set && cond.Message == msg {
		return nil
	}
	commit := l.commit
	if commit == "" && state.Revision != nil {
		commit = state.Revision.Commit
	}
	return r.propose(ctx, "recording FetchFailed", replicated.Command{Type: replicated.CmdSetCondition, At: now,
		SetCondition: &replicated.SetCondition{Type: replicated.FetchFailed, Commit: commit, Message: msg, Retryable: true}})
}

// nextEvaluation decides what to do about the fetched commit: act on its
// finished evaluation (act), start evaluating it (evaluate), or wait — for
// the running evaluation, or until a temporary failure may be retried
// (res.RequeueAfter). A running evaluation of another commit is cancelled;
// the next one starts once it returned, so at most one runs.
func (r *Reconciler) nextEvaluation(state *replicated.State, now time.Time) (act *outcome, evaluate string, res Result) {
	l := &r.loop
	target, running := r.followed(state), ""
	if state.Revision != nil {
		running = state.Revision.Commit
	}
	if target == "" || target == running {
		r.cancelEvaluation("the fetched commit is the running revision")
		return nil, "", Result{}
	}
	if c, ok := state.Condition(replicated.SignatureRefused); ok && c.Commit == target {
		// Refused for good, by this leader or another: never evaluated.
		r.cancelEvaluation(fmt.Sprintf("commit %s was refused: its signature is not trusted", target))
		return nil, "", Result{}
	}
	if l.eval != nil {
		if l.eval.commit != target {
			r.cancelEvaluation(fmt.Sprintf("commit %s was fetched since", target))
		}
		return nil, "", Result{}
	}
	var lastTry time.Time
	if o := l.outcome; o != nil && o.commit == target {
		if !o.acted {
			return o, "", Result{}
		}
		lastTry = o.at
	}
	cond, failed := state.Condition(replicated.EvalFailed)
	due, at := EvalDue(cond, failed, target, now, l.termStart, lastTry, r.opts.Resync, r.opts.Poll)
	switch {
	case due:
		return nil, target, Result{}
	case !at.IsZero():
		return nil, "", Result{RequeueAfter: at.Sub(now)}
	}
	return nil, "", Result{}
}

// EvalDue decides whether commit may be evaluated now and, when not yet,
// from when (zero: never). The decision is the replicated EvalFailed
// condition's, so any leader makes the same one:
//
//   - no failure recorded for commit: now;
//   - a permanent failure (not Retryable): never;
//   - a temporary failure: after a wait that grows with how long it has
//     been failing (RetryWait: base, then doubling, at most poll) counted
//     from when it was recorded (At), or at once when it was recorded
//     before this leader's term began (termStart) — the failure may have
//     been the old leader's own (nix killed, a full disk).
//
// lastTry, when set, is when this term's own last evaluation of commit
// finished: an identical failure is not proposed again (the condition and
// its event log would not change), so the next try waits counting from it.
func EvalDue(cond replicated.Condition, failed bool, commit string, now, termStart, lastTry time.Time, base, poll time.Duration) (bool, time.Time) {
	if !failed || cond.Commit != commit {
		return true, time.Time{}
	}
	if !cond.Retryable {
		return false, time.Time{}
	}
	next := cond.At.Add(RetryWait(cond.At.Sub(cond.Since), base, poll))
	if cond.At.Before(termStart) {
		next = termStart
	}
	if !lastTry.IsZero() {
		if t := lastTry.Add(RetryWait(lastTry.Sub(cond.Since), base, poll)); t.After(next) {
			next = t
		}
	}
	if !now.Before(next) {
		return true, time.Time{}
	}
	return false, next
}

// reconcilePlan commits what the pass should commit: the plan of a newly
// evaluated commit (act), else a re-plan of the running revision when the
// state changed what it places (nodes, capacity, drains). A failed
// evaluation (or a spec the cluster would refuse) is recorded as EvalFailed
// and the running revision is re-planned instead.
func (r *Reconciler) reconcilePlan(ctx context.Context, state *replicated.State, act *outcome, now time.Time) error {
	l := &r.loop
	desired, hash, commit, signer := state.Desired, "", "", ""
	if state.Revision != nil {
		// A re-plan of the running revision keeps its signer.
		hash, commit, signer = state.Revision.EvalHash, state.Revision.Commit, state.Revision.Signer
	}
	var plan Plan
	newCommit := false
	if act != nil {
		start := time.Now()
		pv, err := planOutcome(state, act)
		if act.err == nil {
			r.opts.Metrics.ObservePlan(time.Since(start), false)
		}
		if err != nil {
			if err := r.recordEvalFailed(ctx, state, act.commit, err, now); err != nil {
				return err
			}
			act.acted = true
		} else {
			// Instances of VMs with an update block move through rollouts.
			plan = HoldBack(pv.Plan, state.Assignments, pv.Spec, commit)
			desired, hash, commit, signer, newCommit = pv.Spec, pv.Hash, act.commit, act.signer, true
		}
	}
	if commit == "" {
		return nil // nothing evaluated and nothing committed yet
	}
	if !newCommit {
		if !ReplanDue(l.planned, state.PlanInputs, now, FullReplanEvery) {
			return nil // nothing the planner reads changed since it found nothing to do
		}
		start := time.Now()
		plan = Compute(Input{Desired: desired, Nodes: state.Nodes, Current: state.Assignments, Previous: state.Desired,
			Network: state.Network, Functions: state.Functions, Observed: state.Observed})
		plan = HoldBack(plan, state.Assignments, desired, commit)
		r.opts.Metrics.ObservePlan(time.Since(start), true)
		if !plan.HasChanges() {
			l.planned = PlanMark{Inputs: state.PlanInputs, At: now, Set: true}
			return nil
		}
	}
	var parent uint64
	if state.Revision != nil {
		parent = state.Revision.ID
	}
	cp := &replicated.CommitPlan{
		Parent: parent, Commit: commit, Ref: r.opts.Ref, EvalHash: hash, Signer: signer,
		Summary: plan.Summary(), Spec: desired, Assignments: plan.Assignments, Unschedulable: plan.Unschedulable,
	}
	// A force-push is recorded on the next revision of a fetched commit,
	// not on a rollback's.
	if newCommit && l.rewrite != nil && commit == l.commit {
		cp.Rewrote = l.rewrite.Previous
	}
	if l.refused != nil && reflect.DeepEqual(l.refused, cp) {
		return l.refusedErr // the same plan, refused before: not proposed again
	}
	start := time.Now()
	res, err := r.opts.Store.Propose(ctx, replicated.Command{Type: replicated.CmdCommitPlan, At: now, CommitPlan: cp})
	r.opts.Metrics.ObserveCommit(time.Since(start), commitResult(res, err))
	if err != nil {
		return fmt.Errorf("proposing the plan for %s: %w", commit, err)
	}
	switch res.Code {
	case replicated.ResultOK:
		r.opts.Logger.Info("plan committed", "revision", res.Revision, "commit", commit, "signer", signer, "summary", plan.Summary(), "rewrote", cp.Rewrote)
		if newCommit {
			act.acted = true
			l.rewrite = nil
		}
		l.refused, l.refusedErr = nil, nil
		return nil
	case replicated.ResultStaleParent:
		// Another plan was committed first; the next pass re-reads the
		// state and plans again (an evaluated commit stays to be acted on).
		r.opts.Logger.Debug("plan not committed: stale parent", "commit", commit, "parent", parent)
		return nil
	}
	err = TerminalError(fmt.Errorf("the plan for %s was refused: %w", commit, res.Err()))
	l.refused, l.refusedErr = cp, err
	return err
}

// FullReplanEvery is how often the leader re-plans the running revision
// even though no planner input changed (replicated.State.PlanInputs stood
// still): level-triggered insurance against a command that changes an
// input without counting as one. At 1,000 nodes × 10,000 instances a
// re-plan costs ~30 ms, so once a second it would be 3% of a core for
// nothing.
const FullReplanEvery = 30 * time.Second

// PlanMark records a re-plan of the running revision that found nothing
// to change: the state's PlanInputs it read, and when (Options.Now).
type PlanMark struct {
	Inputs uint64
	At     time.Time
	Set    bool // false: no such re-plan this term
}

// ReplanDue decides whether a pass re-plans the running revision: always
// in a term that has not found it unchanged yet, when a command that may
// change what the planner computes was applied since (inputs moved), and
// every `every` regardless.
func ReplanDue(last PlanMark, inputs uint64, now time.Time, every time.Duration) bool {
	return !last.Set || inputs != last.Inputs || !now.Before(last.At.Add(every))
}

// planOutcome is PlanSpec for a finished evaluation: its error, or the
// volume check and the plan against state.
func planOutcome(state *replicated.State, o *outcome) (Preview, error) {
	if o.err != nil {
		return Preview{}, o.err
	}
	return PlanSpec(state, o.commit, o.result)
}

// recordEvalFailed records this leader's own failed evaluation of commit as
// the EvalFailed condition, retryable when the error says it is temporary,
// unless exactly that is already recorded.
func (r *Reconciler) recordEvalFailed(ctx context.Context, state *replicated.State, commit string, err error, now time.Time) error {
	var tmp temporary
	retryable := errors.As(err, &tmp) && tmp.Temporary()
	msg := err.Error()
	if msg == "" {
		msg = "the evaluation failed without a message"
	}
	r.opts.Logger.Error("evaluation failed; keeping the current revision", "commit", commit, "retryable", retryable, "err", err)
	if c, ok := state.Condition(replicated.EvalFailed); ok && c.Commit == commit && c.Message == msg && c.Retryable == retryable {
		return nil
	}
	return r.propose(ctx, "recording the evaluation failure of "+commit, replicated.Command{Type: replicated.CmdSetCondition, At: now,
		SetCondition: &replicated.SetCondition{Type: replicated.EvalFailed, Commit: commit, Message: msg, Retryable: retryable}})
}

// propose commits cmd. An unknown outcome is a transient error; a refusal
// is terminal (the same command would be refused again).
func (r *Reconciler) propose(ctx context.Context, what string, cmd replicated.Command) error {
	res, err := r.opts.Store.Propose(ctx, cmd)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !res.OK() {
		return TerminalError(fmt.Errorf("%s: %w", what, res.Err()))
	}
	return nil
}

// commitResult names a CommitPlan proposal's outcome for Metrics.ObserveCommit.
func commitResult(res replicated.Result, err error) string {
	switch {
	case err != nil:
		return "error"
	case res.Code == replicated.ResultOK:
		return "ok"
	case res.Code == replicated.ResultStaleParent:
		return "stale"
	}
	return "refused"
}

// runningCommit is the commit of st's revision ("" before the first plan).
func runningCommit(st *replicated.State) string {
	if st.Revision == nil {
		return ""
	}
	return st.Revision.Commit
}
