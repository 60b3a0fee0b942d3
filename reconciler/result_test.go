package reconciler

import (
	"errors"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
)

func TestWaitAfter(t *testing.T) {
	const resync = time.Second
	transient := errors.New("reading the replicated state: timeout")
	terminal := TerminalError(errors.New("the plan for c1 was refused"))
	for _, tt := range []struct {
		name        string
		res         Result
		err         error
		backoff     time.Duration
		wantWait    time.Duration
		wantBackoff time.Duration
	}{
		{"a converged pass waits for the resync tick", Result{}, nil, 0, resync, 0},
		{"a requeue sooner than the resync tick comes first", Result{RequeueAfter: 200 * time.Millisecond}, nil, 0, 200 * time.Millisecond, 0},
		{"a requeue later than the resync tick waits for the tick", Result{RequeueAfter: 4 * time.Second}, nil, 0, resync, 0},
		{"a good pass resets the backoff", Result{}, nil, 8 * time.Second, resync, 0},
		{"a first transient error is retried after one resync", Result{}, transient, 0, resync, resync},
		{"a repeated transient error doubles the wait", Result{}, transient, 4 * time.Second, 8 * time.Second, 8 * time.Second},
		{"transient errors back off up to 30 s", Result{}, transient, 20 * time.Second, 30 * time.Second, 30 * time.Second},
		{"transient errors stay at 30 s", Result{}, transient, 30 * time.Second, 30 * time.Second, 30 * time.Second},
		{"an error wins over a requeue", Result{RequeueAfter: time.Millisecond}, transient, 0, resync, resync},
		{"a terminal error is not retried with backoff: the next pass is the resync tick", Result{}, terminal, 8 * time.Second, resync, 0},
		{"a terminal error joined with a transient one is retried with backoff", Result{},
			joinErrors([]error{terminal, transient}), 2 * time.Second, 4 * time.Second, 4 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wait, backoff := waitAfter(tt.res, tt.err, tt.backoff, resync)
			if wait != tt.wantWait || backoff != tt.wantBackoff {
				t.Fatalf("waitAfter = (%s, %s), want (%s, %s)", wait, backoff, tt.wantWait, tt.wantBackoff)
			}
		})
	}
}

func TestJoinErrorsIsTerminalOnlyWhenEveryErrorIs(t *testing.T) {
	a := TerminalError(errors.New("refused a"))
	b := TerminalError(errors.New("refused b"))
	c := errors.New("timeout")
	if err := joinErrors([]error{a, b}); !IsTerminal(err) {
		t.Errorf("two terminal errors: IsTerminal(%v) = false", err)
	}
	if err := joinErrors([]error{a, c}); IsTerminal(err) || err.Error() != "refused a\ntimeout" {
		t.Errorf("terminal and transient: %q, terminal %t; want both messages, transient", err, IsTerminal(err))
	}
	if err := joinErrors(nil); err != nil {
		t.Errorf("no errors: %v", err)
	}
	if TerminalError(nil) != nil {
		t.Error("TerminalError(nil) != nil")
	}
}

func TestEvalDue(t *testing.T) {
	const base, poll = time.Second, 5 * time.Second
	t0 := time.Unix(1000, 0)
	failed := func(commit string, retryable bool, at time.Time) replicated.Condition {
		return replicated.Condition{Type: replicated.EvalFailed, Commit: commit, Message: "boom", Retryable: retryable, Since: at, At: at}
	}
	failingSince := func(since, at time.Time) replicated.Condition {
		c := failed("c", true, at)
		c.Since = since
		return c
	}
	for _, tt := range []struct {
		name      string
		cond      replicated.Condition
		set       bool
		now       time.Time
		termStart time.Time
		lastTry   time.Time
		wantDue   bool
		wantAt    time.Time
	}{
		{name: "a commit with no recorded failure is evaluated now", now: t0, wantDue: true},
		{name: "a failure of another commit does not hold this one back", cond: failed("other", false, t0), set: true, now: t0, wantDue: true},
		{name: "a permanent failure is never evaluated again", cond: failed("c", false, t0), set: true,
			now: t0.Add(time.Hour), termStart: t0.Add(-time.Hour), wantDue: false},
		{name: "a permanent failure recorded by an older term is never evaluated again either", cond: failed("c", false, t0), set: true,
			now: t0.Add(time.Hour), termStart: t0.Add(30 * time.Minute), wantDue: false},
		{name: "a first temporary failure waits the base after it was recorded", cond: failed("c", true, t0), set: true,
			now: t0.Add(time.Second / 2), termStart: t0.Add(-time.Minute), wantAt: t0.Add(base)},
		{name: "a first temporary failure is retried the base after it was recorded", cond: failed("c", true, t0), set: true,
			now: t0.Add(base), termStart: t0.Add(-time.Minute), wantDue: true},
		{name: "a failure recorded anew waits as long as it has been failing", cond: failingSince(t0, t0.Add(3*time.Second)), set: true,
			now: t0.Add(4 * time.Second), termStart: t0.Add(-time.Minute), wantAt: t0.Add(6 * time.Second)},
		{name: "a long failure waits at most Poll", cond: failingSince(t0, t0.Add(time.Hour)), set: true,
			now: t0.Add(time.Hour), termStart: t0.Add(-time.Minute), wantAt: t0.Add(time.Hour + poll)},
		{name: "a temporary failure recorded before this term is retried at once by a new leader", cond: failed("c", true, t0), set: true,
			now: t0.Add(time.Second / 2), termStart: t0.Add(time.Second / 2), wantDue: true},
		{name: "an identical failure of this term's own retry waits as long as it has been failing, from that try", cond: failed("c", true, t0), set: true,
			now: t0.Add(2 * time.Second), termStart: t0.Add(-time.Minute), lastTry: t0.Add(time.Second), wantAt: t0.Add(2 * time.Second), wantDue: true},
		{name: "the waits between a term's own tries double", cond: failed("c", true, t0), set: true,
			now: t0.Add(3 * time.Second), termStart: t0.Add(-time.Minute), lastTry: t0.Add(2 * time.Second), wantAt: t0.Add(4 * time.Second)},
		{name: "and stop growing at Poll", cond: failed("c", true, t0), set: true,
			now: t0.Add(7 * time.Second), termStart: t0.Add(-time.Minute), lastTry: t0.Add(6 * time.Second), wantAt: t0.Add(11 * time.Second)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			due, at := EvalDue(tt.cond, tt.set, "c", tt.now, tt.termStart, tt.lastTry, base, poll)
			if tt.wantDue {
				tt.wantAt = time.Time{}
			}
			if due != tt.wantDue || !at.Equal(tt.wantAt) {
				t.Fatalf("EvalDue = (%t, %s), want (%t, %s)", due, at, tt.wantDue, tt.wantAt)
			}
		})
	}
}

func TestRetryWait(t *testing.T) {
	const base, limit = time.Second, time.Minute
	for _, tt := range []struct {
		failingFor, want time.Duration
	}{
		{0, base},
		{time.Second / 2, base},
		{3 * time.Second, 3 * time.Second},
		{limit, limit},
		{time.Hour, limit},
	} {
		if got := RetryWait(tt.failingFor, base, limit); got != tt.want {
			t.Errorf("RetryWait(%s, %s, %s) = %s, want %s", tt.failingFor, base, limit, got, tt.want)
		}
	}
	// A limit below the base (a Poll shorter than Resync) waits the base.
	if got := RetryWait(0, base, time.Millisecond); got != base {
		t.Errorf("RetryWait with limit < base = %s, want the base %s", got, base)
	}
}
