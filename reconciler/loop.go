package reconciler

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Store is the replicated state as the reconciler needs it.
type Store interface {
	// Read returns a linearizable copy of the state.
	Read(ctx context.Context) (*replicated.State, error)
	// Propose commits a command through Raft and returns its result; an error
	// means the outcome is unknown (timeout, shutdown) and the pass is retried.
	Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error)
	// IsLeader reports whether this replica currently leads the shard.
	IsLeader() bool
}

// Source follows the tracked ref of the cluster repository.
type Source interface {
	// Fetch updates the local mirror and returns the commit the ref points
	// to. An error means nothing was learned: the cluster keeps its revision
	// and the leader records the error as the FetchFailed condition.
	Fetch(ctx context.Context) (Fetched, error)
}

// Fetched is what one fetch of the tracked ref found.
type Fetched struct {
	Commit string
	// Previous is the commit the source knew before ("" at first).
	Previous string
	// Rewritten: history was rewritten (a force-push): Previous is not an
	// ancestor of Commit. The new commit is followed all the same, and the
	// next revision of a new commit records Previous as Rewrote.
	Rewritten bool
}

// Evaluator evaluates the cluster flake at a commit.
type Evaluator interface {
	// Evaluate returns the desired spec at commit. An error is an evaluation
	// failure to record (nix's message, an invalid spec) unless ctx ended.
	// An error that implements Temporary() bool and returns true (a timeout,
	// nix missing or killed, an input that could not be fetched) is recorded
	// as retryable; any other is final for that commit.
	Evaluate(ctx context.Context, commit string) (Evaluation, error)
}

// Fencer cuts a node off shared storage (Ceph: blocklists its client
// addresses) before its VMs may run elsewhere. An error means the node is
// not marked down: its VMs stay where they are until fencing succeeds.
type Fencer interface {
	Fence(ctx context.Context, node *replicated.Node) (fenced []string, err error)
}

// Evaluation is the desired spec of one commit.
type Evaluation struct {
	Spec *spec.Cluster
	Hash string // sha256 of the evaluated JSON
}

// temporary is implemented by evaluation errors that may go away on retry
// (nixeval.Error: timeouts, nix missing or killed). It is the only
// classification the reconciler knows, through errors.As.
type temporary interface {
	Temporary() bool
}

// Options configure a Reconciler.
type Options struct {
	Store     Store
	Source    Source
	Evaluator Evaluator
	Ref       string // recorded in revisions
	// Poll is how often the ref is fetched (default 5 s), and the longest a
	// failed fetch or a temporarily failed evaluation waits before it is
	// tried again (the first retries come sooner: after Resync, then
	// doubling). It also bounds a follower's RequestSync proposal: by then
	// the leader has polled anyway.
	Poll time.Duration
	// FetchTimeout bounds one Source.Fetch (default 2 min): the loop waits
	// for its fetch, so a remote that stalls would otherwise stop liveness
	// and planning with it. A fetch that runs out is a failed fetch.
	FetchTimeout time.Duration
	// Resync is how often a pass runs without any other input, to act on
	// changes of the replicated state (new nodes, capacity, drains, silent
	// nodes, sync requests); it is also the first backoff step after a
	// transient error, and the shortest time between two RequestSync
	// proposals of a follower (default 1 s).
	Resync time.Duration
	// NodeTimeout is how long a node's heartbeat may stand still before the
	// leader fences it (when Fencer is set) and marks it down, so its VMs
	// are placed elsewhere; 0 turns failure detection off.
	NodeTimeout time.Duration
	Fencer      Fencer // optional
	// Unfencer, when set, lifts the fence of a node that is ready again
	// once its fenced clients are gone (see NodesToUnfence); usually the
	// same Ceph edge as Fencer. Without it fences expire on their own.
	Unfencer Unfencer
	// Verifier, when set, must accept a fetched commit's signature before
	// it is evaluated (see Verifier); nil evaluates every fetched commit.
	Verifier Verifier
	// Now is the clock every decision reads, once per pass (default
	// time.Now). Waiting uses real timers; tests drive passes themselves.
	Now func() time.Time
	// Metrics receives how long fetches, evaluations, planning, commits
	// and pushes take (default: none; see [Metrics]). Durations are
	// measured on the real clock, not Now.
	Metrics Metrics
	Logger  *slog.Logger
}

// Reconciler is the leader loop. Construct with New, run with Start; see
// the package doc for what one pass does.
type Reconciler struct {
	opts    Options
	trigger chan struct{}
	wake    chan struct{} // capacity 1: a pass is wanted, no fetch (Wake)

	mu     sync.Mutex
	status Status // guarded by mu

	// evals counts running evaluation goroutines; Start waits for them.
	evals sync.WaitGroup

	// loop belongs to the goroutine running Start (in tests, to the test
	// standing in for it): nothing else reads or writes it, so it has no lock.
	loop loopState
}

// loopState is what the loop carries from one pass to the next. None of it
// decides whether a failed commit is evaluated again: that is read from the
// replicated EvalFailed condition.
type loopState struct {
	leading bool
	// idle is when this replica, leading, first saw each function's
	// activity marks (ScaleIns): idleness is timed on its own clock.
	idle map[string]IdleMark
	// termStart is when this replica's current term began (Options.Now).
	termStart time.Time
	// fetchDue: a trigger or a new term asks for a fetch in the next pass;
	// on a follower, a trigger asks for a RequestSync proposal.
	fetchDue  bool
	lastFetch time.Time // when the last fetch was attempted
	// syncSeen is the replicated SyncRequests as read before this term's
	// last fetch: a pass that reads another value fetches (level-triggered:
	// whatever number of requests came since, one fetch after them answers
	// them all).
	syncSeen uint64
	// syncAsked is when this replica, as a follower, last proposed
	// RequestSync (Options.Now); zero before the first.
	syncAsked time.Time
	// commit is the commit of the last good fetch, kept across terms (it is
	// what the Source knows).
	commit string
	// fetchErr is the error of this term's last fetch, nil after a good
	// one; fetched says whether this term fetched at all. fetchFailing is
	// when this term's current run of failed fetches began (zero after a
	// good one): the next try waits as long as it has been failing.
	fetchErr     error
	fetched      bool
	fetchFailing time.Time
	// rewrite is a force-push seen by a fetch of this term and not yet
	// recorded on a revision.
	rewrite *Fetched
	// heartbeats is this term's liveness record (see ObserveHeartbeats);
	// observed is when it was last updated from a state read (see Blind).
	heartbeats Heartbeats
	observed   time.Time
	// eval is the running evaluation, or a cancelled one that has not
	// returned yet; nil when none. At most one exists.
	eval *evaluation
	// outcome is this term's last finished evaluation.
	outcome *outcome
	// refused is the last plan the cluster refused for good, and why.
	refused    *replicated.CommitPlan
	refusedErr error
	// planned is this term's last re-plan of the running revision that
	// found nothing to change (see ReplanDue).
	planned PlanMark
	// backoff is the wait after the last transient error (0 after a good pass).
	backoff time.Duration
	// lastTerminal is the last terminal error logged, so it is logged once.
	lastTerminal string
	// push is the fetched commit whose push-to-running time this term
	// measures (nil: none; see watchPush).
	push *pushWatch
}

// Status is the reconciler's own view, for the API. It is this node's
// local view and is not replicated: the cluster-wide facts (FetchFailed,
// EvalFailed) are conditions in the replicated state.
type Status struct {
	Leader      bool      `json:"leader"`
	LastFetch   time.Time `json:"lastFetch,omitzero"`
	FetchCommit string    `json:"fetchCommit,omitempty"`
	FetchError  string    `json:"fetchError,omitempty"`
	// Evaluating is the commit whose evaluation is running, if any.
	Evaluating string    `json:"evaluating,omitempty"`
	LastPass   time.Time `json:"lastPass,omitzero"`
	PassError  string    `json:"passError,omitempty"`
	// SyncRequested is when this node, not leading, last asked the leader
	// to fetch (a RequestSync for a webhook or `POST /v1/sync`), and
	// SyncRequestError why that proposal failed ("" when it did not).
	SyncRequested    time.Time `json:"syncRequested,omitzero"`
	SyncRequestError string    `json:"syncRequestError,omitempty"`
}

// New returns a reconciler; it starts nothing.
func New(o Options) *Reconciler {
	if o.Poll <= 0 {
		o.Poll = 5 * time.Second
	}
	if o.Resync <= 0 {
		o.Resync = time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 2 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = noMetrics{}
	}
	return &Reconciler{opts: o, trigger: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
}

// Trigger asks for a fetch and a pass as soon as possible (webhook, CLI,
// a node state change). It never blocks; triggers coalesce. On the leader
// the loop fetches at once. A follower never fetches, so its loop asks the
// leader through the replicated state instead: it proposes RequestSync, and
// the leader's next pass (within Resync, unless it is backing off after
// errors) sees the count move and fetches.
// A burst of triggers on a follower makes one proposal: the loop makes it
// and waits for it (at most one in flight per node), and makes at most one
// per Resync — the leader reads the count once per pass, so more could not
// make it fetch more often. A trigger that arrives meanwhile is kept for the
// next proposal, so a push announced during one is not lost.
func (r *Reconciler) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Triggers is the channel behind Trigger, for senders that do their own
// non-blocking send (the webhook handler). A send means what Trigger means,
// on a follower too: the loop, which receives both, decides.
func (r *Reconciler) Triggers() chan<- struct{} { return r.trigger }

// Status returns a copy of the reconciler's local status.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

func (r *Reconciler) updateStatus(fn func(*Status)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(&r.status)
}

// Start runs the loop until ctx ends, then cancels a running evaluation,
// waits for it and returns nil. It is the one owner of the loop: it runs
// the passes (only while this replica leads; a follower's loop just waits),
// turns their results into waits (see [Result]) and owns the evaluation
// goroutine. Start must not be called twice at the same time.
func (r *Reconciler) Start(ctx context.Context) error {
	defer r.stopEvaluation()
	timer := time.NewTimer(r.opts.Resync)
	defer timer.Stop()
	for {
		res, err := r.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		timer.Reset(r.afterPass(res, err))
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.trigger:
			r.loop.fetchDue = true
		case <-r.wake: // a pass without a fetch (Wake, function.go)
		case o := <-r.evalDone():
			r.finishEvaluation(ctx, o)
		}
	}
}

// afterPass logs a pass's error and returns how long to wait.
func (r *Reconciler) afterPass(res Result, err error) time.Duration {
	l := &r.loop
	if err != nil && !res.IsZero() {
		r.opts.Logger.Warn("a reconcile pass returned both a requeue and an error; the error wins", "requeueAfter", res.RequeueAfter, "err", err)
	}
	wait, backoff := waitAfter(res, err, l.backoff, r.opts.Resync)
	l.backoff = backoff
	switch {
	case err == nil:
		l.lastTerminal = ""
	case IsTerminal(err):
		if msg := err.Error(); msg != l.lastTerminal {
			l.lastTerminal = msg
			r.opts.Logger.Error("reconcile pass failed; not retried until its input changes", "err", err)
		}
	default:
		r.opts.Logger.Warn("reconcile pass failed; retrying", "in", wait, "err", err)
	}
	return wait
}

// step is one turn of the loop, without waiting: it follows leadership,
// fetches when due, runs a pass and starts the evaluation the pass asks
// for. Only the loop's goroutine calls it.
func (r *Reconciler) step(ctx context.Context) (Result, error) {
	select {
	case <-r.trigger:
		r.loop.fetchDue = true
	default:
	}
	now := r.opts.Now()
	if !r.opts.Store.IsLeader() {
		r.follow()
		return r.requestSync(ctx, now), nil
	}
	l := &r.loop
	if !l.leading {
		l.leading, l.termStart, l.fetchDue = true, now, true
		r.opts.Logger.Info("leading: following the tracked ref", "ref", r.opts.Ref)
		r.updateStatus(func(s *Status) { s.Leader = true })
	}
	res, evaluate, err := r.reconcile(ctx, now)
	if evaluate.commit != "" && ctx.Err() == nil {
		r.startEvaluation(ctx, evaluate)
	}
	if err == nil {
		if untilPoll := r.nextFetch().Sub(now); res.RequeueAfter <= 0 || untilPoll < res.RequeueAfter {
			res.RequeueAfter = max(untilPoll, time.Millisecond)
		}
	}
	r.updateStatus(func(s *Status) {
		s.LastPass, s.PassError = now, ""
		if err != nil {
			s.PassError = err.Error()
		}
	})
	return res, err
}

// follow is step on a follower: it ends this replica's term, if it had one.
// The running evaluation is cancelled; what the term learned about nodes,
// evaluations and refusals is dropped, so a later term starts afresh.
func (r *Reconciler) follow() {
	l := &r.loop
	if l.leading {
		r.opts.Logger.Info("no longer leading: passes stop until this replica leads again")
	}
	r.cancelEvaluation("this replica no longer leads")
	l.leading, l.fetched, l.fetchErr, l.fetchFailing, l.syncSeen = false, false, nil, time.Time{}, 0
	l.heartbeats, l.outcome, l.rewrite, l.refused, l.refusedErr = nil, nil, nil, nil, nil
	l.planned = PlanMark{}
	l.observed, l.push = time.Time{}, nil
	r.updateStatus(func(s *Status) { s.Leader = false })
}

// requestSync is step on a follower with a trigger pending: only the leader
// fetches, so the follower asks it to by proposing RequestSync (see
// Trigger). The loop makes the proposal itself and waits for it, so at most
// one is in flight; another trigger meanwhile stays pending for the next
// one, which comes no sooner than Resync after this one (the Result says
// when). A failed proposal is logged and not retried: the leader's poll
// picks the push up, and a new leader fetches at once anyway.
func (r *Reconciler) requestSync(ctx context.Context, now time.Time) Result {
	l := &r.loop
	if !l.fetchDue {
		return Result{}
	}
	if !l.syncAsked.IsZero() {
		if next := l.syncAsked.Add(r.opts.Resync); now.Before(next) {
			return Result{RequeueAfter: next.Sub(now)}
		}
	}
	l.fetchDue, l.syncAsked = false, now
	// A request older than a poll interval is moot: the leader has polled
	// since. Bounding it also keeps a follower without a leader from
	// waiting on Raft for ever.
	pctx, cancel := context.WithTimeout(ctx, r.opts.Poll)
	defer cancel()
	err := r.propose(pctx, "asking the leader to fetch (RequestSync)", replicated.Command{Type: replicated.CmdRequestSync, At: now,
		RequestSync: &replicated.RequestSync{}})
	if ctx.Err() != nil {
		return Result{}
	}
	r.updateStatus(func(s *Status) {
		s.SyncRequested, s.SyncRequestError = now, ""
		if err != nil {
			s.SyncRequestError = err.Error()
		}
	})
	if err != nil {
		r.opts.Logger.Warn("a push was announced to this node, which does not lead, and it could not ask the leader to fetch; the leader's next poll picks it up",
			"poll", r.opts.Poll, "err", err)
		return Result{}
	}
	r.opts.Logger.Info("not leading: asked the leader to fetch the tracked ref", "ref", r.opts.Ref)
	return Result{}
}

// shouldFetch reports whether this pass fetches: a trigger or a new term asked
// for it, the next fetch is due (the poll interval passed, or the retry
// wait after a failed fetch), or state holds sync requests this term has
// not fetched after (RequestSync, from nodes that do not lead).
func (r *Reconciler) shouldFetch(state *replicated.State, now time.Time) bool {
	l := &r.loop
	return l.fetchDue || !now.Before(r.nextFetch()) || state.SyncRequests != l.syncSeen
}

// nextFetch is when the next fetch is due without a trigger: Poll after
// the last one, or sooner after a failed one (RetryWait), so that a push
// announced while the repository could not be reached waits seconds, not
// a whole poll interval, once it can.
func (r *Reconciler) nextFetch() time.Time {
	l := &r.loop
	if l.fetchErr == nil || l.fetchFailing.IsZero() {
		return l.lastFetch.Add(r.opts.Poll)
	}
	return l.lastFetch.Add(RetryWait(l.lastFetch.Sub(l.fetchFailing), r.opts.Resync, r.opts.Poll))
}

// fetch asks the Source for the tracked ref. An error is kept for the pass,
// which records it as FetchFailed; the last good commit stays the target.
func (r *Reconciler) fetch(ctx context.Context, now time.Time) {
	l := &r.loop
	l.fetchDue, l.lastFetch = false, now
	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, r.opts.FetchTimeout)
	defer cancel()
	f, err := r.opts.Source.Fetch(fctx)
	if ctx.Err() != nil {
		return // shutting down: no verdict on the repository
	}
	if err != nil && fctx.Err() != nil {
		err = fmt.Errorf("the fetch did not finish within %s and was stopped; the remote may be stalled (if it is only slow, raise the fetch timeout, --fetch-timeout): %w",
			r.opts.FetchTimeout, err)
	}
	r.opts.Metrics.ObserveFetch(time.Since(start), err)
	l.fetched = true
	if err != nil {
		if l.fetchErr == nil || l.fetchErr.Error() != err.Error() {
			r.opts.Logger.Warn("fetching the cluster repository failed; keeping the current revision", "err", err)
		}
		if l.fetchErr == nil {
			l.fetchFailing = now
		}
		l.fetchErr = err
		r.updateStatus(func(s *Status) { s.LastFetch, s.FetchError = now, err.Error() })
		return
	}
	l.fetchFailing = time.Time{}
	if l.fetchErr != nil {
		r.opts.Logger.Info("fetching the cluster repository works again", "commit", f.Commit)
	}
	l.fetchErr = nil
	if f.Commit != l.commit {
		r.opts.Logger.Info("tracked ref resolved", "ref", r.opts.Ref, "commit", f.Commit)
	}
	if f.Rewritten {
		r.opts.Logger.Warn("history rewritten (force-push): following the new commit", "previous", f.Previous, "commit", f.Commit)
		rw := f
		l.rewrite = &rw
	}
	l.commit = f.Commit
	r.updateStatus(func(s *Status) { s.LastFetch, s.FetchError, s.FetchCommit = now, "", f.Commit })
}

// evaluation is one run of the Evaluator on its own goroutine.
type evaluation struct {
	commit    string
	signer    string // who signed commit, as the Verifier said ("" without one)
	cancel    context.CancelFunc
	cancelled bool         // cancel was called: its outcome is dropped
	done      chan outcome // buffered 1: the goroutine's one send never blocks
}

// outcome is a finished evaluation.
type outcome struct {
	commit string
	signer string // who signed commit ("" without a Verifier)
	result Evaluation
	err    error
	at     time.Time // when the loop received it (Options.Now)
	// acted: a pass committed it, or recorded its failure.
	acted bool
}

// startEvaluation evaluates req's commit on a goroutine the loop owns; its
// outcome reaches the loop through evalDone. Only one runs at a time.
func (r *Reconciler) startEvaluation(ctx context.Context, req evalRequest) {
	commit := req.commit
	ectx, cancel := context.WithCancel(ctx)
	e := &evaluation{commit: commit, signer: req.signer, cancel: cancel, done: make(chan outcome, 1)}
	r.loop.eval = e
	r.evals.Add(1)
	go func() {
		defer r.evals.Done()
		defer cancel()
		start := time.Now()
		res, err := r.opts.Evaluator.Evaluate(ectx, commit)
		if ectx.Err() == nil {
			r.opts.Metrics.ObserveEval(time.Since(start), err)
		}
		e.done <- outcome{commit: commit, signer: req.signer, result: res, err: err}
	}()
	r.opts.Logger.Info("evaluating", "commit", commit)
	r.updateStatus(func(s *Status) { s.Evaluating = commit })
}

// evalDone is the running evaluation's channel, nil when none runs.
func (r *Reconciler) evalDone() <-chan outcome {
	if r.loop.eval == nil {
		return nil
	}
	return r.loop.eval.done
}

// finishEvaluation takes a finished evaluation's outcome for the next pass,
// unless it was cancelled (a newer commit, leadership lost, ctx ended):
// a cancelled evaluation is no verdict on its commit.
func (r *Reconciler) finishEvaluation(ctx context.Context, o outcome) {
	e := r.loop.eval
	r.loop.eval = nil
	r.updateStatus(func(s *Status) { s.Evaluating = "" })
	if e == nil || e.cancelled || ctx.Err() != nil || !r.loop.leading {
		return
	}
	o.at = r.opts.Now()
	r.loop.outcome = &o
}

// cancelEvaluation cancels the running evaluation, if any; the loop still
// waits for it to return before it starts another one.
func (r *Reconciler) cancelEvaluation(why string) {
	e := r.loop.eval
	if e == nil || e.cancelled {
		return
	}
	e.cancel()
	e.cancelled = true
	r.opts.Logger.Info("evaluation cancelled", "commit", e.commit, "why", why)
}

// stopEvaluation cancels the running evaluation and waits for it.
func (r *Reconciler) stopEvaluation() {
	r.cancelEvaluation("the reconciler stops")
	r.evals.Wait()
	r.loop.eval = nil
	r.updateStatus(func(s *Status) { s.Evaluating = "" })
}
