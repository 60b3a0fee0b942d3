package reconciler

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// gateEval is an evaluation that hangs (a looping nix expression) until the
// test releases its commit or its context ends. It records which commits
// started, which were cancelled, and how many ever ran at once.
type gateEval struct {
	specs   map[string]*spec.Cluster
	started chan string // every start, in order

	mu         sync.Mutex
	gates      map[string]chan error
	cancelled  []string
	running    int
	maxRunning int
}

func newGateEval(specs map[string]*spec.Cluster) *gateEval {
	return &gateEval{specs: specs, started: make(chan string, 16), gates: map[string]chan error{}}
}

func (e *gateEval) gate(commit string) chan error {
	e.mu.Lock()
	defer e.mu.Unlock()
	g, ok := e.gates[commit]
	if !ok {
		g = make(chan error, 1)
		e.gates[commit] = g
	}
	return g
}

func (e *gateEval) Evaluate(ctx context.Context, commit string) (Evaluation, error) {
	gate := e.gate(commit)
	e.mu.Lock()
	e.running++
	e.maxRunning = max(e.maxRunning, e.running)
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running--
		e.mu.Unlock()
	}()
	e.started <- commit
	select {
	case err := <-gate:
		if err != nil {
			return Evaluation{}, err
		}
		return Evaluation{Spec: e.specs[commit], Hash: "h-" + commit}, nil
	case <-ctx.Done():
		e.mu.Lock()
		e.cancelled = append(e.cancelled, commit)
		e.mu.Unlock()
		return Evaluation{}, ctx.Err()
	}
}

// release lets the evaluation of commit finish with err (nil: its spec).
func (e *gateEval) release(commit string, err error) { e.gate(commit) <- err }

func (e *gateEval) cancelledCommits() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.cancelled...)
}

// waitStarted waits until the evaluation of commit started (a hang guard).
func (e *gateEval) waitStarted(t *testing.T, commit string) {
	t.Helper()
	select {
	case c := <-e.started:
		if c != commit {
			t.Fatalf("evaluation of %s started, want %s", c, commit)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the evaluation of %s did not start", commit)
	}
}

// evalFixture: nodes 1 and 2, revision 5 of commit c1 runs web (v1) on node
// 1, the source has fetched c2 (web v2); c3 has web v3.
type evalFixture struct {
	store *testkit.Store
	src   *scriptSource
	ev    *gateEval
	clock *testkit.Clock
	r     *Reconciler
}

func newEvalFixture(t *testing.T) *evalFixture {
	web := func(v string) *spec.Cluster { return mkCluster(map[string]spec.VM{"web": mkVM("web-"+v, 1, 512)}) }
	f := &evalFixture{
		store: testkit.NewStore(&replicated.State{
			Applied:  5,
			Nodes:    mkNodes(mkNode(1, replicated.NodeReady, 4, 4096), mkNode(2, replicated.NodeReady, 4, 4096)),
			Revision: &replicated.Revision{ID: 5, Commit: "c1", EvalHash: "h-c1"}, Desired: web("v1"),
			Assignments: mkCurrent(mkAssign("web", 1, "web-v1", 1, 512, 5)),
		}),
		src:   &scriptSource{f: Fetched{Commit: "c2", Previous: "c1"}},
		ev:    newGateEval(map[string]*spec.Cluster{"c2": web("v2"), "c3": web("v3")}),
		clock: testkit.NewClock(time.Unix(1000, 0)),
	}
	f.r = newTestReconciler(t, Options{Store: f.store, Source: f.src, Evaluator: f.ev, Ref: "main", Now: f.clock.Now})
	return f
}

// step runs one pass and fails the test on an error.
func (f *evalFixture) step(t *testing.T) {
	t.Helper()
	if _, err := f.r.step(context.Background()); err != nil {
		t.Fatalf("pass: %v", err)
	}
}

func (f *evalFixture) revision(t *testing.T) replicated.Revision {
	t.Helper()
	st, _ := f.store.Read(context.Background())
	if st.Revision == nil {
		t.Fatal("no revision")
	}
	return *st.Revision
}

func (f *evalFixture) nodeOf(t *testing.T, vm string) uint64 {
	t.Helper()
	st, _ := f.store.Read(context.Background())
	return st.Assignments[vm].Node
}

func TestEvaluationRunsBesidePasses(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		run  func(t *testing.T, f *evalFixture)
	}{
		{"a looping evaluation does not delay a drain", func(t *testing.T, f *evalFixture) {
			f.step(t)
			f.ev.waitStarted(t, "c2")
			if got := f.r.Status().Evaluating; got != "c2" {
				t.Errorf("Status().Evaluating = %q, want c2", got)
			}
			// `blixard node drain 1` while nix loops on c2.
			if res, err := f.store.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: f.clock.Now(),
				SetNodeState: &replicated.SetNodeState{ID: 1, State: replicated.NodeDraining}}); err != nil || !res.OK() {
				t.Fatalf("drain: %v %+v", err, res)
			}
			f.step(t)
			if rev := f.revision(t); rev.Commit != "c1" || f.nodeOf(t, "web") != 2 {
				t.Fatalf("while c2 evaluates: revision of %s with web on node %d, want a re-plan of c1 with web on node 2", rev.Commit, f.nodeOf(t, "web"))
			}
			drained := f.revision(t).ID
			// The evaluation finishes: the next pass commits c2 on top of the drain.
			f.ev.release("c2", nil)
			awaitEvaluation(t, ctx, f.r)
			f.step(t)
			if rev := f.revision(t); rev.Commit != "c2" || rev.Parent != drained || f.nodeOf(t, "web") != 2 {
				t.Fatalf("after the evaluation: revision %+v, web on node %d; want c2 on parent %d with web on node 2", rev, f.nodeOf(t, "web"), drained)
			}
		}},
		{"a newer commit cancels the older evaluation and only the newer is committed", func(t *testing.T, f *evalFixture) {
			f.step(t)
			f.ev.waitStarted(t, "c2")
			f.src.set(Fetched{Commit: "c3", Previous: "c2"}, nil)
			f.r.Trigger()
			f.step(t) // fetches c3: cancels c2, starts nothing until c2 returned
			if f.r.loop.eval == nil || f.r.loop.eval.commit != "c2" {
				t.Fatal("the cancelled evaluation of c2 was forgotten before it returned")
			}
			awaitEvaluation(t, ctx, f.r)
			if got := f.ev.cancelledCommits(); !reflect.DeepEqual(got, []string{"c2"}) {
				t.Fatalf("cancelled %v, want [c2]", got)
			}
			f.step(t)
			f.ev.waitStarted(t, "c3")
			f.ev.release("c3", nil)
			awaitEvaluation(t, ctx, f.r)
			f.step(t)
			if rev := f.revision(t); rev.Commit != "c3" {
				t.Fatalf("revision of %s, want c3", rev.Commit)
			}
			if f.ev.maxRunning != 1 {
				t.Errorf("%d evaluations ran at once, want at most 1", f.ev.maxRunning)
			}
			if got := f.store.ProposedOf(replicated.CmdSetCondition); len(got) != 0 {
				t.Errorf("a cancelled evaluation was recorded: %+v", got)
			}
		}},
		{"losing leadership cancels the evaluation and the next term evaluates again", func(t *testing.T, f *evalFixture) {
			f.step(t)
			f.ev.waitStarted(t, "c2")
			f.store.SetLeader(false)
			f.step(t)
			awaitEvaluation(t, ctx, f.r)
			if got := f.ev.cancelledCommits(); !reflect.DeepEqual(got, []string{"c2"}) {
				t.Fatalf("cancelled %v, want [c2]", got)
			}
			if got := f.store.Proposed(); len(got) != 0 {
				t.Fatalf("a follower proposed %+v", got)
			}
			f.store.SetLeader(true)
			f.step(t)
			f.ev.waitStarted(t, "c2")
			f.ev.release("c2", nil)
			awaitEvaluation(t, ctx, f.r)
			f.step(t)
			if rev := f.revision(t); rev.Commit != "c2" {
				t.Fatalf("revision of %s, want c2", rev.Commit)
			}
		}},
		{"a failed evaluation is recorded by the pass after it and the running revision stays", func(t *testing.T, f *evalFixture) {
			f.step(t)
			f.ev.waitStarted(t, "c2")
			f.ev.release("c2", errors.New("error: undefined variable 'x' at flake.nix:7:3"))
			awaitEvaluation(t, ctx, f.r)
			f.step(t)
			st, _ := f.store.Read(ctx)
			c, ok := st.Condition(replicated.EvalFailed)
			if !ok || c.Commit != "c2" || c.Retryable || st.Revision.Commit != "c1" {
				t.Fatalf("EvalFailed %+v (set %t), revision of %s; want c2 recorded for good, c1 running", c, ok, st.Revision.Commit)
			}
			// Never evaluated again.
			f.clock.Advance(time.Hour)
			f.step(t)
			if f.r.loop.eval != nil {
				t.Fatalf("the failed commit is evaluated again")
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newEvalFixture(t)) })
	}
}

// stubbornEval hangs until its context ends and then still takes until the
// test releases it to return, like a nix process slow to die.
type stubbornEval struct {
	started, sawCancel, release chan struct{}
	order                       *orderLog
}

func (e *stubbornEval) Evaluate(ctx context.Context, _ string) (Evaluation, error) {
	close(e.started)
	<-ctx.Done()
	close(e.sawCancel)
	<-e.release
	e.order.add("evaluation returned")
	return Evaluation{}, ctx.Err()
}

type orderLog struct {
	mu  sync.Mutex
	log []string
}

func (o *orderLog) add(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.log = append(o.log, s)
}

func (o *orderLog) get() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.log...)
}

// signalHandler is a slog handler that closes stopping when the loop logs
// that it cancels its evaluation because it stops.
type signalHandler struct {
	slog.Handler
	once     *sync.Once
	stopping chan struct{}
}

func (h signalHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Message == "evaluation cancelled" {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "why" && a.Value.String() == "the reconciler stops" {
				h.once.Do(func() { close(h.stopping) })
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, rec)
}

func TestStartReturnsOnlyAfterItsEvaluationReturned(t *testing.T) {
	order := &orderLog{}
	ev := &stubbornEval{started: make(chan struct{}), sawCancel: make(chan struct{}), release: make(chan struct{}), order: order}
	stopping := make(chan struct{})
	logger := slog.New(signalHandler{Handler: testLogger().Handler(), once: &sync.Once{}, stopping: stopping})
	store := testkit.NewStore(&replicated.State{Nodes: mkNodes(mkNode(1, replicated.NodeReady, 4, 4096))})
	r := New(Options{Store: store, Source: loopSource{commit: "c1"}, Evaluator: ev, Logger: logger, Resync: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := r.Start(ctx)
		order.add("Start returned")
		done <- err
	}()
	<-ev.started
	cancel()
	<-ev.sawCancel
	<-stopping // Start is shutting down; only now may the evaluation return
	close(ev.release)
	if err := <-done; err != nil {
		t.Fatalf("Start returned %v, want nil", err)
	}
	if got, want := order.get(), []string{"evaluation returned", "Start returned"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if got := store.Proposed(); len(got) != 0 {
		t.Fatalf("an evaluation cancelled by shutdown was recorded: %+v", got)
	}
}

// TestStartFollowsTheSource runs the real loop (real timers, a short
// resync) and polls the replicated state with a deadline.
func TestStartFollowsTheSource(t *testing.T) {
	web := func(v string) *spec.Cluster { return mkCluster(map[string]spec.VM{"web": mkVM("web-"+v, 1, 512)}) }
	store := testkit.NewStore(&replicated.State{Nodes: mkNodes(mkNode(1, replicated.NodeReady, 4, 4096))})
	src := &scriptSource{f: Fetched{Commit: "c1"}}
	ev := newGateEval(map[string]*spec.Cluster{"c1": web("v1"), "c2": web("v2"), "c3": web("v3")})
	clock := testkit.NewClock(time.Unix(1000, 0))
	r := New(Options{Store: store, Source: src, Evaluator: ev, Ref: "main", Now: clock.Now, Resync: 5 * time.Millisecond, Logger: testLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start: %v", err)
		}
	}()
	state := func() *replicated.State { s, _ := store.Read(ctx); return s }
	commitIs := func(c string) func() bool {
		return func() bool { s := state(); return s.Revision != nil && s.Revision.Commit == c }
	}

	ev.release("c1", nil)
	testkit.WaitFor(t, 30*time.Second, "revision of c1", testkit.Until(commitIs("c1")))

	src.set(Fetched{}, errors.New("gitsync: fetch main from https://git.example.invalid/c.git: connection refused"))
	r.Trigger()
	testkit.WaitFor(t, 30*time.Second, "FetchFailed", testkit.Until(func() bool {
		c, ok := state().Condition(replicated.FetchFailed)
		return ok && c.Commit == "c1"
	}))

	// A webhook (through Triggers) after the push of c2: FetchFailed clears, c2 is committed.
	src.set(Fetched{Commit: "c2", Previous: "c1"}, nil)
	r.Triggers() <- struct{}{}
	ev.release("c2", nil)
	testkit.WaitFor(t, 30*time.Second, "revision of c2 and FetchFailed cleared", testkit.Until(func() bool {
		_, failed := state().Condition(replicated.FetchFailed)
		return commitIs("c2")() && !failed
	}))
	if n := len(store.ProposedOf(replicated.CmdSetCondition)); n != 1 {
		t.Errorf("%d SetCondition proposals, want exactly 1 (FetchFailed recorded once)", n)
	}

	// Leadership lost while c3 evaluates: the evaluation is cancelled.
	src.set(Fetched{Commit: "c3", Previous: "c2"}, nil)
	r.Trigger()
	testkit.WaitFor(t, 30*time.Second, "c3 evaluating", testkit.Until(func() bool { return r.Status().Evaluating == "c3" }))
	store.SetLeader(false)
	testkit.WaitFor(t, 30*time.Second, "c3 cancelled", testkit.Until(func() bool {
		return reflect.DeepEqual(ev.cancelledCommits(), []string{"c3"}) && !r.Status().Leader
	}))
}
