package reconciler

import (
	"time"

	"github.com/blixard/blixard/replicated"
)

// Metrics receives the leader loop's measurements (the node's Prometheus
// registry, package metrics). Its methods must be safe for concurrent use:
// evaluations run on their own goroutine. Work cut short by a shutdown, a
// newer commit or the loss of leadership is not measured.
type Metrics interface {
	// ObserveFetch: one fetch of the tracked ref took d; err is nil when
	// it succeeded.
	ObserveFetch(d time.Duration, err error)
	// ObserveEval: one evaluation of a fetched commit took d.
	ObserveEval(d time.Duration, err error)
	// ObservePlan: planning took d (the volume check and Compute); replan
	// says whether it re-planned the running revision (every pass does)
	// rather than planned a newly evaluated commit.
	ObservePlan(d time.Duration, replan bool)
	// ObserveCommit: proposing a plan until this replica applied it (or
	// the cluster refused it) took d; result is "ok", "stale" (another
	// plan committed first), "refused" or "error" (outcome unknown).
	ObserveCommit(d time.Duration, result string)
	// ObservePushToRunning: from the fetch that first saw a commit to
	// every instance of its revision running (and healthy, where checked)
	// took d, as this leader measured it (see pushWatch).
	ObservePushToRunning(d time.Duration)
}

// noMetrics is the Metrics of a reconciler given none.
type noMetrics struct{}

func (noMetrics) ObserveFetch(time.Duration, error)   {}
func (noMetrics) ObserveEval(time.Duration, error)    {}
func (noMetrics) ObservePlan(time.Duration, bool)     {}
func (noMetrics) ObserveCommit(time.Duration, string) {}
func (noMetrics) ObservePushToRunning(time.Duration)  {}

// pushWatch is the commit whose push-to-running time the leader is
// measuring: the fetch that first saw it, by the leader's clock.
type pushWatch struct {
	commit string
	seen   time.Time
}

// watchPush returns what to measure after a fetch that found commit at
// now, given what was measured so far (w): a new commit starts a new
// measurement (the older one will not converge as itself); the same one
// keeps its first sighting. The running revision's commit is not measured:
// nothing was pushed.
func watchPush(w *pushWatch, commit, running string, now time.Time) *pushWatch {
	switch {
	case commit == "" || commit == running && w == nil:
		return w
	case w != nil && w.commit == commit:
		return w
	}
	return &pushWatch{commit: commit, seen: now}
}

// pushDone decides, from a state read in a pass at now, whether the
// watched push converged (done: measure d) or will not (done, d = 0: a
// failed rollout or evaluation; stop watching). Otherwise it goes on.
// Convergence is [Converge]'s: the revision runs the commit and every
// instance is ready.
func pushDone(w *pushWatch, st *replicated.State, now time.Time) (done bool, d time.Duration) {
	if w == nil {
		return false, 0
	}
	switch Converge(st, w.commit).State {
	case Converged:
		return true, now.Sub(w.seen)
	case Failed:
		return true, 0
	}
	return false, 0
}
