package nodeagent

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Metrics receives the agent's measurements (the node's Prometheus
// registry, package metrics). Its methods must be safe for concurrent use:
// operations run on goroutines of their own. Canceled operations are not
// measured: they say nothing about how long the work takes.
type Metrics interface {
	// ObserveRealise: making a runner valid and rooted took d; built says
	// whether it was built (from a .drv or the flake) rather than found in
	// the store or a binary cache; err is nil on success.
	ObserveRealise(d time.Duration, built bool, err error)
	// ObserveAttach: attaching a VM's volumes took d.
	ObserveAttach(d time.Duration, err error)
	// ObserveStart: starting (or restarting) a VM's unit took d, the wait
	// for its network included.
	ObserveStart(d time.Duration, err error)
	// CountRestarts: VM vm was restarted n more times, for reason "crash"
	// (its backend restarted a runner that exited on its own) or
	// "requested" (a new runner, or `blixard vm restart`).
	CountRestarts(vm, reason string, n int)
	// ObserveRestore: restoring a snapshot function's instance took d
	// (from its start operation to the guest's identity acknowledged);
	// startedAhead: into a runner the restore pool started ahead.
	ObserveRestore(d time.Duration, startedAhead bool, err error)
	// SetRestorePool: the restore pool holds n runners started ahead.
	SetRestorePool(n int)
}

// Restart reasons of [Metrics.CountRestarts].
const (
	RestartCrash     = "crash"
	RestartRequested = "requested"
)

// noMetrics is the Metrics of an agent given none.
type noMetrics struct{}

func (noMetrics) ObserveRealise(time.Duration, bool, error) {}
func (noMetrics) ObserveAttach(time.Duration, error)        {}
func (noMetrics) ObserveStart(time.Duration, error)         {}
func (noMetrics) CountRestarts(string, string, int)         {}
func (noMetrics) ObserveRestore(time.Duration, bool, error) {}
func (noMetrics) SetRestorePool(int)                        {}

// BuildProgress is one report of a runner being built ([Options.OnBuild]):
// when the build starts, for every line nix prints while it runs, and when
// it ends.
type BuildProgress struct {
	// VM is the instance whose runner is built. Replicas sharing a runner
	// share one build: the others report only its start and end.
	VM string
	// How says what is built: "from /nix/store/…drv" or "from the flake at
	// commit …".
	How string
	// Started is when the build started (the agent's clock).
	Started time.Time
	// Line is nix's latest log line ("" in the first report).
	Line string
	// Done: the build ended, with Err (nil: the runner is there).
	Done bool
	Err  error
}

// observeOp reports a finished background operation of kind to m. built:
// a realisation that built. Canceled operations are left out.
func observeOp(m Metrics, vm string, kind ActionKind, d time.Duration, built bool, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	switch kind {
	case ActRealise:
		m.ObserveRealise(d, built, err)
	case ActAttach:
		m.ObserveAttach(d, err)
	case ActStart:
		m.ObserveStart(d, err)
	case ActRestart:
		m.ObserveStart(d, err)
		if err == nil {
			m.CountRestarts(vm, RestartRequested, 1)
		}
	}
}

// crashRestarts compares the backend's crash-restart counts of the units
// read this pass (restarts, by VM) with those seen before (seen, updated in
// place) and returns how many restarts each VM had since. A VM seen for the
// first time counts nothing: its count is history from before this agent
// (an adopted runner, a systemd unit's NRestarts). A count that went down
// was reset (the runner stayed up long enough, or was started anew): what
// it shows now is new. VMs not read this pass keep their last count, and
// VMs gone from the backend are forgotten.
func crashRestarts(seen map[string]int, restarts map[string]int, listed map[string]bool) map[string]int {
	added := map[string]int{}
	for vm, n := range restarts {
		prev, ok := seen[vm]
		seen[vm] = n
		switch {
		case !ok:
		case n > prev:
			added[vm] = n - prev
		case n < prev && n > 0:
			added[vm] = n
		}
	}
	for vm := range seen {
		if !listed[vm] {
			delete(seen, vm)
		}
	}
	return added
}

// buildReporter turns one realisation's build into [BuildProgress]
// reports. Its methods do nothing on a nil *buildReporter (no OnBuild).
// line runs on nixrun's stderr goroutine, start and done on the
// operation's, hence the lock.
type buildReporter struct {
	vm  string
	on  func(BuildProgress)
	now func() time.Time

	mu      sync.Mutex
	how     string    // guarded by mu; "" until the build starts
	started time.Time // guarded by mu
}

// newBuildReporter returns a reporter for vm's realisation, nil without on.
func newBuildReporter(vm string, on func(BuildProgress), now func() time.Time) *buildReporter {
	if on == nil {
		return nil
	}
	return &buildReporter{vm: vm, on: on, now: now}
}

// start: the build starts (realise's building hook).
func (b *buildReporter) start(how string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.how, b.started = how, b.now()
	p := BuildProgress{VM: b.vm, How: how, Started: b.started}
	b.mu.Unlock()
	b.on(p)
}

// line: nix printed line. Lines before the build starts (a substitution
// from a binary cache, the first try) are not reported: nothing builds.
func (b *buildReporter) line(line string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	p := BuildProgress{VM: b.vm, How: b.how, Started: b.started, Line: line}
	b.mu.Unlock()
	if p.How != "" {
		b.on(p)
	}
}

// done: the realisation ended with err; reported only when it built.
func (b *buildReporter) done(err error) {
	if b == nil {
		return
	}
	b.mu.Lock()
	p := BuildProgress{VM: b.vm, How: b.how, Started: b.started, Done: true, Err: err}
	b.mu.Unlock()
	if p.How != "" {
		b.on(p)
	}
}
