package reconciler

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func testFunction(lo, hi int) spec.Function {
	return spec.Function{Runner: spec.Runner{Drv: "/nix/store/fn.drv", Out: "/nix/store/fn"}, VCPU: 1, MemMiB: 256,
		MinInstances: lo, MaxInstances: hi, Concurrency: 4, IdleTimeout: time.Minute,
		HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}}
}

func TestScaleIns(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	// seenAgo: the leader first saw the function's current marks that long
	// before now (-1: never saw them).
	for _, tc := range []struct {
		name    string
		f       spec.Function
		st      *replicated.FunctionState
		now     time.Time
		seenAgo time.Duration
		want    string // "" none, else "FROM→TO"
		next    time.Duration
	}{
		{name: "never scaled: at minInstances", f: testFunction(0, 3), now: t0, seenAgo: -1},
		{name: "at min", f: testFunction(1, 3), st: &replicated.FunctionState{Want: 1, ScaledAt: t0}, now: t0.Add(time.Hour), seenAgo: time.Hour},
		{name: "busy: activity seen 30s ago", f: testFunction(0, 3), st: &replicated.FunctionState{Want: 2, ScaledAt: t0, LastActive: t0.Add(30 * time.Second)},
			now: t0.Add(time.Minute), seenAgo: 30 * time.Second, next: 30 * time.Second},
		{name: "first look counts from now, whatever the reported times say", f: testFunction(0, 3),
			st: &replicated.FunctionState{Want: 2, ScaledAt: t0, LastActive: t0}, now: t0.Add(time.Hour), seenAgo: -1, next: time.Minute},
		{name: "a gateway clock two hours behind does not make a busy function idle", f: testFunction(0, 3),
			st: &replicated.FunctionState{Want: 2, ScaledAt: t0, LastActive: t0.Add(-2 * time.Hour)}, now: t0.Add(time.Second), seenAgo: 0, next: time.Minute},
		{name: "a gateway clock an hour ahead does not keep an idle function up", f: testFunction(0, 3),
			st: &replicated.FunctionState{Want: 2, ScaledAt: t0, LastActive: t0.Add(time.Hour)}, now: t0.Add(time.Minute), seenAgo: time.Minute, want: "2→0"},
		{name: "idle: to min", f: testFunction(0, 3), st: &replicated.FunctionState{Want: 3, ScaledAt: t0, LastActive: t0},
			now: t0.Add(time.Minute), seenAgo: time.Minute, want: "3→0"},
		{name: "idle: to a min of 1", f: testFunction(1, 3), st: &replicated.FunctionState{Want: 2, ScaledAt: t0},
			now: t0.Add(2 * time.Minute), seenAgo: 2 * time.Minute, want: "2→1"},
		{name: "want above a lowered max is clamped first", f: testFunction(0, 2), st: &replicated.FunctionState{Want: 5, ScaledAt: t0},
			now: t0.Add(2 * time.Minute), seenAgo: 2 * time.Minute, want: "2→0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &replicated.State{Desired: &spec.Cluster{Functions: map[string]spec.Function{"hello": tc.f}}}
			var seen map[string]IdleMark
			if tc.st != nil {
				st.Functions = map[string]replicated.FunctionState{"hello": *tc.st}
				if tc.seenAgo >= 0 {
					seen = map[string]IdleMark{"hello": {LastActive: tc.st.LastActive, ScaledAt: tc.st.ScaledAt, Seen: tc.now.Add(-tc.seenAgo)}}
				}
			}
			cmds, next, marks := ScaleIns(st, tc.now, seen)
			got := ""
			if len(cmds) == 1 {
				c := cmds[0]
				got = fmt.Sprintf("%d→%d", c.From, c.Want)
				if c.Kind != replicated.ScaleIn || c.Function != "hello" || (tc.st != nil && !c.Idle.Equal(tc.st.LastActive)) {
					t.Errorf("command %+v", c)
				}
			} else if len(cmds) > 1 {
				t.Fatalf("%d commands", len(cmds))
			}
			if got != tc.want {
				t.Errorf("scale-in %q, want %q", got, tc.want)
			}
			var gotNext time.Duration
			if !next.IsZero() {
				gotNext = next.Sub(tc.now)
			}
			if gotNext != tc.next {
				t.Errorf("next in %s, want %s", gotNext, tc.next)
			}
			if tc.seenAgo < 0 && tc.st != nil && tc.st.Want > tc.f.MinInstances {
				if m := marks["hello"]; !m.Seen.Equal(tc.now) || !m.LastActive.Equal(tc.st.LastActive) {
					t.Errorf("marks after a first look = %+v, want seen now with the function's marks", m)
				}
			}
		})
	}

	t.Run("activity reported after the marks were seen restarts the count", func(t *testing.T) {
		f := testFunction(0, 3)
		st := &replicated.State{Desired: &spec.Cluster{Functions: map[string]spec.Function{"hello": f}},
			Functions: map[string]replicated.FunctionState{"hello": {Want: 2, ScaledAt: t0, LastActive: t0}}}
		_, _, marks := ScaleIns(st, t0, nil)
		st.Functions["hello"] = replicated.FunctionState{Want: 2, ScaledAt: t0, LastActive: t0.Add(50 * time.Second)}
		cmds, next, marks := ScaleIns(st, t0.Add(55*time.Second), marks)
		if len(cmds) != 0 || !next.Equal(t0.Add(115*time.Second)) {
			t.Fatalf("after new activity at +55s: %d commands, next %s; want none and next at +115s", len(cmds), next.Sub(t0))
		}
		if cmds, _, _ := ScaleIns(st, t0.Add(115*time.Second), marks); len(cmds) != 1 {
			t.Fatalf("a minute after the activity was seen: %d commands, want the scale-in", len(cmds))
		}
	})
}

// TestComputeFunctions: function instances are placed near the node that
// asked when they fit, else on the least loaded node, and kept, moved
// and removed like VM instances.
func TestComputeFunctions(t *testing.T) {
	node := func(id uint64, vcpu int, state replicated.NodeState) *replicated.Node {
		return &replicated.Node{ID: id, Capacity: replicated.Resources{VCPU: vcpu, MemMiB: 4096}, State: state}
	}
	for _, tc := range []struct {
		name    string
		nodes   []*replicated.Node
		vms     map[string]spec.VM
		scale   replicated.FunctionState
		current map[string]uint64 // instance → node
		want    string            // "instance@node …" sorted, then "| unschedulable …"
	}{
		{name: "unscaled min 0: nothing", nodes: []*replicated.Node{node(1, 4, replicated.NodeReady)}, want: ""},
		{name: "near node first", nodes: []*replicated.Node{node(1, 4, replicated.NodeReady), node(2, 4, replicated.NodeReady)},
			scale: replicated.FunctionState{Want: 2, Near: 2, ScaledAt: time.Unix(1, 0)}, want: "fn-hello-0@2 fn-hello-1@2"},
		{name: "near node full: least loaded", nodes: []*replicated.Node{node(1, 4, replicated.NodeReady), node(2, 1, replicated.NodeReady), node(3, 4, replicated.NodeReady)},
			vms:   map[string]spec.VM{"db": {Runner: spec.Runner{Out: "/nix/store/db"}, VCPU: 2, MemMiB: 512, Replicas: 1, Autostart: true, Placement: spec.Placement{Nodes: []uint64{1}}}},
			scale: replicated.FunctionState{Want: 3, Near: 2, ScaledAt: time.Unix(1, 0)},
			// node 2 takes one (1 vCPU); node 3 is less loaded than node 1 (db), then they even out.
			want: "db@1 fn-hello-0@2 fn-hello-1@3 fn-hello-2@3"},
		{name: "kept where they run; down node's instance moves",
			nodes:   []*replicated.Node{node(1, 4, replicated.NodeReady), node(2, 4, replicated.NodeDown)},
			scale:   replicated.FunctionState{Want: 2, Near: 2, ScaledAt: time.Unix(1, 0)},
			current: map[string]uint64{"fn-hello-0": 2, "fn-hello-1": 1},
			want:    "fn-hello-0@1 fn-hello-1@1"},
		{name: "scale in removes the highest", nodes: []*replicated.Node{node(1, 4, replicated.NodeReady)},
			scale:   replicated.FunctionState{Want: 1, ScaledAt: time.Unix(1, 0)},
			current: map[string]uint64{"fn-hello-0": 1, "fn-hello-1": 1, "fn-hello-2": 1},
			want:    "fn-hello-0@1"},
		{name: "no room: unschedulable", nodes: []*replicated.Node{node(1, 1, replicated.NodeReady), node(2, 0, replicated.NodeReady)},
			scale: replicated.FunctionState{Want: 2, Near: 2, ScaledAt: time.Unix(1, 0)},
			want:  "fn-hello-0@1 | fn-hello-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := map[uint64]*replicated.Node{}
			for _, n := range tc.nodes {
				nodes[n.ID] = n
			}
			desired := &spec.Cluster{Name: "test", VMs: tc.vms, Functions: map[string]spec.Function{"hello": testFunction(0, 3)}}
			if desired.VMs == nil {
				desired.VMs = map[string]spec.VM{}
			}
			current := map[string]replicated.Assignment{}
			for inst, n := range tc.current {
				current[inst] = replicated.Assignment{VM: inst, Declared: "hello", Function: "hello", Node: n, Drv: "/nix/store/fn.drv",
					OutPath: "/nix/store/fn", VCPU: 1, MemMiB: 256}
			}
			in := Input{Desired: desired, Nodes: nodes, Current: current, Functions: map[string]replicated.FunctionState{"hello": tc.scale}}
			p := Compute(in)
			var got []string
			for _, a := range p.Assignments {
				got = append(got, fmt.Sprintf("%s@%d", a.VM, a.Node))
				if strings.HasPrefix(a.VM, "fn-") {
					if a.Function != "hello" || a.Health == nil || a.Health.TCP == nil || a.Health.TCP.Port != 8080 {
						t.Errorf("%s: function %q, health %+v", a.VM, a.Function, a.Health)
					}
					if p.Network == nil || !p.Network.Identities[a.VM].Address.IsValid() {
						t.Errorf("%s has no address in the plan's network", a.VM)
					}
				}
			}
			slices.Sort(got)
			s := strings.Join(got, " ")
			if len(p.Unschedulable) > 0 {
				var u []string
				for _, x := range p.Unschedulable {
					u = append(u, x.VM)
				}
				s += " | " + strings.Join(u, " ")
			}
			if s != tc.want {
				t.Errorf("plan %q, want %q\n%+v", s, tc.want, p)
			}
			// Compute is pure: the same input, the same plan.
			if q := Compute(in); !reflect.DeepEqual(q, p) {
				t.Error("Compute is not deterministic")
			}
		})
	}
}
