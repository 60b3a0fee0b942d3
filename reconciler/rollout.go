package reconciler

// Rolling updates, the leader's side (the replicated side is in
// replicated/rollout.go). Three pure functions:
//
//   - HoldBack keeps every existing instance of a VM that declares an
//     update block on the workload it runs, in every plan the leader
//     commits (a new commit or a re-plan): only rollout steps move them.
//   - NextRolloutStep is the one decision of a rollout: from the committed
//     state and the leader's clock, the next RolloutStep to propose (or
//     how long to wait). The loop proposes what it returns on every pass,
//     so a new leader continues from the last committed step; a step
//     decided on a state that moved since is refused (compare-and-set on
//     the rollout's ID and Step) and decided again.
//   - Converge says whether a commit is rolled out everywhere (`blixard
//     wait`).
//
// An instance is ready when its node reports it running the runner of its
// assignment (generation and booted out path), and healthy: the agent's
// health is healthy, or, for an instance without a health check, not
// unhealthy (an agent that predates health reports none). An instance kept
// stopped on purpose is ready: nothing is to wait for. A wave is healthy
// when all its instances are ready; it must stay so for minHealthySeconds,
// timed from when the leader first saw it so (Rollout.HealthySince,
// committed, so the next leader does not start over), and become so
// within progressDeadline of its start. An instance its node reports
// failed with the new runner booted crash-loops (the agent reports failed
// after three crashes in a row): the rollout fails at once.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// HoldBack returns p with every instance that has a committed assignment
// (current) and belongs to a VM declaring an update block in desired
// keeping its committed workload (replicated.Workload: runner, resources,
// volumes, their commit and its health check) when the plan would change
// it: such instances move only through rollout steps. p's Changed drops them and its Moved shows their old workload
// on the new node. commit is the running revision's commit, recorded for
// held instances whose assignment predates Assignment.Commit. p itself is
// not modified.
func HoldBack(p Plan, current map[string]replicated.Assignment, desired *spec.Cluster, commit string) Plan {
	if desired == nil {
		return p
	}
	var held map[string]bool
	var out []replicated.Assignment
	for i, a := range p.Assignments {
		old, ok := rolls(a, current, desired)
		if !ok {
			continue
		}
		if out == nil {
			out = slices.Clone(p.Assignments)
			held = map[string]bool{}
		}
		w := old.Workload()
		if w.Commit == "" {
			w.Commit = commit
		}
		b := a.WithWorkload(w)
		if b.Node == old.Node {
			b.Generation = old.Generation
		}
		out[i] = b
		held[a.VM] = true
	}
	if out == nil {
		return p
	}
	p.Assignments = out
	p.Changed = slices.DeleteFunc(slices.Clone(p.Changed), func(c Change) bool { return held[c.VM] })
	if len(p.Changed) == 0 {
		p.Changed = nil
	}
	moved := slices.Clone(p.Moved)
	for i, c := range moved {
		if held[c.VM] {
			old := current[c.VM]
			moved[i].OutPath, moved[i].Drv, moved[i].VCPU, moved[i].MemMiB = old.OutPath, old.Drv, old.VCPU, old.MemMiB
		}
	}
	p.Moved = moved
	return p
}

// rolls reports whether planned assignment a may change only through a
// rollout: its VM declares an update block in desired and its committed
// assignment (returned) is of the same VM with another workload.
func rolls(a replicated.Assignment, current map[string]replicated.Assignment, desired *spec.Cluster) (replicated.Assignment, bool) {
	vm, ok := desired.VMs[a.Declared]
	if !ok || !vm.Update.Enabled() {
		return replicated.Assignment{}, false
	}
	old, ok := current[a.VM]
	if !ok || old.Declared != a.Declared || old.SameWorkload(a) {
		return replicated.Assignment{}, false
	}
	return old, true
}

// InstanceHealth is what the leader sees of one assigned instance.
type InstanceHealth struct {
	VM   string `json:"vm"`
	Node uint64 `json:"node"`
	// Ready: its node reports it running its assignment's runner and
	// healthy, or it is kept stopped on purpose.
	Ready bool `json:"ready"`
	// CrashLoop: its node reports it failed with its assignment's runner
	// booted (restarted three times after crashes, or failing to start).
	CrashLoop bool `json:"crashLoop,omitempty"`
	// Status says what the leader sees, e.g. "healthy", "starting:
	// restarting on …", "unhealthy: GET …: connection refused".
	Status string `json:"status"`
}

// ClassifyInstance judges a, with obs its node's status (ok false: none).
func ClassifyInstance(a replicated.Assignment, obs replicated.VMStatus, ok bool) InstanceHealth {
	h := InstanceHealth{VM: a.VM, Node: a.Node}
	withMsg := func(s, msg string) string {
		if msg != "" {
			return s + ": " + msg
		}
		return s
	}
	switch {
	case a.Stopped != "":
		h.Ready, h.Status = true, "kept stopped ("+a.Stopped.Why()+")"
	case !ok:
		h.Status = fmt.Sprintf("not reported by node %d yet", a.Node)
	case obs.Node != a.Node:
		h.Status = fmt.Sprintf("reported %s by node %d, assigned to node %d", obs.Phase, obs.Node, a.Node)
	case obs.Phase == replicated.PhaseFailed && obs.BootedOut == a.OutPath && obs.Generation == a.Generation:
		h.CrashLoop, h.Status = true, withMsg("failed on its runner", obs.Message)
	case obs.Generation != a.Generation:
		h.Status = fmt.Sprintf("node %d has not acted on its assignment yet (it reports generation %d, want %d)", a.Node, obs.Generation, a.Generation)
	case obs.Phase != replicated.PhaseRunning:
		h.Status = withMsg(string(obs.Phase), obs.Message)
	case obs.BootedOut != a.OutPath:
		h.Status = fmt.Sprintf("running %s, not its runner %s yet", orDash(obs.BootedOut), a.OutPath)
	case obs.Health == replicated.Unhealthy:
		h.Status = withMsg("unhealthy", obs.HealthError)
	case obs.Health == replicated.Healthy || (obs.Health == "" && a.Health == nil):
		h.Ready, h.Status = true, "healthy"
	default:
		h.Status = "running, not judged healthy yet"
	}
	return h
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// RolloutDecision is what NextRolloutStep decides.
type RolloutDecision struct {
	// Step is the command to propose; nil: nothing now.
	Step *replicated.RolloutStep
	// After, without a Step, is when to decide again at the latest (0: at
	// the next pass).
	After time.Duration
	// Why says what the rollout does or waits for.
	Why string
}

// NextRolloutStep decides the next step of declared VM vm's rollout in st
// at now (the leader's clock):
//
//  1. no rollout, or one that ended: nothing;
//  2. with a wave started (Rollout.Wave): an instance of it that crash-loops
//     fails the rollout at once (revert with autoRevert, else fail, with
//     the instances' errors); while an instance is not ready, the wave's
//     health is recorded lost (unhealthy) if it was recorded, the rollout
//     fails once the wave's deadline passed, and otherwise it waits until
//     the deadline; once all are ready it records since when (healthy,
//     unless minHealthySeconds is 0) and waits minHealthySeconds from then;
//  3. then, if every instance runs the target: succeed;
//  4. otherwise the next wave (ChooseWave); when none may start because
//     too many instances are unavailable, it waits, and fails once
//     progressDeadline passed since the wave could have started.
func NextRolloutStep(st *replicated.State, vm string, now time.Time) RolloutDecision {
	r, ok := st.Rollouts[vm]
	if !ok || r.Done() {
		return RolloutDecision{}
	}
	step := func(action replicated.RolloutAction, instances []string, why string) RolloutDecision {
		return RolloutDecision{Step: &replicated.RolloutStep{VM: vm, Rollout: r.ID, Step: r.Step, Action: action,
			Instances: instances, Error: why}, Why: why}
	}
	fail := func(why string) RolloutDecision {
		if r.Update.AutoRevert {
			return step(replicated.RolloutRevert, nil, why)
		}
		return step(replicated.RolloutFail, nil, why)
	}
	if len(r.Wave) > 0 {
		var crashed, waiting []string
		for _, name := range r.Wave {
			a, ok := st.Assignments[name]
			if !ok {
				continue // no longer assigned: nothing to wait for
			}
			obs, seen := st.Observed[name]
			h := ClassifyInstance(a, obs, seen)
			switch {
			case h.CrashLoop:
				crashed = append(crashed, fmt.Sprintf("%s on node %d: %s", name, h.Node, h.Status))
			case !h.Ready:
				waiting = append(waiting, fmt.Sprintf("%s on node %d: %s", name, h.Node, h.Status))
			}
		}
		waveDesc := fmt.Sprintf("wave %d (%s)", r.Waves, strings.Join(r.Wave, ", "))
		switch {
		case len(crashed) > 0:
			return fail(fmt.Sprintf("%s crash-loops on the runner of commit %s: %s", waveDesc, r.To, strings.Join(crashed, "; ")))
		case len(waiting) > 0 && !r.HealthySince.IsZero():
			return step(replicated.RolloutUnhealthy, nil, fmt.Sprintf("%s is no longer healthy: %s", waveDesc, strings.Join(waiting, "; ")))
		case len(waiting) > 0 && !now.Before(r.Deadline):
			return fail(fmt.Sprintf("%s was not healthy within %s (progressDeadline): %s", waveDesc, r.Update.ProgressDeadline,
				strings.Join(waiting, "; ")))
		case len(waiting) > 0:
			return RolloutDecision{After: r.Deadline.Sub(now), Why: fmt.Sprintf("waiting for %s to be healthy by %s: %s",
				waveDesc, r.Deadline.Format(time.RFC3339), strings.Join(waiting, "; "))}
		}
		minHealthy := r.Update.MinHealthy()
		if r.HealthySince.IsZero() {
			if minHealthy > 0 {
				return step(replicated.RolloutHealthy, nil, "")
			}
		} else if left := r.HealthySince.Add(minHealthy).Sub(now); left > 0 {
			return RolloutDecision{After: left, Why: fmt.Sprintf("%s healthy since %s; the next step in %s",
				waveDesc, r.HealthySince.Format(time.RFC3339), left.Round(time.Millisecond))}
		}
	}
	targets := replicated.Targets(st.Desired, vm)
	insts := assignedInstances(st, vm)
	var pending []string
	health := make(map[string]InstanceHealth, len(insts))
	for _, name := range insts {
		a := st.Assignments[name]
		obs, seen := st.Observed[name]
		health[name] = ClassifyInstance(a, obs, seen)
		if t, ok := targets[name]; ok && !a.Workload().Same(t) {
			pending = append(pending, name)
		}
	}
	if len(pending) == 0 {
		return step(replicated.RolloutSucceed, nil, "")
	}
	wave, why := ChooseWave(r, st.Assignments, insts, pending, health)
	if len(wave) == 0 {
		// progressDeadline also bounds a rollout that cannot go on: from
		// when the next wave could have started (the rollout's start, the
		// last wave's start, or when it had been healthy for
		// minHealthySeconds), like Kubernetes' progressDeadlineSeconds.
		since := r.Started
		if r.WaveStarted.After(since) {
			since = r.WaveStarted
		}
		if !r.HealthySince.IsZero() && r.HealthySince.Add(r.Update.MinHealthy()).After(since) {
			since = r.HealthySince.Add(r.Update.MinHealthy())
		}
		due := since.Add(r.Update.ProgressDeadline)
		if !now.Before(due) {
			return fail(fmt.Sprintf("no wave could start within %s (progressDeadline): %s", r.Update.ProgressDeadline, why))
		}
		return RolloutDecision{After: due.Sub(now), Why: why}
	}
	return step(replicated.RolloutWave, wave, "")
}

// assignedInstances returns the assigned instances of declared VM vm,
// sorted.
func assignedInstances(st *replicated.State, vm string) []string {
	var out []string
	for name, a := range st.Assignments {
		if a.Declared == vm || (a.Declared == "" && name == vm) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// ChooseWave picks the next wave of rollout r among pending (the
// instances of insts that do not run the target yet; health is every
// instance's judgement): the first wave is Canary instances when Canary > 0,
// every other at most MaxUnavailable. Moving an instance that is kept
// stopped or already unavailable costs no availability, so those go first;
// each other one counts against MaxUnavailable together with every
// instance of the VM that is unavailable now. Within each group, by name.
// It returns the wave, sorted, or none and why not.
func ChooseWave(r replicated.Rollout, as map[string]replicated.Assignment, insts, pending []string,
	health map[string]InstanceHealth) ([]string, string) {
	size := r.Update.MaxUnavailable
	if r.Waves == 0 && r.Update.Canary > 0 {
		size = r.Update.Canary
	}
	var down []string
	for _, name := range insts {
		if h := health[name]; !h.Ready {
			down = append(down, name+" ("+h.Status+")")
		}
	}
	budget := r.Update.MaxUnavailable - len(down)
	var stopped, unready, ready []string
	for _, name := range pending {
		switch {
		case as[name].Stopped != "":
			stopped = append(stopped, name)
		case !health[name].Ready:
			unready = append(unready, name)
		default:
			ready = append(ready, name)
		}
	}
	var wave []string
	for _, name := range slices.Concat(stopped, unready) {
		if len(wave) < size {
			wave = append(wave, name)
		}
	}
	for _, name := range ready {
		if len(wave) >= size || budget <= 0 {
			break
		}
		wave = append(wave, name)
		budget--
	}
	if len(wave) == 0 {
		return nil, fmt.Sprintf("waiting to start wave %d: %d of %d instances are unavailable (maxUnavailable %d): %s",
			r.Waves+1, len(down), len(insts), r.Update.MaxUnavailable, strings.Join(down, "; "))
	}
	slices.Sort(wave)
	return wave, ""
}

// Convergence is how far a commit is rolled out (`blixard wait`).
type Convergence struct {
	// Commit is the commit asked about, as the cluster knows it (the
	// full SHA when it matched one).
	Commit string `json:"commit"`
	// State is converged, progressing or failed.
	State ConvergenceState `json:"state"`
	// Message says why, in a line.
	Message string `json:"message"`
	// Waiting are the instances not ready yet (State progressing).
	Waiting []InstanceHealth `json:"waiting,omitempty"`
}

// ConvergenceState is the verdict of Converge.
type ConvergenceState string

const (
	// Converged: the revision runs the commit, no rollout is in progress,
	// and every instance is ready.
	Converged ConvergenceState = "converged"
	// Progressing: not yet (not applied, rolling out, instances starting).
	Progressing ConvergenceState = "progressing"
	// Failed: it will not converge: its rollout of a VM failed or was
	// reverted, its evaluation failed for good, its signature was
	// refused, or a later revision replaced it.
	Failed ConvergenceState = "failed"
)

// Converge judges how far commit (a full SHA or a prefix; "" for the
// running revision's) is rolled out in st:
//
//   - failed when its signature was refused, its evaluation failed for
//     good, or a rollout to it failed or was reverted (also once a later
//     revision runs);
//   - progressing while the revision is another commit (not fetched or
//     evaluated yet, following suspended, or replaced by a later push, a
//     rollback or a resume: any of which may apply it again, so only the
//     caller's timeout ends the wait), a rollout is in progress, or an
//     instance is not ready (an unschedulable one never is);
//   - converged otherwise: every instance runs its assignment and is
//     healthy. A VM kept on an older commit by a reverted rollout of an
//     earlier commit counts as converged there.
func Converge(st *replicated.State, commit string) Convergence {
	rev := st.Revision
	if commit == "" {
		if rev == nil {
			return Convergence{State: Progressing, Message: "no revision is committed yet"}
		}
		commit = rev.Commit
	}
	matches := func(full string) bool { return full != "" && strings.HasPrefix(full, commit) }
	c := Convergence{Commit: commit}
	if cond, ok := st.Condition(replicated.SignatureRefused); ok && matches(cond.Commit) {
		c.Commit, c.State, c.Message = cond.Commit, Failed, "its signature was refused: "+firstLine(cond.Message)
		return c
	}
	if cond, ok := st.Condition(replicated.EvalFailed); ok && matches(cond.Commit) {
		c.Commit = cond.Commit
		if !cond.Retryable {
			c.State, c.Message = Failed, "its evaluation failed: "+firstLine(cond.Message)
			return c
		}
		c.State, c.Message = Progressing, "its evaluation failed and is retried: "+firstLine(cond.Message)
		return c
	}
	for _, vm := range sortedRolloutNames(st.Rollouts) {
		r := st.Rollouts[vm]
		if (r.Phase == replicated.RolloutFailed || r.Phase == replicated.RolloutReverted) && matches(r.To) {
			c.Commit, c.State, c.Message = r.To, Failed, fmt.Sprintf("the rollout of %s %s: %s", vm, r.Phase, r.Error)
			return c
		}
		for _, rc := range r.Reverted {
			if matches(rc.Commit) {
				c.Commit, c.State, c.Message = rc.Commit, Failed, fmt.Sprintf("the rollout of %s reverted: %s", vm, rc.Error)
				return c
			}
		}
	}
	if rev == nil || !matches(rev.Commit) {
		// Not (or no longer) applied: it may be yet (a fetch, an
		// evaluation, a rollback or a resume away), so this is no verdict;
		// the caller's timeout is.
		c.State = Progressing
		switch {
		case rev == nil:
			c.Message = "no revision is committed yet"
		default:
			c.Message = fmt.Sprintf("revision %d runs commit %s; this commit is not applied yet", rev.ID, rev.Commit)
			for i := len(st.History) - 1; i >= 0; i-- {
				if h := st.History[i]; matches(h.Commit) {
					c.Commit = h.Commit
					c.Message = fmt.Sprintf("revision %d runs commit %s; this commit ran as revision %d before, and is not applied now", rev.ID, rev.Commit, h.ID)
					break
				}
			}
		}
		switch sus := st.Suspended; {
		case sus != nil && sus.Rollback != nil && matches(sus.Rollback.Commit):
			c.Commit = sus.Rollback.Commit
			c.Message += fmt.Sprintf("; the rollback to revision %d applies it next", sus.Rollback.Revision)
		case sus != nil:
			c.Message += fmt.Sprintf("; following is suspended since %s: nothing new is applied until `blixard resume`", sus.Since.Format(time.RFC3339))
		}
		return c
	}
	c.Commit = rev.Commit
	var progressing, notes []string
	for _, vm := range sortedRolloutNames(st.Rollouts) {
		r := st.Rollouts[vm]
		switch {
		case r.Phase == replicated.RolloutProgressing:
			progressing = append(progressing, fmt.Sprintf("%s (wave %d, %d of %d to move)", vm, r.Waves, len(pendingOf(st, vm)), r.Instances))
		case r.Phase == replicated.RolloutReverted || r.Phase == replicated.RolloutFailed:
			notes = append(notes, fmt.Sprintf("%s stays on commit %s (the rollout of %s %s)", vm, orDash(r.From), r.To, r.Phase))
		}
	}
	names := make([]string, 0, len(st.Assignments))
	for name := range st.Assignments {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		obs, seen := st.Observed[name]
		if h := ClassifyInstance(st.Assignments[name], obs, seen); !h.Ready {
			c.Waiting = append(c.Waiting, h)
		}
	}
	for _, u := range st.Unschedulable {
		c.Waiting = append(c.Waiting, InstanceHealth{VM: u.VM, Status: "unschedulable: " + u.Reason})
	}
	switch {
	case len(progressing) > 0:
		c.State, c.Message = Progressing, "rolling out "+strings.Join(progressing, ", ")
	case len(c.Waiting) > 0:
		c.State, c.Message = Progressing, fmt.Sprintf("%d of %d instances not ready", len(c.Waiting), len(st.Assignments)+len(st.Unschedulable))
	default:
		c.State = Converged
		c.Message = fmt.Sprintf("revision %d: every instance (%d) runs its assignment and is healthy", rev.ID, len(st.Assignments))
	}
	if len(notes) > 0 {
		c.Message += "; " + strings.Join(notes, "; ")
	}
	return c
}

// pendingOf are the instances of vm that do not run the target yet.
func pendingOf(st *replicated.State, vm string) []string {
	targets := replicated.Targets(st.Desired, vm)
	var out []string
	for _, name := range assignedInstances(st, vm) {
		if t, ok := targets[name]; ok && !st.Assignments[name].Workload().Same(t) {
			out = append(out, name)
		}
	}
	return out
}

func sortedRolloutNames(m map[string]replicated.Rollout) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func firstLine(s string) string {
	first, _, more := strings.Cut(s, "\n")
	if more {
		first += " …"
	}
	return first
}

// RolloutView is one VM's rollout as `blixard rollout status` shows it.
type RolloutView struct {
	replicated.Rollout
	// Updated of Total instances run the target.
	Updated int `json:"updated"`
	Total   int `json:"total"`
	// WaveHealth is each instance of the current wave as the leader sees it.
	WaveHealth []InstanceHealth `json:"waveHealth,omitempty"`
	// Next is what the leader does or waits for next ("" once it ended).
	Next string `json:"next,omitempty"`
}

// ViewRollout describes vm's rollout in st at now; ok false when vm has
// none.
func ViewRollout(st *replicated.State, vm string, now time.Time) (RolloutView, bool) {
	r, ok := st.Rollouts[vm]
	if !ok {
		return RolloutView{}, false
	}
	v := RolloutView{Rollout: r}
	v.Previous = nil // internal: what a revert restores
	insts := assignedInstances(st, vm)
	v.Total = len(insts)
	v.Updated = v.Total - len(pendingOf(st, vm))
	for _, name := range r.Wave {
		if a, ok := st.Assignments[name]; ok {
			obs, seen := st.Observed[name]
			v.WaveHealth = append(v.WaveHealth, ClassifyInstance(a, obs, seen))
		}
	}
	if !r.Done() {
		d := NextRolloutStep(st, vm, now)
		switch {
		case d.Step != nil && d.Step.Action == replicated.RolloutWave:
			v.Next = "starting wave " + fmt.Sprint(r.Waves+1) + ": " + strings.Join(d.Step.Instances, ", ")
		case d.Step != nil && d.Step.Action == replicated.RolloutHealthy:
			v.Next = fmt.Sprintf("wave %d is healthy; waiting %ds (minHealthySeconds)", r.Waves, r.Update.MinHealthySeconds)
		case d.Step != nil:
			v.Next = string(d.Step.Action)
			if d.Why != "" {
				v.Next += ": " + d.Why
			}
		default:
			v.Next = d.Why
		}
	}
	return v, true
}

// followed is the commit the cluster is to run: the fetched one while it
// follows its tracked ref; while following is suspended, the rollback's
// commit, or else the running revision's (nothing new is evaluated).
func (r *Reconciler) followed(state *replicated.State) string {
	sus := state.Suspended
	switch {
	case sus == nil:
		return r.loop.commit
	case sus.Rollback != nil:
		return sus.Rollback.Commit
	case state.Revision != nil:
		return state.Revision.Commit
	}
	return ""
}

// reconcilePending records, while following is suspended, the fetched
// commit the cluster does not apply (RecordPending), once per commit.
func (r *Reconciler) reconcilePending(ctx context.Context, state *replicated.State, now time.Time) error {
	sus, fetched := state.Suspended, r.loop.commit
	if sus == nil || fetched == "" || fetched == sus.Pending || (state.Revision != nil && fetched == state.Revision.Commit) {
		return nil
	}
	r.opts.Logger.Info("following is suspended: the fetched commit is pending, not applied", "commit", fetched)
	return r.propose(ctx, "recording the pending commit "+fetched, replicated.Command{Type: replicated.CmdRecordPending, At: now,
		RecordPending: &replicated.RecordPending{Commit: fetched}})
}

// reconcileRollouts proposes the next step of every rollout in progress
// (NextRolloutStep). It reads the state again first when anything may
// roll: the plan this pass committed may have started or kept a rollout,
// and a step must be decided on the state it will be applied to (it
// compares and sets on the rollout's step). A stale step is decided again
// at the next pass, which comes soon after a committed step; otherwise
// the result asks for a pass when a wave's wait or deadline ends.
func (r *Reconciler) reconcileRollouts(ctx context.Context, state *replicated.State, now time.Time) (Result, error) {
	if !MayRoll(state) {
		return Result{}, nil
	}
	st, err := r.opts.Store.Read(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("reading the replicated state for the rollouts: %w", err)
	}
	var res Result
	var errs []error
	for _, vm := range sortedRolloutNames(st.Rollouts) {
		d := NextRolloutStep(st, vm, now)
		if d.Step == nil {
			if d.Why != "" {
				r.opts.Logger.Debug("rollout waits", "vm", vm, "why", d.Why)
			}
			res = sooner(res, Result{RequeueAfter: d.After})
			continue
		}
		out, err := r.opts.Store.Propose(ctx, replicated.Command{Type: replicated.CmdRolloutStep, At: now, RolloutStep: d.Step})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("proposing the %s step of %s's rollout: %w", d.Step.Action, vm, err))
			continue
		case out.Code == replicated.ResultStaleParent:
			r.opts.Logger.Debug("rollout step not committed: the rollout moved on", "vm", vm, "detail", out.Message)
		case !out.OK():
			errs = append(errs, TerminalError(fmt.Errorf("the %s step of %s's rollout was refused: %w", d.Step.Action, vm, out.Err())))
			continue
		case d.Step.Action == replicated.RolloutRevert || d.Step.Action == replicated.RolloutFail:
			r.opts.Logger.Warn("rollout failed", "vm", vm, "action", d.Step.Action, "detail", out.Message)
		default:
			r.opts.Logger.Info("rollout step", "vm", vm, "action", d.Step.Action, "instances", d.Step.Instances, "detail", out.Message)
		}
		// The next step may be due at once (the wave is healthy and
		// minHealthySeconds is 0, or the rollout moved on): decide soon.
		res = sooner(res, Result{RequeueAfter: time.Millisecond})
	}
	return res, joinErrors(errs)
}

// MayRoll reports whether a rollout may be in progress once this pass's
// plan committed: one is, or the desired spec has a VM with an update
// block.
func MayRoll(state *replicated.State) bool {
	for _, r := range state.Rollouts {
		if !r.Done() {
			return true
		}
	}
	if state.Desired != nil {
		for _, vm := range state.Desired.VMs {
			if vm.Update.Enabled() {
				return true
			}
		}
	}
	return false
}

// sooner merges two results: the earlier positive RequeueAfter.
func sooner(a, b Result) Result {
	switch {
	case b.RequeueAfter <= 0:
		return a
	case a.RequeueAfter <= 0 || b.RequeueAfter < a.RequeueAfter:
		return b
	}
	return a
}
