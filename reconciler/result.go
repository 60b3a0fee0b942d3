package reconciler

import (
	"errors"
	"time"
)

// Result is what one pass asks of the loop owner ([Reconciler.Start]). It is
// modelled on controller-runtime's reconcile.Result; read it together with
// the pass's error:
//
//   - (Result{}, nil): converged for now. The next pass comes with the next
//     input: a trigger, a finished evaluation, or the resync tick, which
//     stands for "the replicated state may have changed" (the loop does not
//     watch the state).
//   - (Result{RequeueAfter: d}, nil): something is due in d (the next poll of
//     the ref, the retry of a temporarily failed evaluation); the next pass
//     comes no later than that.
//   - (Result{}, err), err transient (any error not marked terminal: a
//     failed read, a proposal whose outcome is unknown, a node that could not
//     be fenced): the pass is run again after an exponential backoff that
//     starts at Options.Resync and stops growing at 30 s.
//   - (Result{}, err), err terminal ([TerminalError]: the cluster refused a
//     command, so sending the same one again cannot help): no backoff retry;
//     the next pass comes with the next input, and it does not propose a
//     refused plan again unless the plan changed.
//
// A pass never returns both a requeue and an error; the loop logs a warning
// and lets the error win if one does.
type Result struct {
	// RequeueAfter, when > 0, is the longest the loop waits before the next
	// pass.
	RequeueAfter time.Duration
}

// IsZero reports whether r asks for nothing.
func (r Result) IsZero() bool { return r == Result{} }

// TerminalError marks err as terminal: retrying the same step cannot help
// until its input changes. It returns nil for nil.
func TerminalError(err error) error {
	if err == nil {
		return nil
	}
	return &terminalError{err: err}
}

type terminalError struct{ err error }

func (e *terminalError) Error() string { return e.err.Error() }
func (e *terminalError) Unwrap() error { return e.err }

// IsTerminal reports whether err is (or wraps) a [TerminalError].
func IsTerminal(err error) bool {
	var t *terminalError
	return errors.As(err, &t)
}

// maxBackoff bounds the wait after repeated transient errors (when
// Options.Resync is shorter).
const maxBackoff = 30 * time.Second

// waitAfter is the one place that turns a pass's result and error into a
// wait: how long the loop waits before the next pass (unless a trigger or a
// finished evaluation comes first), and the backoff the next transient
// error starts from. It is pure; see [Result] for the contract.
func waitAfter(res Result, err error, backoff, resync time.Duration) (wait, nextBackoff time.Duration) {
	switch {
	case err == nil:
		wait = resync
		if res.RequeueAfter > 0 && res.RequeueAfter < wait {
			wait = res.RequeueAfter
		}
		return wait, 0
	case IsTerminal(err):
		return resync, 0
	}
	limit := max(maxBackoff, resync)
	switch {
	case backoff < resync:
		backoff = resync
	case backoff > limit/2:
		backoff = limit
	default:
		backoff *= 2
	}
	return backoff, backoff
}

// RetryWait is how long a failure that may go away (a fetch that failed, a
// temporarily failed evaluation) waits before the next try, given how long
// it has been failing: as long again, at least base and at most limit. The
// tries come after base, 2·base, 4·base, … and then every limit, so a
// short outage costs seconds, not a whole poll interval, and a long one
// costs no more tries than polling would.
func RetryWait(failingFor, base, limit time.Duration) time.Duration {
	return min(max(failingFor, base), max(limit, base))
}

// joinErrors joins the errors of a pass's steps. The result is terminal
// only when every error is: one transient error makes the pass worth
// retrying, so terminal ones are then kept as plain messages.
func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	all := true
	for _, err := range errs {
		all = all && IsTerminal(err)
	}
	if all {
		return errors.Join(errs...)
	}
	out := make([]error, len(errs))
	for i, err := range errs {
		out[i] = err
		if IsTerminal(err) {
			out[i] = errors.New(err.Error())
		}
	}
	return errors.Join(out...)
}
