package reconciler

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// functionState is a committed state of three ready nodes running the
// revision of commit c1, whose spec has function hello (0–3 instances)
// and VM db on node 1.
func functionState(t *testing.T) *replicated.State {
	t.Helper()
	return testkit.FunctionState(t, "hello", testFunction(0, 3))
}

// leaderReplan is what the leader's pass would commit after st: the
// re-plan of the running revision (reconcilePlan's), or nil.
func leaderReplan(st *replicated.State) *Plan {
	p := Compute(Input{Desired: st.Desired, Nodes: st.Nodes, Current: st.Assignments, Previous: st.Desired,
		Network: st.Network, Functions: st.Functions})
	p = HoldBack(p, st.Assignments, st.Desired, st.Revision.Commit)
	if !p.HasChanges() {
		return nil
	}
	return &p
}

func scaleOut(fn string, want int, node uint64) replicated.ScaleFunction {
	return replicated.ScaleFunction{Function: fn, Kind: replicated.ScaleOut, Want: want, Node: node, Reason: "test"}
}

func applyScale(t *testing.T, st *replicated.State, c replicated.ScaleFunction) replicated.Result {
	t.Helper()
	index := st.Applied + 1
	return st.Apply(index, replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdScaleFunction,
		At: testkit.T0.Add(time.Minute), ScaleFunction: &c})
}

// TestScaleOutPlanCommitsWithTheScale: a scale-out carrying
// ScaleOutPlan's plan assigns its instance in the same entry, and the
// leader then finds nothing to re-plan; whatever moved the state between
// the proposer's read and the commit leaves the plan to the leader.
func TestScaleOutPlanCommitsWithTheScale(t *testing.T) {
	t.Run("one entry: scaled and placed near, nothing left to plan", func(t *testing.T) {
		st := functionState(t)
		c := ScaleOutPlan(st, scaleOut("hello", 2, 2))
		if c.Plan == nil || c.Inputs != st.PlanInputs || c.Plan.Parent != st.Revision.ID {
			t.Fatalf("no plan attached: %+v", c)
		}
		before := st.Revision.ID
		res := applyScale(t, st, c)
		if !res.OK() || !strings.Contains(res.Message, "placed them in the same entry") {
			t.Fatalf("result %+v", res)
		}
		if st.Revision.ID == before || st.Revision.ID != st.Applied || res.Revision != st.Applied {
			t.Errorf("revision %d after the entry %d (result names %d); want a new revision made by it", st.Revision.ID, st.Applied, res.Revision)
		}
		for _, inst := range []string{"fn-hello-0", "fn-hello-1"} {
			if a, ok := st.Assignments[inst]; !ok || a.Node != 2 || a.Function != "hello" || a.Generation != st.Applied {
				t.Errorf("%s: %+v (assigned %v); want it on node 2, the requests' node, made by this entry", inst, a, ok)
			}
		}
		if st.Network == nil || !st.Network.Identities["fn-hello-1"].Address.IsValid() {
			t.Errorf("fn-hello-1 has no address: %+v", st.Network)
		}
		if a := st.Assignments["db"]; a.Node != 1 || a.Generation == st.Applied {
			t.Errorf("db was touched: %+v", a)
		}
		if p := leaderReplan(st); p != nil {
			t.Errorf("the leader would still commit %s", p.Summary())
		}
	})

	t.Run("another planner input in between: scaled, the plan left to the leader", func(t *testing.T) {
		st := functionState(t)
		c := ScaleOutPlan(st, scaleOut("hello", 1, 2))
		cordon := replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdSetNodeState, At: testkit.T0,
			SetNodeState: &replicated.SetNodeState{ID: 3, State: replicated.NodeCordoned}}
		if res := st.Apply(st.Applied+1, cordon); !res.OK() {
			t.Fatal(res.Err())
		}
		before := st.Revision.ID
		res := applyScale(t, st, c)
		if !res.OK() || !strings.Contains(res.Message, "left to the leader") {
			t.Fatalf("result %+v", res)
		}
		if st.Revision.ID != before || st.FunctionWant("hello") != 1 {
			t.Errorf("revision %d (was %d), want %d; want the scale without the plan", st.Revision.ID, before, st.FunctionWant("hello"))
		}
		if _, ok := st.Assignments["fn-hello-0"]; ok {
			t.Error("the stale plan was committed")
		}
		if p := leaderReplan(st); p == nil {
			t.Error("the leader has nothing to plan: the instance would never be placed")
		}
	})

	t.Run("activity reported in between: the plan still holds", func(t *testing.T) {
		// Gateways report activity every 500 ms while requests come; the
		// planner does not read it, so it must not make plans stale.
		st := functionState(t)
		c := ScaleOutPlan(st, scaleOut("hello", 1, 2))
		activity := replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdFunctionActivity, At: testkit.T0,
			FunctionActivity: &replicated.FunctionActivity{Node: 2, Active: map[string]time.Time{"hello": testkit.T0.Add(time.Second)}}}
		if res := st.Apply(st.Applied+1, activity); !res.OK() {
			t.Fatal(res.Err())
		}
		if res := applyScale(t, st, c); !res.OK() || !strings.Contains(res.Message, "placed them in the same entry") {
			t.Fatalf("result %+v", res)
		}
		if p := leaderReplan(st); p != nil {
			t.Errorf("the leader would still commit %s", p.Summary())
		}
	})

	t.Run("another revision in between: the plan is stale", func(t *testing.T) {
		st := functionState(t)
		c := ScaleOutPlan(st, scaleOut("hello", 1, 2))
		c.Inputs = st.PlanInputs + 1 // as if the inputs matched by chance; the parent still differs
		plan := testkit.Plan(st.Revision.ID, "c2", testkit.Assign("db", 1, "v2"))
		plan.CommitPlan.Spec.Functions = map[string]spec.Function{"hello": testFunction(0, 3)}
		if res := st.Apply(st.Applied+1, plan); !res.OK() {
			t.Fatal(res.Err())
		}
		res := applyScale(t, st, c)
		if !res.OK() || !strings.Contains(res.Message, "left to the leader") || st.Revision.Commit != "c2" {
			t.Fatalf("result %+v, revision %+v", res, st.Revision)
		}
	})

	t.Run("a scale-out that changes nothing carries no plan and commits none", func(t *testing.T) {
		st := functionState(t)
		if res := applyScale(t, st, scaleOut("hello", 2, 2)); !res.OK() {
			t.Fatal(res.Err())
		}
		if c := ScaleOutPlan(st, scaleOut("hello", 2, 3)); c.Plan != nil {
			t.Errorf("plan attached to a scale-out to the current want: %+v", c.Plan)
		}
		// One made before an equal scale-out landed is dropped.
		st2 := functionState(t)
		c := ScaleOutPlan(st2, scaleOut("hello", 2, 3))
		if res := applyScale(t, st2, scaleOut("hello", 2, 2)); !res.OK() {
			t.Fatal(res.Err())
		}
		before := st2.Revision.ID
		if res := applyScale(t, st2, c); !res.OK() || st2.Revision.ID != before {
			t.Errorf("result %+v, revision %d (was %d)", res, st2.Revision.ID, before)
		}
	})

	t.Run("unknown function, nothing committed, too big: no plan", func(t *testing.T) {
		st := functionState(t)
		if c := ScaleOutPlan(st, scaleOut("nope", 1, 2)); c.Plan != nil {
			t.Error("plan for an unknown function")
		}
		if c := ScaleOutPlan(replicated.NewState(), scaleOut("hello", 1, 2)); c.Plan != nil {
			t.Error("plan before any revision")
		}
		big := st.Clone()
		for i := range MaxCarriedPlan {
			a := testkit.Assign("vm"+strconv.Itoa(i), 1, "v1")
			big.Assignments[a.VM] = a
		}
		if c := ScaleOutPlan(big, scaleOut("hello", 1, 2)); c.Plan != nil {
			t.Errorf("a plan of %d assignments rides along", len(c.Plan.Assignments))
		}
	})

	t.Run("a plan rides only on a scale-out", func(t *testing.T) {
		st := functionState(t)
		c := ScaleOutPlan(st, scaleOut("hello", 1, 2))
		c.Kind, c.From = replicated.ScaleIn, 0
		if res := applyScale(t, st, c); res.Code != replicated.ResultInvalid || !strings.Contains(res.Message, "only a scale-out carries a plan") {
			t.Errorf("result %+v, want invalid", res)
		}
	})

	t.Run("the proposer's state is not changed", func(t *testing.T) {
		st := functionState(t)
		before := testkit.JSON(t, st)
		_ = ScaleOutPlan(st, scaleOut("hello", 3, 2))
		if testkit.JSON(t, st) != before {
			t.Error("ScaleOutPlan changed the state it read")
		}
	})
}
