package reconciler

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// loopStore serves a fixed state and answers proposals with result.
type loopStore struct {
	st       *replicated.State
	result   replicated.ResultCode
	proposed []replicated.Command
}

func (s *loopStore) Read(context.Context) (*replicated.State, error) { return s.st, nil }
func (s *loopStore) IsLeader() bool                                  { return true }
func (s *loopStore) Propose(_ context.Context, cmd replicated.Command) (replicated.Result, error) {
	s.proposed = append(s.proposed, cmd)
	return replicated.Result{Code: s.result, Message: s.result.String()}, nil
}

type loopSource struct {
	commit string
	err    error
}

func (s loopSource) Fetch(context.Context) (Fetched, error) { return Fetched{Commit: s.commit}, s.err }

// countingEval returns spec (or err) and counts evaluations.
type countingEval struct {
	spec  *spec.Cluster
	err   error
	calls int
}

func (e *countingEval) Evaluate(context.Context, string) (Evaluation, error) {
	e.calls++
	if e.err != nil {
		return Evaluation{}, e.err
	}
	return Evaluation{Spec: e.spec, Hash: "hash"}, nil
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
				if e := cmds[0].SetCondition; e.Commit != "bad" || e.Message != "error: syntax error at flake.nix:3:5" {
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
			name:      "fetch error keeps everything as it is",
			state:     &replicated.State{Nodes: oneNode, Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web, Assignments: webOnNode1},
			source:    loopSource{err: errors.New("repository unreachable")},
			eval:      &countingEval{spec: bigger},
			wantEvals: 0,
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
			store := &loopStore{st: tt.state, result: tt.result}
			r := New(Options{Store: store, Source: tt.source, Evaluator: tt.eval, Ref: "main"})
			ctx := context.Background()
			r.fetch(ctx)
			err := r.Pass(ctx)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Pass error = %v, want error: %v", err, tt.wantErr)
			}
			if tt.eval.calls != tt.wantEvals {
				t.Errorf("evaluations = %d, want %d", tt.eval.calls, tt.wantEvals)
			}
			var got []replicated.CommandType
			for _, c := range store.proposed {
				got = append(got, c.Type)
			}
			if len(got) != len(tt.wantCmds) {
				t.Fatalf("proposed %v, want %v", got, tt.wantCmds)
			}
			for i := range got {
				if got[i] != tt.wantCmds[i] {
					t.Fatalf("proposed %v, want %v", got, tt.wantCmds)
				}
			}
			if tt.check != nil {
				tt.check(t, store.proposed)
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
	running := func(lastErr *replicated.Condition) *replicated.State {
		st := &replicated.State{Nodes: mkNodes(mkNode(1, replicated.NodeReady, 4, 4096)),
			Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: web,
			Assignments: mkCurrent(mkAssign("web", 1, "web", 1, 512, 5))}
		if lastErr != nil {
			st.Conditions = []replicated.Condition{*lastErr}
		}
		return st
	}
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	ctx := context.Background()

	// A timeout is recorded as retryable …
	store := &loopStore{st: running(nil)}
	ev := &countingEval{err: timeoutErr{}}
	r := New(Options{Store: store, Source: loopSource{commit: "slow"}, Evaluator: ev, Poll: 5 * time.Second, Now: clock})
	r.fetch(ctx)
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if len(store.proposed) != 1 || !store.proposed[0].SetCondition.Retryable {
		t.Fatalf("proposed %+v, want one retryable SetCondition", store.proposed)
	}
	// … not evaluated again before the poll interval has passed …
	store.st = running(&replicated.Condition{Type: replicated.EvalFailed, Commit: "slow", Message: timeoutErr{}.Error(), Retryable: true})
	now = now.Add(time.Second)
	if err := r.Pass(ctx); err != nil || ev.calls != 1 {
		t.Fatalf("pass before the retry time: err %v, evaluations %d, want 1", err, ev.calls)
	}
	// … evaluated again after it, without recording the same error twice.
	now = now.Add(5 * time.Second)
	if err := r.Pass(ctx); err != nil || ev.calls != 2 || len(store.proposed) != 1 {
		t.Fatalf("pass after the retry time: err %v, evaluations %d (want 2), proposals %d (want 1)", err, ev.calls, len(store.proposed))
	}
	// A new leader (a fresh reconciler) retries a retryable failure at once.
	r2 := New(Options{Store: store, Source: loopSource{commit: "slow"}, Evaluator: ev, Poll: 5 * time.Second, Now: clock})
	r2.fetch(ctx)
	if err := r2.Pass(ctx); err != nil || ev.calls != 3 {
		t.Fatalf("new leader: err %v, evaluations %d, want 3", err, ev.calls)
	}
	// A failure for good is never evaluated again, by any leader.
	store.st = running(&replicated.Condition{Type: replicated.EvalFailed, Commit: "slow", Message: "error: syntax error"})
	r3 := New(Options{Store: store, Source: loopSource{commit: "slow"}, Evaluator: ev, Poll: 5 * time.Second, Now: clock})
	r3.fetch(ctx)
	if err := r3.Pass(ctx); err != nil || ev.calls != 3 {
		t.Fatalf("permanent failure: err %v, evaluations %d, want still 3", err, ev.calls)
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
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	ctx := context.Background()
	state := func(seq1, seq2 uint64) *replicated.State {
		n1 := mkNode(1, replicated.NodeReady, 4, 4096)
		n1.LastHeartbeatSeq, n1.CephAddrs = seq1, []string{"127.0.0.1:0/1"}
		n2 := mkNode(2, replicated.NodeReady, 4, 4096)
		n2.LastHeartbeatSeq = seq2
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
			store := &loopStore{st: state(5, 3)}
			opts := Options{Store: store, Source: loopSource{}, Evaluator: &countingEval{}, NodeTimeout: 10 * time.Second, Now: clock}
			if tt.fencer != nil {
				opts.Fencer = tt.fencer
			}
			r := New(opts)
			// The first observation is the grace period: nothing is judged.
			if err := r.Pass(ctx); err != nil || len(store.proposed) != 0 {
				t.Fatalf("first pass: err %v, proposed %+v", err, store.proposed)
			}
			now = now.Add(11 * time.Second)
			store.st = state(5, 4) // node 2 heartbeats, node 1 is silent
			err := r.Pass(ctx)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantDown {
				if len(store.proposed) != 0 {
					t.Fatalf("proposed %+v, want nothing", store.proposed)
				}
				return
			}
			if len(store.proposed) != 1 || store.proposed[0].SetNodeState == nil {
				t.Fatalf("proposed %+v, want one SetNodeState", store.proposed)
			}
			c := store.proposed[0].SetNodeState
			if c.ID != 1 || c.State != replicated.NodeDown || c.Reason != "no heartbeat for 11s" || !reflect.DeepEqual(c.Fenced, tt.wantFenced) {
				t.Fatalf("SetNodeState = %+v", c)
			}
		})
	}
}
