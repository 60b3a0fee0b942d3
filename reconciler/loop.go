package reconciler

import (
	"context"
	"errors"
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
	// to. An error means nothing was learned: the cluster keeps its revision.
	Fetch(ctx context.Context) (Fetched, error)
}

// Fetched is what one fetch of the tracked ref found.
type Fetched struct {
	Commit string
	// Previous is the commit the source knew before ("" at first).
	Previous string
	// Rewritten: history was rewritten (a force-push): Previous is not an
	// ancestor of Commit. The new commit is followed all the same.
	Rewritten bool
}

// Evaluator evaluates the cluster flake at a commit.
type Evaluator interface {
	// Evaluate returns the desired spec at commit. An error is an evaluation
	// failure to record (nix's message, an invalid spec) unless ctx ended.
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

// Options configure a Reconciler.
type Options struct {
	Store     Store
	Source    Source
	Evaluator Evaluator
	Ref       string // recorded in revisions
	// Poll is how often the ref is fetched; Resync how often the plan is
	// recomputed from the replicated state alone (new nodes, capacity).
	Poll   time.Duration
	Resync time.Duration
	// NodeTimeout is how long a node's heartbeat may stand still before the
	// leader fences it (when Fencer is set) and marks it down, so its VMs
	// are placed elsewhere; 0 turns failure detection off.
	NodeTimeout time.Duration
	Fencer      Fencer // optional
	Now         func() time.Time
	Logger      *slog.Logger
}

// Reconciler is the leader loop. Construct with New, run with Start.
type Reconciler struct {
	opts    Options
	trigger chan struct{}

	mu     sync.Mutex
	status Status // guarded by mu
	// retryAt holds commits whose evaluation failed for a temporary reason
	// (a timeout, say) and when to evaluate them again; a commit that failed
	// for good is not evaluated again. Guarded by mu.
	retryAt map[string]time.Time
	// heartbeats is this leader's liveness record; reset when leadership is
	// lost, so a new term starts with a full grace period. Guarded by mu.
	heartbeats Heartbeats
}

// temporary is implemented by evaluation errors that may go away on retry
// (nixeval.Error: timeouts, nix missing or killed).
type temporary interface {
	Temporary() bool
}

// Status is the reconciler's own view, for the API (not replicated).
type Status struct {
	Leader      bool      `json:"leader"`
	LastFetch   time.Time `json:"lastFetch,omitzero"`
	FetchCommit string    `json:"fetchCommit,omitempty"`
	FetchError  string    `json:"fetchError,omitempty"`
	LastPass    time.Time `json:"lastPass,omitzero"`
	PassError   string    `json:"passError,omitempty"`
}

// New returns a reconciler; it starts nothing.
func New(o Options) *Reconciler {
	if o.Poll <= 0 {
		o.Poll = 5 * time.Second
	}
	if o.Resync <= 0 {
		o.Resync = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Reconciler{opts: o, trigger: make(chan struct{}, 1), retryAt: map[string]time.Time{}}
}

// Trigger asks for a fetch and a pass as soon as possible (webhook, CLI).
// It never blocks; triggers coalesce.
func (r *Reconciler) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Triggers is the channel behind Trigger, for senders that do their own
// non-blocking send (the webhook handler).
func (r *Reconciler) Triggers() chan<- struct{} { return r.trigger }

// Status returns a copy of the reconciler's local status.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Start runs the loop until ctx ends. Passes happen only while this replica
// leads; a follower's loop just waits.
func (r *Reconciler) Start(ctx context.Context) error {
	resync := time.NewTicker(r.opts.Resync)
	defer resync.Stop()
	var lastFetch time.Time
	fetchNow := true
	for {
		leader := r.opts.Store.IsLeader()
		r.mu.Lock()
		r.status.Leader = leader
		if !leader {
			r.heartbeats = nil
		}
		r.mu.Unlock()
		if leader {
			if fetchNow || r.opts.Now().Sub(lastFetch) >= r.opts.Poll {
				lastFetch = r.opts.Now()
				fetchNow = false
				r.fetch(ctx)
			}
			if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
				r.opts.Logger.Warn("reconcile pass failed; retrying", "err", err)
			}
		} else {
			// A new leader fetches at once.
			fetchNow = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
		case <-r.trigger:
			fetchNow = true
		}
	}
}

func (r *Reconciler) fetch(ctx context.Context) {
	fetched, err := r.opts.Source.Fetch(ctx)
	commit := fetched.Commit
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.LastFetch = r.opts.Now()
	if err != nil {
		r.status.FetchError = err.Error()
		r.opts.Logger.Warn("fetching the cluster repository failed; keeping the current revision", "err", err)
		return
	}
	r.status.FetchError = ""
	if commit != r.status.FetchCommit {
		r.opts.Logger.Info("tracked ref resolved", "ref", r.opts.Ref, "commit", commit)
	}
	r.status.FetchCommit = commit
}

// markStaleNodesDown fences and marks down every node whose heartbeat stood
// still for longer than NodeTimeout. It reports whether it marked any.
func (r *Reconciler) markStaleNodesDown(ctx context.Context, state *replicated.State) (bool, error) {
	if r.opts.NodeTimeout <= 0 {
		return false, nil
	}
	now := r.opts.Now()
	r.mu.Lock()
	r.heartbeats = ObserveHeartbeats(r.heartbeats, state.Nodes, now)
	hb := r.heartbeats
	r.mu.Unlock()
	marked := false
	var errs []error
	for _, id := range StaleNodes(hb, state.Nodes, now, r.opts.NodeTimeout) {
		node := state.Nodes[id]
		silent := now.Sub(hb[id].At).Round(time.Second)
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
			SetNodeState: &replicated.SetNodeState{ID: id, State: replicated.NodeDown, Reason: reason, Fenced: fenced}})
		if err != nil {
			errs = append(errs, fmt.Errorf("marking node %d down: %w", id, err))
			continue
		}
		if res.Code != replicated.ResultOK {
			errs = append(errs, fmt.Errorf("marking node %d down: %s", id, res.Message))
			continue
		}
		r.opts.Logger.Warn("node marked down; its VMs will be placed elsewhere", "node", id, "reason", reason, "fenced", fenced)
		marked = true
	}
	return marked, errors.Join(errs...)
}

// retryDue reports whether a commit whose evaluation failed for a temporary
// reason should be evaluated again now: when its retry time has come, or when
// this replica never tried it (it became leader since).
func (r *Reconciler) retryDue(commit string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.retryAt[commit]
	return !ok || !r.opts.Now().Before(at)
}

// Pass runs one level-triggered reconciliation against the latest fetched
// commit and the current replicated state. It returns an error when the
// outcome is unknown and the pass should be retried.
func (r *Reconciler) Pass(ctx context.Context) error {
	err := r.pass(ctx)
	r.mu.Lock()
	r.status.LastPass = r.opts.Now()
	r.status.PassError = ""
	if err != nil {
		r.status.PassError = err.Error()
	}
	r.mu.Unlock()
	return err
}

func (r *Reconciler) pass(ctx context.Context) error {
	state, err := r.opts.Store.Read(ctx)
	if err != nil {
		return fmt.Errorf("reading replicated state: %w", err)
	}
	if marked, err := r.markStaleNodesDown(ctx, state); err != nil || marked {
		// The next pass plans against the node states just committed.
		r.Trigger()
		return err
	}
	commit := r.Status().FetchCommit

	desired, hash, planCommit := state.Desired, "", ""
	if state.Revision != nil {
		hash, planCommit = state.Revision.EvalHash, state.Revision.Commit
	}
	newCommit := commit != "" && commit != planCommit
	lastErr, failed := state.Condition(replicated.EvalFailed)
	if newCommit && failed && lastErr.Commit == commit &&
		(!lastErr.Retryable || !r.retryDue(commit)) {
		// Known bad (or a temporary failure not due for a retry yet): keep the
		// running revision, but still re-plan it below (nodes may have changed).
		newCommit = false
	}
	if newCommit {
		ev, err := r.opts.Evaluator.Evaluate(ctx, commit)
		if err == nil {
			// A spec that shrinks a volume is refused like an invalid one.
			err = CheckVolumes(state.Desired, ev.Spec)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.opts.Logger.Error("evaluation failed; keeping the current revision", "commit", commit, "err", err)
			var tmp temporary
			retryable := errors.As(err, &tmp) && tmp.Temporary()
			r.mu.Lock()
			if retryable {
				r.retryAt[commit] = r.opts.Now().Add(r.opts.Poll)
			} else {
				delete(r.retryAt, commit)
			}
			r.mu.Unlock()
			recorded := failed && lastErr.Commit == commit &&
				lastErr.Message == err.Error() && lastErr.Retryable == retryable
			if !recorded {
				res, perr := r.opts.Store.Propose(ctx, replicated.Command{
					Type: replicated.CmdSetCondition, At: r.opts.Now(),
					SetCondition: &replicated.SetCondition{Type: replicated.EvalFailed, Commit: commit, Message: err.Error(), Retryable: retryable},
				})
				if perr != nil {
					return fmt.Errorf("recording the evaluation error of %s: %w", commit, perr)
				}
				if res.Code != replicated.ResultOK {
					return fmt.Errorf("recording the evaluation error of %s: %s", commit, res.Message)
				}
			}
			newCommit = false
		} else {
			desired, hash, planCommit = ev.Spec, ev.Hash, commit
			r.mu.Lock()
			delete(r.retryAt, commit)
			r.mu.Unlock()
		}
	}
	if planCommit == "" {
		return nil // nothing fetched and nothing committed yet
	}

	plan := Compute(Input{Desired: desired, Nodes: state.Nodes, Current: state.Assignments, Previous: state.Desired})
	if !newCommit && !plan.HasChanges() {
		return nil
	}
	var parent uint64
	if state.Revision != nil {
		parent = state.Revision.ID
	}
	res, err := r.opts.Store.Propose(ctx, replicated.Command{
		Type: replicated.CmdCommitPlan, At: r.opts.Now(),
		CommitPlan: &replicated.CommitPlan{
			Parent: parent, Commit: planCommit, Ref: r.opts.Ref, EvalHash: hash,
			Summary: plan.Summary(), Spec: desired, Assignments: plan.Assignments, Unschedulable: plan.Unschedulable,
		},
	})
	if err != nil {
		return fmt.Errorf("proposing the plan for %s: %w", planCommit, err)
	}
	switch res.Code {
	case replicated.ResultOK:
		r.opts.Logger.Info("plan committed", "revision", res.Revision, "commit", planCommit, "summary", plan.Summary())
		return nil
	case replicated.ResultStaleParent:
		// Another pass committed first; the next pass re-reads the state.
		r.Trigger()
		return nil
	default:
		return errors.New("plan refused: " + res.Message)
	}
}
