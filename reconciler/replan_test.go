package reconciler

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestReplanDue(t *testing.T) {
	t0 := time.Unix(1000, 0)
	mark := PlanMark{Inputs: 7, At: t0, Set: true}
	tests := []struct {
		name   string
		last   PlanMark
		inputs uint64
		now    time.Time
		want   bool
	}{
		{"a term's first pass re-plans", PlanMark{}, 7, t0, true},
		{"nothing changed: no re-plan", mark, 7, t0.Add(time.Second), false},
		{"just before the periodic re-plan: none", mark, 7, t0.Add(FullReplanEvery - time.Nanosecond), false},
		{"the periodic re-plan is due", mark, 7, t0.Add(FullReplanEvery), true},
		{"an input changed: re-plan", mark, 8, t0.Add(time.Second), true},
		{"inputs differ in any direction (another replica's count after a snapshot): re-plan", mark, 6, t0.Add(time.Second), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReplanDue(tt.last, tt.inputs, tt.now, FullReplanEvery); got != tt.want {
				t.Errorf("ReplanDue = %t, want %t", got, tt.want)
			}
		})
	}
}

// The leader re-plans the running revision when a command that changes the
// planner's inputs was applied, not on heartbeats; level-triggered all the
// same: a drain is acted on at the next pass, and a slow periodic re-plan
// runs whatever was applied.
func TestPassReplansOnlyWhenPlanInputsMove(t *testing.T) {
	ctx := t.Context()
	store := testkit.NewStore(replicated.NewState())
	for _, id := range []uint64{1, 2} {
		if res, err := store.Propose(ctx, testkit.Register(id)); err != nil || !res.OK() {
			t.Fatalf("register %d: %v %+v", id, err, res)
		}
	}
	now := time.Unix(5000, 0)
	m := &loopMetrics{}
	r := newTestReconciler(t, Options{Store: store, Source: loopSource{commit: "c1"}, Ref: "main",
		Evaluator: &countingEval{spec: mkCluster(map[string]spec.VM{"web": mkVM("web", 1, 512)})},
		Now:       func() time.Time { return now }, Metrics: m})
	replans := func() int {
		n := 0
		for _, o := range m.get() {
			if o == "plan replan=true" {
				n++
			}
		}
		return n
	}
	pass := func() {
		t.Helper()
		now = now.Add(time.Second)
		if _, err := settle(t, ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	pass() // evaluates c1 and commits its plan
	pass() // the plan moved the inputs: one re-plan, which finds nothing to do
	base := replans()
	if base == 0 {
		t.Fatalf("no re-plan after the plan committed: %q", m.get())
	}
	st, _ := store.Read(ctx)
	node := st.Assignments["web"].Node
	for seq := uint64(1); seq <= 3; seq++ {
		hb := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: now, NodeHeartbeat: &replicated.NodeHeartbeat{ID: node, Epoch: 9, Seq: seq,
			Statuses: []replicated.VMStatus{{VM: "web", Node: node, Phase: replicated.PhaseRunning}}}}
		if res, err := store.Propose(ctx, hb); err != nil || !res.OK() {
			t.Fatalf("heartbeat: %v %+v", err, res)
		}
		pass()
	}
	if got := replans(); got != base {
		t.Errorf("heartbeats made %d re-plans (observations %q); they change no planner input", got-base, m.get())
	}
	// Draining the node is an input: the next pass moves web.
	if res, err := store.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: now,
		SetNodeState: &replicated.SetNodeState{ID: node, State: replicated.NodeDraining}}); err != nil || !res.OK() {
		t.Fatalf("drain: %v %+v", err, res)
	}
	pass()
	st, _ = store.Read(ctx)
	if got := st.Assignments["web"].Node; got == node {
		t.Fatalf("web stays on draining node %d: the pass did not re-plan", node)
	}
	pass() // the moving plan's own re-plan
	quiet := replans()
	pass()
	if got := replans(); got != quiet {
		t.Errorf("a pass with nothing applied re-planned")
	}
	now = now.Add(FullReplanEvery)
	pass()
	if got := replans(); got != quiet+1 {
		t.Errorf("after %s without an input change: %d re-plans, want the periodic one", FullReplanEvery, got-quiet)
	}
	if slices.Contains(m.get(), "commit refused") {
		t.Errorf("a plan was refused: %q", m.get())
	}
}

// benchLeader is a leader of benchInput's cluster (1,000 nodes, 10,000
// instances) whose revision is committed and whose source has nothing new.
func benchLeader(b *testing.B) (*Reconciler, *testkit.Store, *time.Time) {
	in := benchInput(b)
	p := Compute(in)
	st := replicated.NewState()
	index := uint64(0)
	apply := func(c replicated.Command) {
		index++
		c.V = replicated.CommandVersion
		if res := st.Apply(index, c); !res.OK() {
			b.Fatalf("setup %s: %s", c.Type, res.Message)
		}
	}
	ids := make([]uint64, 0, len(in.Nodes))
	for id := range in.Nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		n := in.Nodes[id]
		apply(replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{ID: id,
			Capacity: n.Capacity, Labels: n.Labels, Ceph: n.Ceph}})
	}
	apply(replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{Commit: "c1", Spec: in.Desired,
		Assignments: p.Assignments, Unschedulable: p.Unschedulable}})
	store := testkit.NewStore(st)
	now := time.Unix(5000, 0)
	r := New(Options{Store: store, Source: loopSource{commit: "c1"}, Ref: "main", Evaluator: &countingEval{},
		NodeTimeout: time.Hour, Now: func() time.Time { return now }, Logger: testLogger()})
	b.Cleanup(r.stopEvaluation)
	return r, store, &now
}

// BenchmarkLeaderPass1000Nodes10000VMs measures one leader pass at 1,000
// nodes × 10,000 instances when only heartbeats were applied since the
// last: "skip" as the loop runs it (no re-plan: the planner's inputs did
// not move), "replan" forcing the re-plan every pass as the loop did
// before PlanInputs.
func BenchmarkLeaderPass1000Nodes10000VMs(b *testing.B) {
	for _, mode := range []string{"skip", "replan"} {
		b.Run(mode, func(b *testing.B) {
			r, store, now := benchLeader(b)
			ctx := context.Background()
			if _, err := r.step(ctx); err != nil {
				b.Fatal(err)
			}
			seq := uint64(0)
			b.ReportAllocs()
			for b.Loop() {
				seq++
				*now = now.Add(time.Second)
				hb := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: *now,
					NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1, Epoch: 3, Seq: seq}}
				if res, err := store.Propose(ctx, hb); err != nil || !res.OK() {
					b.Fatalf("heartbeat: %v %+v", err, res)
				}
				if mode == "replan" {
					r.loop.planned = PlanMark{}
				}
				if _, err := r.step(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if n := len(store.ProposedOf(replicated.CmdCommitPlan)); n != 0 {
				b.Fatalf("the passes committed %d plans; nothing changed", n)
			}
		})
	}
}
