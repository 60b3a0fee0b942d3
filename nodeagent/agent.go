package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
)

// StateReader gives the local replica's state; replicated.Store.LocalRead
// satisfies it. The agent treats the returned state as read-only.
type StateReader interface {
	LocalRead() (*replicated.State, error)
}

// sharedReader is a StateReader that can also give its newest state
// without copying it (agentlink's SharedRead). The agent never changes
// the state it reads, and a pass reads it once: at 1,000 nodes a deep copy
// per pass was most of an agent-only node's CPU.
type sharedReader interface {
	SharedRead() (*replicated.State, error)
}

// read is the state a pass observes: shared when the reader can.
func (a *Agent) read() (*replicated.State, error) {
	if r, ok := a.o.State.(sharedReader); ok {
		return r.SharedRead()
	}
	return a.o.State.LocalRead()
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
	// Realise, when set, makes a runner's out path available instead of
	// nix (store, peers' caches, Builder): for agents whose Backend runs
	// no real runner, such as the simulated nodes of the scale harness.
	// An error fails the realisation like a failed build.
	Realise func(ctx context.Context, out string) error
	// Backend runs the units (default: a [ProcessBackend] on StateDir).
	// The agent runs its Run method.
	Backend Backend
	// Volumes attaches the VMs' Ceph RBD volumes (a volumes.Manager); nil:
	// VMs that declare volumes fail with a message naming the flags to set.
	Volumes Volumes
	// VolumeRetry is how long a failed attach or detach of a VM's volumes
	// is remembered before it is tried again (default 5s).
	VolumeRetry time.Duration
	// Nix is the nix binary; nix-store is looked up next to it (default "nix").
	Nix string
	// Interval is the resync period (default 1s). Passes also run on
	// [Agent.Notify], backend events and finished operations. A failed
	// switch of current, start, restart or stop is tried again after it.
	Interval time.Duration
	// Heartbeat is the period of NodeHeartbeat proposals (default 2s); a
	// change of phase or health is reported about 100ms after it happens as well, but
	// at most one heartbeat per half period (100ms to 1s) is sent while
	// statuses keep changing; the first goes as the agent starts. A
	// heartbeat does not wait for the previous one to be answered: a lost proposal is retried by the Proposer only
	// after its attempt timeout, and an election drops every proposal in
	// flight, so the next heartbeats go on renewing the lease meanwhile
	// (see [Agent.Start] for how many may be in flight).
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
	// Prepare, when set, runs before every start and restart of a VM and
	// must return once what the runner needs from outside the agent is in
	// place (the node's network component: STATE/NAME/network.env and the
	// instance's tap). An error, or PrepareTimeout passing, fails that
	// start; it is tried again like any failed start.
	Prepare func(ctx context.Context, vm string) error
	// PrepareTimeout bounds Prepare (default 10s).
	PrepareTimeout time.Duration
	// ClusterNetwork: this node runs the cluster network (serve
	// --network), so health checks probe an instance at its cluster
	// address; without it they probe 127.0.0.1 (dev mode: runners with
	// user-mode networking forward the port there). See health.go.
	ClusterNetwork bool
	// Lease is how long this node may run VMs without a committed
	// heartbeat (0: no self-fencing). A node cut off from the quorum keeps
	// its VMs running while the leader, after --node-timeout without its
	// heartbeat, places them elsewhere: the lease makes it stop them first.
	//
	// Only a NodeHeartbeat that committed renews it, because committed
	// heartbeats are what the leader judges liveness by; it is renewed to
	// the agent's clock when that heartbeat was sent. The leader counts its
	// node timeout from when it sees the heartbeat's sequence advance, which
	// is after the commit, which is after the send: the lease runs out at
	// least (node timeout - Lease) before the leader may declare the node
	// down, each measured on its own clock. At Start it counts from this
	// node's
	// LastHeartbeatAt in the local replica (its own clock when it sent its
	// last committed heartbeat; a stale replica gives an older time, the
	// safe side), or from Start when the node has sent none (nothing is
	// assigned to it yet). So an agent restarted after a long outage kills
	// the runners it adopted until a heartbeat commits; one restarted
	// quickly keeps them.
	//
	// When it runs out (a timer set to the expiry triggers the pass) the
	// agent is fenced: it cancels every operation, kills every runner the
	// backend lists at once with SIGKILL ([Backend.Kill]: no
	// microvm-shutdown, no SIGTERM grace, so the kill fits in the gap
	// between the lease and the node timeout), kills again whatever the
	// backend lists on every later pass, starts nothing, detaches nothing,
	// and reports every VM stopped saying why (see [Decide]). Once a
	// heartbeat commits again the lease is renewed and the normal passes
	// resume, but a VM starts only once a heartbeat saying it is starting
	// has committed too (see the package doc). The lease must be shorter
	// than the leader's node timeout by more than a kill takes;
	// node.Config derives it from --node-timeout.
	//
	// With a lease the agent is also fenced while the local replica shows
	// this node marked down (until `blixard node ready`): the leader may
	// have placed its VMs elsewhere, and other nodes no longer wait for the
	// copies of a node marked down.
	Lease time.Duration
	// Metrics receives how long realisations, attachments and starts take
	// and counts restarts (default: none; see [Metrics]).
	Metrics Metrics
	// OnBuild, when set, is told when a runner starts being built, every
	// line nix prints meanwhile and when the build ends (`blixard dev`
	// shows it). It is called from the operations' goroutines, possibly
	// several at once, and must be quick.
	OnBuild func(BuildProgress)
	// OnPhase, when set, is told each change of a VM's phase as the agent
	// records it (a scale-out started ahead here waits for its instances
	// to run before it is proposed). It is called with the agent's lock
	// held: it must not block nor call the agent.
	OnPhase func(vm string, phase replicated.Phase)
	// Cache shares runners with the other nodes' binary caches (see
	// [CacheOptions]; the zero value substitutes from the peers the state
	// lists).
	Cache CacheOptions
	// RestorePool is how many guests of snapshot functions this node keeps
	// restored ahead and warmed up for the next instances of those
	// functions (see pool.go; 0: none). It needs the process backend and
	// SpareTaps.
	RestorePool int
	// SpareTaps lists the taps the node's network made ahead for
	// instances not placed yet (the restore pool starts runners on them).
	SpareTaps func() []SpareTap
	// Now is the agent's clock (default time.Now): the time of each pass,
	// of statuses and heartbeats, and of when failures may be retried.
	Now    func() time.Time
	Logger *slog.Logger
}

// Agent converges this node's VMs towards the committed plan: on every
// pass it observes (the local replica, the backend, its own records),
// calls [Decide], and runs the actions it returns. See [Decide] for the
// steps.
type Agent struct {
	o      Options
	log    *slog.Logger
	real   realiser
	notify chan struct{} // buffered(1): run a pass now

	mu       sync.Mutex
	statuses map[string]*vmStatus // guarded by mu
	changed  chan struct{}        // buffered(1): a status changed (send with mu held or not)
	// readied (buffered(1)) is signalled with changed when an instance
	// became running and healthy: gateways queue cold-start requests for
	// exactly that report, so it skips the debounce (see report).
	readied chan struct{}
	// renewed is the agent's clock when the last committed heartbeat was
	// sent (the lease runs from it); fenced says whether the last pass
	// found the lease run out. Both guarded by mu: the reporter renews.
	// A committed heartbeat's Propose returns only once the local replica
	// applied it (Dragonboat's SyncPropose answers with the local state
	// machine's result), so a pass after a renewal sees every plan and
	// node mark committed before that heartbeat.
	renewed time.Time
	fenced  bool
	// epoch and seq order this process's heartbeats
	// (replicated.NodeHeartbeat): epoch is random, fixed for the agent's
	// life; seq is the number of the last heartbeat made, guarded by mu.
	epoch uint64
	seq   uint64
	// delta decides liveness-only heartbeats (report.go; guarded by mu).
	delta heartbeatDelta
	// unanswered counts the heartbeats not committed since the last one
	// that was, so that a lost quorum logs a warning once, not once per
	// period (guarded by mu).
	unanswered int
	// holdStarts: after a fence no VM starts until heartbeat number
	// holdStarts or a later one has committed (0: none held; guarded by
	// mu). See pass.
	holdStarts uint64

	// pool keeps runners started ahead (nil: none; see pool.go).
	pool *RestorePool

	// probes judges the running VMs' health (its own lock and goroutines;
	// lock order: mu, then the prober's).
	probes *prober

	// Owned by the Start goroutine.
	rec  *records
	done chan Result
	// fencedBy is why the last pass was fenced ("": it was not).
	fencedBy string
	// restarts is the backend's crash-restart count of each VM as the
	// last pass read it (see crashRestarts).
	restarts map[string]int
}

type vmStatus struct {
	replicated.VMStatus
	// forget: the VM is gone from this node; once a committed heartbeat
	// shows it stopped, it is dropped.
	forget bool
	// stoppedIn is the number (seq) of the first heartbeat that carried
	// this VM stopped and to be forgotten (0: none yet). Every heartbeat
	// made after it carries it so too, until it is dropped; see
	// forgetCommitted.
	stoppedIn uint64
}

// forgettable: the status says stopped and the VM is gone from this node.
func (s *vmStatus) forgettable() bool {
	return s.forget && s.Phase == replicated.PhaseStopped
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
	if o.PrepareTimeout <= 0 {
		o.PrepareTimeout = 10 * time.Second
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
	if o.Metrics == nil {
		o.Metrics = noMetrics{}
	}
	if o.Backend == nil {
		o.Backend = NewProcessBackend(ProcessOptions{StateDir: o.StateDir, Logger: o.Logger})
	}
	a := &Agent{
		o:   o,
		log: o.Logger.With("node", o.NodeID),
		real: realiser{nix: o.Nix, builder: o.Builder, builds: &flight{calls: map[string]*flightCall{}},
			rooting: make(chan struct{}, 2*runtime.NumCPU()), share: newSharing(o, o.Logger.With("node", o.NodeID)),
			roots: newRootBook(), log: o.Logger},
		notify:   make(chan struct{}, 1),
		changed:  make(chan struct{}, 1),
		readied:  make(chan struct{}, 1),
		statuses: map[string]*vmStatus{},
		// Random rather than the start time: two processes of one node
		// must differ even on a clock that was stepped back or is fake.
		// 53 bits stay exact in any JSON reader.
		epoch: rand.Uint64N(1<<53-1) + 1,
		// A failed switch, start, restart or stop is retried on the next
		// resync, as a level-triggered loop would.
		rec:      newRecords(o.BuildRetry, o.VolumeRetry, o.Interval),
		done:     make(chan Result),
		restarts: map[string]int{},
	}
	a.probes = newProber(o.Now, a.log, a.healthChanged)
	a.pool = newRestorePool(a)
	return a
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
//
// Heartbeats are pipelined: one starts every Options.Heartbeat (and after
// changes) whether or not the previous ones were answered, each with a
// timeout of Options.Lease (10s without one: a heartbeat that commits
// later cannot renew the lease anyway). At most max(2, ⌈timeout/period⌉)
// are in flight; while that many are unanswered the next waits for one of
// them. Each committed heartbeat renews the lease to its own send time,
// never backwards; one whose outcome is unknown renews nothing.
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
	a.recordLeftAttachments()
	if n := a.real.roots.seed(nixAutoRoots, a.o.StateDir); n > 0 {
		a.log.Debug("runner roots of an earlier agent found", "roots", n)
	}
	a.startLease()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer a.probes.stop() // before the reporter's last heartbeat is waited for

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

	// The pass that fences runs when the lease runs out, not up to a
	// resync later: the kill must fit in the gap before the node timeout.
	var expiry <-chan time.Time
	rearm := func() {}
	if a.o.Lease > 0 {
		t := time.NewTimer(a.untilExpiry())
		defer t.Stop()
		expiry = t.C
		rearm = func() { t.Reset(a.untilExpiry()) }
	}
	a.pass(ctx)
	rearm()
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
			a.sendHeartbeat(context.WithoutCancel(ctx), a.nextHeartbeat(), 2*time.Second)
			return nil
		case err := <-backendErr:
			a.drainOps()
			return fmt.Errorf("nodeagent: backend: %w", err)
		case <-ticker.C:
		case <-a.notify:
		case <-events:
		case <-expiry:
		case r := <-a.done:
			a.finish(r)
		}
		a.pass(ctx)
		rearm()
	}
}

// rootsWait bounds how long a stopping agent waits for the runner roots
// it is registering with nix in the background (20–30 ms each).
const rootsWait = 30 * time.Second

// shutdown ends every operation, waits for the background root
// registrations and, with StopOnExit, stops every VM.
func (a *Agent) shutdown(ctx context.Context) {
	a.drainOps()
	if a.real.roots != nil && !a.real.roots.wait(rootsWait) {
		a.log.Warn("runner roots still being registered with nix after waiting; leaving them", "waited", rootsWait)
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
	for name, v := range a.rec.vms {
		if running[name] || len(v.attached) == 0 {
			continue
		}
		if err := a.detachVolumes(sctx, name, v.attached); err != nil {
			a.log.Error("cannot detach volumes on exit", "vm", name, "err", err)
			continue
		}
		v.attached = nil
	}
}

// drainOps cancels every operation and waits for their results.
func (a *Agent) drainOps() {
	a.rec.cancelAll()
	for a.rec.inFlight() > 0 {
		a.finish(<-a.done)
	}
}

// pass observes, decides and acts once.
func (a *Agent) pass(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	in, self, nw, err := a.observe()
	if err != nil {
		a.log.Warn("cannot observe this node; trying again on the next pass", "err", err)
		return
	}
	a.countCrashRestarts(in)
	in.Fenced = a.leaseState(in.Now)
	if in.Fenced == "" && a.o.Lease > 0 && self.State == replicated.NodeDown {
		// The leader judged this node silent: it may have placed its VMs
		// elsewhere already, or be about to (a plan follows the mark), and
		// the other nodes no longer wait for this one's copies. A heartbeat
		// that renewed the lease since does not change that; `node ready`
		// does. (A committed heartbeat's Propose returns once the local
		// replica applied it, so a lease regained after the mark sees it.)
		in.Fenced = MarkedDownReason(a.o.NodeID)
	}
	was := a.fencedBy
	// Resuming after a fence, Raft holds this node's reports of its VMs as
	// stopped, and a plan may move them any moment: the node taking one
	// over starts it once it has applied that plan, trusting the report,
	// while this node, which has not applied the plan yet, would start it
	// too. So a VM starts here only once a heartbeat made after this pass,
	// saying it is starting, has committed. A plan committed before that
	// heartbeat is applied here by then (its Propose returns once the local
	// replica applied it): the VM is no longer assigned here. A plan
	// committed after it finds this node's report not stopped: the other
	// node waits until this one stops the VM (see Decide).
	resuming := in.Fenced == "" && was != ""
	if resuming {
		a.holdStartsUntil(math.MaxUint64) // this pass's heartbeat is not made yet
	}
	d := Decide(in)
	// Before execute: the statuses it records carry the health of the
	// instances that run.
	a.syncProbes(ctx, in, d, nw)
	k := a.execute(ctx, d)
	if resuming {
		a.holdStartsUntil(0)
	}
	a.fencedBy = in.Fenced
	switch {
	case in.Fenced != "" && was == "":
		a.log.Warn("fenced: this node killed its VMs and starts none", "reason", in.Fenced,
			"lease", a.o.Lease, "killed", k.killed, "failed", k.failed, "took", k.took)
	case in.Fenced != "" && k.killed+k.failed > 0:
		a.log.Info("killed runners found running while fenced (a start raced the fence)", "killed", k.killed, "failed", k.failed)
	case in.Fenced == "" && was != "":
		a.log.Info("no longer fenced: a heartbeat committed and this node is not marked down; VMs assigned here start again",
			"lease", a.o.Lease)
	}
}

// countCrashRestarts counts the restarts after crashes the backend made
// since the last pass, from the units this pass read.
func (a *Agent) countCrashRestarts(in Input) {
	now := make(map[string]int, len(in.VMs))
	listed := make(map[string]bool, len(in.VMs))
	for name, o := range in.VMs {
		listed[name] = true
		if o.Op == nil && o.UnitErr == "" {
			now[name] = o.Unit.Restarts
		}
	}
	for vm, n := range crashRestarts(a.restarts, now, listed) {
		a.o.Metrics.CountRestarts(vm, RestartCrash, n)
	}
}

// observe takes the snapshot Decide reads: the local replica's plan, the
// backend's units, STATE/NAME/current, and the agent's own records; and
// this node as the local replica has it (zero when not registered) and the
// committed network (where health probes go).
func (a *Agent) observe() (Input, replicated.Node, *replicated.Network, error) {
	st, err := a.read()
	if err != nil {
		return Input{}, replicated.Node{}, nil, fmt.Errorf("read the local state: %w", err)
	}
	units, err := a.o.Backend.List()
	if err != nil {
		return Input{}, replicated.Node{}, nil, fmt.Errorf("list the backend's units: %w", err)
	}
	in := Input{
		Now:         a.o.Now(),
		Node:        a.o.NodeID,
		Planned:     st.Revision != nil,
		Assignments: st.Assignments,
		Units:       units,
		VMs:         map[string]Observed{},
	}
	if st.Revision != nil {
		in.Commit = st.Revision.Commit
	}
	a.mu.Lock()
	reported := make(map[string]replicated.VMStatus, len(a.statuses))
	for name, s := range a.statuses {
		reported[name] = s.VMStatus
	}
	a.mu.Unlock()
	observeVMs(&in, a.rec, reported, st.Observed, st.Nodes, a.o.Backend.Status, func(name string) string {
		// An unreadable link counts as missing: switching it reports the error.
		cur, _ := readLink(filepath.Join(a.o.StateDir, name, "current"))
		return cur
	}, a.logHint)
	var self replicated.Node
	if n := st.Nodes[a.o.NodeID]; n != nil {
		self = *n
	}
	return in, self, st.Network, nil
}

// set records a VM's decided status and signals the reporter when it changed.
func (a *Agent) set(vd VMDecision) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.statuses[vd.VM]
	if vd.Status == nil {
		if old != nil {
			delete(a.statuses, vd.VM)
			a.signalChangedLocked()
		}
		return
	}
	st := *vd.Status
	a.probes.stamp(&st)
	vd.Status = &st
	if old == nil || old.Phase != st.Phase || old.Message != st.Message || old.BootedOut != st.BootedOut ||
		old.Generation != st.Generation || old.Health != st.Health {
		if old == nil || old.Phase != st.Phase {
			a.log.Debug("phase", "vm", st.VM, "phase", st.Phase, "message", st.Message)
			if a.o.OnPhase != nil {
				a.o.OnPhase(st.VM, st.Phase)
			}
		}
		var was *replicated.VMStatus
		if old != nil {
			was = &old.VMStatus
		}
		if becameReady(was, st) {
			a.signalReadiedLocked()
		}
		a.signalChangedLocked()
	}
	a.statuses[st.VM] = keptStatus(old, vd)
}

// keptStatus is the status the agent keeps for vd (whose Status is set),
// replacing old (nil: none).
func keptStatus(old *vmStatus, vd VMDecision) *vmStatus {
	next := &vmStatus{VMStatus: *vd.Status, forget: vd.Forget}
	if old != nil && old.forgettable() && next.forgettable() {
		next.stoppedIn = old.stoppedIn // still stopped: the heartbeats since carried it so
	}
	return next
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
	} else {
		s.stoppedIn = 0
	}
	if s.Phase != phase || s.Message != msg {
		s.Phase, s.Message = phase, msg
		a.probes.stamp(&s.VMStatus)
		a.signalChangedLocked()
	}
	s.ObservedAt = a.o.Now()
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
