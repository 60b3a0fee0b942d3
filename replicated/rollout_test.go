package replicated

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/blixard/blixard/spec"
)

// handleRollout runs the datadriven commands of rolling updates and
// following (testdata/rollout_*.txt):
//
//	rollout-step vm=web [rollout=ID] [step=N] action=wave|healthy|unhealthy|succeed|fail|revert
//	             [instances=web-0,…] [error=TEXT]
//	                                          RolloutStep; rollout and step default to the
//	                                          VM's current rollout's (the leader's view)
//	suspend [rollback=REV]                    SetFollowing{Suspended, Rollback}
//	resume                                    SetFollowing{}
//	record-pending commit=SHA                 RecordPending
//
// and commit-plan's arguments
//
//	update=VM:MAXUNAVAILABLE:CANARY:MINHEALTHY:DEADLINE[:revert],…
//	                                          the declared VM's update block (its replicas'
//	                                          assignments then run the VM's runner, as the
//	                                          planner would give them)
//	uniform                                   replicas run their declared VM's runner (as
//	                                          with update=) without an update block
//	force=VM:OUT,…                            the plan gives instance VM runner OUT (a plan
//	                                          made on an older state)
//	holdback                                  every assigned instance of a VM with an update
//	                                          block keeps its committed workload (what the
//	                                          leader's planner, reconciler.HoldBack, does)
func (h *harness) handleRollout(t *testing.T, d *datadriven.TestData) (string, bool) {
	switch d.Cmd {
	case "rollout-step":
		c := &RolloutStep{}
		d.ScanArgs(t, "vm", &c.VM)
		r := h.state.Rollouts[c.VM]
		c.Rollout, c.Step = r.ID, r.Step
		d.MaybeScanArgs(t, "rollout", &c.Rollout)
		d.MaybeScanArgs(t, "step", &c.Step)
		c.Action = RolloutAction(strArg(t, d, "action"))
		if v := strArg(t, d, "instances"); v != "" {
			c.Instances = strings.Split(v, ",")
		}
		c.Error = strArg(t, d, "error")
		return h.propose(t, d, Command{Type: CmdRolloutStep, RolloutStep: c}), true
	case "suspend":
		c := &SetFollowing{Suspended: true}
		d.MaybeScanArgs(t, "rollback", &c.Rollback)
		return h.propose(t, d, Command{Type: CmdSetFollowing, SetFollowing: c}), true
	case "resume":
		return h.propose(t, d, Command{Type: CmdSetFollowing, SetFollowing: &SetFollowing{}}), true
	case "record-pending":
		c := &RecordPending{}
		d.MaybeScanArgs(t, "commit", &c.Commit)
		return h.propose(t, d, Command{Type: CmdRecordPending, RecordPending: c}), true
	}
	return "", false
}

// rolloutPlanArgs applies commit-plan's update= and holdback to c, a plan
// against state.
func rolloutPlanArgs(t *testing.T, d *datadriven.TestData, state *State, c *CommitPlan) {
	if v := strArg(t, d, "update"); v != "" && c.Spec != nil {
		for _, e := range strings.Split(v, ",") {
			f := strings.Split(e, ":")
			if len(f) < 5 {
				t.Fatalf("update=%s: want VM:MAXUNAVAILABLE:CANARY:MINHEALTHY:DEADLINE[:revert]", e)
			}
			vm, ok := c.Spec.VMs[f[0]]
			if !ok {
				t.Fatalf("update=%s: the plan declares no VM %s", e, f[0])
			}
			var u spec.Update
			var err error
			if u.MaxUnavailable, err = strconv.Atoi(f[1]); err != nil {
				t.Fatal(err)
			}
			if u.Canary, err = strconv.Atoi(f[2]); err != nil {
				t.Fatal(err)
			}
			if u.MinHealthySeconds, err = strconv.Atoi(f[3]); err != nil {
				t.Fatal(err)
			}
			if u.ProgressDeadline, err = time.ParseDuration(f[4]); err != nil {
				t.Fatal(err)
			}
			u.AutoRevert = len(f) > 5 && f[5] == "revert"
			vm.Update = u
			c.Spec.VMs[f[0]] = vm
		}
	}
	// The planner fills each assignment from the spec: with replicas, the
	// harness's per-instance runners give way to the declared VM's.
	for i, a := range c.Assignments {
		if c.Spec == nil || a.Declared == "" {
			continue
		}
		if vm, ok := c.Spec.VMs[a.Declared]; ok && (vm.Update.Enabled() || d.HasArg("uniform")) {
			if t, ok := Targets(c.Spec, a.Declared)[a.VM]; ok {
				c.Assignments[i] = a.WithWorkload(t)
			}
		}
	}
	if v := strArg(t, d, "force"); v != "" {
		for _, e := range strings.Split(v, ",") {
			vm, out, _ := strings.Cut(e, ":")
			for i := range c.Assignments {
				if c.Assignments[i].VM == vm {
					c.Assignments[i].Drv, c.Assignments[i].OutPath = out+".drv", out
				}
			}
		}
	}
	if d.HasArg("holdback") {
		for i, a := range c.Assignments {
			declared := a.Declared
			if declared == "" {
				declared = a.VM
			}
			if vm, ok := c.Spec.VMs[declared]; !ok || !vm.Update.Enabled() {
				continue
			}
			if old, ok := state.Assignments[a.VM]; ok && !old.SameWorkload(a) {
				c.Assignments[i] = a.WithWorkload(old.Workload())
			}
		}
	}
}

// renderRollouts prints the rollouts, the suspension and the assignments
// whose workload comes from another commit than the revision's.
func renderRollouts(b *strings.Builder, s *State) {
	rev := ""
	if s.Revision != nil {
		rev = s.Revision.Commit
	}
	for _, vm := range sortedKeys(s.Assignments) {
		if a := s.Assignments[vm]; a.Commit != rev {
			fmt.Fprintf(b, "commit %s=%s\n", vm, a.Commit)
		}
	}
	for _, vm := range sortedKeys(s.Rollouts) {
		r := s.Rollouts[vm]
		fmt.Fprintf(b, "rollout %s id=%d step=%d %s %s→%s moving=%d/%d waves=%d", vm, r.ID, r.Step, r.Phase, orNone(r.From), r.To,
			r.Moving, r.Instances, r.Waves)
		if len(r.Wave) > 0 {
			fmt.Fprintf(b, " wave=%s started=%s deadline=%s", strings.Join(r.Wave, ","), r.WaveStarted.Format(time.TimeOnly),
				r.Deadline.Format(time.TimeOnly))
		}
		if !r.HealthySince.IsZero() {
			fmt.Fprintf(b, " healthy=%s", r.HealthySince.Format(time.TimeOnly))
		}
		if !r.Finished.IsZero() {
			fmt.Fprintf(b, " finished=%s", r.Finished.Format(time.TimeOnly))
		}
		fmt.Fprintf(b, " update=%d/%d/%d/%s", r.Update.MaxUnavailable, r.Update.Canary, r.Update.MinHealthySeconds, r.Update.ProgressDeadline)
		if r.Update.AutoRevert {
			b.WriteString("/revert")
		}
		b.WriteString("\n")
		for _, inst := range sortedKeys(r.Previous) {
			p := r.Previous[inst]
			fmt.Fprintf(b, "  previous %s out=%s commit=%s\n", inst, p.OutPath, p.Commit)
		}
		if r.Error != "" {
			fmt.Fprintf(b, "  error %q\n", r.Error)
		}
		for _, rc := range r.Reverted {
			fmt.Fprintf(b, "  reverted %s at=%s %q\n", rc.Commit, rc.At.Format(time.TimeOnly), rc.Error)
		}
	}
	if su := s.Suspended; su != nil {
		fmt.Fprintf(b, "suspended since=%s by=%q", su.Since.Format(time.TimeOnly), su.By)
		if su.Rollback != nil {
			fmt.Fprintf(b, " rollback=%d:%s", su.Rollback.Revision, su.Rollback.Commit)
		}
		if su.Pending != "" {
			fmt.Fprintf(b, " pending=%s@%s", su.Pending, su.PendingAt.Format(time.TimeOnly))
		}
		b.WriteString("\n")
	}
}

func TestTargets(t *testing.T) {
	web := spec.VM{Runner: spec.Runner{Drv: "/nix/store/w.drv", Out: "/nix/store/w"}, VCPU: 2, MemMiB: 256, Replicas: 2,
		Volumes:   map[string]spec.Volume{"data": {SizeMiB: 10, Pool: "rbd"}},
		Instances: map[string]spec.InstanceEntry{"web-0": {Runner: spec.Runner{Drv: "/nix/store/w0.drv", Out: "/nix/store/w0"}}, "web-1": {}}}
	c := &spec.Cluster{Name: "prod", VMs: map[string]spec.VM{"web": web, "db": {Runner: spec.Runner{Drv: "d.drv", Out: "d"}, VCPU: 1, MemMiB: 64, Replicas: 1}}}
	got := Targets(c, "web")
	want := map[string]Workload{
		"web-0": {Drv: "/nix/store/w0.drv", OutPath: "/nix/store/w0", VCPU: 2, MemMiB: 256, OwnRunner: true,
			Volumes: []spec.VolumeRef{{Name: "data", Image: "prod.web-0.data", Pool: "rbd", SizeMiB: 10}}},
		"web-1": {Drv: "/nix/store/w.drv", OutPath: "/nix/store/w", VCPU: 2, MemMiB: 256,
			Volumes: []spec.VolumeRef{{Name: "data", Image: "prod.web-1.data", Pool: "rbd", SizeMiB: 10}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Targets(web) =\n%+v\nwant\n%+v", got, want)
	}
	if got := Targets(c, "nope"); got != nil {
		t.Errorf("Targets of an undeclared VM = %v, want nil", got)
	}
	if got := Targets(nil, "web"); got != nil {
		t.Errorf("Targets of no spec = %v, want nil", got)
	}
}

func TestWorkloadRoundTrip(t *testing.T) {
	a := Assignment{VM: "web-0", Declared: "web", Node: 3, Drv: "d", OutPath: "o", VCPU: 1, MemMiB: 2, Generation: 7,
		Volumes: []spec.VolumeRef{{Name: "v"}}, OwnRunner: true, Commit: "c1", Stopped: StoppedByOperator, Restart: 4,
		Health: &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 80}}}
	w := a.Workload()
	w.Volumes[0].Name = "changed" // the workload shares nothing with the assignment
	w.Health.TCP.Port = 81
	if a.Volumes[0].Name != "v" || a.Health.TCP.Port != 80 {
		t.Fatal("Workload aliases the assignment's volumes or health check")
	}
	if a.WithWorkload(w).Health.TCP.Port != 81 {
		t.Error("WithWorkload did not take the workload's health check")
	}
	other := a.Workload()
	other.Health = nil
	if !other.Same(a.Workload()) {
		t.Error("Same compares health checks; changing only the check must not move an instance")
	}
	b := a.WithWorkload(Workload{Drv: "d2", OutPath: "o2", VCPU: 3, MemMiB: 4, Commit: "c2"})
	if b.Health != nil {
		t.Errorf("WithWorkload kept the old health check: %+v", b.Health)
	}
	if b.Node != 3 || b.Generation != 7 || b.Stopped != StoppedByOperator || b.Restart != 4 || b.Declared != "web" {
		t.Errorf("WithWorkload changed more than the workload: %+v", b)
	}
	if b.Drv != "d2" || b.OutPath != "o2" || b.VCPU != 3 || b.MemMiB != 4 || b.Volumes != nil || b.OwnRunner || b.Commit != "c2" {
		t.Errorf("WithWorkload did not set the workload: %+v", b)
	}
	if !a.Workload().Same(a.WithWorkload(a.Workload()).Workload()) {
		t.Error("a workload is not the same as itself")
	}
	other = a.Workload()
	other.Commit = "c9"
	if !other.Same(a.Workload()) {
		t.Error("Same compares commits; the same runner of another commit is the same workload")
	}
	if c := a.WithWorkload(other); !c.SameWorkload(a) {
		t.Error("Workload.Same and Assignment.SameWorkload disagree")
	}
}

// TestRolloutCommandsRoundTrip: the new commands decode to what was
// encoded, and a malformed one is refused before Apply.
func TestRolloutCommandsRoundTrip(t *testing.T) {
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, cmd := range []Command{
		{Type: CmdRolloutStep, At: at, RolloutStep: &RolloutStep{VM: "web", Rollout: 4, Step: 2, Action: RolloutWave, Instances: []string{"web-0", "web-1"}}},
		{Type: CmdRolloutStep, At: at, RolloutStep: &RolloutStep{VM: "web", Rollout: 4, Step: 3, Action: RolloutRevert, Error: "web-0: unhealthy"}},
		{Type: CmdSetFollowing, At: at, Actor: "alice", SetFollowing: &SetFollowing{Suspended: true, Rollback: 12}},
		{Type: CmdSetFollowing, At: at, SetFollowing: &SetFollowing{}},
		{Type: CmdRecordPending, At: at, RecordPending: &RecordPending{Commit: "abc"}},
	} {
		b, err := EncodeCommand(cmd)
		if err != nil {
			t.Fatalf("encode %s: %v", cmd.Type, err)
		}
		back, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		cmd.V = CommandVersion
		if !reflect.DeepEqual(back, cmd) {
			t.Errorf("round trip of %s:\n%+v\nwant\n%+v", b, back, cmd)
		}
	}
	if _, err := EncodeCommand(Command{Type: CmdRolloutStep, SetFollowing: &SetFollowing{}}); err == nil ||
		!strings.Contains(err.Error(), "RolloutStep command has no rolloutStep payload") {
		t.Errorf("a RolloutStep without its payload: %v", err)
	}
}

// TestCloneCopiesRollouts: a clone shares nothing of the rollouts or the
// suspension with the original, and a snapshot round trip keeps them.
func TestCloneCopiesRollouts(t *testing.T) {
	s := NewState()
	s.Rollouts = map[string]Rollout{"web": {VM: "web", ID: 3, To: "c2", Phase: RolloutProgressing, Wave: []string{"web-0"},
		Previous: map[string]Workload{"web-0": {OutPath: "o", Volumes: []spec.VolumeRef{{Name: "v"}}}},
		Reverted: []RevertedCommit{{Commit: "c1"}}}}
	s.Suspended = &Suspension{Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Rollback: &RollbackTarget{Revision: 2, Commit: "c1"}}
	c := s.Clone()
	c.Rollouts["web"].Wave[0] = "x"
	c.Rollouts["web"].Previous["web-0"].Volumes[0].Name = "x"
	c.Rollouts["web"].Reverted[0].Commit = "x"
	c.Suspended.Rollback.Commit = "x"
	c.Rollouts["db"] = Rollout{}
	r := s.Rollouts["web"]
	if r.Wave[0] != "web-0" || r.Previous["web-0"].Volumes[0].Name != "v" || r.Reverted[0].Commit != "c1" ||
		s.Suspended.Rollback.Commit != "c1" || len(s.Rollouts) != 1 {
		t.Fatalf("the clone aliases the original: %+v %+v", s.Rollouts, s.Suspended)
	}
	var buf bytes.Buffer
	if err := EncodeSnapshot(&buf, s); err != nil {
		t.Fatal(err)
	}
	back, err := DecodeSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Rollouts, s.Rollouts) || !reflect.DeepEqual(back.Suspended, s.Suspended) {
		t.Fatalf("snapshot round trip:\n%+v\n%+v\nwant\n%+v\n%+v", back.Rollouts, back.Suspended, s.Rollouts, s.Suspended)
	}
}

// TestRolloutApplyDeterministic applies one script of commands to two
// states, one of them through snapshots after every entry: the same
// result, so every replica (and a replica that recovered from a snapshot)
// holds the same rollout.
func TestRolloutApplyDeterministic(t *testing.T) {
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	spec1 := func(ver string, update spec.Update) *spec.Cluster {
		return &spec.Cluster{Name: "t", VMs: map[string]spec.VM{"web": {Runner: spec.Runner{Drv: "/nix/store/web-" + ver + ".drv",
			Out: "/nix/store/web-" + ver}, VCPU: 1, MemMiB: 64, Replicas: 3, Autostart: true, Update: update}}}
	}
	assign := func(ver, commit string) []Assignment {
		var as []Assignment
		for i := range 3 {
			as = append(as, Assignment{VM: fmt.Sprintf("web-%d", i), Declared: "web", Node: 1, Drv: "/nix/store/web-" + ver + ".drv",
				OutPath: "/nix/store/web-" + ver, VCPU: 1, MemMiB: 64, Commit: commit})
		}
		return as
	}
	u := spec.Update{MaxUnavailable: 1, MinHealthySeconds: 1, ProgressDeadline: time.Minute, AutoRevert: true}
	cmds := []Command{
		{Type: CmdRegisterNode, At: at, RegisterNode: &RegisterNode{ID: 1, Capacity: Resources{VCPU: 8, MemMiB: 1024}}},
		{Type: CmdCommitPlan, At: at, CommitPlan: &CommitPlan{Commit: "c1", Spec: spec1("v1", u), Assignments: assign("v1", "")}},
		// The planner held every instance back: c2 starts a rollout.
		{Type: CmdCommitPlan, At: at, CommitPlan: &CommitPlan{Parent: 2, Commit: "c2", Spec: spec1("v2", u), Assignments: assign("v1", "c1")}},
		{Type: CmdRolloutStep, At: at.Add(time.Second), RolloutStep: &RolloutStep{VM: "web", Rollout: 3, Step: 0, Action: RolloutWave, Instances: []string{"web-0"}}},
		{Type: CmdRolloutStep, At: at.Add(2 * time.Second), RolloutStep: &RolloutStep{VM: "web", Rollout: 3, Step: 1, Action: RolloutRevert, Error: "web-0: crash-loops"}},
	}
	a, b := NewState(), NewState()
	for i, cmd := range cmds {
		data, err := EncodeCommand(cmd)
		if err != nil {
			t.Fatal(err)
		}
		ra := a.ApplyEntry(uint64(i+1), data)
		if !ra.OK() {
			t.Fatalf("entry %d (%s): %v", i+1, cmd.Type, ra.Err())
		}
		var buf bytes.Buffer
		if err := EncodeSnapshot(&buf, b); err != nil {
			t.Fatal(err)
		}
		if b, err = DecodeSnapshot(&buf); err != nil {
			t.Fatal(err)
		}
		if rb := b.ApplyEntry(uint64(i+1), data); rb != ra {
			t.Fatalf("entry %d: %+v on one replica, %+v on the other", i+1, ra, rb)
		}
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("the replicas differ:\n%+v\n%+v", a.Rollouts, b.Rollouts)
	}
	r := a.Rollouts["web"]
	if r.Phase != RolloutReverted || a.Assignments["web-0"].OutPath != "/nix/store/web-v1" || a.Assignments["web-0"].Commit != "c1" {
		t.Fatalf("after the revert: %+v, web-0 %+v", r, a.Assignments["web-0"])
	}
	if !slices.Equal(a.declaredInstances("web"), []string{"web-0", "web-1", "web-2"}) {
		t.Fatalf("declaredInstances = %v", a.declaredInstances("web"))
	}
}
