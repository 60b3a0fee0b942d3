package ingress_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// clusterState applies real commands: two nodes, a plan of web (three
// replicas) and db, with an ingress entry for each.
func clusterState(t *testing.T) (*replicated.State, func(replicated.Command)) {
	t.Helper()
	s := replicated.NewState()
	index := uint64(0)
	apply := func(c replicated.Command) {
		t.Helper()
		index++
		if r := s.Apply(index, c); !r.OK() {
			t.Fatalf("apply %s: %+v", c.Type, r)
		}
	}
	apply(testkit.Register(1))
	apply(testkit.Register(2))
	var as []replicated.Assignment
	for i, n := range []uint64{1, 2, 2} {
		a := testkit.Assign(fmt.Sprintf("web-%d", i), n, "v1")
		a.Declared = "web"
		as = append(as, a)
	}
	as = append(as, testkit.Assign("db", 1, "v1"))
	plan := testkit.Plan(0, "c1", as...)
	sp := plan.CommitPlan.Spec
	sp.VMs["web"] = spec.VM{Runner: spec.Runner{Drv: as[0].Drv, Out: as[0].OutPath}, VCPU: 1, MemMiB: 256, Replicas: 3, Autostart: true}
	sp.Ingress = map[string]spec.Ingress{
		"site": httpEntry("web.example.org", "/", "web", 8080),
		"db":   {To: "db", Port: 5432, Protocol: spec.IngressTCP, ListenPort: 15432, Path: "/"},
	}
	apply(plan)
	return s, apply
}

func heartbeat(node uint64, phases map[string]replicated.Phase) replicated.Command {
	hb := &replicated.NodeHeartbeat{ID: node}
	for vm, p := range phases {
		hb.Statuses = append(hb.Statuses, replicated.VMStatus{VM: vm, Phase: p})
	}
	slices.SortFunc(hb.Statuses, func(a, b replicated.VMStatus) int {
		if a.VM < b.VM {
			return -1
		}
		return 1
	})
	return replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdNodeHeartbeat, At: testkit.T0, NodeHeartbeat: hb}
}

func backendsOf(tab *ingress.Table, entry string) []string {
	var out []string
	for _, r := range tab.Routes() {
		if r.Entry == entry {
			for _, b := range r.Backends {
				out = append(out, b.Instance+" "+b.Addr.String())
			}
		}
	}
	for _, r := range tab.TCP() {
		if r.Entry == entry {
			for _, b := range r.Backends {
				out = append(out, b.Instance+" "+b.Addr.String())
			}
		}
	}
	return out
}

func TestFromState(t *testing.T) {
	t.Run("state before the first plan routes nothing", func(t *testing.T) {
		if got := ingress.FromState(replicated.NewState()); len(got.Routes())+len(got.TCP()) != 0 {
			t.Fatalf("FromState(empty) has routes: %+v %+v", got.Routes(), got.TCP())
		}
	})

	s, apply := clusterState(t)
	addr := func(vm string) string {
		id, ok := s.Identity(vm)
		if !ok {
			t.Fatalf("instance %s has no identity", vm)
		}
		return id.Address.String()
	}

	t.Run("instances not yet observed running get no traffic", func(t *testing.T) {
		if got := backendsOf(ingress.FromState(s), "site"); got != nil {
			t.Fatalf("site backends = %q before any heartbeat, want none", got)
		}
		if _, err := ingress.FromState(s).Match("web.example.org", "/"); err == nil {
			t.Fatal("a route without running instances matched without an error")
		}
	})

	apply(heartbeat(1, map[string]replicated.Phase{"web-0": replicated.PhaseRunning, "db": replicated.PhaseRunning}))
	apply(heartbeat(2, map[string]replicated.Phase{"web-1": replicated.PhaseRunning, "web-2": replicated.PhaseStarting}))
	t.Run("running instances on their node get traffic at the entry's port", func(t *testing.T) {
		tab := ingress.FromState(s)
		want := []string{"web-0 " + addr("web-0") + ":8080", "web-1 " + addr("web-1") + ":8080"}
		if got := backendsOf(tab, "site"); !slices.Equal(got, want) {
			t.Fatalf("site backends = %q, want %q (web-2 is only starting)", got, want)
		}
		if got, want := backendsOf(tab, "db"), []string{"db " + addr("db") + ":5432"}; !slices.Equal(got, want) {
			t.Fatalf("db backends = %q, want %q", got, want)
		}
	})

	apply(replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdSetVMRunState, At: testkit.T0,
		SetVMRunState: &replicated.SetVMRunState{VM: "web-1", Want: replicated.RunStateStopped}})
	t.Run("instance kept stopped gets no traffic while it still reports running", func(t *testing.T) {
		want := []string{"web-0 " + addr("web-0") + ":8080"}
		if got := backendsOf(ingress.FromState(s), "site"); !slices.Equal(got, want) {
			t.Fatalf("site backends = %q, want %q", got, want)
		}
	})

	// Move web-0 to node 2: node 1 still reports it running (it has not
	// acted on the plan yet).
	moved := make([]replicated.Assignment, 0, len(s.Assignments))
	for _, a := range s.Assignments {
		if a.VM == "web-0" {
			a.Node = 2
		}
		moved = append(moved, a)
	}
	slices.SortFunc(moved, func(a, b replicated.Assignment) int {
		if a.VM < b.VM {
			return -1
		}
		return 1
	})
	next := testkit.Plan(s.Revision.ID, "c2", moved...)
	next.CommitPlan.Spec = s.Desired
	apply(next)
	apply(heartbeat(1, map[string]replicated.Phase{"web-0": replicated.PhaseRunning, "db": replicated.PhaseRunning}))
	t.Run("instance observed on another node than its assignment gets no traffic", func(t *testing.T) {
		if got := backendsOf(ingress.FromState(s), "site"); got != nil {
			t.Fatalf("site backends = %q during web-0's move, want none", got)
		}
	})
	apply(heartbeat(1, map[string]replicated.Phase{"db": replicated.PhaseRunning}))
	apply(heartbeat(2, map[string]replicated.Phase{"web-0": replicated.PhaseRunning, "web-1": replicated.PhaseStopped, "web-2": replicated.PhaseRunning}))
	t.Run("moved instance gets traffic at the same address once it runs on its new node", func(t *testing.T) {
		want := []string{"web-0 " + addr("web-0") + ":8080", "web-2 " + addr("web-2") + ":8080"}
		if got := backendsOf(ingress.FromState(s), "site"); !slices.Equal(got, want) {
			t.Fatalf("site backends = %q, want %q", got, want)
		}
	})

	healthBeat := func(health map[string]replicated.HealthState) replicated.Command {
		c := heartbeat(2, map[string]replicated.Phase{"web-0": replicated.PhaseRunning, "web-1": replicated.PhaseStopped, "web-2": replicated.PhaseRunning})
		for i := range c.NodeHeartbeat.Statuses {
			c.NodeHeartbeat.Statuses[i].Health = health[c.NodeHeartbeat.Statuses[i].VM]
		}
		return c
	}
	for _, tc := range []struct {
		name   string
		health map[string]replicated.HealthState
		want   []string
	}{
		{"an unhealthy instance leaves the rotation while a healthy one serves",
			map[string]replicated.HealthState{"web-0": replicated.Unhealthy, "web-2": replicated.Healthy}, []string{"web-2"}},
		{"an instance not judged yet waits while a healthy one serves",
			map[string]replicated.HealthState{"web-0": replicated.Healthy}, []string{"web-0"}},
		{"instances not judged yet serve when none is healthy (agent restarted)",
			map[string]replicated.HealthState{"web-2": replicated.Unhealthy}, []string{"web-0"}},
		{"every instance unhealthy: all keep their traffic (panic mode)",
			map[string]replicated.HealthState{"web-0": replicated.Unhealthy, "web-2": replicated.Unhealthy}, []string{"web-0", "web-2"}},
		{"every instance healthy: all serve",
			map[string]replicated.HealthState{"web-0": replicated.Healthy, "web-2": replicated.Healthy}, []string{"web-0", "web-2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apply(healthBeat(tc.health))
			var want []string
			for _, vm := range tc.want {
				want = append(want, vm+" "+addr(vm)+":8080")
			}
			if got := backendsOf(ingress.FromState(s), "site"); !slices.Equal(got, want) {
				t.Fatalf("site backends = %q, want %q", got, want)
			}
			if got := len(ingress.RunningInstances(s)["web"]); got != 2 {
				t.Fatalf("RunningInstances lists %d web instances, want 2 (DNS keeps every running instance)", got)
			}
		})
	}
}
