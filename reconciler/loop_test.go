package reconciler

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// The reconciler's own fakes: a Source and Evaluators. The replicated state
// is testkit's in-memory Store, which applies proposals with the real Apply.

// loopSource answers every Fetch with the same commit (or error).
type loopSource struct {
	commit string
	err    error
}

func (s loopSource) Fetch(context.Context) (Fetched, error) { return Fetched{Commit: s.commit}, s.err }

// scriptSource answers Fetch with what the test set last.
type scriptSource struct {
	mu  sync.Mutex
	f   Fetched
	err error
}

func (s *scriptSource) Fetch(context.Context) (Fetched, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f, s.err
}

func (s *scriptSource) set(f Fetched, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.f, s.err = f, err
}

// countingEval returns spec (or err) and counts evaluations.
type countingEval struct {
	spec *spec.Cluster
	err  error

	mu    sync.Mutex
	calls int
}

func (e *countingEval) Evaluate(context.Context, string) (Evaluation, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	if e.err != nil {
		return Evaluation{}, e.err
	}
	return Evaluation{Spec: e.spec, Hash: "hash"}, nil
}

func (e *countingEval) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls
}

// answeringStore is a testkit store that answers CommitPlan proposals with
// a fixed code instead of applying them: a plan another one beat (stale
// parent) or one the cluster refuses. It records every proposal.
type answeringStore struct {
	*testkit.Store
	code replicated.ResultCode

	mu       sync.Mutex
	proposed []replicated.Command
}

func (s *answeringStore) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	s.mu.Lock()
	s.proposed = append(s.proposed, cmd)
	s.mu.Unlock()
	if cmd.Type == replicated.CmdCommitPlan {
		return replicated.Result{Code: s.code, Message: s.code.String()}, nil
	}
	return s.Store.Propose(ctx, cmd)
}

func (s *answeringStore) Proposed() []replicated.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]replicated.Command(nil), s.proposed...)
}

// testStore is what the tests need of a store.
type testStore interface {
	Store
	Proposed() []replicated.Command
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newTestReconciler returns a reconciler whose loop the test drives with
// step and settle; its evaluation is stopped when the test ends.
func newTestReconciler(t *testing.T, o Options) *Reconciler {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger()
	}
	r := New(o)
	t.Cleanup(r.stopEvaluation)
	return r
}

// settle stands in for the loop owner: one step, then, while an evaluation
// runs, wait for it and step again. It returns the last step's result.
func settle(t *testing.T, ctx context.Context, r *Reconciler) (Result, error) {
	t.Helper()
	res, err := r.step(ctx)
	for r.loop.eval != nil {
		awaitEvaluation(t, ctx, r)
		res, err = r.step(ctx)
	}
	return res, err
}

// awaitEvaluation hands the running evaluation's outcome to the loop, as
// Start does when it returns. The deadline is a hang guard, not a timing
// assertion.
func awaitEvaluation(t *testing.T, ctx context.Context, r *Reconciler) {
	t.Helper()
	e := r.loop.eval
	if e == nil {
		t.Fatal("no evaluation is running")
	}
	select {
	case o := <-e.done:
		r.finishEvaluation(ctx, o)
	case <-time.After(30 * time.Second):
		t.Fatalf("the evaluation of %s did not return", e.commit)
	}
}

func commandTypes(cmds []replicated.Command) []replicated.CommandType {
	var out []replicated.CommandType
	for _, c := range cmds {
		out = append(out, c.Type)
	}
	return out
}

func TestPass(t *testing.T) {
	web := mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512)})
	webOnNode1 := mkCurrent(mkAssign("web", 1, "web", 1, 512, 5))
	oneNode := mkNodes(mkNode(1, replicated.NodeReady, 4, 4096))
	twoNodes := mkNodes(mkNode(1, replicated.NodeReady, 4, 4096), mkNode(2, replicated.NodeReady, 4, 4096))
	bigger := mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512), "db": mkVM("db", 4, 4096)})

	tests := []struct {
		name      string
		state     *replicated.State
		source    loopSource
		eval      *countingEval
		result    replicated.ResultCode
		wantEvals int
		wantCmds  []replicated.CommandType
		wantErr   bool
		check     func(t *testing.T, cmds []replicated.Command)
	}{
		{
			name:      "first commit is evaluated and committed with parent 0",
			state:     &replicated.State{Nodes: oneNode},
			source:    loopSource{commit: "c1"},
			eval:      &countingEval{spec: web},
			wantEvals: 1, wantCmds: []replicated.CommandType{replicated.CmdCommitPlan},
			check: func(t *testing.T, cmds []replicated.Command) {
				p := cmds[0].CommitPlan
				if p.Parent != 0 || p.Commit != "c1" || len(p.Assignments) != 1 || p.Assignments[0].Node != 1 {
					t.Errorf("plan %+v", p)
				}
			},
		},
		{
			name:      "new commit without changes still commits a revision recording it",
			state:     &replicated.State{Nodes: oneNode, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web, Assignments: webOnNode1},
			source:    loopSource{commit: "c2"},
			eval:      &countingEval{spec: web},
			wantEvals: 1, wantCmds: []replicated.CommandType{replicated.CmdCommitPlan},
			check: func(t *testing.T, cmds []replicated.Command) {
				if p := cmds[0].CommitPlan; p.Parent != 5 || p.Commit != "c2" {
					t.Errorf("plan parent %d commit %s, want 5 c2", p.Parent, p.Commit)
				}
			},
		},
		{
			name:      "unchanged commit and nodes proposes nothing and evaluates nothing",
			state:     &replicated.State{Nodes: oneNode, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web, Assignments: webOnNode1},
			source:    loopSource{commit: "c1"},
			eval:      &countingEval{spec: web},
			wantEvals: 0,
		},
		{
			name:      "failed evaluation records the error and commits no plan",
			state:     &replicated.State{Nodes: oneNode, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web, Assignments: webOnNode1},
			source:    loopSource{commit: "bad"},
			eval:      &countingEval{err: errors.New("error: syntax error at flake.nix:3:5")},
			wantEvals: 1, wantCmds: []replicated.CommandType{replicated.CmdSetCondition},
			check: func(t *testing.T, cmds []replicated.Command) {
				if e := cmds[0].SetCondition; e.Type != replicated.EvalFailed || e.Commit != "bad" || e.Message != "error: syntax error at flake.nix:3:5" || e.Retryable {
					t.Errorf("recorded %+v", e)
				}
			},
		},
		{
			name: "commit already recorded as bad is not evaluated again",
			state: &replicated.State{Nodes: oneNode, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web, Assignments: webOnNode1,
				Conditions: []replicated.Condition{{Type: replicated.EvalFailed, Commit: "bad", Message: "boom"}}},
			source:    loopSource{commit: "bad"},
			eval:      &countingEval{err: errors.New("boom")},
			wantEvals: 0,
		},
		{
			name: "new node re-plans the running commit without evaluating",
			state: &replicated.State{Nodes: twoNodes, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: bigger,
				Assignments: webOnNode1},
			source:    loopSource{commit: "c1"},
			eval:      &countingEval{spec: bigger},
			wantEvals: 0, wantCmds: []replicated.CommandType{replicated.CmdCommitPlan},
			check: func(t *testing.T, cmds []replicated.Command) {
				if p := cmds[0].CommitPlan; p.Commit != "c1" || len(p.Assignments) != 2 {
					t.Errorf("plan %+v", p)
				}
			},
		},
		{
			name:      "fetch error keeps the revision and records FetchFailed with the running commit",
			state:     &replicated.State{Nodes: oneNode, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web, Assignments: webOnNode1},
			source:    loopSource{err: errors.New("repository unreachable")},
			eval:      &countingEval{spec: bigger},
			wantEvals: 0, wantCmds: []replicated.CommandType{replicated.CmdSetCondition},
			check: func(t *testing.T, cmds []replicated.Command) {
				c := cmds[0].SetCondition
				if c.Type != replicated.FetchFailed || c.Commit != "c1" || c.Message != "repository unreachable" || !c.Retryable {
					t.Errorf("recorded %+v", c)
				}
			},
		},
		{
			name:      "stale parent is not an error: the next pass re-reads",
			state:     &replicated.State{Nodes: oneNode},
			source:    loopSource{commit: "c1"},
			eval:      &countingEval{spec: web},
			result:    replicated.ResultStaleParent,
			wantEvals: 1, wantCmds: []replicated.CommandType{replicated.CmdCommitPlan},
		},
		{
			name:      "refused plan is an error",
			state:     &replicated.State{Nodes: oneNode},
			source:    loopSource{commit: "c1"},
			eval:      &countingEval{spec: web},
			result:    replicated.ResultInvalid,
			wantEvals: 1, wantCmds: []replicated.CommandType{replicated.CmdCommitPlan},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var store testStore = testkit.NewStore(tt.state)
			if tt.result != replicated.ResultOK {
				store = &answeringStore{Store: testkit.NewStore(tt.state), code: tt.result}
			}
			r := newTestReconciler(t, Options{Store: store, Source: tt.source, Evaluator: tt.eval, Ref: "main"})
			_, err := settle(t, context.Background(), r)
			if (err != nil) != tt.wantErr {
				t.Fatalf("pass error = %v, want error: %v", err, tt.wantErr)
			}
			if tt.eval.count() != tt.wantEvals {
				t.Errorf("evaluations = %d, want %d", tt.eval.count(), tt.wantEvals)
			}
			proposed := store.Proposed()
			if got := commandTypes(proposed); !reflect.DeepEqual(got, tt.wantCmds) {
				t.Fatalf("proposed %v, want %v", got, tt.wantCmds)
			}
			if tt.check != nil {
				tt.check(t, proposed)
			}
			if tt.source.err != nil && r.Status().FetchError == "" {
				t.Errorf("fetch error not kept in Status")
			}
		})
	}
}

// timeoutErr is an evaluation error that may go away on retry.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "nix eval: evaluation timeout after 2m0s" }
func (timeoutErr) Temporary() bool { return true }

func TestPassRetriesTemporaryEvalFailuresOnly(t *testing.T) {
	web := mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512)})
	running := &replicated.State{Nodes: mkNodes(mkNode(1, replicated.NodeReady, 4, 4096)),
		Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web,
		Assignments: mkCurrent(mkAssign("web", 1, "web", 1, 512, 5))}
	clock := testkit.NewClock(time.Unix(1000, 0))
	ctx := context.Background()
	store := testkit.NewStore(running)
	ev := &countingEval{err: timeoutErr{}}
	opts := Options{Store: store, Source: loopSource{commit: "slow"}, Evaluator: ev, Poll: 5 * time.Second, Now: clock.Now}

	// A timeout is recorded as retryable …
	r := newTestReconciler(t, opts)
	if _, err := settle(t, ctx, r); err != nil {
		t.Fatal(err)
	}
	if p := store.Proposed(); len(p) != 1 || !p[0].SetCondition.Retryable {
		t.Fatalf("proposed %+v, want one retryable SetCondition", p)
	}
	// … tried again after waits that double from Resync (1 s) and stop
	// growing at Poll (5 s), without recording the same error twice: the
	// failure was recorded at +0 s, the tries come at +1, +2, +4, +8, +13 s.
	start := clock.Now()
	for i, at := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 13 * time.Second} {
		clock.Advance(start.Add(at - time.Second/2).Sub(clock.Now()))
		if res, err := settle(t, ctx, r); err != nil || ev.count() != i+1 {
			t.Fatalf("pass at +%s, before try %d: err %v, evaluations %d, want %d", at-time.Second/2, i+2, err, ev.count(), i+1)
		} else if res.RequeueAfter != time.Second/2 {
			t.Errorf("pass at +%s asks for a pass in %s, want 500ms (when the retry is due)", at-time.Second/2, res.RequeueAfter)
		}
		clock.Advance(start.Add(at).Sub(clock.Now()))
		if _, err := settle(t, ctx, r); err != nil || ev.count() != i+2 || len(store.Proposed()) != 1 {
			t.Fatalf("pass at +%s: err %v, evaluations %d (want %d), proposals %d (want 1)", at, err, ev.count(), i+2, len(store.Proposed()))
		}
	}
	// A new leader (a fresh reconciler) retries a retryable failure at once.
	r2 := newTestReconciler(t, opts)
	if _, err := settle(t, ctx, r2); err != nil || ev.count() != 7 {
		t.Fatalf("new leader: err %v, evaluations %d, want 7", err, ev.count())
	}
	// A failure for good is never evaluated again, by any leader.
	store.Update(func(s *replicated.State) {
		s.Conditions = []replicated.Condition{{Type: replicated.EvalFailed, Commit: "slow", Message: "error: syntax error"}}
	})
	r3 := newTestReconciler(t, opts)
	if _, err := settle(t, ctx, r3); err != nil || ev.count() != 7 {
		t.Fatalf("permanent failure: err %v, evaluations %d, want still 7", err, ev.count())
	}
	clock.Advance(time.Hour)
	if _, err := settle(t, ctx, r3); err != nil || ev.count() != 7 {
		t.Fatalf("permanent failure an hour later: err %v, evaluations %d, want still 7", err, ev.count())
	}
}

type fakeFencer struct {
	err   error
	calls []uint64
}

// Fence stands in for Ceph's blocklist (tests/ceph fences for real).
func (f *fakeFencer) Fence(_ context.Context, n *replicated.Node) ([]string, error) {
	f.calls = append(f.calls, n.ID)
	if f.err != nil {
		return nil, f.err
	}
	return n.CephAddrs, nil
}

func TestPassMarksSilentNodesDownAfterFencing(t *testing.T) {
	ctx := context.Background()
	state := func() *replicated.State {
		n1 := mkNode(1, replicated.NodeReady, 4, 4096)
		n1.LastHeartbeatSeq, n1.CephAddrs = 5, []string{"127.0.0.1:0/1"}
		n2 := mkNode(2, replicated.NodeReady, 4, 4096)
		n2.LastHeartbeatSeq = 3
		return &replicated.State{Nodes: mkNodes(n1, n2)}
	}
	for _, tt := range []struct {
		name       string
		fencer     *fakeFencer
		wantDown   bool
		wantFenced []string
		wantErr    bool
	}{
		{"without a fencer a silent node is marked down", nil, true, nil, false},
		{"a fenced silent node is marked down with its fenced addresses", &fakeFencer{}, true, []string{"127.0.0.1:0/1"}, false},
		{"a node that cannot be fenced is not marked down", &fakeFencer{err: errors.New("monitor unreachable")}, false, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock := testkit.NewClock(time.Unix(1000, 0))
			store := testkit.NewStore(state())
			opts := Options{Store: store, Source: loopSource{}, Evaluator: &countingEval{}, NodeTimeout: 10 * time.Second, Now: clock.Now}
			if tt.fencer != nil {
				opts.Fencer = tt.fencer
			}
			r := newTestReconciler(t, opts)
			// The first observation is the grace period: nothing is judged.
			if _, err := r.step(ctx); err != nil || len(store.Proposed()) != 0 {
				t.Fatalf("first pass: err %v, proposed %+v", err, store.Proposed())
			}
			// Passes every second, as the loop runs them: node 2 heartbeats,
			// node 1 is silent; the pass at 11s judges it.
			var err error
			for range 11 {
				clock.Advance(time.Second)
				store.Update(func(s *replicated.State) { s.Nodes[2].LastHeartbeatSeq++ })
				if _, err = r.step(ctx); err != nil && !tt.wantErr {
					t.Fatalf("pass at %s: %v", clock.Now().Sub(time.Unix(1000, 0)), err)
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr && IsTerminal(err) {
				t.Errorf("a fencing failure is terminal (%v); want it retried with backoff", err)
			}
			proposed := store.Proposed()
			if !tt.wantDown {
				if len(proposed) != 0 {
					t.Fatalf("proposed %+v, want nothing", proposed)
				}
				return
			}
			if len(proposed) != 1 || proposed[0].SetNodeState == nil {
				t.Fatalf("proposed %+v, want one SetNodeState", proposed)
			}
			c := proposed[0].SetNodeState
			if c.ID != 1 || c.State != replicated.NodeDown || c.Reason != "no heartbeat for 11s" || !reflect.DeepEqual(c.Fenced, tt.wantFenced) ||
				c.HeartbeatSeq != 5 {
				t.Fatalf("SetNodeState = %+v", c)
			}
		})
	}
}

// TestPassDoesNotCountItsOwnBlindnessAsSilence: a leader that could not
// observe the cluster (frozen while it kept its term, or no quorum to read)
// for longer than the node timeout judges nobody at once; the nodes get the
// time they were not observed back. Found by tests/sim.
func TestPassDoesNotCountItsOwnBlindnessAsSilence(t *testing.T) {
	ctx := context.Background()
	n1 := mkNode(1, replicated.NodeReady, 4, 4096)
	n1.LastHeartbeatSeq = 5
	clock := testkit.NewClock(time.Unix(1000, 0))
	store := testkit.NewStore(&replicated.State{Nodes: mkNodes(n1)})
	r := newTestReconciler(t, Options{Store: store, Source: loopSource{}, Evaluator: &countingEval{},
		NodeTimeout: 10 * time.Second, Now: clock.Now})
	if _, err := r.step(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second) // no pass ran: the leader was frozen
	if _, err := r.step(ctx); err != nil {
		t.Fatal(err)
	}
	if p := store.ProposedOf(replicated.CmdSetNodeState); len(p) != 0 {
		t.Fatalf("right after a 30s blind gap: proposed %+v, want nothing", p)
	}
	// Observed silence still counts: 11 more seconds of passes judge it.
	for range 11 {
		clock.Advance(time.Second)
		if _, err := r.step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if p := store.ProposedOf(replicated.CmdSetNodeState); len(p) != 1 {
		t.Fatalf("after 11s of observed silence: proposed %+v, want one SetNodeState", p)
	}
}

func TestDiscountBlindness(t *testing.T) {
	t0 := time.Unix(1000, 0)
	hb := Heartbeats{1: {Seq: 3, At: t0}}
	if got := DiscountBlindness(hb, t0.Add(time.Second), t0.Add(2*time.Second), 2*time.Second); got[1].At != t0 {
		t.Errorf("a gap within the expected pass period moved the record: %v", got)
	}
	if got := DiscountBlindness(hb, time.Time{}, t0.Add(time.Minute), 2*time.Second); got[1].At != t0 {
		t.Errorf("a first observation moved the record: %v", got)
	}
	got := DiscountBlindness(hb, t0.Add(time.Second), t0.Add(31*time.Second), 2*time.Second)
	if got[1].At != t0.Add(30*time.Second) || hb[1].At != t0 {
		t.Errorf("a 30s gap: got %v (input %v), want the node's time moved by 30s and the input unchanged", got, hb)
	}
}
