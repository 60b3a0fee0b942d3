package reconciler

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// rollFixture is a replicated state built with the real Apply: web with n
// replicas on nodes 1 and 2 (alternating) ran web-v1 of commit c1, and
// commit c2 declares web-v2 with update policy u, so web rolls.
type rollFixture struct {
	t   *testing.T
	st  *replicated.State
	idx uint64
}

var rollT0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func rollSpec(ver string, n int, u spec.Update) *spec.Cluster {
	vm := withReplicas(mkVM("web-"+ver, 1, 64), n)
	vm.Update = u
	return mkCluster(map[string]spec.VM{"web": vm, "db": mkVM("db-v1", 1, 64)})
}

// rollAssignments are the assignments a planner gives sp's instances
// (web's replicas alternate between nodes 1 and 2, db on node 1).
func rollAssignments(sp *spec.Cluster) []replicated.Assignment {
	var out []replicated.Assignment
	for i, in := range sp.Instances() {
		out = append(out, replicated.Assignment{VM: in.Name, Declared: in.Declared, Node: uint64(1 + i%2),
			Drv: in.Runner.Drv, OutPath: in.Runner.Out, VCPU: in.VCPU, MemMiB: in.MemMiB})
	}
	return out
}

func newRollFixture(t *testing.T, n int, u spec.Update) *rollFixture {
	f := &rollFixture{t: t, st: replicated.NewState()}
	for id := uint64(1); id <= 2; id++ {
		f.apply(replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{ID: id,
			Capacity: replicated.Resources{VCPU: 64, MemMiB: 65536}}})
	}
	c1 := rollSpec("v1", n, u)
	f.apply(replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{Commit: "c1", Spec: c1, Assignments: rollAssignments(c1)}})
	for name, a := range f.st.Assignments {
		f.observe(name, replicated.PhaseRunning, a.OutPath, replicated.Healthy, "")
	}
	c2 := rollSpec("v2", n, u)
	plan := HoldBack(Plan{Assignments: rollAssignments(c2)}, f.st.Assignments, c2, "c1")
	f.apply(replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{Parent: f.st.Revision.ID, Commit: "c2",
		Spec: c2, Assignments: plan.Assignments}})
	if r, ok := f.st.Rollouts["web"]; !ok || r.Phase != replicated.RolloutProgressing {
		t.Fatalf("c2 started no rollout of web: %+v", f.st.Rollouts)
	}
	return f
}

func (f *rollFixture) at() time.Time { return rollT0.Add(time.Duration(f.idx) * time.Second) }

func (f *rollFixture) apply(cmd replicated.Command) replicated.Result {
	f.t.Helper()
	f.idx++
	cmd.V = replicated.CommandVersion
	if cmd.At.IsZero() {
		cmd.At = f.at()
	}
	res := f.st.Apply(f.idx, cmd)
	if !res.OK() {
		f.t.Fatalf("%s: %v", cmd.Type, res.Err())
	}
	return res
}

// step applies a RolloutStep of web's rollout at time at.
func (f *rollFixture) step(at time.Time, action replicated.RolloutAction, instances ...string) {
	f.t.Helper()
	r := f.st.Rollouts["web"]
	f.apply(replicated.Command{Type: replicated.CmdRolloutStep, At: at, RolloutStep: &replicated.RolloutStep{VM: "web", Rollout: r.ID,
		Step: r.Step, Action: action, Instances: instances, Error: "test"}})
}

// observe sets what vm's node reports, for its current assignment.
func (f *rollFixture) observe(vm string, phase replicated.Phase, booted string, health replicated.HealthState, healthErr string) {
	a := f.st.Assignments[vm]
	f.st.Observed[vm] = replicated.VMStatus{VM: vm, Node: a.Node, Phase: phase, BootedOut: booted, Generation: a.Generation,
		Health: health, HealthError: healthErr}
}

// ready reports vm running its assignment's runner, healthy.
func (f *rollFixture) ready(vms ...string) {
	for _, vm := range vms {
		f.observe(vm, replicated.PhaseRunning, f.st.Assignments[vm].OutPath, replicated.Healthy, "")
	}
}

func upd(maxUnavailable, canary, minHealthy int, deadline time.Duration, revert bool) spec.Update {
	return spec.Update{MaxUnavailable: maxUnavailable, Canary: canary, MinHealthySeconds: minHealthy, ProgressDeadline: deadline, AutoRevert: revert}
}

func TestNextRolloutStep(t *testing.T) {
	const v2 = "/nix/store/web-v2"
	min10 := upd(1, 0, 10, 5*time.Minute, true)
	tests := []struct {
		name   string
		n      int
		u      spec.Update
		setup  func(f *rollFixture) time.Time // returns now
		action replicated.RolloutAction       // "": no step
		wave   []string
		after  time.Duration
		has    string // in the step's error, or the decision's Why
	}{
		{name: "the first wave is maxUnavailable instances, by name", n: 4, u: upd(2, 0, 10, time.Minute, false),
			setup:  func(f *rollFixture) time.Time { return f.at() },
			action: replicated.RolloutWave, wave: []string{"web-0", "web-1"}},
		{name: "a canary moves alone first", n: 4, u: upd(3, 1, 10, time.Minute, false),
			setup:  func(f *rollFixture) time.Time { return f.at() },
			action: replicated.RolloutWave, wave: []string{"web-0"}},
		{name: "after the canary, waves of maxUnavailable", n: 4, u: upd(2, 1, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(f.at(), replicated.RolloutWave, "web-0")
				f.ready("web-0")
				return f.at()
			},
			action: replicated.RolloutWave, wave: []string{"web-1", "web-2"}},
		{name: "a wave still starting waits until its deadline", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.observe("web-0", replicated.PhaseStarting, "/nix/store/web-v1", "", "")
				return rollT0.Add(time.Minute)
			},
			after: 4 * time.Minute, has: "waiting for wave 1 (web-0) to be healthy by 2025-01-01T00:05:00Z: web-0 on node 2: starting"},
		{name: "a wave running the old runner is not ready", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.observe("web-0", replicated.PhaseRunning, "/nix/store/web-v1", replicated.Healthy, "")
				return rollT0
			},
			after: 5 * time.Minute, has: "running /nix/store/web-v1, not its runner " + v2 + " yet"},
		{name: "a status of the previous generation is not ready", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				st := f.st.Observed["web-0"]
				st.Generation--
				f.st.Observed["web-0"] = st
				return rollT0
			},
			after: 5 * time.Minute, has: "has not acted on its assignment yet"},
		{name: "a wave not healthy by its deadline is reverted, with the probe's error", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.observe("web-0", replicated.PhaseRunning, v2, replicated.Unhealthy, "GET http://10.100.0.2:8080/healthz: connection refused")
				return rollT0.Add(5 * time.Minute)
			},
			action: replicated.RolloutRevert,
			has:    "wave 1 (web-0) was not healthy within 5m0s (progressDeadline): web-0 on node 2: unhealthy: GET http://10.100.0.2:8080/healthz: connection refused"},
		{name: "without autoRevert it fails where it is", n: 3, u: upd(1, 0, 10, 5*time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				return rollT0.Add(6 * time.Minute)
			},
			action: replicated.RolloutFail, has: "web-0 on node 2: node 2 has not acted on its assignment yet"},
		{name: "a crash-looping wave fails at once, before its deadline", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.observe("web-0", replicated.PhaseFailed, v2, "", "runner exited with code 1; restart 3 in 4s")
				st := f.st.Observed["web-0"]
				st.Message = "runner exited with code 1; restart 3 in 4s"
				f.st.Observed["web-0"] = st
				return rollT0.Add(time.Second)
			},
			action: replicated.RolloutRevert,
			has:    "wave 1 (web-0) crash-loops on the runner of commit c2: web-0 on node 2: failed on its runner: runner exited with code 1"},
		{name: "a failed build of the new runner is not a crash loop: it waits for the deadline", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.observe("web-0", replicated.PhaseFailed, "/nix/store/web-v1", "", "")
				return rollT0.Add(time.Second)
			},
			after: 5*time.Minute - time.Second, has: "web-0 on node 2: failed"},
		{name: "a healthy wave records since when", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				return rollT0.Add(3 * time.Second)
			},
			action: replicated.RolloutHealthy},
		{name: "then waits minHealthySeconds", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0.Add(3*time.Second), replicated.RolloutHealthy)
				return rollT0.Add(9 * time.Second)
			},
			after: 4 * time.Second, has: "wave 1 (web-0) healthy since 2025-01-01T00:00:03Z"},
		{name: "then starts the next wave", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0.Add(3*time.Second), replicated.RolloutHealthy)
				return rollT0.Add(13 * time.Second)
			},
			action: replicated.RolloutWave, wave: []string{"web-1"}},
		{name: "health lost before minHealthySeconds is recorded", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0.Add(3*time.Second), replicated.RolloutHealthy)
				f.observe("web-0", replicated.PhaseRunning, v2, replicated.Unhealthy, "tcp 10.100.0.2:5432: i/o timeout")
				return rollT0.Add(5 * time.Second)
			},
			action: replicated.RolloutUnhealthy, has: "wave 1 (web-0) is no longer healthy: web-0 on node 2: unhealthy: tcp 10.100.0.2:5432: i/o timeout"},
		{name: "without minHealthySeconds a healthy wave is followed at once", n: 3, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				return rollT0.Add(time.Second)
			},
			action: replicated.RolloutWave, wave: []string{"web-1"}},
		{name: "the last healthy wave ends the rollout", n: 2, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0, replicated.RolloutWave, "web-1")
				f.ready("web-1")
				return rollT0.Add(time.Second)
			},
			action: replicated.RolloutSucceed},
		{name: "a pending instance that is unavailable anyway moves first, at no cost", n: 3, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				// Another VM's instance does not count.
				f.observe("db", replicated.PhaseStarting, "/nix/store/db-v1", "", "")
				// web-1 and web-2 run v1, but web-2 is starting: moving it costs
				// no availability, so it goes before web-1.
				f.observe("web-2", replicated.PhaseStarting, "", "", "")
				return rollT0.Add(time.Second)
			},
			action: replicated.RolloutWave, wave: []string{"web-2"}},
		{name: "an unavailable instance that already moved blocks the next wave", n: 3, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0, replicated.RolloutWave, "web-1")
				f.ready("web-1")
				f.observe("web-0", replicated.PhaseStarting, v2, "", "")
				return rollT0.Add(time.Second)
			},
			// The rollout started at rollT0+4s (the fixture's fourth entry),
			// after these steps: the deadline counts from then.
			after: 63 * time.Second, has: "waiting to start wave 3: 1 of 3 instances are unavailable (maxUnavailable 1): web-0 (starting)"},
		{name: "a rollout that cannot start its next wave fails after progressDeadline", n: 3, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0.Add(10*time.Second), replicated.RolloutWave, "web-1")
				f.ready("web-1")
				f.observe("web-0", replicated.PhaseStarting, v2, "", "")
				return rollT0.Add(70 * time.Second)
			},
			action: replicated.RolloutFail,
			has:    "no wave could start within 1m0s (progressDeadline): waiting to start wave 3: 1 of 3 instances are unavailable (maxUnavailable 1): web-0 (starting)"},
		{name: "the wait for a wave to start counts from when the last wave had been healthy for minHealthySeconds", n: 3, u: upd(1, 0, 30, time.Minute, true),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0.Add(5*time.Second), replicated.RolloutWave, "web-0")
				f.ready("web-0")
				f.step(rollT0.Add(6*time.Second), replicated.RolloutHealthy)
				f.step(rollT0.Add(40*time.Second), replicated.RolloutWave, "web-1")
				f.ready("web-1")
				f.step(rollT0.Add(45*time.Second), replicated.RolloutHealthy)
				f.observe("web-0", replicated.PhaseStarting, v2, "", "")
				return rollT0.Add(100 * time.Second)
			},
			after: 35 * time.Second, has: "waiting to start wave 3"},
		{name: "an instance kept stopped moves without waiting", n: 3, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.apply(replicated.Command{Type: replicated.CmdSetVMRunState, SetVMRunState: &replicated.SetVMRunState{VM: "web-2", Want: replicated.RunStateStopped}})
				return f.at()
			},
			action: replicated.RolloutWave, wave: []string{"web-2"}},
		{name: "an instance with a health check is not ready before its agent judged it", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				a := f.st.Assignments["web-0"]
				a.Health = &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 80}}
				f.st.Assignments["web-0"] = a
				f.observe("web-0", replicated.PhaseRunning, v2, "", "")
				return rollT0
			},
			after: 5 * time.Minute, has: "web-0 on node 2: running, not judged healthy yet"},
		{name: "an agent that predates health reports none: running is healthy without a check", n: 3, u: min10,
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.observe("web-0", replicated.PhaseRunning, v2, "", "")
				return rollT0
			},
			action: replicated.RolloutHealthy},
		{name: "a wave instance no longer assigned is not waited for", n: 3, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				delete(f.st.Assignments, "web-0")
				return rollT0
			},
			action: replicated.RolloutWave, wave: []string{"web-1"}},
		{name: "a rollout that ended decides nothing", n: 2, u: upd(1, 0, 0, time.Minute, false),
			setup: func(f *rollFixture) time.Time {
				f.step(rollT0, replicated.RolloutWave, "web-0")
				f.step(rollT0, replicated.RolloutFail)
				return rollT0.Add(time.Hour)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRollFixture(t, tt.n, tt.u)
			now := tt.setup(f)
			before := f.st.Clone()
			d := NextRolloutStep(f.st, "web", now)
			if !reflect.DeepEqual(f.st, before) {
				t.Fatal("NextRolloutStep changed the state")
			}
			var action replicated.RolloutAction
			var wave []string
			var why string
			if d.Step != nil {
				action, wave, why = d.Step.Action, d.Step.Instances, d.Step.Error
				r := f.st.Rollouts["web"]
				if d.Step.VM != "web" || d.Step.Rollout != r.ID || d.Step.Step != r.Step {
					t.Errorf("step %+v does not name web's rollout %d at step %d", d.Step, r.ID, r.Step)
				}
			} else {
				why = d.Why
			}
			if action != tt.action || !slices.Equal(wave, tt.wave) {
				t.Fatalf("decided %q %v (%s), want %q %v", action, wave, why, tt.action, tt.wave)
			}
			if d.After != tt.after {
				t.Errorf("after %s, want %s", d.After, tt.after)
			}
			if !strings.Contains(why, tt.has) {
				t.Errorf("why %q lacks %q", why, tt.has)
			}
			if d.Step != nil {
				// The step applies to the state it was decided on.
				if res := f.st.Clone().Apply(f.idx+1, replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdRolloutStep, At: now,
					RolloutStep: d.Step}); !res.OK() {
					t.Errorf("the decided step is refused: %v", res.Err())
				}
			}
		})
	}
	if got := NextRolloutStep(replicated.NewState(), "web", rollT0); got.Step != nil || got.Why != "" {
		t.Errorf("no rollout: %+v", got)
	}
}

func TestChooseWave(t *testing.T) {
	ready := InstanceHealth{Ready: true, Status: "healthy"}
	down := InstanceHealth{Status: "starting"}
	as := map[string]replicated.Assignment{"a": {}, "b": {}, "c": {}, "d": {}, "s": {Stopped: replicated.StoppedByOperator}}
	tests := []struct {
		name    string
		r       replicated.Rollout
		health  map[string]InstanceHealth
		pending []string
		want    []string
	}{
		{"by name, maxUnavailable at a time", replicated.Rollout{Update: upd(2, 0, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": ready, "b": ready, "c": ready, "d": ready}, []string{"a", "b", "c", "d"}, []string{"a", "b"}},
		{"maxUnavailable above the instances: one wave", replicated.Rollout{Update: upd(9, 0, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": ready, "b": ready}, []string{"a", "b"}, []string{"a", "b"}},
		{"a canary first", replicated.Rollout{Update: upd(3, 2, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": ready, "b": ready, "c": ready}, []string{"a", "b", "c"}, []string{"a", "b"}},
		{"the canary only in the first wave", replicated.Rollout{Waves: 1, Update: upd(3, 1, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": ready, "b": ready, "c": ready, "d": ready}, []string{"b", "c", "d"}, []string{"b", "c", "d"}},
		{"unavailable pending instances go first, at no cost", replicated.Rollout{Update: upd(2, 0, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": ready, "b": ready, "c": down, "d": ready}, []string{"a", "b", "c", "d"}, []string{"a", "c"}},
		{"an unavailable instance that moved already costs availability", replicated.Rollout{Update: upd(2, 0, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": down, "b": ready, "c": ready, "d": ready}, []string{"b", "c", "d"}, []string{"b"}},
		{"stopped instances first", replicated.Rollout{Update: upd(1, 0, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": ready, "s": {Ready: true}}, []string{"a", "s"}, []string{"s"}},
		{"no budget left", replicated.Rollout{Update: upd(1, 0, 0, time.Minute, false)},
			map[string]InstanceHealth{"a": down, "b": ready}, []string{"b"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var insts []string
			for name := range tt.health {
				insts = append(insts, name)
			}
			slices.Sort(insts)
			got, why := ChooseWave(tt.r, as, insts, tt.pending, tt.health)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ChooseWave = %v (%s), want %v", got, why, tt.want)
			}
			if (len(got) == 0) != (why != "") {
				t.Errorf("why %q with wave %v", why, got)
			}
		})
	}
}

func TestClassifyInstance(t *testing.T) {
	a := replicated.Assignment{VM: "web-0", Node: 2, OutPath: "/nix/store/v2", Generation: 7}
	st := func(phase replicated.Phase, booted string, health replicated.HealthState) replicated.VMStatus {
		return replicated.VMStatus{VM: "web-0", Node: 2, Phase: phase, BootedOut: booted, Generation: 7, Health: health, HealthError: "refused",
			Message: "msg"}
	}
	checked := a
	checked.Health = &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 1}}
	stopped := a
	stopped.Stopped = replicated.StoppedByAutostart
	other := st(replicated.PhaseRunning, "/nix/store/v2", replicated.Healthy)
	other.Node = 3
	oldGen := st(replicated.PhaseRunning, "/nix/store/v2", replicated.Healthy)
	oldGen.Generation = 6
	tests := []struct {
		name   string
		a      replicated.Assignment
		obs    replicated.VMStatus
		seen   bool
		ready  bool
		crash  bool
		status string
	}{
		{"healthy", a, st(replicated.PhaseRunning, "/nix/store/v2", replicated.Healthy), true, true, false, "healthy"},
		{"kept stopped", stopped, replicated.VMStatus{}, false, true, false, "kept stopped (autostart = false in the flake)"},
		{"not reported", a, replicated.VMStatus{}, false, false, false, "not reported by node 2 yet"},
		{"reported by another node", a, other, true, false, false, "reported running by node 3, assigned to node 2"},
		{"crash loop", a, st(replicated.PhaseFailed, "/nix/store/v2", ""), true, false, true, "failed on its runner: msg"},
		{"failed with the old runner", a, st(replicated.PhaseFailed, "/nix/store/v1", ""), true, false, false, "failed: msg"},
		{"old generation", a, oldGen, true, false, false, "node 2 has not acted on its assignment yet (it reports generation 6, want 7)"},
		{"starting", a, st(replicated.PhaseStarting, "/nix/store/v1", ""), true, false, false, "starting: msg"},
		{"old runner", a, st(replicated.PhaseRunning, "/nix/store/v1", replicated.Healthy), true, false, false, "running /nix/store/v1, not its runner /nix/store/v2 yet"},
		{"unhealthy", a, st(replicated.PhaseRunning, "/nix/store/v2", replicated.Unhealthy), true, false, false, "unhealthy: refused"},
		{"no health reported, no check", a, st(replicated.PhaseRunning, "/nix/store/v2", ""), true, true, false, "healthy"},
		{"no health reported, a check", checked, st(replicated.PhaseRunning, "/nix/store/v2", ""), true, false, false, "running, not judged healthy yet"},
		{"healthy with a check", checked, st(replicated.PhaseRunning, "/nix/store/v2", replicated.Healthy), true, true, false, "healthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := ClassifyInstance(tt.a, tt.obs, tt.seen)
			if h.Ready != tt.ready || h.CrashLoop != tt.crash || h.Status != tt.status || h.VM != "web-0" || h.Node != 2 {
				t.Fatalf("ClassifyInstance = %+v, want ready %t crash %t %q", h, tt.ready, tt.crash, tt.status)
			}
		})
	}
}

func TestHoldBack(t *testing.T) {
	u := upd(1, 0, 10, time.Minute, false)
	webV1 := mkAssign("web-0", 1, "web-v1", 1, 64, 3)
	webV1.Commit = "c1"
	legacy := mkAssign("web-1", 1, "web-v1", 1, 64, 3) // predates Assignment.Commit
	current := mkCurrent(webV1, legacy, mkAssign("db", 1, "db-v1", 1, 64, 3), mkAssign("web-2", 1, "web-v1", 1, 64, 3))
	desired := mkCluster(map[string]spec.VM{"web": withReplicas(mkVM("web-v2", 1, 64), 4), "db": mkVM("db-v2", 1, 64)})
	vm := desired.VMs["web"]
	vm.Update = u
	desired.VMs["web"] = vm
	p := Compute(Input{Desired: desired, Nodes: mkNodes(ready(1), ready(2)), Current: current, Previous: desired})
	// web-2 moves to node 2 (drained node 1 in a real cluster): rewrite the
	// plan as if it had.
	for i := range p.Assignments {
		if p.Assignments[i].VM == "web-2" {
			p.Assignments[i].Node = 2
			c := changeOf("web-2", ptr(current["web-2"]), &p.Assignments[i], "node 1 is draining")
			p.Moved = append(p.Moved, c)
			p.Changed = slices.DeleteFunc(p.Changed, func(c Change) bool { return c.VM == "web-2" })
		}
	}
	orig := slices.Clone(p.Assignments)
	got := HoldBack(p, current, desired, "c0")
	if !reflect.DeepEqual(p.Assignments, orig) {
		t.Fatal("HoldBack modified its input")
	}
	as := map[string]replicated.Assignment{}
	for _, a := range got.Assignments {
		as[a.VM] = a
	}
	for _, tt := range []struct {
		vm, out, commit string
		node            uint64
		gen             uint64
	}{
		{"web-0", "/nix/store/web-v1", "c1", 1, 3}, // held with its commit
		{"web-1", "/nix/store/web-v1", "c0", 1, 3}, // held, with the running revision's commit
		{"web-2", "/nix/store/web-v1", "c0", 2, 0}, // held, moved: a new generation
		{"web-3", "/nix/store/web-v2", "", 0, 0},   // new: the new runner at once
		{"db", "/nix/store/db-v2", "", 1, 0},       // no update block: changes at once
	} {
		a := as[tt.vm]
		if a.OutPath != tt.out || a.Commit != tt.commit || (tt.node != 0 && a.Node != tt.node) || a.Generation != tt.gen {
			t.Errorf("%s: %s commit %q node %d gen %d, want %s %q node %d gen %d", tt.vm, a.OutPath, a.Commit, a.Node, a.Generation,
				tt.out, tt.commit, tt.node, tt.gen)
		}
	}
	var changed []string
	for _, c := range got.Changed {
		changed = append(changed, c.VM)
	}
	if !slices.Equal(changed, []string{"db"}) {
		t.Errorf("Changed = %v, want only db", changed)
	}
	if len(got.Moved) != 1 || got.Moved[0].OutPath != "/nix/store/web-v1" || got.Moved[0].Node != 2 {
		t.Errorf("Moved = %+v, want web-2 to node 2 on its old runner", got.Moved)
	}
	// Held instances are no change: re-planning a rolling cluster is quiet.
	st := &replicated.State{Nodes: mkNodes(ready(1)), Desired: desired, Revision: &replicated.Revision{ID: 5, Commit: "c2"},
		Assignments: mkCurrent(webV1)}
	vm.Replicas = 1
	st.Desired = mkCluster(map[string]spec.VM{"web": vm})
	st.Assignments = mkCurrent(func() replicated.Assignment { a := webV1; a.VM, a.Declared = "web", "web"; return a }())
	replan := HoldBack(Compute(Input{Desired: st.Desired, Nodes: st.Nodes, Current: st.Assignments, Previous: st.Desired}), st.Assignments, st.Desired, "c2")
	if replan.HasChanges() {
		t.Errorf("a re-plan of a rolling VM has changes: %+v", replan)
	}
	if out := HoldBack(p, current, nil, "c0"); !reflect.DeepEqual(out, p) {
		t.Error("HoldBack without a desired spec changed the plan")
	}
}

func ptr[T any](v T) *T { return &v }

// TestTargetsMatchThePlanner: replicated.Targets, which Apply and
// NextRolloutStep use, gives every instance the workload Compute gives it.
func TestTargetsMatchThePlanner(t *testing.T) {
	vm := withReplicas(mkVM("web-v2", 2, 128), 3)
	vm.Volumes = map[string]spec.Volume{"data": {SizeMiB: 10, Pool: "rbd"}}
	vm.Health = &spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: 8080, Path: "/"}, Interval: time.Second, Timeout: time.Millisecond,
		HealthyAfter: 1, UnhealthyAfter: 1}
	vm.Instances = map[string]spec.InstanceEntry{"web-0": {Runner: spec.Runner{Drv: "/nix/store/own.drv", Out: "/nix/store/own"}},
		"web-1": {}, "web-2": {}}
	desired := mkCluster(map[string]spec.VM{"web": vm, "db": mkVM("db", 1, 64)})
	p := Compute(Input{Desired: desired, Nodes: mkNodes(withCeph(ready(1)), withCeph(ready(2)))})
	for _, decl := range []string{"web", "db"} {
		targets := replicated.Targets(desired, decl)
		n := 0
		for _, a := range p.Assignments {
			if a.Declared != decl {
				continue
			}
			n++
			if w := a.Workload(); !w.Same(targets[a.VM]) || w.OwnRunner != targets[a.VM].OwnRunner || !reflect.DeepEqual(w.Health, targets[a.VM].Health) {
				t.Errorf("%s: the planner gives %+v, Targets %+v", a.VM, w, targets[a.VM])
			}
		}
		if n != len(targets) {
			t.Errorf("%s: %d assignments, %d targets", decl, n, len(targets))
		}
	}
}

func TestConverge(t *testing.T) {
	base := func(t *testing.T) *replicated.State {
		f := newRollFixture(t, 2, upd(1, 0, 0, time.Minute, true))
		f.step(rollT0, replicated.RolloutWave, "web-0")
		f.ready("web-0")
		f.step(rollT0, replicated.RolloutWave, "web-1")
		f.ready("web-1")
		f.step(rollT0, replicated.RolloutSucceed)
		f.ready("web-0", "web-1", "db")
		f.st.History = append([]replicated.Revision{{ID: 2, Commit: "c0aaaa"}}, f.st.History...)
		return f.st
	}
	tests := []struct {
		name   string
		edit   func(st *replicated.State)
		commit string
		state  ConvergenceState
		has    string
	}{
		{"every instance ready on the revision", nil, "c2", Converged, "every instance (3) runs its assignment and is healthy"},
		{"the running revision by default", nil, "", Converged, "revision"},
		{"a prefix", func(st *replicated.State) {
			st.Revision.Commit = "c2abcdef"
			st.History[len(st.History)-1].Commit = "c2abcdef"
		},
			"c2ab", Converged, ""},
		{"an instance starting", func(st *replicated.State) {
			o := st.Observed["web-1"]
			o.Phase = replicated.PhaseStarting
			st.Observed["web-1"] = o
		}, "c2", Progressing, "1 of 3 instances not ready"},
		{"an unschedulable instance", func(st *replicated.State) {
			st.Unschedulable = []replicated.Unschedulable{{VM: "big", Reason: "too big"}}
		}, "c2", Progressing, "1 of 4 instances not ready"},
		{"a rollout in progress", func(st *replicated.State) {
			r := st.Rollouts["web"]
			r.Phase = replicated.RolloutProgressing
			st.Rollouts["web"] = r
		}, "c2", Progressing, "rolling out web (wave 2, 0 of 2 to move)"},
		{"its rollout reverted", func(st *replicated.State) {
			r := st.Rollouts["web"]
			r.Phase, r.Error = replicated.RolloutReverted, "wave 1 (web-0) crash-loops"
			st.Rollouts["web"] = r
		}, "c2", Failed, "the rollout of web reverted: wave 1 (web-0) crash-loops"},
		{"an earlier commit's reverted rollout keeps its VM on an older commit", func(st *replicated.State) {
			r := st.Rollouts["web"]
			r.Phase, r.To, r.From = replicated.RolloutReverted, "c1bad", "c0"
			st.Rollouts["web"] = r
		}, "c2", Converged, "web stays on commit c0 (the rollout of c1bad reverted)"},
		{"not applied yet", nil, "c3", Progressing, "revision 4 runs commit c2; this commit is not applied yet"},
		{"not applied while suspended", func(st *replicated.State) { st.Suspended = &replicated.Suspension{Since: rollT0} },
			"c3", Progressing, "following is suspended since 2025-01-01T00:00:00Z"},
		{"replaced by a later revision: it may come back", nil, "c1", Progressing,
			"revision 4 runs commit c2; this commit ran as revision 3 before, and is not applied now"},
		{"the rollback applies it next", func(st *replicated.State) {
			st.Suspended = &replicated.Suspension{Since: rollT0, Rollback: &replicated.RollbackTarget{Revision: 3, Commit: "c1"}}
		}, "c1", Progressing, "the rollback to revision 3 applies it next"},
		{"evaluation failed for good", func(st *replicated.State) {
			st.Conditions = []replicated.Condition{{Type: replicated.EvalFailed, Commit: "c3", Message: "error: syntax error\nat line 3"}}
		}, "c3", Failed, "its evaluation failed: error: syntax error …"},
		{"evaluation failed and is retried", func(st *replicated.State) {
			st.Conditions = []replicated.Condition{{Type: replicated.EvalFailed, Commit: "c3", Message: "timeout", Retryable: true}}
		}, "c3", Progressing, "retried"},
		{"signature refused", func(st *replicated.State) {
			st.Conditions = []replicated.Condition{{Type: replicated.SignatureRefused, Commit: "c3", Message: "unsigned"}}
		}, "c3", Failed, "its signature was refused: unsigned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := base(t)
			if tt.edit != nil {
				tt.edit(st)
			}
			c := Converge(st, tt.commit)
			if c.State != tt.state || !strings.Contains(c.Message, tt.has) {
				t.Fatalf("Converge(%q) = %s %q (waiting %+v), want %s with %q", tt.commit, c.State, c.Message, c.Waiting, tt.state, tt.has)
			}
		})
	}
	if c := Converge(replicated.NewState(), ""); c.State != Progressing {
		t.Errorf("an empty state: %+v", c)
	}
}

func TestViewRollout(t *testing.T) {
	f := newRollFixture(t, 3, upd(1, 0, 10, 5*time.Minute, true))
	v, ok := ViewRollout(f.st, "web", rollT0)
	if !ok || v.Updated != 0 || v.Total != 3 || v.Next != "starting wave 1: web-0" || v.Previous != nil {
		t.Fatalf("before the first wave: %+v", v)
	}
	f.step(rollT0, replicated.RolloutWave, "web-0")
	v, _ = ViewRollout(f.st, "web", rollT0.Add(time.Second))
	if v.Updated != 1 || len(v.WaveHealth) != 1 || v.WaveHealth[0].Ready || !strings.HasPrefix(v.Next, "waiting for wave 1 (web-0)") {
		t.Fatalf("during wave 1: %+v", v)
	}
	if _, ok := ViewRollout(f.st, "db", rollT0); ok {
		t.Error("db has no rollout")
	}
	if f.st.Rollouts["web"].Previous == nil {
		t.Error("ViewRollout cleared the state's Previous")
	}
	_ = fmt.Sprint(v)
}

// TestRolloutOverTheStore runs whole rollouts through the reconciler's
// rollout step against testkit's store (the real Apply), with the agents
// played by the test: a good version reaches every instance with never
// more than maxUnavailable unavailable; a bad one is reverted after its
// deadline having touched only the first wave.
func TestRolloutOverTheStore(t *testing.T) {
	for _, tt := range []struct {
		name    string
		u       spec.Update
		healthy bool
	}{
		{"good push, maxUnavailable 1", upd(1, 0, 2, time.Minute, true), true},
		{"good push, maxUnavailable 3", upd(3, 0, 2, time.Minute, true), true},
		{"good push with a canary", upd(2, 1, 2, time.Minute, true), true},
		{"bad push is reverted", upd(1, 0, 2, time.Minute, true), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newRollFixture(t, 4, tt.u)
			store := testkit.NewStore(f.st)
			now := rollT0.Add(time.Minute)
			r := newTestReconciler(t, Options{Store: store, Now: func() time.Time { return now }})
			restarts := map[string]int{}
			prev := map[string]uint64{}
			for name, a := range f.st.Assignments {
				prev[name] = a.Generation
			}
			maxDown := 0
			for i := 0; i < 200; i++ {
				st, _ := store.Read(t.Context())
				if r := st.Rollouts["web"]; r.Done() {
					break
				}
				// The agents: an instance whose assignment changed restarts;
				// a good runner is healthy at once, a bad one never.
				down := 0
				store.Update(func(s *replicated.State) {
					for name, a := range s.Assignments {
						if a.Generation != prev[name] {
							restarts[name]++
							prev[name] = a.Generation
						}
						health := replicated.Healthy
						if !tt.healthy && a.OutPath == "/nix/store/web-v2" {
							health = replicated.Unhealthy
						}
						s.Observed[name] = replicated.VMStatus{VM: name, Node: a.Node, Phase: replicated.PhaseRunning, BootedOut: a.OutPath,
							Generation: a.Generation, Health: health, HealthError: "probe refused"}
						if a.Declared == "web" && health != replicated.Healthy {
							down++
						}
					}
				})
				maxDown = max(maxDown, down)
				if _, err := r.reconcileRollouts(t.Context(), st, now); err != nil {
					t.Fatal(err)
				}
				now = now.Add(time.Second)
			}
			st, _ := store.Read(t.Context())
			for name, a := range st.Assignments { // the agents see the last step too
				if a.Generation != prev[name] {
					restarts[name]++
				}
			}
			roll := st.Rollouts["web"]
			if tt.healthy {
				if roll.Phase != replicated.RolloutSucceeded {
					t.Fatalf("rollout %s: %s", roll.Phase, roll.Error)
				}
				for name, a := range st.Assignments {
					if a.Declared == "web" && (a.OutPath != "/nix/store/web-v2" || a.Commit != "c2" || restarts[name] != 1) {
						t.Errorf("%s: %s of %s, restarted %d times", name, a.OutPath, a.Commit, restarts[name])
					}
				}
				if maxDown > tt.u.MaxUnavailable {
					t.Errorf("%d instances unavailable at once, maxUnavailable %d", maxDown, tt.u.MaxUnavailable)
				}
				return
			}
			if roll.Phase != replicated.RolloutReverted || !strings.Contains(roll.Error, "web-0 on node 2: unhealthy: probe refused") {
				t.Fatalf("rollout %s: %q", roll.Phase, roll.Error)
			}
			for name, a := range st.Assignments {
				want := 0
				if name == "web-0" {
					want = 2 // to v2 and back
				}
				if a.OutPath == "/nix/store/web-v2" || restarts[name] != want {
					t.Errorf("%s: %s, restarted %d times, want %d", name, a.OutPath, restarts[name], want)
				}
			}
			if c := Converge(st, "c2"); c.State != Failed {
				t.Errorf("Converge after the revert: %+v", c)
			}
		})
	}
}
