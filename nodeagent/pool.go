package nodeagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/vmsnap"
)

// The restore pool: guests of snapshot functions restored ahead and warmed
// up, each for one of the next instances of its function that may come to
// this node (its restoreAhead: 1 by default, 2 for a burst's second
// instance to find one too), so that a cold start that finds one is the
// identity exchange alone: no runner spawn, no qemu start-up, no load, and the code of a
// request already run once (see docs/benchmarks.md).
//
// The next instance's tap exists before any request (the network's spare
// taps: the microvm machine cannot hotplug a NIC, so qemu must be started
// on the very tap the instance will have). The pool starts that instance's
// runner in restore mode in STATE/.pool/NAME, with a network.env naming
// that tap and MAC and the restore hook of the node's snapshot of the
// function's runner, restores the snapshot into it (vmsnap.Restore) — the
// guest runs on as it was saved, frozen: eth0 down without an address, so
// it sends and answers nothing — and warms it up over its identity
// channel (IdentityConn.Warm: the guest GETs the function's path from its
// own loopback twice; under software emulation a restored guest
// translates every code path anew on its first run, ~150 ms of its first
// request otherwise). The channel stays open: a new connection right
// after the warm-up's can come before the guest saw that one close, and
// the guest would not greet it.
//
// When the instance is placed here, its start (restoreOrBoot) takes the
// guest if it was restored for the same runner, tap and snapshot; the
// process backend adopts its runner as the unit's and the start gives the
// guest the instance's identity over the open channel, then has qemu
// announce the NIC (vmsnap.Announce: qemu's own announcements followed the
// load, long before, with no address). Anything else is killed and the
// start restores into a runner of its own. A guest waiting in the pool
// costs its qemu, the guest memory it touched (the snapshot's RAM file is
// mapped copy-on-write; ~70 MB for the demo's guest) and an idle vCPU.
// Runners whose instance is placed on another node, whose spare tap or
// snapshot changed, or beyond Options.RestorePool are killed; an agent
// that stops kills them, and the backend's Run kills those an earlier
// agent left (STATE/.pool/*/pid).
//
// Restoring ahead without the warm-up was tried before (docs/benchmarks.md):
// its guests answered their first probe ~200 ms after the identity, slower
// end to end than restoring at the request, whose identity exchange (then
// four programs in the guest) ran much of that code first.

// SpareTap is an instance whose tap the node made ahead of its placement
// (the network's spare taps): the restore pool starts runners on them.
type SpareTap struct {
	Instance, Tap, MAC string
}

// RestorePool keeps guests of snapshot functions restored ahead (see the
// comment above). Run it; Notify it after a new state.
type RestorePool struct {
	a      *Agent
	pb     *ProcessBackend
	spares func() []SpareTap
	size   int
	log    *slog.Logger
	wake   chan struct{}
	store  vmsnap.Store

	// mu guards entries and failed.
	mu      sync.Mutex
	entries map[string]*poolEntry // by instance
	failed  map[string]time.Time  // instance → when its last runner failed

	// Only the pass uses these.
	qemus map[string]string      // runner out path → its qemu ("" unknown)
	since map[string]wantedSince // instance → since when it is wanted as it is
}

// poolEntry is one runner started ahead.
type poolEntry struct {
	want  poolWant
	r     *aheadRunner
	ready chan struct{} // closed once the snapshot was restored into it (and the guest warmed up) or that failed
	err   error         // why it is not ready; set before ready is closed
	// timing and warmed are the restore's and the warm-up's (set before
	// ready is closed).
	timing vmsnap.RestoreTiming
	warmed time.Duration
	stop   context.CancelFunc
}

// poolWant is a runner the pool wants started ahead.
type poolWant struct {
	Instance, Tap, MAC, Out string
	Snap                    vmsnap.Snapshot
	// Port and Path are the function's HTTP port and path: the restored
	// guest's warm-up requests them (Port 0: no warm-up).
	Port int
	Path string
	// Depth is how many of the function's instances assigned nowhere come
	// before this one (0: its next): the pool fills every function's next
	// instance before any function's second.
	Depth int
}

// same: w and o start the same runner.
func (w poolWant) same(o poolWant) bool {
	return w.Instance == o.Instance && w.Tap == o.Tap && w.MAC == o.MAC && w.Out == o.Out &&
		w.Snap.Dir == o.Snap.Dir && w.Snap.Manifest.State.SHA256 == o.Snap.Manifest.State.SHA256
}

// poolRetry is how long an instance whose runner failed ahead waits before
// the pool starts it again (the runner's console log says why).
const poolRetry = 30 * time.Second

// poolReadyTimeout bounds a runner started ahead reaching its QMP socket.
const poolReadyTimeout = time.Minute

// RestorePool returns the agent's restore pool, nil when it has none
// (Options.RestorePool 0, no SpareTaps, or a backend other than the
// process backend).
func (a *Agent) RestorePool() *RestorePool { return a.pool }

func newRestorePool(a *Agent) *RestorePool {
	pb, ok := a.o.Backend.(*ProcessBackend)
	if !ok || a.o.ControlPlaneOnly || a.o.RestorePool <= 0 || a.o.SpareTaps == nil {
		return nil
	}
	return &RestorePool{a: a, pb: pb, spares: a.o.SpareTaps, size: a.o.RestorePool,
		log: a.log.With("component", "restore-pool"), wake: make(chan struct{}, 1),
		store:   vmsnap.Store{Dir: filepath.Join(a.o.StateDir, SnapshotDir)},
		entries: map[string]*poolEntry{}, failed: map[string]time.Time{}, qemus: map[string]string{}, since: map[string]wantedSince{}}
}

// Notify asks for a pass now; it never blocks.
func (p *RestorePool) Notify() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run keeps the pool until ctx ends, then kills its runners.
func (p *RestorePool) Run(ctx context.Context) error {
	defer p.killAll()
	// Also on a timer: the spare taps are made by the network's passes,
	// after the state that asked for them, and snapshots are saved by
	// starts; neither notifies the pool.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		p.pass(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-tick.C:
		}
	}
}

// poolFacts is what planPool decides from.
type poolFacts struct {
	// Wanted are the runners to have started ahead, in order of preference.
	Wanted []poolWant
	// Settled: the instance's runner has been wanted, as it is now, for
	// poolSettle (only a settled one is started).
	Settled map[string]bool
	// Have are the runners started ahead, by instance: their wants and
	// whether they still run.
	Have map[string]poolHave
	// AssignedHere: the instance is placed on this node; Active: its unit
	// runs (or restarts).
	AssignedHere, Active map[string]bool
	// Size is the most runners kept ahead.
	Size int
}

type poolHave struct {
	Want  poolWant
	Alive bool
}

// poolPlan is planPool's answer: the runners to kill, by instance, and the
// ones to start.
type poolPlan struct {
	Kill  []string
	Start []poolWant
}

// poolSettle is how long a runner must be wanted before the pool starts
// it. A cold start changes the spare taps twice within milliseconds (the
// instance placed here stops being a spare; its successor's tap is made a
// pass later), and starting a qemu in between would compete for the CPU
// with the very restore it could not serve; a short settle also keeps a
// flapping spare from starting qemus that are killed at once.
const poolSettle = 500 * time.Millisecond

// planPool decides which runners to kill and start:
//   - a runner that exited is cleaned up; one whose instance was placed on
//     this node is left for that instance's start to take, until the
//     instance's unit runs (then the start did not take it);
//   - the first Size wanted runners are kept when one was started for the
//     same instance, runner, tap and snapshot, or started once settled;
//     every other runner is killed.
func planPool(f poolFacts) poolPlan {
	var p poolPlan
	keep := map[string]bool{}
	for _, w := range f.Wanted {
		if len(keep) == f.Size {
			break
		}
		keep[w.Instance] = true
		h, ok := f.Have[w.Instance]
		if ok && h.Alive && h.Want.same(w) {
			continue
		}
		if ok {
			p.Kill = append(p.Kill, w.Instance)
		}
		if f.Settled[w.Instance] {
			p.Start = append(p.Start, w)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.Have)) {
		if keep[name] {
			continue
		}
		h := f.Have[name]
		if h.Alive && f.AssignedHere[name] && !f.Active[name] {
			continue // its start takes it
		}
		p.Kill = append(p.Kill, name)
	}
	return p
}

// pass gathers the facts, plans and acts. The kills and starts run
// without p.mu: a start's take never waits for them.
func (p *RestorePool) pass(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	st, err := p.a.o.State.LocalRead()
	if err != nil || st == nil {
		return
	}
	now := time.Now()
	p.mu.Lock()
	f := poolFacts{Have: map[string]poolHave{}, Settled: map[string]bool{}, AssignedHere: map[string]bool{}, Active: map[string]bool{}, Size: p.size}
	for name, e := range p.entries {
		f.Have[name] = poolHave{Want: e.want, Alive: e.r.alive()}
		if as, ok := st.Assignments[name]; ok && as.Node == p.a.o.NodeID {
			f.AssignedHere[name] = true
		}
		if s, err := p.pb.Status(name); err == nil && (s.Active || s.Restarting) {
			f.Active[name] = true
		}
	}
	since := map[string]wantedSince{}
	for _, sp := range p.spares() {
		w, ok := p.want(st, sp)
		if !ok {
			continue
		}
		if at, failed := p.failed[sp.Instance]; failed && now.Sub(at) < poolRetry {
			if h, ok := f.Have[sp.Instance]; !ok || !h.Alive {
				continue
			}
		}
		if s, err := p.pb.Status(sp.Instance); err == nil && (s.Active || s.Restarting) {
			continue // a copy still stops here
		}
		f.Wanted = append(f.Wanted, w)
		ws := wantedSince{want: w, at: now}
		if prev, ok := p.since[sp.Instance]; ok && prev.want.same(w) {
			ws = prev
		}
		since[sp.Instance] = ws
		f.Settled[sp.Instance] = now.Sub(ws.at) >= poolSettle
	}
	p.since = since
	sortWanted(f.Wanted)
	plan := planPool(f)
	var kill []*poolEntry
	for _, name := range plan.Kill {
		e := p.entries[name]
		delete(p.entries, name)
		if res := e.r.exitResult(); res != "" {
			p.failed[name] = now
			p.log.Warn("a runner started ahead exited; see the console log", "vm", name, "result", res,
				"console", LogPath(p.a.o.StateDir, name))
		}
		kill = append(kill, e)
	}
	p.mu.Unlock()
	for _, e := range kill {
		e.stop()
		if err := e.r.kill(); err != nil {
			p.log.Warn("cannot kill a runner started ahead", "vm", e.want.Instance, "err", err)
		}
	}
	for _, w := range plan.Start {
		e, err := p.start(ctx, w)
		p.mu.Lock()
		if err != nil {
			p.failed[w.Instance] = now
		} else {
			p.entries[w.Instance] = e
		}
		p.mu.Unlock()
		if err != nil {
			p.log.Warn("cannot start a runner ahead; its instance's cold start spawns one", "vm", w.Instance, "err", err)
		}
	}
	p.mu.Lock()
	n := len(p.entries)
	p.mu.Unlock()
	p.a.o.Metrics.SetRestorePool(n)
}

// sortWanted orders the runners wanted ahead as the pool prefers them
// (planPool keeps the first Size): every function's next instance before
// any function's second, each depth by instance name.
func sortWanted(ws []poolWant) {
	slices.SortFunc(ws, func(a, b poolWant) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), strings.Compare(a.Instance, b.Instance))
	})
}

// wantedSince is since when a runner is wanted as it is now.
type wantedSince struct {
	want poolWant
	at   time.Time
}

// want is the runner to start ahead on spare tap sp, if any: sp's
// instance is of a snapshot function whose runner is realised here and
// has a snapshot its copies can take identities from.
func (p *RestorePool) want(st *replicated.State, sp SpareTap) (poolWant, bool) {
	if st.Desired == nil {
		return poolWant{}, false
	}
	for name, f := range st.Desired.Functions {
		if _, ok := replicated.FunctionInstanceIndex(name, sp.Instance); !ok {
			continue
		}
		depth, ok := aheadDepth(st, name, sp.Instance)
		if !ok {
			return poolWant{}, false
		}
		qemu, ok := p.qemus[f.Runner.Out]
		if !ok {
			if _, err := os.Stat(filepath.Join(f.Runner.Out, "bin", "microvm-run")); err != nil {
				return poolWant{}, false // not realised yet
			}
			qemu, _ = findRunnerQemu(f.Runner.Out)
			p.qemus[f.Runner.Out] = qemu
		}
		if qemu == "" {
			return poolWant{}, false
		}
		snap, err := p.store.Open(f.Runner.Out, qemu)
		if err != nil || snap.Manifest.Identity != vmsnap.IdentityProtocol {
			return poolWant{}, false
		}
		return poolWant{Instance: sp.Instance, Tap: sp.Tap, MAC: sp.MAC, Out: f.Runner.Out, Snap: snap, Port: f.HTTP.Port, Path: f.HTTP.Path,
			Depth: depth}, true
	}
	return poolWant{}, false
}

// aheadDepth reports whether instance of function fn in st may have a
// guest restored ahead — fn is a snapshot function with a runner, the
// instance is assigned nowhere and fewer than fn's restoreAhead instances
// assigned nowhere come before it — and how many do (its depth: 0 for the
// function's next instance).
func aheadDepth(st *replicated.State, fn, instance string) (int, bool) {
	f, ok := st.Desired.Functions[fn]
	idx, isInst := replicated.FunctionInstanceIndex(fn, instance)
	if !ok || !isInst || !f.Snapshot || f.Runner.Out == "" {
		return 0, false
	}
	if _, assigned := st.Assignments[instance]; assigned {
		return 0, false
	}
	depth := 0
	for i := range idx {
		if _, assigned := st.Assignments[replicated.FunctionInstance(fn, i)]; !assigned {
			depth++
		}
	}
	return depth, depth < f.RestoreAhead
}

// start starts w's runner in STATE/.pool/NAME and, in the background,
// waits for its QMP socket.
func (p *RestorePool) start(ctx context.Context, w poolWant) (*poolEntry, error) {
	dir := filepath.Join(p.a.o.StateDir, PoolDir, w.Instance)
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	env := fmt.Sprintf("# Written by blixard's restore pool: the tap and MAC of %s, started ahead.\nBLIXARD_TAP=%s\nBLIXARD_MAC=%s\n",
		w.Instance, w.Tap, w.MAC)
	err := errors.Join(
		os.Symlink(w.Out, filepath.Join(dir, "current")),
		os.WriteFile(filepath.Join(dir, "network.env"), []byte(env), 0o644),
		vmsnap.WriteHook(dir, vmsnap.RestoreHook(w.Snap)))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	r, err := p.pb.spawnAhead(ctx, w.Instance, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, poolReadyTimeout)
	e := &poolEntry{want: w, r: r, ready: make(chan struct{}), stop: cancel}
	go func() {
		defer cancel()
		e.timing, e.err = restoreAhead(rctx, filepath.Join(dir, "qmp.sock"), r, w.Snap)
		if e.err == nil {
			r.restored = true
			// The warm-up's connection stays open for the identity: a
			// new one right after it can come before the guest saw the
			// old one close, and it would not greet again.
			var c *vmsnap.IdentityConn
			c, e.warmed = p.warm(rctx, dir, w)
			r.setIdent(c)
		}
		close(e.ready)
		switch {
		case e.err != nil && rctx.Err() == nil:
			p.log.Warn("restoring ahead failed; the instance's cold start restores into a runner of its own", "vm", w.Instance, "err", e.err)
		case e.err == nil:
			p.log.Debug("restored ahead", "vm", w.Instance, "qemu_start", e.timing.Connect, "load", e.timing.Load, "warm_up", e.warmed)
		}
	}()
	p.log.Debug("runner started ahead", "vm", w.Instance, "tap", w.Tap, "pid", r.h.id.PID)
	return e, nil
}

// restoreAhead restores snap into the runner r started ahead (qemu behind
// socket): the guest runs on, frozen as it was saved (eth0 down, no
// address), and waits on its identity channel for the identity of the
// instance that takes it. It gives up when r exits.
func restoreAhead(ctx context.Context, socket string, r *aheadRunner, snap vmsnap.Snapshot) (vmsnap.RestoreTiming, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	t, err := vmsnap.Restore(ctx, socket, snap)
	if err != nil {
		if res := r.exitResult(); res != "" {
			return t, fmt.Errorf("the runner exited (%s): %w", res, err)
		}
		return t, err
	}
	return t, nil
}

// warm has the frozen guest restored ahead in dir request its own HTTP
// server (IdentityConn.Warm), so that the code of a request has run once
// before the first real one: under emulation that run translates it,
// ~150 ms of a cold start otherwise. A guest that cannot is used all the
// same. It returns the identity channel it opened (nil if it could not).
func (p *RestorePool) warm(ctx context.Context, dir string, w poolWant) (*vmsnap.IdentityConn, time.Duration) {
	c, err := vmsnap.DialIdentity(ctx, filepath.Join(dir, vmsnap.IdentitySocket))
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0 // killed meanwhile
		}
		p.log.Info("no identity channel to the guest restored ahead; its start connects again", "vm", w.Instance, "err", err)
		return nil, 0
	}
	if w.Port == 0 {
		return c, 0
	}
	path := w.Path
	if path == "" {
		path = "/"
	}
	took, err := c.Warm(ctx, w.Port, path)
	if err != nil && ctx.Err() == nil {
		p.log.Info("the guest restored ahead did not warm up; its first request runs its code cold", "vm", w.Instance, "err", err)
	}
	return c, took
}

// take hands a start the runner started ahead for instance name when it
// was started for runner out, tap and snap and is waiting for the
// restore; nil otherwise (a runner started for anything else is killed).
func (p *RestorePool) take(ctx context.Context, name, out, tap string, snap vmsnap.Snapshot) *aheadRunner {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	e := p.entries[name]
	delete(p.entries, name)
	p.mu.Unlock()
	if e == nil {
		return nil
	}
	discard := func(why string) *aheadRunner {
		e.stop()
		if err := e.r.kill(); err != nil {
			p.log.Warn("cannot kill a runner started ahead", "vm", name, "err", err)
		}
		p.log.Info("not using the runner started ahead", "vm", name, "why", why)
		return nil
	}
	if !e.want.same(poolWant{Instance: name, Tap: tap, MAC: e.want.MAC, Out: out, Snap: snap}) {
		return discard(fmt.Sprintf("it was started for runner %s on tap %s with snapshot %s (%.12s), the start is of runner %s on tap %s with %s (%.12s)",
			e.want.Out, e.want.Tap, e.want.Snap.Dir, e.want.Snap.Manifest.State.SHA256, out, tap, snap.Dir, snap.Manifest.State.SHA256))
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return discard(ctx.Err().Error())
	}
	if e.err != nil {
		return discard(e.err.Error())
	}
	return e.r
}

// killAll kills every runner started ahead (the agent stops).
func (p *RestorePool) killAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, e := range p.entries {
		e.stop()
		if err := e.r.kill(); err != nil {
			p.log.Warn("cannot kill a runner started ahead", "vm", name, "err", err)
		}
		delete(p.entries, name)
	}
	p.a.o.Metrics.SetRestorePool(0)
}
