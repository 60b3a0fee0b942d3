package reconciler

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// describe renders the proposals the tests assert on in one line each.
func describe(cmds []replicated.Command) []string {
	var out []string
	for _, c := range cmds {
		switch {
		case c.SetCondition != nil:
			out = append(out, fmt.Sprintf("Set %s commit=%s %q", c.SetCondition.Type, c.SetCondition.Commit, c.SetCondition.Message))
		case c.ClearCondition != nil:
			out = append(out, fmt.Sprintf("Clear %s", c.ClearCondition.Type))
		case c.CommitPlan != nil:
			s := fmt.Sprintf("CommitPlan %s", c.CommitPlan.Commit)
			if c.CommitPlan.Rewrote != "" {
				s += " rewrote=" + c.CommitPlan.Rewrote
			}
			out = append(out, s)
		default:
			out = append(out, string(c.Type))
		}
	}
	return out
}

// running1 is a cluster running revision 5 of commit c1: web on node 1.
func running1() *replicated.State {
	return &replicated.State{
		Applied:  5,
		Nodes:    mkNodes(mkNode(1, replicated.NodeReady, 4, 4096)),
		Revision: &replicated.Revision{ID: 5, Commit: "c1"}, Desired: mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512)}),
		Assignments: mkCurrent(mkAssign("web", 1, "web", 1, 512, 5)),
	}
}

// fetchStep is one fetch the source answers with, and the proposals the
// pass after it must make.
type fetchStep struct {
	fetched Fetched
	err     string
	want    []string
}

func TestFetchFailedCondition(t *testing.T) {
	const unreachable = "gitsync: fetch main from https://git.example.invalid/c.git: connection refused: check that the URL is right and the repository is reachable"
	recorded := func(st *replicated.State) *replicated.State {
		st.Conditions = []replicated.Condition{{Type: replicated.FetchFailed, Commit: "c1", Message: unreachable, Retryable: true}}
		return st
	}
	for _, tt := range []struct {
		name  string
		state *replicated.State
		steps []fetchStep
	}{
		{"fetch error makes FetchFailed=True once and clears it after the next good fetch", running1(), []fetchStep{
			{fetched: Fetched{Commit: "c1"}},
			{err: unreachable, want: []string{`Set FetchFailed commit=c1 "` + unreachable + `"`}},
			{err: unreachable},
			{err: unreachable},
			{fetched: Fetched{Commit: "c1", Previous: "c1"}, want: []string{"Clear FetchFailed"}},
			{fetched: Fetched{Commit: "c1", Previous: "c1"}},
		}},
		{"a fetch error with another message is recorded again", running1(), []fetchStep{
			{err: unreachable, want: []string{`Set FetchFailed commit=c1 "` + unreachable + `"`}},
			{err: "branch not found at the remote", want: []string{`Set FetchFailed commit=c1 "branch not found at the remote"`}},
		}},
		{"FetchFailed names the last fetched commit, not the running one", running1(), []fetchStep{
			{fetched: Fetched{Commit: "c2", Previous: "c1"}},
			{err: unreachable, want: []string{`Set FetchFailed commit=c2 "` + unreachable + `"`}},
		}},
		{"a new leader does not record again the FetchFailed the old leader recorded", recorded(running1()), []fetchStep{
			{err: unreachable},
		}},
		{"a new leader's good fetch clears the old leader's FetchFailed", recorded(running1()), []fetchStep{
			{fetched: Fetched{Commit: "c1"}, want: []string{"Clear FetchFailed"}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clock := testkit.NewClock(time.Unix(1000, 0))
			store := testkit.NewStore(tt.state)
			src := &scriptSource{}
			ev := &countingEval{spec: running1().Desired}
			r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: ev, Poll: 5 * time.Second, Now: clock.Now})
			seen := 0
			for i, s := range tt.steps {
				var err error
				if s.err != "" {
					err = errors.New(s.err)
				}
				src.set(s.fetched, err)
				if _, err := settle(t, ctx, r); err != nil {
					t.Fatalf("step %d: pass: %v", i, err)
				}
				all := store.Proposed()
				var got []string
				for _, d := range describe(all[seen:]) {
					if !strings.HasPrefix(d, "CommitPlan") {
						got = append(got, d)
					}
				}
				seen = len(all)
				if !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d: proposed %q, want %q", i, got, s.want)
				}
				clock.Advance(5 * time.Second) // the next poll is due
			}
			if got := r.Status().FetchError; (tt.steps[len(tt.steps)-1].err != "") != (got != "") {
				t.Errorf("Status().FetchError = %q after the last step", got)
			}
		})
	}
}

// perCommitEval evaluates each commit to its spec or error, and counts
// evaluations per commit.
type perCommitEval struct {
	mu    sync.Mutex
	specs map[string]*spec.Cluster
	errs  map[string]error
	calls map[string]int
}

func (e *perCommitEval) Evaluate(_ context.Context, commit string) (Evaluation, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.calls == nil {
		e.calls = map[string]int{}
	}
	e.calls[commit]++
	if err := e.errs[commit]; err != nil {
		return Evaluation{}, err
	}
	if sp, ok := e.specs[commit]; ok {
		return Evaluation{Spec: sp, Hash: "h-" + commit}, nil
	}
	return Evaluation{}, fmt.Errorf("error: Cannot find Git revision '%s' in ref 'refs/heads/main'", commit)
}

func (e *perCommitEval) count(commit string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[commit]
}

func (e *perCommitEval) set(commit string, sp *spec.Cluster) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.specs[commit] = sp
}

func TestForcePushIsRecordedOnTheRevision(t *testing.T) {
	web := mkCluster(map[string]spec.VM{"web": mkVM("web-v2", 1, 512)})
	for _, tt := range []struct {
		name  string
		errs  map[string]error
		steps []fetchStep
	}{
		{"a force-push is recorded as Rewrote on the revision of the new commit, a fast-forward is not", nil, []fetchStep{
			{fetched: Fetched{Commit: "c2", Previous: "c1", Rewritten: true}, want: []string{"CommitPlan c2 rewrote=c1"}},
			{fetched: Fetched{Commit: "c3", Previous: "c2"}, want: []string{"CommitPlan c3"}},
		}},
		{"a force-push to a commit that fails is recorded on the next commit that is deployed",
			map[string]error{"c2": errors.New("error: syntax error")}, []fetchStep{
				{fetched: Fetched{Commit: "c2", Previous: "c1", Rewritten: true}, want: []string{`Set EvalFailed commit=c2 "error: syntax error"`}},
				{fetched: Fetched{Commit: "c3", Previous: "c2"}, want: []string{"CommitPlan c3 rewrote=c1"}},
			}},
		{"a force-push back to the running commit records nothing", nil, []fetchStep{
			{fetched: Fetched{Commit: "c1", Previous: "c0", Rewritten: true}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			store := testkit.NewStore(running1())
			src := &scriptSource{}
			ev := &perCommitEval{specs: map[string]*spec.Cluster{"c2": web, "c3": web}, errs: tt.errs}
			r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: ev, Ref: "main"})
			seen := 0
			for i, s := range tt.steps {
				src.set(s.fetched, nil)
				r.Trigger()
				if _, err := settle(t, ctx, r); err != nil {
					t.Fatalf("step %d: pass: %v", i, err)
				}
				all := store.Proposed()
				if got := describe(all[seen:]); !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d: proposed %q, want %q", i, got, s.want)
				}
				seen = len(all)
			}
			st, _ := store.Read(ctx)
			var rewrote []string
			for _, rev := range st.History {
				if rev.Rewrote != "" {
					rewrote = append(rewrote, rev.Commit+" rewrote "+rev.Rewrote)
				}
			}
			var events []string
			for _, e := range st.Events {
				if e.Kind == replicated.EventHistoryRewritten {
					events = append(events, e.Message)
				}
			}
			if len(rewrote) != len(events) || len(rewrote) > 1 {
				t.Fatalf("revisions with Rewrote %q, HistoryRewritten events %q: want one of each (or none)", rewrote, events)
			}
		})
	}
}

// A `blixard plan --commit SHA` of a commit not pushed yet must not mark it
// bad: the loop evaluates only commits its Source fetched and records only
// its own evaluations.
func TestAPreviewDoesNotPoisonTheLoop(t *testing.T) {
	ctx := context.Background()
	store := testkit.NewStore(running1())
	src := &scriptSource{f: Fetched{Commit: "c1"}}
	ev := &perCommitEval{specs: map[string]*spec.Cluster{}}
	r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: ev, Ref: "main"})

	st, _ := store.Read(ctx)
	if _, err := PlanCommit(ctx, ev, "c9", st); err == nil || !strings.Contains(err.Error(), "Cannot find Git revision") {
		t.Fatalf("preview of an unpushed commit: err = %v, want nix's message", err)
	}
	if _, err := settle(t, ctx, r); err != nil {
		t.Fatal(err)
	}
	if got := store.Proposed(); len(got) != 0 {
		t.Fatalf("the loop proposed %q after a preview of an unfetched commit, want nothing", describe(got))
	}
	if n := ev.count("c9"); n != 1 {
		t.Fatalf("c9 evaluated %d times, want once (the preview; the loop never fetched it)", n)
	}

	// c9 is pushed and fetched: it is evaluated and deployed.
	ev.set("c9", mkCluster(map[string]spec.VM{"web": mkVM("web-v9", 1, 512)}))
	src.set(Fetched{Commit: "c9", Previous: "c1"}, nil)
	r.Trigger()
	if _, err := settle(t, ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, want := describe(store.Proposed()), []string{"CommitPlan c9"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after the push: proposed %q, want %q", got, want)
	}
}

func TestRefusedPlanIsNotProposedAgainUnchanged(t *testing.T) {
	ctx := context.Background()
	store := &answeringStore{Store: testkit.NewStore(&replicated.State{Nodes: mkNodes(mkNode(1, replicated.NodeReady, 4, 4096))}),
		code: replicated.ResultInvalid}
	ev := &countingEval{spec: mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512)})}
	r := newTestReconciler(t, Options{Store: store, Source: loopSource{commit: "c1"}, Evaluator: ev})
	_, err := settle(t, ctx, r)
	if !IsTerminal(err) {
		t.Fatalf("refused plan: err = %v, want a terminal error", err)
	}
	for range 3 {
		if _, err := r.step(ctx); !IsTerminal(err) {
			t.Fatalf("next pass: err = %v, want the terminal error again", err)
		}
	}
	if n := len(store.Proposed()); n != 1 || ev.count() != 1 {
		t.Fatalf("%d proposals and %d evaluations after a refusal and 3 passes, want 1 and 1", n, ev.count())
	}
	// The input changes (node 1 drains, node 2 joins): the new plan is proposed.
	store.Update(func(s *replicated.State) {
		s.Nodes[1].State = replicated.NodeDraining
		s.Nodes[2] = mkNode(2, replicated.NodeReady, 4, 4096)
	})
	if _, err := r.step(ctx); !IsTerminal(err) {
		t.Fatalf("changed plan: err = %v, want it proposed and refused", err)
	}
	if n := len(store.Proposed()); n != 2 {
		t.Fatalf("%d proposals after the input changed, want 2", n)
	}
}
