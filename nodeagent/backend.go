package nodeagent

import (
	"context"
	"errors"
	"time"
)

// Backend runs the units (one per VM) of a host. Unit NAME runs
// STATE/NAME/current/bin/microvm-run with working directory STATE/NAME,
// as microvm.nix's microvm@NAME.service does. It is implemented by
// [ProcessBackend] here; a systemd backend follows the same contract.
//
// Lifecycle: Run must be running while the other methods are called; they
// wait until Run has adopted the units that already run and fail with
// [ErrBackendStopped] once Run has returned. All methods are safe for
// concurrent use; calls for different names do not wait on each other.
type Backend interface {
	// Run adopts the units that already run on the host (runners outlive
	// the agent), then supervises them until ctx ends: a unit whose runner
	// exits without Stop is restarted with backoff. Ending ctx does not stop
	// any unit.
	Run(ctx context.Context) error
	// Start starts unit name unless it already runs (then it does nothing,
	// even when booted differs from current). It records STATE/name/booted →
	// the out path it started. An error means the unit is not running.
	Start(ctx context.Context, name string) error
	// Stop stops unit name: STATE/name/booted/bin/microvm-shutdown when it
	// exists, then SIGTERM, then SIGKILL after a timeout. Stopping a unit
	// that does not run is not an error. The state directory is kept.
	Stop(ctx context.Context, name string) error
	// Restart stops unit name (as Stop) and starts it on current.
	Restart(ctx context.Context, name string) error
	// Kill ends unit name now: SIGKILL to all of its processes, with no
	// microvm-shutdown and no SIGTERM grace, then waits (bounded by ctx)
	// until they are gone. The unit is not restarted and ends stopped as
	// after Stop (booted and the pid file removed); a restart scheduled
	// after a crash is dropped. It does not wait for an operation in
	// progress on the unit: a graceful Stop may hold the unit for minutes,
	// and a fenced agent must be done within the gap between its lease and
	// the leader's node timeout. Killing a unit that does not run is not an
	// error.
	Kill(ctx context.Context, name string) error
	// Status reports unit name; a unit the backend does not know is
	// reported inactive with a nil error.
	Status(name string) (UnitStatus, error)
	// List names the units the backend knows: running, restarting after a
	// crash, or failed.
	List() ([]string, error)
	// Events delivers names of units whose status changed without being
	// asked (a crash, a restart after one), so the agent reacts without
	// polling. Deliveries may be dropped when the reader lags: it must also
	// resync periodically.
	Events() <-chan string
}

// ErrBackendStopped is returned by a backend's methods once its Run has returned.
var ErrBackendStopped = errors.New("nodeagent: backend is not running")

// UnitStatus is a backend's view of one unit.
type UnitStatus struct {
	// Active: a runner process is alive.
	Active bool
	// PID of the runner while Active.
	PID int
	// Activating: Active, but the unit has not finished starting: a
	// Type=notify unit (microvm.nix's host.useNotifySockets) whose guest
	// has not sent READY=1 yet, or one whose ExecStartPost still runs.
	// The VM does not count as running yet (see [Decide]).
	Activating bool
	// Booted is the out path the runner was started from (STATE/NAME/booted),
	// "" when the unit never started or was stopped.
	Booted string
	// Restarting: the runner exited without Stop and the backend starts it
	// again at NextRestart (systemd's "activating (auto-restart)").
	Restarting  bool
	NextRestart time.Time
	// Restarts counts restarts after crashes since the runner last stayed up
	// long enough to reset its backoff.
	Restarts int
	// ExitCode of the last exit: -1 when killed by a signal or unknown
	// (an adopted runner is not our child, so its code is unknown).
	ExitCode int
	// Result describes the last exit ("exited with code 1", "killed by
	// signal: killed", "exited (adopted runner, code unknown)"); "" before any.
	Result string
	// Since is when the unit entered its current state.
	Since time.Time
}

// waitRunning waits until ready is closed (a backend's Run has started),
// failing with ErrBackendStopped once done is closed (Run has returned).
func waitRunning(ctx context.Context, ready, done <-chan struct{}) error {
	select {
	case <-done:
		return ErrBackendStopped
	default:
	}
	select {
	case <-ready:
		select {
		case <-done:
			return ErrBackendStopped
		default:
			return nil
		}
	case <-done:
		return ErrBackendStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}
