package nodeagent

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// ActionKind names one thing the agent does to a VM. All but
// [ActSwitchCurrent], [ActCancel] and [ActKill] run in the background as
// the VM's one operation; their outcome comes back as a [Result].
type ActionKind int

const (
	// ActRealise makes Out valid in the local store (already valid or
	// substitutable → Drv when it exists locally → the Builder, with
	// Declared and Commit: the assignment's commit, else the revision's)
	// and roots it at STATE/NAME/gcroot.
	ActRealise ActionKind = iota + 1
	// ActAttach attaches Volumes in name order: each image is created or
	// grown, locked for this node and attached at STATE/NAME/volumes/VOL.
	ActAttach
	// ActSwitchCurrent points STATE/NAME/current at Out (a new symlink
	// renamed over the old one). It runs at once, in the pass.
	ActSwitchCurrent
	// ActStart starts the unit on current.
	ActStart
	// ActRestart stops the unit and starts it on current.
	ActRestart
	// ActStop stops the unit; its state directory is kept.
	ActStop
	// ActDetach detaches Volumes and releases their locks.
	ActDetach
	// ActCancel cancels the VM's operation (a build the plan no longer
	// wants, any operation of a fenced node). It runs at once; the
	// operation's Result still comes back.
	ActCancel
	// ActKill kills the unit at once (Backend.Kill: SIGKILL, no shutdown,
	// no grace), for a fenced node. It runs in the pass, for every VM at
	// once, beside the VM's operation rather than as one: a graceful stop
	// in flight must not delay it.
	ActKill
)

func (k ActionKind) String() string {
	switch k {
	case ActRealise:
		return "realise"
	case ActAttach:
		return "attach"
	case ActSwitchCurrent:
		return "switch-current"
	case ActStart:
		return "start"
	case ActRestart:
		return "restart"
	case ActStop:
		return "stop"
	case ActDetach:
		return "detach"
	case ActCancel:
		return "cancel"
	case ActKill:
		return "kill"
	}
	return fmt.Sprintf("ActionKind(%d)", int(k))
}

// background: the action runs as the VM's one operation.
func (k ActionKind) background() bool { return k != ActSwitchCurrent && k != ActCancel && k != ActKill }

// Action is one thing to do to VM.
type Action struct {
	Kind ActionKind
	VM   string
	// Out is the runner: realised (ActRealise), linked (ActSwitchCurrent),
	// or expected to run after ActStart and ActRestart.
	Out string
	// Drv, Declared and Commit say how to build Out (ActRealise).
	Drv, Declared, Commit string
	// Volumes are attached (ActAttach) or detached (ActDetach).
	Volumes []spec.VolumeRef
	// Restart is the assignment's restart request (replicated.Assignment.
	// Restart) that ActStart or ActRestart carries out once it succeeds.
	Restart uint64
	// Snapshot: ActStart may restore the runner's memory snapshot, or save
	// one once the instance is ready (replicated.Assignment.Snapshot; see
	// snapshot.go). It changes how the start is done, not what Decide
	// decides: a restored instance is started and judged like a booted one.
	Snapshot bool
}

// Op is the operation a VM has in flight.
type Op struct {
	Kind ActionKind
	Out  string
	// Progress is what a realisation said it is doing ("from
	// /nix/store/…drv"); "" until it builds.
	Progress string
}

// Failure is an action that failed: the agent reports it, and does not try
// the action again before RetryAt.
type Failure struct {
	Action ActionKind
	Out    string // the runner it was for (ActRealise)
	Err    string
	// RetryAt is when the action may run again; until then the VM is
	// reported failed.
	RetryAt time.Time
}

// pending: f is a failure still in force at now.
func (f *Failure) pending(now time.Time) bool { return f != nil && now.Before(f.RetryAt) }

// message is f as a VM status message; hint says where the console goes.
func (f *Failure) message(hint string) string {
	switch f.Action {
	case ActRealise:
		return "realise runner: " + f.Err
	case ActAttach:
		return "volumes: " + f.Err
	case ActDetach:
		return "detach volumes: " + f.Err
	case ActStart:
		return fmt.Sprintf("start: %s; see %s", f.Err, hint)
	case ActRestart, ActStop, ActKill:
		return f.Action.String() + ": " + f.Err
	}
	return f.Err // ActSwitchCurrent: the error names the path
}

// Observed is what the agent knows of one VM at the start of a pass: what
// the backend reports, what is on disk, and what the agent remembers of its
// own actions.
type Observed struct {
	// Unit is the backend's status of the VM's unit (zero when not read:
	// while an operation is in flight, or when the VM is neither assigned
	// here nor listed).
	Unit UnitStatus
	// UnitErr is why the unit's status could not be read.
	UnitErr string
	// Current is where STATE/NAME/current points ("" when missing).
	Current string
	// Rooted is the out path this agent made valid and rooted.
	Rooted string
	// Attached are the volumes this agent attached (and locked) for the VM.
	Attached []spec.VolumeRef
	// Op is the operation in flight, nil when none.
	Op *Op
	// BuildFailure is the last failed realisation, VolumeFailure the last
	// failed attach or detach, UnitFailure the last failed switch of
	// current, start, restart, stop or kill. Nil when there is none.
	BuildFailure, VolumeFailure, UnitFailure *Failure
	// Reported is the status the agent reports now (nil: none).
	Reported *replicated.VMStatus
	// Restarted is the last assignment restart request carried out here:
	// the agent's records, or after an agent restart the status this node
	// last reported through Raft (replicated.VMStatus.Restart).
	Restarted uint64
	// Judged is the health this node last reported through Raft for the VM
	// while it ran its assignment's runner here (zero otherwise): after an
	// agent restart the prober starts from it rather than from nothing
	// (see health.go). Decide does not read it.
	Judged Judged
	// LogHint says where the VM's console goes, for messages.
	LogHint string
	// Elsewhere is what another node last reported of the VM through Raft
	// (replicated.State.Observed), when that node is not marked down and
	// did not report it stopped: a copy may run there. Nil otherwise.
	Elsewhere *replicated.VMStatus
}

// Judged is a committed health verdict.
type Judged struct {
	Health replicated.HealthState
	Since  time.Time
	Err    string
}

// Input is what [Decide] reads: one snapshot, taken at the start of a pass.
type Input struct {
	Now  time.Time
	Node uint64
	// Planned: the local replica has applied a plan. Before that it cannot
	// tell which VMs to stop (it may still be replaying its log).
	Planned bool
	// Commit is the revision's commit, for builds from the flake of an
	// assignment that does not name its own (replicated.Assignment.Commit).
	Commit string
	// Assignments is the plan's (of every node; Decide keeps Node's).
	Assignments map[string]replicated.Assignment
	// Units are the names the backend lists (running, restarting or failed).
	Units []string
	// VMs is what is observed of every VM the agent knows of: assigned
	// here, listed by the backend, with an operation, volumes or a status.
	VMs map[string]Observed
	// Fenced, when not "", says why this node is fenced: its lease ran out
	// (no heartbeat committed for longer than Options.Lease), or the leader
	// marked it down. Its VMs may have been placed elsewhere, so none may
	// run here. It is the status message of every VM while fenced.
	Fenced string
}

// Decision is what one pass does: per VM, the status to report and the
// actions to run, sorted by VM.
type Decision struct {
	VMs []VMDecision
}

// VMDecision is the decision for one VM.
type VMDecision struct {
	VM string
	// Status is what to report; nil: nothing.
	Status *replicated.VMStatus
	// Forget: the VM is gone from this node; once a heartbeat has carried
	// its stopped status, the agent drops it.
	Forget bool
	// Actions run in order. At most one of them runs in the background,
	// and it is the last: a VM has one operation at a time. When an
	// action fails the rest are dropped, and the next pass decides again.
	Actions []Action
}

// Decide is the agent's policy: from what is assigned to this node and what
// is observed of each VM (in), it returns the status to report and the
// actions to run. It does no I/O and reads no clock (in.Now is the time);
// its output is sorted by VM. The agent calls it on every pass
// (level-triggered: a resync tick, [Agent.Notify], a finished operation or a
// backend event), runs the actions, feeds their results back into what it
// observes, and calls it again.
//
// A VM with an operation in flight waits for it: its status stays the one
// reported (a realisation that builds reports building), and only a build
// the plan no longer wants (another out path, or the VM no longer assigned
// here) is cancelled.
//
// Every other VM assigned to this node goes through these steps in order;
// the first step that has to act, wait or report a failure ends the VM's
// pass, and the next pass starts again from step 1:
//
//  1. realise: unless the assignment's out path is already realised and
//     rooted, realise it (pending "realising runner OUT", or running when
//     the unit already runs that out path: an agent that restarted adopts
//     it and only checks its GC root; building while it builds). A failed
//     realisation is reported failed and retried only after
//     Options.BuildRetry; a failing new version never stops the running
//     old one, which keeps running and stays booted. A VM that does not
//     run here and that another node (not marked down) last reported in a
//     phase other than stopped (Observed.Elsewhere: a move, whose old node
//     stops it once it applies the plan) goes no further than this step
//     (pending "waiting for node N to stop it"): one copy at a time.
//  2. volumes (assignments that declare any): unless exactly these
//     volumes are attached, attach them (pending "attaching volumes", or
//     running while an older unit runs: a grown volume is attached again).
//     A failure (Ceph's, another node's lock, no Ceph settings) is reported
//     failed and retried after Options.VolumeRetry. The unit never starts
//     before this step passed.
//  3. state directory: point STATE/NAME/current at the out path. After a
//     failed switch, start, restart or stop, the VM is reported failed
//     until the next resync (Options.Interval) before this step and the
//     next one act again.
//  4. unit: a unit the backend is restarting after a crash of the same
//     runner is left to it (starting, and failed with the runner's last
//     result once it restarted 3 times or more: a crash loop); a unit
//     that does not run is started (starting); a unit that runs another
//     out path is restarted (starting "restarting on OUT"); a unit the
//     operator asked to restart (`blixard vm restart`: the assignment's
//     Restart is newer than Observed.Restarted) is restarted once
//     (starting "restarting (blixard vm restart)"); a unit systemd has
//     not finished starting (UnitStatus.Activating: a Type=notify runner
//     before the guest's READY=1) is starting, also when adopted;
//     otherwise the VM is running. A start or restart carries out every
//     restart request up to the assignment's, and the status reports it
//     (VMStatus.Restart).
//
// A VM assigned here but kept stopped on purpose (replicated.Assignment.
// Stopped: autostart = false, or `blixard vm stop`) keeps its place and
// none of the steps above run for it: its unit is stopped while the backend
// lists it (stopping), then its volumes are detached (stopped "detaching
// volumes"), and it is reported stopped with why and the command that
// starts it. A realisation in flight for it is cancelled.
//
// A VM not assigned to this node (unassigned, or moved to another node) is
// stopped while the backend lists its unit (stopping "no longer assigned
// to this node"); only then are its volumes detached (stopped "detaching
// volumes"; retried after Options.VolumeRetry). Then it is reported
// stopped once and forgotten. Its state directory and images are kept.
// Before the replica has applied a plan, no VM is stopped or detached.
//
// This node reports nothing of a VM that may not run here while another
// node's report says a copy may run there (Observed.Elsewhere): Apply lets
// the report of the node a VM is assigned to replace another node's, so
// this node's report would hide that copy from every node, this one
// included.
//
// While the node is fenced (in.Fenced: its lease ran out, or the leader
// marked it down) none of the above
// applies, planned or not: every operation in flight is cancelled, every
// unit the backend lists is killed ([ActKill], again on every pass, so a
// start that raced the fence dies too), nothing starts or detaches
// (Ceph may be out of reach as well; the leader's blocklist guards the
// data), and every VM is reported stopped with in.Fenced as its message
// (failed when killing its unit failed). A VM no longer assigned here,
// gone from the backend and without volumes is forgotten once reported.
// When the fence is lifted the steps above resume: VMs still assigned here
// start again; the others stay stopped, and their volumes are detached.
func Decide(in Input) Decision {
	units := make(map[string]bool, len(in.Units))
	for _, u := range in.Units {
		units[u] = true
	}
	names := map[string]bool{}
	for name, as := range in.Assignments {
		if as.Node == in.Node {
			names[name] = true
		}
	}
	for name := range units {
		names[name] = true
	}
	for name := range in.VMs {
		names[name] = true
	}
	sorted := make([]string, 0, len(names))
	for name := range names {
		sorted = append(sorted, name)
	}
	sort.Strings(sorted)
	var d Decision
	for _, name := range sorted {
		o := in.VMs[name]
		var vd VMDecision
		if in.Fenced != "" {
			vd = decideFenced(in, name, o, units[name])
		} else if as, ok := in.Assignments[name]; ok && as.Node == in.Node && as.Stopped != "" {
			vd = decideStopped(in, name, as, o, units[name])
		} else if ok && as.Node == in.Node {
			vd = decideAssigned(in, name, as, o)
		} else {
			vd = decideUnassigned(in, name, o, units[name])
		}
		if vd.Status != nil && o.Elsewhere != nil && !mayRunHere(units[name], o) {
			// Apply lets the report of the node a VM is assigned to replace
			// another node's: this node's would hide the copy that may run
			// there, and with it what keeps a start here waiting.
			vd.Status, vd.Forget = nil, false
		}
		// A VM assigned here stays in the decision without a status or an
		// action (waiting for another node's copy): the agent keeps its
		// records of it.
		if as, ok := in.Assignments[name]; vd.Status != nil || len(vd.Actions) > 0 || o.Reported != nil || (ok && as.Node == in.Node) {
			d.VMs = append(d.VMs, vd)
		}
	}
	return d
}

// mayRunHere: a runner of the VM may run on this node (its unit is listed
// and runs, restarts, or has an operation in flight).
func mayRunHere(listed bool, o Observed) bool {
	return listed && (o.Op != nil || o.Unit.Active || o.Unit.Restarting)
}

// decideAssigned runs the steps of [Decide] for a VM assigned here.
func decideAssigned(in Input, name string, as replicated.Assignment, o Observed) VMDecision {
	vd := VMDecision{VM: name}
	st := replicated.VMStatus{VM: name, Node: in.Node, Generation: as.Generation, Restart: o.Restarted, ObservedAt: in.Now}
	report := func(phase replicated.Phase, msg string) VMDecision {
		st.Phase, st.Message = phase, msg
		vd.Status = &st
		return vd
	}
	if o.Op != nil {
		vd.Status = inFlight(st, o)
		if o.Op.Kind == ActRealise && o.Op.Out != as.OutPath {
			vd.Actions = []Action{{Kind: ActCancel, VM: name}}
		}
		return vd
	}
	if o.UnitErr != "" {
		return report(replicated.PhaseFailed, "unit status: "+o.UnitErr)
	}
	us := o.Unit
	st.BootedOut = us.Booted

	// Step 1: the runner, realised and rooted.
	if o.Rooted != as.OutPath {
		if f := o.BuildFailure; f.pending(in.Now) && f.Out == as.OutPath {
			return report(replicated.PhaseFailed, f.message(o.LogHint))
		}
		vd.Actions = []Action{{Kind: ActRealise, VM: name, Out: as.OutPath, Drv: as.Drv, Declared: runnerOwner(as), Commit: buildCommit(as, in.Commit)}}
		if us.Active && us.Booted == as.OutPath {
			if us.Activating {
				return report(replicated.PhaseStarting, notReady)
			}
			return report(replicated.PhaseRunning, "")
		}
		return report(replicated.PhasePending, "realising runner "+as.OutPath)
	}

	// One copy: while another node may still run it (a move: that node
	// stops it when it applies the plan), it is neither attached nor
	// started here. The runner is realised meanwhile.
	if e := o.Elsewhere; e != nil && !us.Active && !us.Restarting {
		return report(replicated.PhasePending, fmt.Sprintf("waiting for node %d to stop it (it reports %s)", e.Node, e.Phase))
	}

	// Step 2: the volumes, attached before the unit may start.
	if len(as.Volumes) > 0 && !slices.Equal(o.Attached, as.Volumes) {
		if f := o.VolumeFailure; f.pending(in.Now) {
			return report(replicated.PhaseFailed, f.message(o.LogHint))
		}
		vd.Actions = []Action{{Kind: ActAttach, VM: name, Volumes: slices.Clone(as.Volumes)}}
		if us.Active {
			return report(replicated.PhaseRunning, "attaching volumes")
		}
		return report(replicated.PhasePending, "attaching volumes")
	}

	if f := o.UnitFailure; f.pending(in.Now) {
		return report(replicated.PhaseFailed, f.message(o.LogHint))
	}

	// Step 3: STATE/NAME/current → out path.
	if o.Current != as.OutPath {
		vd.Actions = append(vd.Actions, Action{Kind: ActSwitchCurrent, VM: name, Out: as.OutPath})
	}

	// Step 4: the unit.
	restart := as.Restart > o.Restarted
	switch {
	case us.Restarting && us.Booted == as.OutPath && !restart:
		// The backend restarts it after its backoff; a new runner (below)
		// is restarted at once instead.
		phase := replicated.PhaseStarting
		if us.Restarts >= 3 {
			phase = replicated.PhaseFailed
		}
		return report(phase, fmt.Sprintf("runner %s; restart %d in %s; see %s", us.Result, us.Restarts,
			max(us.NextRestart.Sub(in.Now), 0).Round(time.Millisecond), o.LogHint))
	case !us.Active && !us.Restarting:
		vd.Actions = append(vd.Actions, Action{Kind: ActStart, VM: name, Out: as.OutPath, Restart: as.Restart, Snapshot: as.Snapshot})
		return report(replicated.PhaseStarting, "")
	case us.Booted != as.OutPath:
		vd.Actions = append(vd.Actions, Action{Kind: ActRestart, VM: name, Out: as.OutPath, Restart: as.Restart})
		return report(replicated.PhaseStarting, fmt.Sprintf("restarting on %s (booted %s)", as.OutPath, us.Booted))
	case restart:
		vd.Actions = append(vd.Actions, Action{Kind: ActRestart, VM: name, Out: as.OutPath, Restart: as.Restart})
		return report(replicated.PhaseStarting, "restarting (blixard vm restart)")
	case us.Activating:
		return report(replicated.PhaseStarting, notReady)
	default:
		return report(replicated.PhaseRunning, "")
	}
}

// notReady is the message of a VM whose unit systemd has not finished
// starting: not running (nor healthy) until then.
const notReady = "waiting for the unit to finish starting (a Type=notify runner: the guest's READY=1)"

// decideStopped handles a VM assigned here that is kept stopped on
// purpose: stop its unit, then detach its volumes, then report it stopped
// with why and what to run.
func decideStopped(in Input, name string, as replicated.Assignment, o Observed, listed bool) VMDecision {
	vd := VMDecision{VM: name}
	st := replicated.VMStatus{VM: name, Node: in.Node, Generation: as.Generation, Restart: o.Restarted, ObservedAt: in.Now}
	report := func(phase replicated.Phase, msg string) VMDecision {
		st.Phase, st.Message = phase, msg
		vd.Status = &st
		return vd
	}
	if o.Op != nil {
		vd.Status = inFlight(st, o)
		if o.Op.Kind == ActRealise {
			vd.Actions = []Action{{Kind: ActCancel, VM: name}}
		}
		return vd
	}
	if o.UnitErr != "" {
		return report(replicated.PhaseFailed, "unit status: "+o.UnitErr)
	}
	why := fmt.Sprintf("kept stopped: %s; start it with `blixard vm start %s`", as.Stopped.Why(), name)
	switch {
	case listed:
		st.BootedOut = o.Unit.Booted
		if f := o.UnitFailure; f.pending(in.Now) {
			return report(replicated.PhaseFailed, f.message(o.LogHint))
		}
		vd.Actions = []Action{{Kind: ActStop, VM: name}}
		return report(replicated.PhaseStopping, why)
	case len(o.Attached) > 0:
		if f := o.VolumeFailure; f.pending(in.Now) {
			return report(replicated.PhaseFailed, f.message(o.LogHint))
		}
		vd.Actions = []Action{{Kind: ActDetach, VM: name, Volumes: slices.Clone(o.Attached)}}
		return report(replicated.PhaseStopped, "detaching volumes; "+why)
	}
	return report(replicated.PhaseStopped, why)
}

// decideUnassigned handles a VM this node runs or ran that is not (or no
// longer) assigned to it.
func decideUnassigned(in Input, name string, o Observed, listed bool) VMDecision {
	vd := VMDecision{VM: name}
	st := replicated.VMStatus{VM: name, Node: in.Node, ObservedAt: in.Now}
	if o.Reported != nil {
		st.Generation = o.Reported.Generation
	}
	if o.Op != nil {
		vd.Status = inFlight(st, o)
		if o.Op.Kind == ActRealise {
			vd.Actions = []Action{{Kind: ActCancel, VM: name}}
		}
		return vd
	}
	keep := func() VMDecision {
		if o.Reported != nil {
			s := *o.Reported
			s.ObservedAt = in.Now
			vd.Status = &s
		}
		return vd
	}
	report := func(phase replicated.Phase, msg string) VMDecision {
		st.Phase, st.Message = phase, msg
		vd.Status = &st
		return vd
	}
	if !in.Planned {
		return keep()
	}
	switch {
	case listed:
		if o.UnitErr != "" {
			return keep()
		}
		st.BootedOut = o.Unit.Booted
		if f := o.UnitFailure; f.pending(in.Now) {
			return report(replicated.PhaseFailed, f.message(o.LogHint))
		}
		vd.Actions = []Action{{Kind: ActStop, VM: name}}
		return report(replicated.PhaseStopping, "no longer assigned to this node")
	case len(o.Attached) > 0:
		// Only a stopped VM's locks are released.
		if f := o.VolumeFailure; f.pending(in.Now) {
			return report(replicated.PhaseFailed, f.message(o.LogHint))
		}
		vd.Actions = []Action{{Kind: ActDetach, VM: name, Volumes: slices.Clone(o.Attached)}}
		return report(replicated.PhaseStopped, "detaching volumes")
	case o.Reported != nil:
		vd.Forget = true
		return report(replicated.PhaseStopped, "")
	}
	return vd
}

// decideFenced handles every VM while the node is fenced: cancel its
// operation, kill its unit while the backend lists it, report it stopped.
func decideFenced(in Input, name string, o Observed, listed bool) VMDecision {
	vd := VMDecision{VM: name}
	as, ok := in.Assignments[name]
	mine := ok && as.Node == in.Node
	if !mine && !listed && o.Op == nil && o.Reported == nil && len(o.Attached) == 0 {
		return vd
	}
	st := replicated.VMStatus{VM: name, Node: in.Node, Phase: replicated.PhaseStopped, Message: in.Fenced, ObservedAt: in.Now}
	switch {
	case mine:
		st.Generation, st.Restart = as.Generation, o.Restarted
	case o.Reported != nil:
		st.Generation = o.Reported.Generation
	}
	if o.Op != nil {
		vd.Actions = append(vd.Actions, Action{Kind: ActCancel, VM: name})
	}
	if listed {
		vd.Actions = append(vd.Actions, Action{Kind: ActKill, VM: name})
		if f := o.UnitFailure; f != nil && f.Action == ActKill {
			// The last kill failed (a success clears it): it may still
			// run, so say so rather than stopped.
			st.Phase, st.Message = replicated.PhaseFailed, in.Fenced+"; "+f.message(o.LogHint)
		}
	}
	vd.Forget = !mine && !listed && o.Op == nil && len(o.Attached) == 0
	vd.Status = &st
	return vd
}

// inFlight is the status of a VM while its operation runs: the one
// reported when it began, or building while a realisation builds.
func inFlight(st replicated.VMStatus, o Observed) *replicated.VMStatus {
	s := st
	if r := o.Reported; r != nil {
		s = *r
		s.Generation, s.ObservedAt = st.Generation, st.ObservedAt
	} else {
		s.Phase, s.Message = replicated.PhasePending, o.Op.Kind.String()+" in progress"
	}
	if o.Op.Kind == ActRealise && o.Op.Progress != "" {
		s.Phase, s.Message = replicated.PhaseBuilding, "building runner "+o.Op.Progress
	}
	return &s
}

// String is the decision as the datadriven tests print it.
func (d Decision) String() string {
	var b strings.Builder
	for _, vd := range d.VMs {
		b.WriteString(vd.VM)
		b.WriteString(":")
		if s := vd.Status; s != nil {
			fmt.Fprintf(&b, " %s gen=%d", s.Phase, s.Generation)
			if s.Restart != 0 {
				fmt.Fprintf(&b, " restart=%d", s.Restart)
			}
			if s.BootedOut != "" {
				fmt.Fprintf(&b, " booted=%s", s.BootedOut)
			}
			if s.Message != "" {
				fmt.Fprintf(&b, " %q", s.Message)
			}
		} else {
			b.WriteString(" (no status)")
		}
		if vd.Forget {
			b.WriteString(" (forget once reported)")
		}
		b.WriteString("\n")
		for _, a := range vd.Actions {
			b.WriteString("  " + a.String() + "\n")
		}
	}
	return b.String()
}

func (a Action) String() string {
	s := a.Kind.String()
	switch a.Kind {
	case ActRealise:
		s += fmt.Sprintf(" %s drv=%s declared=%s commit=%s", a.Out, a.Drv, a.Declared, a.Commit)
	case ActSwitchCurrent:
		s += " " + a.Out
	case ActStart, ActRestart:
		s += " " + a.Out
		if a.Restart != 0 {
			s += fmt.Sprintf(" (restart %d)", a.Restart)
		}
		if a.Snapshot {
			s += " (snapshot)"
		}
	case ActAttach, ActDetach:
		s += " " + volumesString(a.Volumes)
	}
	return s
}

func volumesString(vs []spec.VolumeRef) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%s:%d", v.Name, v.SizeMiB)
	}
	return strings.Join(parts, ",")
}

// buildCommit is the commit whose flake builds as's runner: the commit its
// workload comes from (a rolling update keeps instances on an older one
// while the revision moves on), else the revision's.
func buildCommit(as replicated.Assignment, revision string) string {
	if as.Commit != "" {
		return as.Commit
	}
	return revision
}

// runnerOwner is the attribute path, under the flake's cluster output, of
// the attribute set whose runner as runs: the declared VM (`vms.web`), the
// instance's own entry (`vms.web.instances."web-0"`) when lib.mkCluster
// built one runner per replica (replicated.Assignment.OwnRunner), or the
// function an instance belongs to (`functions.hello`). Instance names are
// valid unit names, so Go's quoting is Nix's.
func runnerOwner(as replicated.Assignment) string {
	if as.Function != "" {
		return "functions." + as.Function
	}
	declared := as.Declared
	if declared == "" {
		declared = as.VM
	}
	if as.OwnRunner {
		return fmt.Sprintf("vms.%s.instances.%q", declared, as.VM)
	}
	return "vms." + declared
}
