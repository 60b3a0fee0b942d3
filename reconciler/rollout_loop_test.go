package reconciler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// The leader loop and rollouts, over testkit's store (the real Apply): the
// loop's passes commit the plan and every step; the test plays the agents
// (a changed assignment runs healthy at once, as reported in Observed) and
// the clock.

// loopWorld is a store holding commit c1 of web (4 replicas, update u)
// running healthy, a source, an evaluator per commit and a clock.
type loopWorld struct {
	t     *testing.T
	store *testkit.Store
	src   *scriptSource
	ev    *perCommitEval
	now   time.Time
}

func newLoopWorld(t *testing.T, u spec.Update) *loopWorld {
	w := &loopWorld{t: t, store: testkit.NewStore(nil), src: &scriptSource{}, now: rollT0}
	for id := uint64(1); id <= 2; id++ {
		w.propose(replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{ID: id,
			Capacity: replicated.Resources{VCPU: 64, MemMiB: 65536}}})
	}
	c1 := rollSpec("v1", 4, u)
	w.ev = &perCommitEval{specs: map[string]*spec.Cluster{"c1": c1}}
	p := Compute(Input{Desired: c1, Nodes: w.state().Nodes})
	w.propose(replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{Commit: "c1", Ref: "main", Spec: c1,
		Assignments: p.Assignments}})
	w.src.set(Fetched{Commit: "c1"}, nil)
	w.agents()
	return w
}

func (w *loopWorld) propose(cmd replicated.Command) replicated.Result {
	w.t.Helper()
	cmd.At = w.now
	res, err := w.store.Propose(context.Background(), cmd)
	if err != nil || !res.OK() {
		w.t.Fatalf("%s: %v %v", cmd.Type, err, res.Err())
	}
	return res
}

func (w *loopWorld) state() *replicated.State {
	st, _ := w.store.Read(context.Background())
	return st
}

// agents reports every assignment running its runner, healthy unless bad
// says the runner is bad.
func (w *loopWorld) agents(bad ...string) {
	w.store.Update(func(s *replicated.State) {
		for name, a := range s.Assignments {
			h := replicated.Healthy
			if slices.Contains(bad, a.OutPath) {
				h = replicated.Unhealthy
			}
			s.Observed[name] = replicated.VMStatus{VM: name, Node: a.Node, Phase: replicated.PhaseRunning, BootedOut: a.OutPath,
				Generation: a.Generation, Health: h, HealthError: "connection refused"}
		}
	})
}

// run drives r: a pass (with its evaluation) per second of the clock, the
// agents acting after each, until done holds or limit passes.
func (w *loopWorld) run(r *Reconciler, limit int, done func(*replicated.State) bool, bad ...string) {
	w.t.Helper()
	for range limit {
		if done(w.state()) {
			return
		}
		if _, err := settle(w.t, context.Background(), r); err != nil {
			w.t.Fatalf("pass: %v", err)
		}
		w.agents(bad...)
		w.now = w.now.Add(time.Second)
	}
	if !done(w.state()) {
		w.t.Fatalf("not done after %d passes: rollouts %+v, revision %+v", limit, w.state().Rollouts, w.state().Revision)
	}
}

func (w *loopWorld) reconciler() *Reconciler {
	return newTestReconciler(w.t, Options{Store: w.store, Source: w.src, Evaluator: w.ev, Ref: "main", Now: func() time.Time { return w.now }})
}

func rolloutPhase(vm string, phase replicated.RolloutPhase) func(*replicated.State) bool {
	return func(st *replicated.State) bool { r, ok := st.Rollouts[vm]; return ok && r.Phase == phase }
}

// waves lists the wave steps proposed, in order.
func waves(cmds []replicated.Command) [][]string {
	var out [][]string
	for _, c := range cmds {
		if c.RolloutStep != nil && c.RolloutStep.Action == replicated.RolloutWave {
			out = append(out, c.RolloutStep.Instances)
		}
	}
	return out
}

func TestLoopRollsOutAndANewLeaderContinues(t *testing.T) {
	w := newLoopWorld(t, upd(1, 0, 2, time.Minute, true))
	w.ev.set("c2", rollSpec("v2", 4, upd(1, 0, 2, time.Minute, true)))
	w.src.set(Fetched{Commit: "c2", Previous: "c1"}, nil)
	r1 := w.reconciler()
	// The first pass evaluates c2, commits its plan (web held back) and
	// starts the first wave.
	if _, err := settle(t, context.Background(), r1); err != nil {
		t.Fatal(err)
	}
	st := w.state()
	if st.Revision.Commit != "c2" || st.Rollouts["web"].Waves != 1 || !slices.Equal(st.Rollouts["web"].Wave, []string{"web-0"}) {
		t.Fatalf("after the first pass: revision %+v, rollout %+v", st.Revision, st.Rollouts["web"])
	}
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		if a := st.Assignments[name]; a.OutPath != "/nix/store/web-v1" || a.Commit != "c1" {
			t.Errorf("%s left v1 of c1 before its wave: %s of %s", name, a.OutPath, a.Commit)
		}
	}
	w.agents()
	// Two more waves under the first leader.
	w.run(r1, 30, func(st *replicated.State) bool { return st.Rollouts["web"].Waves == 2 })
	// Leadership moves: a new reconciler (a new leader's loop, with none of
	// the old one's memory) continues from the committed step.
	w.store.SetLeader(false)
	if _, err := r1.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.store.SetLeader(true)
	r2 := w.reconciler()
	w.run(r2, 60, rolloutPhase("web", replicated.RolloutSucceeded))
	got := waves(w.store.Proposed())
	if want := [][]string{{"web-0"}, {"web-1"}, {"web-2"}, {"web-3"}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("waves %v, want %v: each instance once, in order, across the leader change", got, want)
	}
	st = w.state()
	for name, a := range st.Assignments {
		if a.Declared == "web" && (a.OutPath != "/nix/store/web-v2" || a.Commit != "c2") {
			t.Errorf("%s: %s of %s after the rollout", name, a.OutPath, a.Commit)
		}
	}
	if c := Converge(st, "c2"); c.State != Converged {
		t.Errorf("Converge: %+v", c)
	}
	// The minimum health time was kept: a wave started at least 2s after
	// the previous one became healthy.
	var healthyAt, waveAt []time.Time
	for _, c := range w.store.Proposed() {
		if c.RolloutStep == nil {
			continue
		}
		switch c.RolloutStep.Action {
		case replicated.RolloutHealthy:
			healthyAt = append(healthyAt, c.At)
		case replicated.RolloutWave:
			waveAt = append(waveAt, c.At)
		}
	}
	for i := 1; i < len(waveAt) && i-1 < len(healthyAt); i++ {
		if waveAt[i].Sub(healthyAt[i-1]) < 2*time.Second {
			t.Errorf("wave %d started %s after wave %d became healthy, minHealthySeconds 2", i+1, waveAt[i].Sub(healthyAt[i-1]), i)
		}
	}
}

func TestLoopRevertsABadPushAndDoesNotRetryIt(t *testing.T) {
	u := upd(1, 0, 2, 10*time.Second, true)
	w := newLoopWorld(t, u)
	w.ev.set("c2", rollSpec("v2", 4, u))
	w.src.set(Fetched{Commit: "c2", Previous: "c1"}, nil)
	r := w.reconciler()
	w.run(r, 60, rolloutPhase("web", replicated.RolloutReverted), "/nix/store/web-v2")
	st := w.state()
	for name, a := range st.Assignments {
		if a.OutPath == "/nix/store/web-v2" {
			t.Errorf("%s still runs the bad runner", name)
		}
	}
	if got := waves(w.store.Proposed()); fmt.Sprint(got) != "[[web-0]]" {
		t.Errorf("waves %v: only the first wave may have moved", got)
	}
	if roll := st.Rollouts["web"]; !strings.Contains(roll.Error, "unhealthy: connection refused") || len(roll.Reverted) != 1 {
		t.Errorf("rollout %+v", roll)
	}
	// c3 changes db only: web stays on c1's runner, and no wave starts.
	c3 := rollSpec("v2", 4, u)
	c3.VMs["db"] = mkVM("db-v3", 1, 64)
	w.ev.set("c3", c3)
	w.src.set(Fetched{Commit: "c3", Previous: "c2"}, nil)
	r.Trigger()
	w.run(r, 10, func(st *replicated.State) bool { return st.Revision.Commit == "c3" })
	for range 5 {
		if _, err := settle(t, context.Background(), r); err != nil {
			t.Fatal(err)
		}
		w.now = w.now.Add(time.Second)
	}
	st = w.state()
	if got := waves(w.store.Proposed()); len(got) != 1 || st.Rollouts["web"].Phase != replicated.RolloutReverted ||
		st.Assignments["db"].OutPath != "/nix/store/db-v3" || st.Assignments["web-0"].OutPath != "/nix/store/web-v1" {
		t.Fatalf("after c3: waves %v, rollout %s, db %s, web-0 %s", got, st.Rollouts["web"].Phase, st.Assignments["db"].OutPath,
			st.Assignments["web-0"].OutPath)
	}
	if c := Converge(st, "c2"); c.State != Failed {
		t.Errorf("Converge(c2) = %+v", c)
	}
	// c3 runs, web on c1's runner (c2's was reverted): c3 has converged.
	if c := Converge(st, "c3"); c.State != Converged || !strings.Contains(c.Message, "web stays on commit c1") {
		t.Errorf("Converge(c3) = %+v", c)
	}
}

func TestLoopSuspendResumeAndRollback(t *testing.T) {
	w := newLoopWorld(t, spec.Update{}) // no update block: plans change everything at once
	r := w.reconciler()
	push := func(commit, ver string) {
		w.ev.set(commit, rollSpec(ver, 4, spec.Update{}))
		w.src.set(Fetched{Commit: commit}, nil)
		r.Trigger()
	}
	revisionIs := func(commit string) func(*replicated.State) bool {
		return func(st *replicated.State) bool { return st.Revision.Commit == commit }
	}
	push("c2", "v2")
	w.run(r, 5, revisionIs("c2"))
	push("c3", "v3")
	w.run(r, 5, revisionIs("c3"))

	// Suspended: c4 is fetched and listed as pending, not evaluated.
	w.propose(replicated.Command{Type: replicated.CmdSetFollowing, Actor: "alice", SetFollowing: &replicated.SetFollowing{Suspended: true}})
	push("c4", "v4")
	for range 3 {
		if _, err := settle(t, context.Background(), r); err != nil {
			t.Fatal(err)
		}
		w.now = w.now.Add(time.Second)
	}
	st := w.state()
	if st.Revision.Commit != "c3" || w.ev.count("c4") != 0 || st.Suspended == nil || st.Suspended.Pending != "c4" {
		t.Fatalf("suspended: revision %s, c4 evaluated %d times, suspension %+v", st.Revision.Commit, w.ev.count("c4"), st.Suspended)
	}
	if n := len(w.store.ProposedOf(replicated.CmdRecordPending)); n != 1 {
		t.Errorf("RecordPending proposed %d times, want once", n)
	}
	if c := Converge(st, "c4"); c.State != Progressing || !strings.Contains(c.Message, "suspended") {
		t.Errorf("Converge(c4) while suspended: %+v", c)
	}
	// Resumed: c4 is applied.
	w.propose(replicated.Command{Type: replicated.CmdSetFollowing, SetFollowing: &replicated.SetFollowing{}})
	w.run(r, 5, revisionIs("c4"))

	// A rollback to the revision two back (c2) applies c2's spec and
	// suspends following: the head, c4, stays pending.
	var rev2 uint64
	for _, h := range w.state().History {
		if h.Commit == "c2" {
			rev2 = h.ID
		}
	}
	w.propose(replicated.Command{Type: replicated.CmdSetFollowing, SetFollowing: &replicated.SetFollowing{Suspended: true, Rollback: rev2}})
	w.run(r, 5, revisionIs("c2"))
	for range 2 {
		if _, err := settle(t, context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	st = w.state()
	if st.Assignments["web-0"].OutPath != "/nix/store/web-v2" || st.Suspended == nil || st.Suspended.Pending != "c4" {
		t.Fatalf("after the rollback: web-0 %s, suspension %+v", st.Assignments["web-0"].OutPath, st.Suspended)
	}
	// Resumed again: back to the head.
	w.propose(replicated.Command{Type: replicated.CmdSetFollowing, SetFollowing: &replicated.SetFollowing{}})
	w.run(r, 5, revisionIs("c4"))
	if st := w.state(); st.Assignments["web-0"].OutPath != "/nix/store/web-v4" {
		t.Fatalf("after resume: web-0 %s", st.Assignments["web-0"].OutPath)
	}
}
