package replicated

// Rolling updates and following the tracked ref.
//
// A VM with an `update` block (spec.Update) never changes the workload of
// an existing instance through a CommitPlan: the leader's planner keeps
// every such instance on what it runs (reconciler.HoldBack), and Apply of
// the plan records, per declared VM, a Rollout towards the new spec. The
// instances then move in waves, each a committed RolloutStep the leader
// proposes (reconciler.NextRolloutStep decides which): a step compares
// and sets on the rollout's ID and Step, so a new leader continues from
// the last committed step and a step decided on an old view is refused.
// Apply takes each instance's target workload from the committed desired
// spec (Targets), never from the command.
//
// A failed rollout either stops where it is or, with autoRevert, puts the
// instances it moved back on the workload they ran before (Rollout.
// Previous) and stays "reverted": the planner keeps holding the VM back,
// and no wave starts, until a new commit changes what the VM's instances
// should run. Instances of other VMs, and VMs without an update block, are
// not touched.
//
// SetFollowing suspends following the tracked ref (the leader fetches but
// evaluates nothing new; RecordPending lists the newest fetched commit) or
// pins the cluster to an earlier revision's commit (a rollback), until it
// resumes.

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/blixard/blixard/spec"
)

// Event kinds of rollouts and of following the tracked ref. Notifications
// match them by name.
const (
	EventRolloutStarted     = "RolloutStarted"
	EventRolloutWave        = "RolloutWave"
	EventRolloutSucceeded   = "RolloutSucceeded"
	EventRolloutFailed      = "RolloutFailed"
	EventRolloutReverted    = "RolloutReverted"
	EventFollowingSuspended = "FollowingSuspended"
	EventFollowingResumed   = "FollowingResumed"
)

// MaxRevertedCommits bounds a rollout's list of reverted commits.
const MaxRevertedCommits = 10

// RolloutPhase is where a rollout stands.
type RolloutPhase string

const (
	// RolloutProgressing: instances remain to be moved, or the last wave
	// is not yet healthy for minHealthySeconds.
	RolloutProgressing RolloutPhase = "progressing"
	// RolloutSucceeded: every instance runs the target and the last wave
	// was healthy for minHealthySeconds.
	RolloutSucceeded RolloutPhase = "succeeded"
	// RolloutFailed: a wave was not healthy within progressDeadline, or
	// crash-looped, and autoRevert is off: the rollout stopped where it was.
	RolloutFailed RolloutPhase = "failed"
	// RolloutReverted: as failed, with autoRevert: the moved instances run
	// what they ran before again, and the target is not tried again until
	// a new commit changes the VM.
	RolloutReverted RolloutPhase = "reverted"
)

// Workload is what an instance runs, the part of an [Assignment] a rollout
// moves: runner, resources, volumes, the commit they come from and the
// health check of that commit (an instance held on an older runner is
// judged by the check that goes with it, and a revert restores it).
type Workload struct {
	Drv       string           `json:"drv"`
	OutPath   string           `json:"outPath"`
	VCPU      int              `json:"vcpu"`
	MemMiB    int              `json:"memMiB"`
	Volumes   []spec.VolumeRef `json:"volumes,omitempty"`
	OwnRunner bool             `json:"ownRunner,omitempty"`
	// Commit is the commit whose spec the workload comes from (see
	// [Assignment.Commit]).
	Commit string `json:"commit,omitempty"`
	// Health is that spec's health check ([Assignment.Health]).
	Health *spec.HealthCheck `json:"health,omitempty"`
}

// Same reports whether w and o run the same way: the rule of
// [Assignment.SameWorkload] (runner, resources, volumes), the commit and
// the health check aside.
func (w Workload) Same(o Workload) bool {
	return w.Drv == o.Drv && w.OutPath == o.OutPath && w.VCPU == o.VCPU && w.MemMiB == o.MemMiB &&
		slices.Equal(w.Volumes, o.Volumes)
}

// Workload returns what a runs.
func (a Assignment) Workload() Workload {
	return Workload{Drv: a.Drv, OutPath: a.OutPath, VCPU: a.VCPU, MemMiB: a.MemMiB,
		Volumes: slices.Clone(a.Volumes), OwnRunner: a.OwnRunner, Commit: a.Commit, Health: a.Health.Clone()}
}

// WithWorkload returns a running w (and judged by its health check);
// everything else (node, generation, run state) stays.
func (a Assignment) WithWorkload(w Workload) Assignment {
	a.Drv, a.OutPath, a.VCPU, a.MemMiB = w.Drv, w.OutPath, w.VCPU, w.MemMiB
	a.Volumes, a.OwnRunner, a.Commit = nilIfEmpty(slices.Clone(w.Volumes)), w.OwnRunner, w.Commit
	a.Health = w.Health.Clone()
	return a
}

// Targets returns the workload each instance of the declared VM name runs
// according to c, by instance name (nil when c does not declare it), with
// an empty Commit. It is the rule the planner fills assignments with:
// the instance's runner (its own, when its VM gives it one), resources,
// volumes and health check.
func Targets(c *spec.Cluster, name string) map[string]Workload {
	if c == nil {
		return nil
	}
	vm, ok := c.VMs[name]
	if !ok {
		return nil
	}
	one := &spec.Cluster{Name: c.Name, VMs: map[string]spec.VM{name: vm}}
	insts := one.Instances()
	out := make(map[string]Workload, len(insts))
	for _, in := range insts {
		out[in.Name] = Workload{Drv: in.Runner.Drv, OutPath: in.Runner.Out, VCPU: in.VCPU, MemMiB: in.MemMiB,
			Volumes: one.VolumesOf(in), OwnRunner: in.OwnRunner(), Health: in.Health.Clone()}
	}
	return out
}

// Rollout is the rolling update of one declared VM towards the spec of
// commit To: the last one, kept after it ended (succeeded, failed or
// reverted) until the next.
type Rollout struct {
	// VM is the declared VM.
	VM string `json:"vm"`
	// ID is the Raft index of the CommitPlan that started it.
	ID uint64 `json:"id"`
	// Step counts the RolloutSteps applied to it; a RolloutStep names the
	// Step it was decided on and is refused when it moved since.
	Step uint64 `json:"step"`
	// From is the commit the instances ran when it started (the last one
	// on which the VM was healthy, when it replaced an unfinished
	// rollout); To the commit whose spec it moves them to.
	From  string       `json:"from,omitempty"`
	To    string       `json:"to"`
	Phase RolloutPhase `json:"phase"`
	// Update is the VM's update policy, as the newest plan declares it.
	Update spec.Update `json:"update"`
	// Instances is how many instances the VM had when it started, and
	// Moving how many of them had to move.
	Instances int `json:"instances"`
	Moving    int `json:"moving"`
	// Waves counts the waves started; Wave is the last one's instances,
	// sorted, started at WaveStarted, to be healthy by Deadline.
	Waves       int       `json:"waves"`
	Wave        []string  `json:"wave,omitempty"`
	WaveStarted time.Time `json:"waveStarted,omitzero"`
	Deadline    time.Time `json:"deadline,omitzero"`
	// HealthySince is when the leader first saw every instance of the
	// wave healthy (zero: not yet, or not since it last saw one that was
	// not); the next wave starts MinHealthySeconds after it.
	HealthySince time.Time `json:"healthySince,omitzero"`
	// Started and Finished come from the commands (the leader's clock).
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Error says why it failed or was reverted: the wave's instances and
	// their probes' errors or the crash.
	Error string `json:"error,omitempty"`
	// Previous is, for each instance it had to move, the workload the
	// instance ran before: what a revert restores.
	Previous map[string]Workload `json:"previous,omitempty"`
	// Reverted are the VM's reverted commits, oldest first (the last
	// MaxRevertedCommits), kept across its rollouts.
	Reverted []RevertedCommit `json:"reverted,omitempty"`
}

// RevertedCommit is a commit whose rollout of a VM was reverted.
type RevertedCommit struct {
	Commit string    `json:"commit"`
	At     time.Time `json:"at"`
	Error  string    `json:"error"`
}

// Done reports whether the rollout ended.
func (r Rollout) Done() bool { return r.Phase != RolloutProgressing }

func (r Rollout) clone() Rollout {
	r.Wave = slices.Clone(r.Wave)
	r.Reverted = slices.Clone(r.Reverted)
	if r.Previous != nil {
		prev := make(map[string]Workload, len(r.Previous))
		for k, w := range r.Previous {
			w.Volumes, w.Health = slices.Clone(w.Volumes), w.Health.Clone()
			prev[k] = w
		}
		r.Previous = prev
	}
	return r
}

// cloneRollouts deep-copies the rollouts (nil stays nil).
func cloneRollouts(m map[string]Rollout) map[string]Rollout {
	if m == nil {
		return nil
	}
	out := make(map[string]Rollout, len(m))
	for k, r := range m {
		out[k] = r.clone()
	}
	return out
}

// Suspension says the cluster does not follow its tracked ref: the leader
// fetches but applies nothing new until `blixard resume`. Nil in the
// state while it follows.
type Suspension struct {
	// Since is when following was suspended; By who asked ([Command.Actor]).
	Since time.Time `json:"since"`
	By    string    `json:"by,omitempty"`
	// Rollback, when set, is the earlier revision whose commit the
	// cluster runs instead (`blixard rollback`).
	Rollback *RollbackTarget `json:"rollback,omitempty"`
	// Pending is the newest commit the leader fetched and did not apply,
	// recorded at PendingAt ("" when none).
	Pending   string    `json:"pending,omitempty"`
	PendingAt time.Time `json:"pendingAt,omitzero"`
}

// RollbackTarget is the revision a rollback applies the spec of.
type RollbackTarget struct {
	Revision uint64 `json:"revision"`
	Commit   string `json:"commit"`
}

func (s *Suspension) clone() *Suspension {
	if s == nil {
		return nil
	}
	c := *s
	if s.Rollback != nil {
		r := *s.Rollback
		c.Rollback = &r
	}
	return &c
}

// RolloutAction is what a RolloutStep does.
type RolloutAction string

const (
	// RolloutWave moves Instances to the target (the next wave).
	RolloutWave RolloutAction = "wave"
	// RolloutHealthy records that every instance of the wave is healthy.
	RolloutHealthy RolloutAction = "healthy"
	// RolloutUnhealthy records that one no longer is (Error says which).
	RolloutUnhealthy RolloutAction = "unhealthy"
	// RolloutSucceed ends the rollout: every instance runs the target.
	RolloutSucceed RolloutAction = "succeed"
	// RolloutFail ends it where it is, with Error.
	RolloutFail RolloutAction = "fail"
	// RolloutRevert ends it with Error and puts the instances it moved
	// back on what they ran before.
	RolloutRevert RolloutAction = "revert"
)

// RolloutStep is one step of a VM's rollout, proposed by the leader. It is
// a compare-and-set on the rollout's ID and Step: refused as stale
// (ResultStaleParent) when the rollout moved on since it was decided.
type RolloutStep struct {
	// VM is the declared VM.
	VM      string        `json:"vm"`
	Rollout uint64        `json:"rollout"`
	Step    uint64        `json:"step"`
	Action  RolloutAction `json:"action"`
	// Instances are the wave's instances (RolloutWave), sorted.
	Instances []string `json:"instances,omitempty"`
	// Error is why (RolloutUnhealthy, RolloutFail, RolloutRevert).
	Error string `json:"error,omitempty"`
}

// SetFollowing suspends or resumes following the tracked ref (`blixard
// suspend`, `resume`), or rolls back: suspends and pins the cluster to the
// commit of an earlier revision (`blixard rollback`).
type SetFollowing struct {
	// Suspended: stop following (true) or follow again (false).
	Suspended bool `json:"suspended"`
	// Rollback, with Suspended, is the ID of a revision in the history
	// whose commit the cluster is to run (0: none).
	Rollback uint64 `json:"rollback,omitempty"`
}

// RecordPending records, while following is suspended, the newest commit
// the leader fetched and did not apply, so every node lists it.
type RecordPending struct {
	Commit string `json:"commit"`
}

// holdBack is the rule that makes rollouts the only way a VM with an
// update block changes what its instances run: a, an assignment of a
// plan, keeps the workload of the instance's current assignment when its
// declared VM has an update block in desired (the plan's spec). The
// leader's planner applies the same rule (reconciler.HoldBack) so that its
// plans say what they do; Apply applies it again so that a plan computed
// before a rollout step committed cannot undo the step. prevCommit stands
// in for a current assignment's commit that predates Assignment.Commit.
func holdBack(desired *spec.Cluster, current map[string]Assignment, a Assignment, prevCommit string) Assignment {
	old, ok := current[a.VM]
	if !ok || declaredOf(old) != declaredOf(a) || old.SameWorkload(a) {
		return a
	}
	if vm, ok := desired.VMs[declaredOf(a)]; !ok || !vm.Update.Enabled() {
		return a
	}
	w := old.Workload()
	if w.Commit == "" {
		w.Commit = prevCommit
	}
	return a.WithWorkload(w)
}

// declaredInstances returns the assigned instances of declared VM name,
// sorted.
func (s *State) declaredInstances(name string) []string {
	var out []string
	for vm, a := range s.Assignments {
		if declaredOf(a) == name {
			out = append(out, vm)
		}
	}
	slices.Sort(out)
	return out
}

func declaredOf(a Assignment) string {
	if a.Declared == "" {
		return a.VM
	}
	return a.Declared
}

// planRollouts runs after a CommitPlan of commit replaced the desired
// spec (previous was the one before; prevCommit the revision's commit
// before) and the assignments: it starts, keeps or drops each declared
// VM's rollout. For a VM with an update block, the instances whose
// assignment does not run what the new spec says (the planner held them
// back) start a rollout, unless the VM's rollout already moves to exactly
// these targets, which it keeps (with the new policy). A rollout of a VM
// without an update block, or no longer declared, is dropped: the plan
// changed its instances at once.
func (s *State) planRollouts(index uint64, at time.Time, previous *spec.Cluster, commit, prevCommit string) {
	for _, name := range sortedStrings(keysOf(s.Rollouts)) {
		if vm, ok := s.Desired.VMs[name]; !ok || !vm.Update.Enabled() {
			delete(s.Rollouts, name)
		}
	}
	if len(s.Rollouts) == 0 {
		s.Rollouts = nil
	}
	for _, name := range sortedStrings(keysOf(s.Desired.VMs)) {
		vm := s.Desired.VMs[name]
		if !vm.Update.Enabled() {
			continue
		}
		insts := s.declaredInstances(name)
		targets := Targets(s.Desired, name)
		pending := s.pendingInstances(name, targets)
		old, had := s.Rollouts[name]
		if had && sameTargets(Targets(previous, name), targets, insts) {
			old = old.clone()
			old.Update = vm.Update
			old.Wave = slices.DeleteFunc(old.Wave, func(i string) bool { _, ok := s.Assignments[i]; return !ok })
			s.putRollout(old)
			continue
		}
		if len(pending) == 0 {
			if had {
				// The new spec is what every instance runs already.
				s.putRollout(Rollout{VM: name, ID: index, From: old.To, To: commit, Phase: RolloutSucceeded, Update: vm.Update,
					Instances: len(insts), Started: at, Finished: at, Reverted: slices.Clone(old.Reverted)})
			}
			continue
		}
		carry := had && old.Phase != RolloutSucceeded
		r := Rollout{VM: name, ID: index, To: commit, Phase: RolloutProgressing, Update: vm.Update,
			Instances: len(insts), Moving: len(pending), Started: at, Previous: map[string]Workload{}}
		if had {
			r.Reverted = slices.Clone(old.Reverted)
		}
		for _, inst := range pending {
			w := s.Assignments[inst].Workload()
			if p, ok := old.Previous[inst]; carry && ok {
				w = p // the last workload it was healthy on
				w.Volumes, w.Health = slices.Clone(w.Volumes), w.Health.Clone()
			}
			r.Previous[inst] = w
		}
		r.From = r.Previous[pending[0]].Commit
		if carry && old.From != "" {
			r.From = old.From
		}
		if r.From == "" {
			r.From = prevCommit
		}
		msg := fmt.Sprintf("%s: rolling from commit %s to %s: %d of %d %s to update; %s",
			name, orNone(r.From), commit, len(pending), len(insts), plural(len(insts), "instance", "instances"), vm.Update)
		if had && old.Phase == RolloutProgressing {
			msg += fmt.Sprintf(" (replaces the unfinished rollout to %s)", old.To)
		}
		s.putRollout(r)
		s.event(index, at, EventRolloutStarted, msg, About{VM: name, Commit: commit})
	}
}

// sameTargets reports whether old and new give each instance of insts the
// same workload (and old knew every one of them).
func sameTargets(old, new map[string]Workload, insts []string) bool {
	if old == nil {
		return false
	}
	for _, inst := range insts {
		o, ok := old[inst]
		if !ok || !o.Same(new[inst]) {
			return false
		}
	}
	return true
}

func (s *State) putRollout(r Rollout) {
	r.Wave = nilIfEmpty(r.Wave)
	r.Reverted = nilIfEmpty(r.Reverted)
	r.Previous = nilIfEmptyMap(r.Previous)
	if s.Rollouts == nil {
		s.Rollouts = map[string]Rollout{}
	}
	s.Rollouts[r.VM] = r
}

// pendingInstances are the assigned instances of declared VM name that do
// not run their target yet, sorted.
func (s *State) pendingInstances(name string, targets map[string]Workload) []string {
	var out []string
	for _, inst := range s.declaredInstances(name) {
		if t, ok := targets[inst]; ok && !s.Assignments[inst].Workload().Same(t) {
			out = append(out, inst)
		}
	}
	return out
}

// applyRolloutStep applies one step of a VM's rollout; see [RolloutStep].
func (s *State) applyRolloutStep(index uint64, at time.Time, c *RolloutStep) Result {
	if c.VM == "" {
		return s.reject(ResultInvalid, "RolloutStep: no VM named")
	}
	r, ok := s.Rollouts[c.VM]
	switch {
	case !ok:
		return s.reject(ResultStaleParent, fmt.Sprintf("RolloutStep: VM %s has no rollout (a plan dropped it); re-read the state", c.VM))
	case r.ID != c.Rollout || r.Step != c.Step:
		return s.reject(ResultStaleParent, fmt.Sprintf("RolloutStep: %s %s was decided on rollout %d step %d, but the rollout is %d at step %d; re-read the state",
			c.VM, c.Action, c.Rollout, c.Step, r.ID, r.Step))
	case r.Done():
		return s.reject(ResultStaleParent, fmt.Sprintf("RolloutStep: the rollout of %s to %s has ended (%s)", c.VM, r.To, r.Phase))
	}
	r = r.clone()
	targets := Targets(s.Desired, c.VM)
	var msg string
	switch c.Action {
	case RolloutWave:
		if len(c.Instances) == 0 {
			return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s wave names no instance", c.VM))
		}
		if !slices.IsSorted(c.Instances) || len(slices.Compact(slices.Clone(c.Instances))) != len(c.Instances) {
			return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s wave %v: instances must be sorted and each named once", c.VM, c.Instances))
		}
		for _, inst := range c.Instances {
			a, ok := s.Assignments[inst]
			t, isTarget := targets[inst]
			switch {
			case !ok || declaredOf(a) != c.VM || !isTarget:
				return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s wave: %s is not an assigned instance of %s", c.VM, inst, c.VM))
			case a.Workload().Same(t):
				return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s wave: %s already runs the target of commit %s", c.VM, inst, r.To))
			}
		}
		commit := ""
		if s.Revision != nil {
			commit = s.Revision.Commit
		}
		for _, inst := range c.Instances {
			t := targets[inst]
			t.Commit = commit
			a := s.Assignments[inst].WithWorkload(t)
			a.Generation = index
			s.Assignments[inst] = a
		}
		r.Waves++
		r.Wave = slices.Clone(c.Instances)
		r.WaveStarted, r.HealthySince = at, time.Time{}
		r.Deadline = at.Add(r.Update.ProgressDeadline)
		left := len(s.pendingInstances(c.VM, targets))
		msg = fmt.Sprintf("%s: wave %d: %s to commit %s (%d more to move); healthy for %ds by %s",
			c.VM, r.Waves, strings.Join(c.Instances, ", "), commit, left, r.Update.MinHealthySeconds, r.Deadline.Format(time.RFC3339))
		s.event(index, at, EventRolloutWave, msg, About{VM: c.VM, Commit: r.To})
	case RolloutHealthy:
		if len(r.Wave) == 0 {
			return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s has no wave to be healthy", c.VM))
		}
		if r.HealthySince.IsZero() {
			r.HealthySince = at
		}
		msg = fmt.Sprintf("%s: wave %d healthy since %s", c.VM, r.Waves, r.HealthySince.Format(time.RFC3339))
	case RolloutUnhealthy:
		r.HealthySince = time.Time{}
		msg = fmt.Sprintf("%s: wave %d no longer healthy: %s", c.VM, r.Waves, c.Error)
	case RolloutSucceed:
		if left := s.pendingInstances(c.VM, targets); len(left) > 0 {
			return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s cannot succeed: %s %s not run commit %s's spec yet",
				c.VM, strings.Join(left, ", "), plural(len(left), "does", "do"), r.To))
		}
		r.Phase, r.Finished = RolloutSucceeded, at
		msg = fmt.Sprintf("%s: rolled out commit %s to %d %s in %d %s (%s)", c.VM, r.To, r.Moving, plural(r.Moving, "instance", "instances"),
			r.Waves, plural(r.Waves, "wave", "waves"), at.Sub(r.Started).Round(time.Second))
		s.event(index, at, EventRolloutSucceeded, msg, About{VM: c.VM, Commit: r.To})
	case RolloutFail, RolloutRevert:
		if c.Error == "" {
			return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s %s: say why (the error is empty)", c.VM, c.Action))
		}
		r.Error, r.Finished = c.Error, at
		if c.Action == RolloutFail {
			moved := 0
			for inst := range r.Previous {
				if t, ok := targets[inst]; ok && s.Assignments[inst].Workload().Same(t) {
					moved++
				}
			}
			r.Phase = RolloutFailed
			msg = fmt.Sprintf("%s: rollout of commit %s failed and stops where it is (%d of %d moved; autoRevert is off): %s",
				c.VM, r.To, moved, r.Moving, c.Error)
			s.event(index, at, EventRolloutFailed, msg, About{VM: c.VM, Commit: r.To})
			break
		}
		restored := 0
		for _, inst := range s.declaredInstances(c.VM) {
			p, ok := r.Previous[inst]
			if a := s.Assignments[inst]; ok && !a.Workload().Same(p) {
				a = a.WithWorkload(p)
				a.Generation = index
				s.Assignments[inst] = a
				restored++
			}
		}
		r.Phase = RolloutReverted
		r.Reverted = appendBounded(r.Reverted, RevertedCommit{Commit: r.To, At: at, Error: c.Error}, MaxRevertedCommits)
		msg = fmt.Sprintf("%s: rollout of commit %s reverted to commit %s (%d %s put back): %s; commit %s is not tried again for %s until a new commit changes it",
			c.VM, r.To, orNone(r.From), restored, plural(restored, "instance", "instances"), c.Error, r.To, c.VM)
		s.event(index, at, EventRolloutReverted, msg, About{VM: c.VM, Commit: r.To})
	default:
		return s.reject(ResultInvalid, fmt.Sprintf("RolloutStep: %s: action %q is not one of wave, healthy, unhealthy, succeed, fail, revert", c.VM, c.Action))
	}
	r.Step++
	s.putRollout(r)
	return s.ok("%s", msg)
}

// applySetFollowing suspends, resumes or rolls back; see [SetFollowing].
func (s *State) applySetFollowing(index uint64, at time.Time, actor string, c *SetFollowing) Result {
	if !c.Suspended {
		if c.Rollback != 0 {
			return s.reject(ResultInvalid, "SetFollowing: a rollback suspends following; it cannot resume at the same time")
		}
		if s.Suspended == nil {
			return s.ok("already following the tracked ref")
		}
		msg := "following the tracked ref again"
		if p := s.Suspended.Pending; p != "" {
			msg += fmt.Sprintf("; fetched commit %s will be applied", p)
		}
		if rb := s.Suspended.Rollback; rb != nil {
			msg += fmt.Sprintf("; the rollback to revision %d (commit %s) ends", rb.Revision, rb.Commit)
		}
		s.Suspended = nil
		s.event(index, at, EventFollowingResumed, msg)
		return s.ok("%s", msg)
	}
	sus := s.Suspended.clone()
	if sus == nil {
		sus = &Suspension{Since: at, By: actor}
	}
	var msg string
	if c.Rollback != 0 {
		i := slices.IndexFunc(s.History, func(r Revision) bool { return r.ID == c.Rollback })
		if i < 0 {
			return s.reject(ResultInvalid, fmt.Sprintf("SetFollowing: revision %d is not in the history (the last %d revisions); see `blixard history`",
				c.Rollback, MaxRevisionHistory))
		}
		rev := s.History[i]
		sus.Rollback = &RollbackTarget{Revision: rev.ID, Commit: rev.Commit}
		msg = fmt.Sprintf("rollback to revision %d (commit %s): its spec is applied, and following the tracked ref is suspended until `blixard resume`",
			rev.ID, rev.Commit)
	} else {
		if s.Suspended != nil {
			return s.ok("following is already suspended (since %s)", s.Suspended.Since.Format(time.RFC3339))
		}
		msg = "following the tracked ref suspended: pushes are fetched and listed as pending, not applied, until `blixard resume`"
	}
	s.Suspended = sus
	s.event(index, at, EventFollowingSuspended, msg)
	return s.ok("%s", msg)
}

// applyRecordPending records the newest fetched commit while following is
// suspended; while following, there is nothing to record.
func (s *State) applyRecordPending(at time.Time, c *RecordPending) Result {
	switch {
	case c.Commit == "":
		return s.reject(ResultInvalid, "RecordPending: no commit")
	case s.Suspended == nil:
		return s.ok("following the tracked ref: commit %s is not pending", c.Commit)
	case s.Suspended.Pending == c.Commit:
		return s.ok("commit %s is already pending", c.Commit)
	}
	sus := s.Suspended.clone()
	sus.Pending, sus.PendingAt = c.Commit, at
	s.Suspended = sus
	return s.ok("commit %s fetched and pending (following is suspended)", c.Commit)
}

func keysOf[V any](m map[string]V) []string {
	return slices.Collect(maps.Keys(m))
}

func sortedStrings(s []string) []string {
	slices.Sort(s)
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
