package reconciler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestWatchPush(t *testing.T) {
	t0 := time.Unix(1000, 0)
	t1 := t0.Add(time.Minute)
	for _, tc := range []struct {
		name            string
		w               *pushWatch
		commit, running string
		want            *pushWatch
	}{
		{"a new commit starts a watch", nil, "c2", "c1", &pushWatch{"c2", t1}},
		{"the same commit keeps its first sighting", &pushWatch{"c2", t0}, "c2", "c1", &pushWatch{"c2", t0}},
		{"a newer commit replaces the watch", &pushWatch{"c2", t0}, "c3", "c1", &pushWatch{"c3", t1}},
		{"the running commit is no push", nil, "c1", "c1", nil},
		{"the running commit stays watched until it converged", &pushWatch{"c1", t0}, "c1", "c1", &pushWatch{"c1", t0}},
		{"a push back to the running commit is watched", &pushWatch{"c2", t0}, "c1", "c1", &pushWatch{"c1", t1}},
		{"nothing fetched yet", nil, "", "c1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := watchPush(tc.w, tc.commit, tc.running, t1)
			if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
				t.Errorf("watchPush = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPushDone(t *testing.T) {
	seen := time.Unix(1000, 0)
	now := seen.Add(42 * time.Second)
	web := mkAssign("web", 1, "web", 1, 512, 7)
	running := replicated.VMStatus{VM: "web", Node: 1, Phase: replicated.PhaseRunning, Generation: 7, BootedOut: web.OutPath}
	starting := running
	starting.Phase = replicated.PhaseStarting
	state := func(commit string, obs replicated.VMStatus, conds ...replicated.Condition) *replicated.State {
		return &replicated.State{Revision: &replicated.Revision{ID: 7, Commit: commit}, Assignments: mkCurrent(web),
			Observed: map[string]replicated.VMStatus{"web": obs}, Conditions: conds}
	}
	for _, tc := range []struct {
		name     string
		w        *pushWatch
		st       *replicated.State
		wantDone bool
		wantD    time.Duration
	}{
		{"no watch", nil, state("c2", running), false, 0},
		{"every instance runs the commit", &pushWatch{"c2", seen}, state("c2", running), true, 42 * time.Second},
		{"an instance still starts", &pushWatch{"c2", seen}, state("c2", starting), false, 0},
		{"the revision is another commit", &pushWatch{"c2", seen}, state("c1", running), false, 0},
		{"its evaluation failed for good: stop watching", &pushWatch{"c2", seen},
			state("c1", running, replicated.Condition{Type: replicated.EvalFailed, Commit: "c2", Message: "boom"}), true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done, d := pushDone(tc.w, tc.st, now)
			if done != tc.wantDone || d != tc.wantD {
				t.Errorf("pushDone = %t, %v; want %t, %v", done, d, tc.wantDone, tc.wantD)
			}
		})
	}
}

func TestCommitResult(t *testing.T) {
	for _, tc := range []struct {
		res  replicated.Result
		err  error
		want string
	}{
		{replicated.Result{Code: replicated.ResultOK}, nil, "ok"},
		{replicated.Result{Code: replicated.ResultStaleParent}, nil, "stale"},
		{replicated.Result{Code: replicated.ResultInvalid}, nil, "refused"},
		{replicated.Result{}, context.DeadlineExceeded, "error"},
	} {
		if got := commitResult(tc.res, tc.err); got != tc.want {
			t.Errorf("commitResult(%v, %v) = %q, want %q", tc.res.Code, tc.err, got, tc.want)
		}
	}
}

// loopMetrics records what the loop measures.
type loopMetrics struct {
	mu  sync.Mutex
	obs []string
}

func (m *loopMetrics) add(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.obs = append(m.obs, s)
}

func (m *loopMetrics) get() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.obs)
}

func (m *loopMetrics) ObserveFetch(_ time.Duration, err error) {
	m.add(fmt.Sprintf("fetch err=%v", err))
}
func (m *loopMetrics) ObserveEval(_ time.Duration, err error) { m.add(fmt.Sprintf("eval err=%v", err)) }
func (m *loopMetrics) ObservePlan(_ time.Duration, replan bool) {
	m.add(fmt.Sprintf("plan replan=%t", replan))
}
func (m *loopMetrics) ObserveCommit(_ time.Duration, result string) { m.add("commit " + result) }
func (m *loopMetrics) ObservePushToRunning(d time.Duration)         { m.add(fmt.Sprintf("push %v", d)) }

// The loop measures a push from its fetch to its instances running: the
// fetch, the evaluation, the plan and its commit as they happen, the push
// once the node's heartbeat reports the instance running.
func TestLoopMeasuresAPush(t *testing.T) {
	ctx := t.Context()
	store := testkit.NewStore(&replicated.State{Nodes: mkNodes(mkNode(1, replicated.NodeReady, 4, 4096))})
	now := time.Unix(5000, 0)
	m := &loopMetrics{}
	r := newTestReconciler(t, Options{Store: store, Source: loopSource{commit: "c1"}, Ref: "main",
		Evaluator: &countingEval{spec: mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512)})},
		Now:       func() time.Time { return now }, Metrics: m})
	if _, err := settle(t, ctx, r); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(m.get(), "; ")
	for _, want := range []string{"fetch err=<nil>", "eval err=<nil>", "plan replan=false", "commit ok"} {
		if !strings.Contains(got, want) {
			t.Errorf("measured %q, want %q among them", got, want)
		}
	}
	if strings.Contains(got, "push") {
		t.Fatalf("measured a push before the instance runs: %q", got)
	}
	st, _ := store.Read(ctx)
	a := st.Assignments["web"]
	now = now.Add(90 * time.Second)
	hb := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: now, NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1,
		Statuses: []replicated.VMStatus{{VM: "web", Node: 1, Phase: replicated.PhaseRunning, Generation: a.Generation, BootedOut: a.OutPath}}}}
	if res, err := store.Propose(ctx, hb); err != nil || !res.OK() {
		t.Fatalf("heartbeat: %v %+v", err, res)
	}
	if _, err := settle(t, ctx, r); err != nil {
		t.Fatal(err)
	}
	if got := m.get(); !slices.Contains(got, "push 1m30s") {
		t.Errorf("measured %q, want a push of 1m30s (fetch to running, on the leader's clock)", got)
	}
	// Measured once: the next passes do not measure it again.
	if _, err := settle(t, ctx, r); err != nil {
		t.Fatal(err)
	}
	pushes := 0
	for _, o := range m.get() {
		if strings.HasPrefix(o, "push") {
			pushes++
		}
	}
	if pushes != 1 {
		t.Errorf("measured %d pushes, want 1: %q", pushes, m.get())
	}
}
