package nodeagent

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Result is the outcome of one background action, fed back into the
// agent's records before the next pass decides.
type Result struct {
	VM      string
	Kind    ActionKind
	Out     string
	Volumes []spec.VolumeRef
	// Err is nil on success; context.Canceled when the operation was
	// cancelled (then nothing is learnt from it).
	Err error
}

// records is what the agent remembers of its own actions between passes:
// the [Observed] fields that no backend reports. It does no I/O and reads no
// clock. Owned by the goroutine that runs the passes.
type records struct {
	vms map[string]*vmRecord
	// How long a failure is remembered before the action runs again.
	buildRetry, volumeRetry, unitRetry time.Duration
}

type vmRecord struct {
	rooted   string
	attached []spec.VolumeRef
	// restarted is the last assignment restart request a start or restart
	// carried out (Action.Restart).
	restarted uint64
	op        *opState
	build     *Failure
	volumes   *Failure
	unit      *Failure
}

// opState is a VM's operation in flight.
type opState struct {
	kind    ActionKind
	out     string
	vols    []spec.VolumeRef
	restart uint64 // Action.Restart
	cancel  context.CancelFunc
	// canceled: the agent cancelled it; whatever error it ends with is the
	// cancellation's, not the action's.
	canceled bool
	// progress is set by the operation's goroutine (a realisation that
	// starts building) and read by the passes.
	progress atomic.Pointer[string]
}

func newRecords(buildRetry, volumeRetry, unitRetry time.Duration) *records {
	return &records{vms: map[string]*vmRecord{}, buildRetry: buildRetry, volumeRetry: volumeRetry, unitRetry: unitRetry}
}

func (r *records) vm(name string) *vmRecord {
	v := r.vms[name]
	if v == nil {
		v = &vmRecord{}
		r.vms[name] = v
	}
	return v
}

// observe fills in what the records know of VM name.
func (r *records) observe(name string, o *Observed) {
	v := r.vms[name]
	if v == nil {
		return
	}
	o.Rooted, o.Attached = v.rooted, slices.Clone(v.attached)
	o.Restarted = max(o.Restarted, v.restarted)
	o.BuildFailure, o.VolumeFailure, o.UnitFailure = copyFailure(v.build), copyFailure(v.volumes), copyFailure(v.unit)
	if v.op != nil {
		o.Op = &Op{Kind: v.op.kind, Out: v.op.out}
		if p := v.op.progress.Load(); p != nil {
			o.Op.Progress = *p
		}
	}
}

func copyFailure(f *Failure) *Failure {
	if f == nil {
		return nil
	}
	c := *f
	return &c
}

// begin records that a's operation runs; cancel cancels it.
func (r *records) begin(a Action, cancel context.CancelFunc) *opState {
	op := &opState{kind: a.Kind, out: a.Out, vols: a.Volumes, restart: a.Restart, cancel: cancel}
	r.vm(a.VM).op = op
	return op
}

// cancel cancels VM name's operation, if any.
func (r *records) cancel(name string) {
	if v := r.vms[name]; v != nil && v.op != nil && v.op.cancel != nil {
		v.op.canceled = true
		v.op.cancel()
	}
}

// cancelAll cancels every operation in flight.
func (r *records) cancelAll() {
	for name := range r.vms {
		r.cancel(name)
	}
}

// inFlight counts the operations in flight.
func (r *records) inFlight() int {
	n := 0
	for _, v := range r.vms {
		if v.op != nil {
			n++
		}
	}
	return n
}

// finish feeds res back: its VM's operation has ended at now. A success
// records what now holds (the runner rooted, the volumes attached or
// detached) and clears the step's failure; a failure is remembered with
// the time it may be retried; a cancellation teaches nothing, whatever
// error the cancelled operation ended with (a build killed by it must not
// hold the VM back for BuildRetry once the node is no longer fenced).
func (r *records) finish(res Result, now time.Time) {
	v := r.vm(res.VM)
	op := v.op
	v.op = nil
	if errors.Is(res.Err, context.Canceled) || (res.Err != nil && op != nil && op.canceled) {
		return
	}
	if res.Err != nil {
		r.failed(res.VM, res.Kind, res.Out, res.Err, now)
		return
	}
	switch res.Kind {
	case ActRealise:
		v.rooted = res.Out
		if v.build != nil && v.build.Out == res.Out {
			v.build = nil
		}
	case ActAttach:
		v.attached = slices.Clone(res.Volumes)
		v.volumes = nil
	case ActDetach:
		if slices.Equal(v.attached, res.Volumes) {
			v.attached = nil
		}
		v.volumes = nil
	case ActStart, ActRestart:
		if op != nil {
			v.restarted = max(v.restarted, op.restart)
		}
		v.unit = nil
	case ActStop, ActSwitchCurrent:
		v.unit = nil
	}
}

// failed remembers that action kind of VM name failed with err at now.
func (r *records) failed(name string, kind ActionKind, out string, err error, now time.Time) {
	v := r.vm(name)
	f := &Failure{Action: kind, Out: out, Err: err.Error()}
	switch kind {
	case ActRealise:
		f.RetryAt = now.Add(r.buildRetry)
		v.build = f
	case ActAttach, ActDetach:
		f.RetryAt = now.Add(r.volumeRetry)
		v.volumes = f
	default:
		f.RetryAt = now.Add(r.unitRetry)
		v.unit = f
	}
}

// killed records that VM name's unit was killed: a failed kill before it
// no longer holds.
func (r *records) killed(name string) {
	if v := r.vms[name]; v != nil && v.unit != nil && v.unit.Action == ActKill {
		v.unit = nil
	}
}

// prune forgets the VMs that keep does not name and that have neither an
// operation nor attached volumes: nothing is left to undo for them.
func (r *records) prune(keep map[string]bool) {
	for name, v := range r.vms {
		if !keep[name] && v.op == nil && len(v.attached) == 0 {
			delete(r.vms, name)
		}
	}
}

// observeVMs fills in.VMs from the records, the reported statuses and the
// probes: every VM assigned to in.Node, listed in in.Units, with records or
// with a reported status. The unit's status is read only for VMs assigned
// here or listed that have no operation in flight (Decide does not look at
// it otherwise), STATE/NAME/current only for VMs assigned here. committed
// are the statuses in the replicated state (replicated.State.Observed):
// what this node reported there tells a restarted agent which restart
// requests it carried out before (Observed.Restarted), and what another
// node reported that a copy may still run there (Observed.Elsewhere, with
// nodes, the replicated nodes, to leave out those marked down).
func observeVMs(in *Input, rec *records, reported, committed map[string]replicated.VMStatus, nodes map[uint64]*replicated.Node,
	unit func(name string) (UnitStatus, error), current func(name string) string, hint func(name string) string) {
	mine := map[string]bool{}
	for name, as := range in.Assignments {
		if as.Node == in.Node {
			mine[name] = true
		}
	}
	listed := map[string]bool{}
	for _, name := range in.Units {
		listed[name] = true
	}
	names := map[string]bool{}
	for _, set := range []map[string]bool{mine, listed} {
		for name := range set {
			names[name] = true
		}
	}
	for name := range rec.vms {
		names[name] = true
	}
	for name := range reported {
		names[name] = true
	}
	if in.VMs == nil {
		in.VMs = map[string]Observed{}
	}
	for name := range names {
		var o Observed
		if c, ok := committed[name]; ok && c.Node == in.Node && mine[name] {
			o.Restarted = c.Restart
			if c.Phase == replicated.PhaseRunning && c.BootedOut == in.Assignments[name].OutPath {
				o.Judged = Judged{Health: c.Health, Since: c.HealthSince, Err: c.HealthError}
			}
		}
		if c, ok := committed[name]; ok && c.Node != in.Node && c.Phase != replicated.PhaseStopped {
			if n := nodes[c.Node]; n != nil && n.State != replicated.NodeDown {
				o.Elsewhere = &c
			}
		}
		rec.observe(name, &o)
		if s, ok := reported[name]; ok {
			o.Reported = &s
		}
		if o.Op == nil && (mine[name] || listed[name]) {
			us, err := unit(name)
			if err != nil {
				o.UnitErr = err.Error()
			}
			o.Unit = us
		}
		if mine[name] {
			o.Current = current(name)
		}
		o.LogHint = hint(name)
		in.VMs[name] = o
	}
}
