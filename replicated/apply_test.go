package replicated

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/spec"
)

var t0 = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)

func cmdAt(at time.Time, c Command) Command {
	c.V = CommandVersion
	c.At = at
	return c
}

func reg(id uint64) Command {
	return cmdAt(t0, Command{Type: CmdRegisterNode, RegisterNode: &RegisterNode{
		ID: id, RaftAddr: fmt.Sprintf("127.0.0.1:%d", 7000+id), Capacity: Resources{VCPU: 8, MemMiB: 16384},
		Labels: map[string]string{"zone": "a"},
	}})
}

func hb(id uint64, statuses ...VMStatus) Command {
	return cmdAt(t0, Command{Type: CmdNodeHeartbeat, NodeHeartbeat: &NodeHeartbeat{ID: id, Statuses: statuses}})
}

func asg(vm string, node uint64, ver string) Assignment {
	return Assignment{VM: vm, Node: node, Drv: "/nix/store/" + vm + "-" + ver + ".drv", OutPath: "/nix/store/" + vm + "-" + ver, VCPU: 1, MemMiB: 256}
}

func plan(parent uint64, commit string, as ...Assignment) Command {
	sp := &spec.Cluster{Name: "t", VMs: map[string]spec.VM{}}
	for _, a := range as {
		sp.VMs[a.VM] = spec.VM{Runner: spec.Runner{Drv: a.Drv, Out: a.OutPath}, VCPU: a.VCPU, MemMiB: a.MemMiB, Replicas: 1}
	}
	return cmdAt(t0, Command{Type: CmdCommitPlan, CommitPlan: &CommitPlan{
		Parent: parent, Commit: commit, Ref: "refs/heads/main", EvalHash: "h-" + commit, Spec: sp, Assignments: as,
	}})
}

func evalErr(commit, msg string) Command {
	return cmdAt(t0, Command{Type: CmdSetCondition, SetCondition: &SetCondition{Type: EvalFailed, Commit: commit, Message: msg}})
}

func setState(id uint64, st NodeState) Command {
	return cmdAt(t0, Command{Type: CmdSetNodeState, SetNodeState: &SetNodeState{ID: id, State: st}})
}

// applyAll applies cmds at indexes 1, 2, … and fails on any rejection.
func applyAll(t testing.TB, s *State, cmds ...Command) {
	t.Helper()
	for _, c := range cmds {
		if r := s.Apply(s.Applied+1, c); !r.OK() {
			t.Fatalf("setup command %s at %d: %s: %s", c.Type, s.Applied, r.Code, r.Message)
		}
	}
}

func TestApply(t *testing.T) {
	tests := []struct {
		name  string
		setup []Command
		cmd   Command
		want  ResultCode
		// check inspects the state after an applied command.
		check func(t *testing.T, before, after *State, r Result)
	}{
		{
			name: "RegisterNode adds a ready node with the command's time",
			cmd:  reg(1),
			check: func(t *testing.T, _, s *State, _ Result) {
				n := s.Nodes[1]
				if n == nil || n.State != NodeReady || n.Capacity.MemMiB != 16384 || n.Labels["zone"] != "a" || !n.RegisteredAt.Equal(t0) {
					t.Fatalf("node = %+v", n)
				}
				if len(s.Events) != 1 || s.Events[0].Kind != EventNodeRegistered {
					t.Fatalf("events = %+v", s.Events)
				}
			},
		},
		{
			name:  "RegisterNode of a known node updates it and keeps state and heartbeat fields",
			setup: []Command{reg(1), hb(1), setState(1, NodeCordoned)},
			cmd: cmdAt(t0.Add(time.Hour), Command{Type: CmdRegisterNode, RegisterNode: &RegisterNode{
				ID: 1, RaftAddr: "127.0.0.1:9999", Capacity: Resources{VCPU: 2, MemMiB: 1024},
			}}),
			check: func(t *testing.T, _, s *State, _ Result) {
				n := s.Nodes[1]
				if n.State != NodeCordoned || n.LastHeartbeatSeq != 1 || !n.RegisteredAt.Equal(t0) {
					t.Fatalf("kept fields lost: %+v", n)
				}
				if n.RaftAddr != "127.0.0.1:9999" || n.Capacity.VCPU != 2 || n.Labels != nil {
					t.Fatalf("not updated: %+v", n)
				}
			},
		},
		{
			name: "RegisterNode with id 0 is invalid",
			cmd:  cmdAt(t0, Command{Type: CmdRegisterNode, RegisterNode: &RegisterNode{}}),
			want: ResultInvalid,
		},
		{
			name: "RegisterNode with negative capacity is invalid",
			cmd:  cmdAt(t0, Command{Type: CmdRegisterNode, RegisterNode: &RegisterNode{ID: 1, Capacity: Resources{VCPU: 1, MemMiB: -1}}}),
			want: ResultInvalid,
		},
		{
			name: "NodeHeartbeat from an unregistered node is unknown-node",
			cmd:  hb(7),
			want: ResultUnknownNode,
		},
		{
			name:  "NodeHeartbeat bumps the sequence, forces Node to the reporter and fills ObservedAt",
			setup: []Command{reg(1), reg(2)},
			cmd:   cmdAt(t0.Add(time.Minute), hb(1, VMStatus{VM: "web", Node: 2, Phase: PhaseRunning})),
			check: func(t *testing.T, _, s *State, _ Result) {
				n := s.Nodes[1]
				if n.LastHeartbeatSeq != 1 || !n.LastHeartbeatAt.Equal(t0.Add(time.Minute)) {
					t.Fatalf("node = %+v", n)
				}
				o := s.Observed["web"]
				if o.Node != 1 || o.Phase != PhaseRunning || !o.ObservedAt.Equal(t0.Add(time.Minute)) {
					t.Fatalf("observed = %+v", o)
				}
			},
		},
		{
			name: "NodeHeartbeat replaces the node's own observations and keeps other nodes'",
			setup: []Command{reg(1), reg(2),
				hb(1, VMStatus{VM: "a", Phase: PhaseRunning}, VMStatus{VM: "b", Phase: PhaseRunning}),
				hb(2, VMStatus{VM: "c", Phase: PhaseRunning})},
			cmd: hb(1, VMStatus{VM: "b", Phase: PhaseStopped}),
			check: func(t *testing.T, _, s *State, _ Result) {
				if _, ok := s.Observed["a"]; ok {
					t.Fatal("a was not listed by node 1 and must be gone")
				}
				if s.Observed["b"].Phase != PhaseStopped || s.Observed["c"].Node != 2 {
					t.Fatalf("observed = %+v", s.Observed)
				}
			},
		},
		{
			name:  "NodeHeartbeat with a duplicate VM is invalid",
			setup: []Command{reg(1)},
			cmd:   hb(1, VMStatus{VM: "a", Phase: PhaseRunning}, VMStatus{VM: "a", Phase: PhaseFailed}),
			want:  ResultInvalid,
		},
		{
			name:  "CommitPlan as first revision needs parent 0 and makes revision = index",
			setup: []Command{reg(1)},
			cmd:   plan(0, "abc", asg("web", 1, "v1")),
			check: func(t *testing.T, _, s *State, r Result) {
				if s.Revision == nil || s.Revision.ID != 2 || r.Revision != 2 || s.Revision.Commit != "abc" || !s.Revision.CommittedAt.Equal(t0) {
					t.Fatalf("revision = %+v, result %+v", s.Revision, r)
				}
				if a := s.Assignments["web"]; a.Generation != 2 || a.Node != 1 {
					t.Fatalf("assignment = %+v", a)
				}
				if s.Desired == nil || len(s.Desired.VMs) != 1 || len(s.History) != 1 {
					t.Fatalf("desired %+v history %+v", s.Desired, s.History)
				}
			},
		},
		{
			name:  "CommitPlan with a stale parent is stale-parent and names both ids",
			setup: []Command{reg(1), plan(0, "abc", asg("web", 1, "v1"))},
			cmd:   plan(0, "def", asg("web", 1, "v2")),
			want:  ResultStaleParent,
			check: func(t *testing.T, _, _ *State, r Result) {
				if !strings.Contains(r.Message, "against revision 0") || !strings.Contains(r.Message, "current revision is 2") || r.Revision != 2 {
					t.Fatalf("result = %+v", r)
				}
			},
		},
		{
			name:  "CommitPlan to an unregistered node is unknown-node",
			setup: []Command{reg(1)},
			cmd:   plan(0, "abc", asg("web", 1, "v1"), asg("db", 5, "v1")),
			want:  ResultUnknownNode,
		},
		{
			name:  "CommitPlan with a duplicate VM is invalid",
			setup: []Command{reg(1)},
			cmd:   plan(0, "abc", asg("web", 1, "v1"), asg("web", 1, "v2")),
			want:  ResultInvalid,
		},
		{
			name:  "CommitPlan keeps the generation of unchanged assignments and bumps moved or changed ones",
			setup: []Command{reg(1), reg(2), plan(0, "abc", asg("web", 1, "v1"), asg("db", 1, "v1"), asg("api", 1, "v1"))},
			cmd:   plan(3, "def", asg("web", 1, "v1"), asg("db", 2, "v1"), asg("api", 1, "v2"), asg("new", 2, "v1")),
			check: func(t *testing.T, _, s *State, _ Result) {
				got := map[string]uint64{}
				for vm, a := range s.Assignments {
					got[vm] = a.Generation
				}
				want := map[string]uint64{"web": 3, "db": 4, "api": 4, "new": 4}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("generations = %v, want %v", got, want)
				}
			},
		},
		{
			name:  "CommitPlan of another commit clears EvalFailed",
			setup: []Command{reg(1), plan(0, "abc"), evalErr("bad", "boom")},
			cmd:   plan(2, "def"),
			check: func(t *testing.T, _, s *State, _ Result) {
				if c, ok := s.Condition(EvalFailed); ok {
					t.Fatalf("EvalFailed = %+v", c)
				}
			},
		},
		{
			name:  "CommitPlan re-planning the running commit keeps a newer commit's EvalFailed",
			setup: []Command{reg(1), plan(0, "abc"), evalErr("bad", "boom")},
			cmd:   plan(2, "abc"),
			check: func(t *testing.T, _, s *State, _ Result) {
				if c, ok := s.Condition(EvalFailed); !ok || c.Commit != "bad" {
					t.Fatalf("EvalFailed = %+v", c)
				}
			},
		},
		{
			name:  "SetCondition EvalFailed records the error and keeps the revision",
			setup: []Command{reg(1), plan(0, "abc", asg("web", 1, "v1"))},
			cmd:   cmdAt(t0.Add(time.Second), evalErr("def", "attribute 'vms' missing")),
			check: func(t *testing.T, before, s *State, r Result) {
				want := []Condition{{Type: EvalFailed, Commit: "def", Message: "attribute 'vms' missing", Since: t0.Add(time.Second), At: t0.Add(time.Second)}}
				if !reflect.DeepEqual(s.Conditions, want) {
					t.Fatalf("Conditions = %+v", s.Conditions)
				}
				if !reflect.DeepEqual(s.Revision, before.Revision) || !reflect.DeepEqual(s.Assignments, before.Assignments) || r.Revision != 2 {
					t.Fatal("revision changed")
				}
				if e := s.Events[len(s.Events)-1]; e.Kind != EventEvalFailed {
					t.Fatalf("last event = %+v", e)
				}
			},
		},
		{
			name:  "SetNodeState cordons a node and logs the change",
			setup: []Command{reg(1)},
			cmd:   setState(1, NodeCordoned),
			check: func(t *testing.T, _, s *State, _ Result) {
				if s.Nodes[1].State != NodeCordoned || s.Events[len(s.Events)-1].Kind != EventNodeStateChanged {
					t.Fatalf("node = %+v events = %+v", s.Nodes[1], s.Events)
				}
			},
		},
		{
			name: "SetNodeState of an unregistered node is unknown-node",
			cmd:  setState(3, NodeDraining),
			want: ResultUnknownNode,
		},
		{
			name:  "SetNodeState to an unknown state is invalid",
			setup: []Command{reg(1)},
			cmd:   setState(1, "asleep"),
			want:  ResultInvalid,
		},
		{
			name:  "a command whose payload does not match its type is invalid",
			setup: []Command{reg(1)},
			cmd:   cmdAt(t0, Command{Type: CmdSetNodeState, RegisterNode: &RegisterNode{ID: 1}}),
			want:  ResultInvalid,
		},
		{
			name: "a command of an unknown version is invalid",
			cmd:  Command{V: 9, Type: CmdSetNodeState, SetNodeState: &SetNodeState{ID: 1, State: NodeReady}},
			want: ResultInvalid,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewState()
			applyAll(t, s, tt.setup...)
			before := s.Clone()
			index := s.Applied + 1
			r := s.Apply(index, tt.cmd)
			if r.Code != tt.want {
				t.Fatalf("code = %s (%s), want %s", r.Code, r.Message, tt.want)
			}
			if s.Applied != index {
				t.Fatalf("applied = %d, want %d", s.Applied, index)
			}
			if !r.OK() {
				if r.Message == "" {
					t.Fatal("a rejection must say why")
				}
				before.Applied = index
				if !reflect.DeepEqual(before, s) {
					t.Fatalf("a rejection changed the state:\nbefore %s\nafter  %s", mustJSON(t, before), mustJSON(t, s))
				}
			}
			if tt.check != nil {
				tt.check(t, before, s, r)
			}
		})
	}
}

func TestApplyBoundsHistoryAndEvents(t *testing.T) {
	s := NewState()
	applyAll(t, s, reg(1))
	for i := 0; i < MaxEvents+10; i++ {
		applyAll(t, s, plan(s.revisionID(), fmt.Sprintf("c%d", i), asg("web", 1, "v1")))
	}
	if len(s.History) != MaxRevisionHistory || s.History[len(s.History)-1] != *s.Revision {
		t.Fatalf("history has %d entries, last %+v; want %d ending with the current revision", len(s.History), s.History[len(s.History)-1], MaxRevisionHistory)
	}
	if got, want := s.History[0].ID, s.Revision.ID-MaxRevisionHistory+1; got != want {
		t.Fatalf("oldest kept revision = %d, want %d", got, want)
	}
	if len(s.Events) != MaxEvents || s.Events[len(s.Events)-1].Index != s.Applied {
		t.Fatalf("events = %d, last index %d", len(s.Events), s.Events[len(s.Events)-1].Index)
	}
}

func TestApplyKeepsNoReferenceToTheCommand(t *testing.T) {
	s := NewState()
	r := reg(1)
	p := plan(0, "abc", asg("web", 1, "v1"))
	p.CommitPlan.Spec.VMs["web"] = spec.VM{Placement: spec.Placement{Labels: map[string]string{"zone": "a"}}}
	applyAll(t, s, r, p)
	want := mustJSON(t, s)
	r.RegisterNode.Labels["zone"] = "changed"
	p.CommitPlan.Spec.VMs["web"].Placement.Labels["zone"] = "changed"
	p.CommitPlan.Spec.VMs["other"] = spec.VM{}
	p.CommitPlan.Assignments[0].Node = 99
	if got := mustJSON(t, s); got != want {
		t.Fatalf("state changed with the command:\n got %s\nwant %s", got, want)
	}
}

// TestApplyIsDeterministic applies one sequence to two states, one of them
// recovered from JSON halfway, and expects equal states and results.
func TestApplyIsDeterministic(t *testing.T) {
	cmds := []Command{
		reg(1), reg(2), plan(0, "abc", asg("web", 1, "v1"), asg("db", 2, "v1")),
		hb(1, VMStatus{VM: "web", Phase: PhaseRunning}), evalErr("x", "boom"), setState(2, NodeDraining),
		plan(3, "def", asg("web", 1, "v2"), asg("db", 1, "v1")), hb(2, VMStatus{VM: "db", Phase: PhaseStopping}),
		plan(3, "stale"), hb(9),
	}
	a, b := NewState(), NewState()
	for i, c := range cmds {
		if i == len(cmds)/2 {
			var rb State
			if err := json.Unmarshal([]byte(mustJSON(t, b)), &rb); err != nil {
				t.Fatal(err)
			}
			b = &rb
		}
		ra, rb := a.Apply(uint64(i+1), c), b.Apply(uint64(i+1), c)
		if ra != rb {
			t.Fatalf("command %d: results differ: %+v vs %+v", i, ra, rb)
		}
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("states differ:\n%s\n%s", mustJSON(t, a), mustJSON(t, b))
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIsThisPlanRecognisesARetriedCommitPlan(t *testing.T) {
	s := NewState()
	p := plan(0, "abc", asg("web", 1, "v1"))
	applyAll(t, s, reg(1), p)
	if !s.IsCurrentPlan(p.CommitPlan) {
		t.Fatal("the committed plan is not recognised")
	}
	for name, other := range map[string]Command{
		"another commit is not this plan":     plan(0, "def", asg("web", 1, "v1")),
		"another parent is not this plan":     plan(7, "abc", asg("web", 1, "v1")),
		"another assignment is not this plan": plan(0, "abc", asg("web", 1, "v2")),
		"fewer assignments is not this plan":  plan(0, "abc"),
	} {
		if s.IsCurrentPlan(other.CommitPlan) {
			t.Errorf("%s: recognised as the committed plan", name)
		}
	}
	if NewState().IsCurrentPlan(p.CommitPlan) {
		t.Error("a state without revision has no plan")
	}
}

func TestKeptStopped(t *testing.T) {
	tests := []struct {
		name      string
		autostart bool
		want      RunState
		stopped   StopReason
	}{
		{"autostart without a choice runs", true, "", ""},
		{"autostart = false without a choice is kept stopped by autostart", false, "", StoppedByAutostart},
		{"vm start beats autostart = false", false, RunStateRunning, ""},
		{"vm start with autostart runs", true, RunStateRunning, ""},
		{"vm stop beats autostart", true, RunStateStopped, StoppedByOperator},
		{"vm stop with autostart = false is kept stopped by the operator", false, RunStateStopped, StoppedByOperator},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KeptStopped(tt.autostart, tt.want); got != tt.stopped {
				t.Errorf("KeptStopped(%t, %q) = %q, want %q", tt.autostart, tt.want, got, tt.stopped)
			}
		})
	}
}
