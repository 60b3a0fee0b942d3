package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// StateReader gives the local replica's state; replicated.Store.LocalRead
// satisfies it. The agent treats the returned state as read-only.
type StateReader interface {
	LocalRead() (*replicated.State, error)
}

// Proposer commits commands; replicated.Store.Propose satisfies it. An error
// means the outcome is unknown; the agent simply reports again later.
type Proposer interface {
	Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error)
}

// Options configures an [Agent]. Zero values take the defaults.
type Options struct {
	// NodeID is this node's id: the agent converges the assignments whose
	// Node equals it and reports its heartbeat under it.
	NodeID uint64
	// StateDir holds one directory per VM (default /var/lib/microvms).
	StateDir string
	State    StateReader
	Proposer Proposer
	// Builder realises runners that are neither in the store nor buildable
	// from a local .drv (for example a [FlakeBuilder]); nil: such VMs fail.
	Builder Builder
	// Backend runs the units (default: a [ProcessBackend] on StateDir).
	// The agent runs its Run method.
	Backend Backend
	// Volumes attaches the VMs' Ceph RBD volumes (a volumes.Manager); nil:
	// VMs that declare volumes fail with a message naming the flags to set.
	Volumes Volumes
	// VolumeRetry is how long a failed volume attachment of a VM is
	// remembered before it is tried again (default 5s).
	VolumeRetry time.Duration
	// Nix is the nix binary; nix-store is looked up next to it (default "nix").
	Nix string
	// Interval is the resync period (default 1s). Passes also run on
	// [Agent.Notify], backend events and finished builds.
	Interval time.Duration
	// Heartbeat is the period of NodeHeartbeat proposals (default 2s); a
	// phase change is reported about 100ms after it happens as well.
	Heartbeat time.Duration
	// BuildRetry is how long a failed realisation of one (VM, out path) is
	// remembered before it is tried again (default 30s).
	BuildRetry time.Duration
	// StopOnExit stops every VM when Start's ctx ends (for `blixard dev`).
	// Without it the VMs keep running and the next agent adopts them.
	StopOnExit bool
	// ControlPlaneOnly runs no VMs: the agent only sends the node's
	// heartbeat (with no statuses), so the leader sees a control-plane-only
	// node alive. Backend, StateDir and Builder are not used.
	ControlPlaneOnly bool
	// StopTimeout bounds stopping every VM on exit (default 2m).
	StopTimeout time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
}

// Agent converges this node's VMs towards the committed plan. See the
// package documentation for its steps.
type Agent struct {
	o      Options
	log    *slog.Logger
	real   realiser
	notify chan struct{} // buffered(1): run a pass now

	mu       sync.Mutex
	statuses map[string]*vmStatus // guarded by mu
	changed  chan struct{}        // buffered(1): a status changed (send with mu held or not)

	// Owned by the Start goroutine.
	ops    map[string]*op
	done   chan opResult
	rooted map[string]string // VM → out path valid and rooted at STATE/VM/gcroot
	failed map[failKey]failure
	// attached are the volumes attached (and locked) for a VM.
	attached map[string][]spec.VolumeRef
}

type vmStatus struct {
	replicated.VMStatus
	// unassigned: the VM is not (or no longer) assigned here; once its
	// stopped status has been sent, it is forgotten.
	unassigned bool
}

type opKind int

const (
	opRealise opKind = iota
	opRestart
	opStop    // stop the unit, then detach its volumes
	opVolumes // attach the volumes
	opDetach  // detach the volumes of a VM that does not run
)

func (k opKind) String() string {
	return [...]string{"realise", "restart", "stop", "volumes", "detach"}[k]
}

// volumesKey is the failKey.out of a failed volume attachment.
const volumesKey = "volumes"

// op is the one background operation a VM may have at a time.
type op struct {
	kind   opKind
	out    string
	cancel context.CancelFunc
}

type opResult struct {
	vm   string
	kind opKind
	out  string
	vols []spec.VolumeRef // the volumes attached (opVolumes) or detached (opStop, opDetach)
	err  error
}

type failKey struct{ vm, out string }

type failure struct {
	msg     string
	retryAt time.Time
}

// New returns an agent; it starts nothing until Start.
func New(o Options) *Agent {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 2 * time.Second
	}
	if o.BuildRetry <= 0 {
		o.BuildRetry = 30 * time.Second
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 2 * time.Minute
	}
	if o.VolumeRetry <= 0 {
		o.VolumeRetry = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Backend == nil {
		o.Backend = NewProcessBackend(ProcessOptions{StateDir: o.StateDir, Logger: o.Logger})
	}
	return &Agent{
		o:        o,
		log:      o.Logger.With("node", o.NodeID),
		real:     realiser{nix: o.Nix, builder: o.Builder, builds: &flight{calls: map[string]*flightCall{}}},
		notify:   make(chan struct{}, 1),
		changed:  make(chan struct{}, 1),
		statuses: map[string]*vmStatus{},
		ops:      map[string]*op{},
		done:     make(chan opResult),
		rooted:   map[string]string{},
		failed:   map[failKey]failure{},
		attached: map[string][]spec.VolumeRef{},
	}
}

// Notify asks for a pass as soon as possible (for example when the local
// replica applied a new entry). It never blocks.
func (a *Agent) Notify() {
	select {
	case a.notify <- struct{}{}:
	default:
	}
}

// Statuses returns the statuses the agent would report now, sorted by VM.
func (a *Agent) Statuses() []replicated.VMStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.snapshotLocked()
}

// Start runs the agent until ctx ends (call it once): the backend, the convergence loop
// and the heartbeat. It returns nil after a clean shutdown, or the backend's
// error if the backend cannot run. Unless Options.StopOnExit is set, the VMs
// keep running after it returns.
func (a *Agent) Start(ctx context.Context) error {
	if a.o.State == nil || a.o.Proposer == nil || a.o.NodeID == 0 {
		return errors.New("nodeagent: Options.State, Options.Proposer and Options.NodeID are required")
	}
	if a.o.ControlPlaneOnly {
		a.report(ctx)
		return nil
	}
	if err := os.MkdirAll(a.o.StateDir, 0o755); err != nil {
		return fmt.Errorf("nodeagent: state directory %s: %w (set --state-dir to a writable directory)", a.o.StateDir, err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()

	// The backend and the reporter outlive ctx a little: VMs are stopped
	// (StopOnExit) and the last statuses reported after ctx ends.
	bctx, bcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer bcancel()
	backendErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := a.o.Backend.Run(bctx)
		if err == nil && bctx.Err() == nil {
			err = errors.New("backend stopped")
		}
		backendErr <- err
	}()

	a.pass(ctx)
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rcancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.report(rctx)
	}()

	ticker := time.NewTicker(a.o.Interval)
	defer ticker.Stop()
	events := a.o.Backend.Events()
	for {
		select {
		case <-ctx.Done():
			a.shutdown(ctx)
			rcancel()
			a.sendHeartbeat(context.WithoutCancel(ctx), 2*time.Second)
			return nil
		case err := <-backendErr:
			a.cancelOps()
			for len(a.ops) > 0 {
				a.finish(<-a.done)
			}
			return fmt.Errorf("nodeagent: backend: %w", err)
		case <-ticker.C:
		case <-a.notify:
		case <-events:
		case r := <-a.done:
			a.finish(r)
		}
		a.pass(ctx)
	}
}

// shutdown ends every operation and, with StopOnExit, stops every VM.
func (a *Agent) shutdown(ctx context.Context) {
	a.cancelOps()
	for len(a.ops) > 0 {
		a.finish(<-a.done)
	}
	if !a.o.StopOnExit {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.StopTimeout)
	defer cancel()
	names, err := a.o.Backend.List()
	if err != nil {
		a.log.Error("cannot list VMs to stop them", "err", err)
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	running := map[string]bool{} // VMs that could not be stopped keep their volumes
	for _, name := range names {
		a.setPhase(name, replicated.PhaseStopping, "agent exiting")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.o.Backend.Stop(sctx, name); err != nil {
				a.log.Error("cannot stop VM on exit", "vm", name, "err", err)
				a.setPhase(name, replicated.PhaseFailed, "stop on exit: "+err.Error())
				mu.Lock()
				running[name] = true
				mu.Unlock()
				return
			}
			a.setPhase(name, replicated.PhaseStopped, "")
		}()
	}
	wg.Wait()
	for name, vols := range a.attached {
		if running[name] {
			continue
		}
		if err := a.detachVolumes(sctx, name, vols); err != nil {
			a.log.Error("cannot detach volumes on exit", "vm", name, "err", err)
			continue
		}
		delete(a.attached, name)
	}
}

func (a *Agent) cancelOps() {
	for _, op := range a.ops {
		op.cancel()
	}
}

// startOp runs fn in the background as vm's one operation; vols is passed
// back to finish.
func (a *Agent) startOp(ctx context.Context, vm string, kind opKind, out string, vols []spec.VolumeRef, fn func(ctx context.Context) error) {
	octx, cancel := context.WithCancel(ctx)
	a.ops[vm] = &op{kind: kind, out: out, cancel: cancel}
	go func() {
		err := fn(octx)
		cancel()
		a.done <- opResult{vm: vm, kind: kind, out: out, vols: vols, err: err}
	}()
}

// finish records the end of an operation.
func (a *Agent) finish(r opResult) {
	delete(a.ops, r.vm)
	canceled := errors.Is(r.err, context.Canceled)
	switch r.kind {
	case opRealise:
		key := failKey{r.vm, r.out}
		switch {
		case r.err == nil:
			a.rooted[r.vm] = r.out
			delete(a.failed, key)
		case !canceled:
			msg := "realise runner: " + r.err.Error()
			a.failed[key] = failure{msg: msg, retryAt: a.o.Now().Add(a.o.BuildRetry)}
			a.log.Warn("realising the runner failed", "vm", r.vm, "out", r.out, "err", r.err, "retry", a.o.BuildRetry)
			a.setPhase(r.vm, replicated.PhaseFailed, msg)
		}
	case opRestart:
		if r.err != nil && !canceled {
			a.log.Warn("restarting the VM failed", "vm", r.vm, "err", r.err)
			a.setPhase(r.vm, replicated.PhaseFailed, "restart: "+r.err.Error())
		}
	case opStop:
		if r.err != nil {
			if !canceled {
				a.log.Warn("stopping the VM failed", "vm", r.vm, "err", r.err)
				a.setPhase(r.vm, replicated.PhaseFailed, "stop: "+r.err.Error())
			}
			return
		}
		if sameVolumes(a.attached[r.vm], r.vols) {
			delete(a.attached, r.vm)
		}
		a.log.Info("VM stopped", "vm", r.vm)
		a.setPhase(r.vm, replicated.PhaseStopped, "")
	case opVolumes:
		key := failKey{r.vm, volumesKey}
		switch {
		case r.err == nil:
			a.attached[r.vm] = r.vols
			delete(a.failed, key)
		case !canceled:
			msg := "volumes: " + r.err.Error()
			a.failed[key] = failure{msg: msg, retryAt: a.o.Now().Add(a.o.VolumeRetry)}
			a.log.Warn("attaching the volumes failed", "vm", r.vm, "err", r.err, "retry", a.o.VolumeRetry)
			a.setPhase(r.vm, replicated.PhaseFailed, msg)
		}
	case opDetach:
		if r.err != nil {
			if !canceled {
				a.log.Warn("detaching the volumes failed", "vm", r.vm, "err", r.err)
			}
			return
		}
		if sameVolumes(a.attached[r.vm], r.vols) {
			delete(a.attached, r.vm)
		}
	}
}

// pass converges every VM of this node once.
func (a *Agent) pass(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	now := a.o.Now()
	st, err := a.o.State.LocalRead()
	if err != nil {
		a.log.Warn("cannot read the local state", "err", err)
		return
	}
	units, err := a.o.Backend.List()
	if err != nil {
		a.log.Warn("cannot list the backend's units", "err", err)
		return
	}
	mine := map[string]replicated.Assignment{}
	for name, as := range st.Assignments {
		if as.Node == a.o.NodeID {
			mine[name] = as
		}
	}
	// Builds of runners the plan no longer wants here are abandoned.
	for name, op := range a.ops {
		if as, ok := mine[name]; op.kind == opRealise && (!ok || as.OutPath != op.out) {
			op.cancel()
		}
	}
	declared := declaredNames(st.Desired)
	vols := instanceVolumes(st.Desired)
	commit := ""
	if st.Revision != nil {
		commit = st.Revision.Commit
	}
	names := make([]string, 0, len(mine))
	for name := range mine {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		d := declared[name]
		if d == "" {
			d = name
		}
		a.converge(ctx, now, name, mine[name], d, commit, vols[name])
	}
	isUnit := map[string]bool{}
	for _, name := range units {
		isUnit[name] = true
		// A replica that has applied no plan yet (still replaying its log)
		// cannot tell which VMs to stop: keep them until it can.
		if _, ok := mine[name]; !ok && st.Revision != nil {
			a.retire(ctx, now, name)
		}
	}
	// Volumes of VMs that are neither assigned here nor run are released
	// (a VM that never started, a detach that failed after a stop).
	for name, vs := range a.attached {
		if _, ok := mine[name]; ok || isUnit[name] || a.ops[name] != nil {
			continue
		}
		a.startOp(ctx, name, opDetach, "", vs, func(ctx context.Context) error {
			return a.detachVolumes(ctx, name, vs)
		})
	}
	// VMs that were reported but neither are assigned here nor run: stopped.
	a.mu.Lock()
	for name, s := range a.statuses {
		if _, ok := mine[name]; ok || isUnit[name] || a.ops[name] != nil {
			continue
		}
		s.unassigned = true
		if s.Phase != replicated.PhaseStopped {
			s.Phase, s.Message, s.BootedOut = replicated.PhaseStopped, "", ""
			a.signalChangedLocked()
		}
	}
	a.mu.Unlock()
}

// converge runs the steps for one assigned VM.
func (a *Agent) converge(ctx context.Context, now time.Time, name string, as replicated.Assignment, declared, commit string, vols []spec.VolumeRef) {
	st := replicated.VMStatus{VM: name, Node: a.o.NodeID, Generation: as.Generation, ObservedAt: now}
	if op := a.ops[name]; op != nil {
		a.touch(name, as.Generation, now) // the operation reports its own phase
		return
	}
	us, err := a.o.Backend.Status(name)
	if err != nil {
		a.fail(st, "unit status: "+err.Error())
		return
	}
	st.BootedOut = us.Booted

	// Step 1: realise the runner and root it.
	if a.rooted[name] != as.OutPath {
		key := failKey{name, as.OutPath}
		if f, ok := a.failed[key]; ok && now.Before(f.retryAt) {
			a.fail(st, f.msg)
			return
		}
		root := filepath.Join(a.o.StateDir, name, "gcroot")
		if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
			a.fail(st, "state directory: "+err.Error())
			return
		}
		if us.Active && us.Booted == as.OutPath {
			st.Phase = replicated.PhaseRunning // adopted: only the GC root is checked
		} else {
			st.Phase, st.Message = replicated.PhasePending, "realising runner "+as.OutPath
		}
		a.set(st, false)
		drv, out := as.Drv, as.OutPath
		a.startOp(ctx, name, opRealise, out, nil, func(ctx context.Context) error {
			return a.real.realise(ctx, root, drv, out, commit, declared, func(how string) {
				a.setPhase(name, replicated.PhaseBuilding, "building runner "+how)
			})
		})
		return
	}

	// Step 2: volumes: created or grown, locked for this node and attached
	// at STATE/NAME/volumes/VOL before the unit may start.
	if len(vols) > 0 && !sameVolumes(a.attached[name], vols) {
		if f, ok := a.failed[failKey{name, volumesKey}]; ok && now.Before(f.retryAt) {
			a.fail(st, f.msg)
			return
		}
		if !us.Active {
			st.Phase, st.Message = replicated.PhasePending, "attaching volumes"
			a.set(st, false)
		}
		a.startOp(ctx, name, opVolumes, as.OutPath, vols, func(ctx context.Context) error {
			return a.attachVolumes(ctx, name, vols)
		})
		return
	}

	// Step 3: STATE/NAME/current → out path.
	if err := a.link(name, as.OutPath); err != nil {
		a.fail(st, err.Error())
		return
	}

	// Step 4: the unit.
	switch {
	case us.Restarting && us.Booted == as.OutPath:
		// The backend restarts it after its backoff; a new runner (below)
		// is restarted at once instead.
		st.Phase = replicated.PhaseStarting
		if us.Restarts >= 3 {
			st.Phase = replicated.PhaseFailed
		}
		st.Message = fmt.Sprintf("runner %s; restart %d in %s; see %s", us.Result, us.Restarts,
			max(us.NextRestart.Sub(now), 0).Round(time.Millisecond), a.logHint(name))
		a.set(st, false)
	case !us.Active && !us.Restarting:
		st.Phase = replicated.PhaseStarting
		a.set(st, false)
		if err := a.o.Backend.Start(ctx, name); err != nil {
			a.fail(st, fmt.Sprintf("start: %v; see %s", err, a.logHint(name)))
			return
		}
		a.log.Info("VM started", "vm", name, "out", as.OutPath)
		us, err = a.o.Backend.Status(name)
		if err != nil {
			a.fail(st, "unit status: "+err.Error())
			return
		}
		st.BootedOut = us.Booted
		if us.Active {
			st.Phase = replicated.PhaseRunning
		}
		a.set(st, false)
	case us.Booted != as.OutPath:
		st.Phase, st.Message = replicated.PhaseStarting, fmt.Sprintf("restarting on %s (booted %s)", as.OutPath, us.Booted)
		a.set(st, false)
		a.log.Info("restarting VM on its new runner", "vm", name, "out", as.OutPath, "booted", us.Booted)
		a.startOp(ctx, name, opRestart, as.OutPath, nil, func(ctx context.Context) error {
			return a.o.Backend.Restart(ctx, name)
		})
	default:
		st.Phase = replicated.PhaseRunning
		a.set(st, false)
	}
}

// retire stops a unit that is no longer assigned to this node.
func (a *Agent) retire(ctx context.Context, now time.Time, name string) {
	if op := a.ops[name]; op != nil {
		return // wait for it; a pending realisation was cancelled by pass
	}
	us, err := a.o.Backend.Status(name)
	if err != nil {
		return
	}
	a.mu.Lock()
	var gen uint64
	if s := a.statuses[name]; s != nil {
		gen = s.Generation
	}
	a.mu.Unlock()
	a.set(replicated.VMStatus{VM: name, Node: a.o.NodeID, Phase: replicated.PhaseStopping, BootedOut: us.Booted,
		Generation: gen, ObservedAt: now, Message: "no longer assigned to this node"}, true)
	a.log.Info("stopping VM no longer assigned here", "vm", name)
	vols := a.attached[name]
	a.startOp(ctx, name, opStop, "", vols, func(ctx context.Context) error {
		if err := a.o.Backend.Stop(ctx, name); err != nil {
			return err
		}
		// Only a stopped VM's locks are released.
		return a.detachVolumes(ctx, name, vols)
	})
}

// link switches STATE/NAME/current to out atomically.
func (a *Agent) link(name, out string) error {
	dir := filepath.Join(a.o.StateDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	cur := filepath.Join(dir, "current")
	have, err := readLink(cur)
	if err != nil {
		return fmt.Errorf("read %s: %w", cur, err)
	}
	if have == out {
		return nil
	}
	if err := symlinkAtomic(out, cur); err != nil {
		return fmt.Errorf("switch %s: %w", cur, err)
	}
	return nil
}

func (a *Agent) fail(st replicated.VMStatus, msg string) {
	st.Phase, st.Message = replicated.PhaseFailed, msg
	a.set(st, false)
}

// set records a VM's status and signals the reporter when it changed.
func (a *Agent) set(st replicated.VMStatus, unassigned bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.statuses[st.VM]
	if old == nil || old.Phase != st.Phase || old.Message != st.Message || old.BootedOut != st.BootedOut ||
		old.Generation != st.Generation {
		if old == nil || old.Phase != st.Phase {
			a.log.Debug("phase", "vm", st.VM, "phase", st.Phase, "message", st.Message)
		}
		a.signalChangedLocked()
	}
	a.statuses[st.VM] = &vmStatus{VMStatus: st, unassigned: unassigned}
}

// setPhase changes the phase and message of a VM's status, keeping the rest.
func (a *Agent) setPhase(vm string, phase replicated.Phase, msg string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.statuses[vm]
	if s == nil {
		s = &vmStatus{VMStatus: replicated.VMStatus{VM: vm, Node: a.o.NodeID}}
		a.statuses[vm] = s
	}
	if phase == replicated.PhaseStopped {
		s.BootedOut = ""
	}
	if s.Phase != phase || s.Message != msg {
		s.Phase, s.Message = phase, msg
		a.signalChangedLocked()
	}
	s.ObservedAt = a.o.Now()
}

func (a *Agent) touch(vm string, gen uint64, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.statuses[vm]; s != nil {
		if s.Generation != gen {
			s.Generation = gen
			a.signalChangedLocked()
		}
		s.ObservedAt = now
	}
}

func (a *Agent) signalChangedLocked() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) snapshotLocked() []replicated.VMStatus {
	out := make([]replicated.VMStatus, 0, len(a.statuses))
	for _, s := range a.statuses {
		out = append(out, s.VMStatus)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}

// report proposes heartbeats: every Options.Heartbeat, and ~100ms after a change.
func (a *Agent) report(ctx context.Context) {
	const debounce = 100 * time.Millisecond
	t := time.NewTicker(a.o.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.changed:
			d := time.NewTimer(debounce)
			select {
			case <-ctx.Done():
				d.Stop()
				return
			case <-d.C:
			}
		}
		a.sendHeartbeat(ctx, 10*time.Second)
	}
}

// sendHeartbeat proposes one NodeHeartbeat with every status; once sent,
// stopped VMs that are not assigned here are forgotten.
func (a *Agent) sendHeartbeat(ctx context.Context, timeout time.Duration) {
	a.mu.Lock()
	snap := a.snapshotLocked()
	a.mu.Unlock()
	cmd := replicated.Command{
		V:             replicated.CommandVersion,
		Type:          replicated.CmdNodeHeartbeat,
		At:            a.o.Now(),
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: a.o.NodeID, Statuses: snap},
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := a.o.Proposer.Propose(pctx, cmd)
	if err != nil {
		a.log.Warn("heartbeat not committed", "err", err)
		return
	}
	if !res.OK() {
		a.log.Warn("heartbeat refused", "code", res.Code, "message", res.Message)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sent := range snap {
		if s := a.statuses[sent.VM]; s != nil && s.unassigned && s.Phase == replicated.PhaseStopped && sent.Phase == replicated.PhaseStopped {
			delete(a.statuses, sent.VM)
		}
	}
}

// declaredNames maps instance names to declared names (replica expansion).
func declaredNames(c *spec.Cluster) map[string]string {
	m := map[string]string{}
	if c == nil {
		return m
	}
	for _, in := range c.Instances() {
		m[in.Name] = in.Declared
	}
	return m
}

// logHinter is implemented by backends that know where a unit's output goes.
type logHinter interface {
	LogHint(name string) string
}

// logHint says where to read a VM's console output, for failure messages.
func (a *Agent) logHint(name string) string {
	if h, ok := a.o.Backend.(logHinter); ok {
		return h.LogHint(name)
	}
	return LogPath(a.o.StateDir, name)
}
