package reconciler

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// countingSource answers every Fetch with the same commit and counts the
// fetches.
type countingSource struct {
	commit string

	mu sync.Mutex
	n  int
}

func (s *countingSource) Fetch(context.Context) (Fetched, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return Fetched{Commit: s.commit}, nil
}

func (s *countingSource) fetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// requestSync is the command a follower proposes, as a test proposes it
// for a follower it does not run.
var requestSync = replicated.Command{Type: replicated.CmdRequestSync, RequestSync: &replicated.RequestSync{}}

func syncRequests(t *testing.T, s Store) uint64 {
	t.Helper()
	st, err := s.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.SyncRequests
}

func TestFollowerTriggersBecomeOneRequestSyncPerBurst(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	store := testkit.NewStore(nil)
	store.SetLeader(false)
	src := &countingSource{commit: "c1"}
	r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: &countingEval{},
		Poll: time.Minute, Resync: time.Second, Now: clock.Now})
	proposals := func() int { return len(store.ProposedOf(replicated.CmdRequestSync)) }

	// Without a trigger a follower proposes nothing.
	if res, err := r.step(ctx); err != nil || !res.IsZero() || proposals() != 0 {
		t.Fatalf("follower step without a trigger: %+v, %v, %d proposals; want nothing", res, err, proposals())
	}
	// A burst (Trigger, and the webhook handler's own sends) makes one request.
	for range 50 {
		r.Trigger()
		select {
		case r.Triggers() <- struct{}{}:
		default:
		}
	}
	if _, err := r.step(ctx); err != nil || proposals() != 1 || syncRequests(t, store) != 1 {
		t.Fatalf("a burst of triggers: err %v, %d proposals, SyncRequests %d; want 1 and 1", err, proposals(), syncRequests(t, store))
	}
	if st := r.Status(); !st.SyncRequested.Equal(clock.Now()) || st.SyncRequestError != "" || st.Leader {
		t.Errorf("status after the request: %+v", st)
	}
	// Another burst within Resync waits for it, and is not dropped …
	for range 50 {
		r.Trigger()
	}
	clock.Advance(300 * time.Millisecond)
	if res, err := r.step(ctx); err != nil || proposals() != 1 || res.RequeueAfter != 700*time.Millisecond {
		t.Fatalf("a burst within Resync: %+v, %v, %d proposals; want none made and a requeue in 700ms", res, err, proposals())
	}
	// … it is made once Resync has passed, once.
	clock.Advance(700 * time.Millisecond)
	if _, err := r.step(ctx); err != nil || proposals() != 2 {
		t.Fatalf("after Resync: err %v, %d proposals; want 2", err, proposals())
	}
	clock.Advance(time.Hour)
	if _, err := r.step(ctx); err != nil || proposals() != 2 {
		t.Fatalf("no trigger pending: err %v, %d proposals; want still 2", err, proposals())
	}
	if src.fetches() != 0 {
		t.Errorf("a follower fetched %d times; only the leader fetches", src.fetches())
	}
}

// gatedFollower is a follower's store whose RequestSync proposals wait
// until the test releases them: a proposal in flight.
type gatedFollower struct {
	*testkit.Store
	entered chan struct{}
	release chan struct{}
}

func (s *gatedFollower) IsLeader() bool { return false }

func (s *gatedFollower) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	if cmd.Type == replicated.CmdRequestSync {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.Store.Propose(ctx, cmd)
}

func TestFollowerTriggerDuringARequestMakesOneMore(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	store := &gatedFollower{Store: testkit.NewStore(nil), entered: make(chan struct{}, 4), release: make(chan struct{})}
	r := newTestReconciler(t, Options{Store: store, Source: &countingSource{}, Evaluator: &countingEval{},
		Poll: time.Minute, Resync: time.Second, Now: clock.Now})

	r.Trigger()
	done := make(chan error, 1)
	go func() {
		_, err := r.step(ctx)
		done <- err
	}()
	<-store.entered
	// Pushes announced while the request is in flight: the request may
	// already have been applied and read, so they need one more.
	for range 20 {
		r.Trigger()
	}
	close(store.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := r.step(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := r.step(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(store.ProposedOf(replicated.CmdRequestSync)); n != 2 {
		t.Fatalf("%d RequestSync proposals, want 2: the one in flight and one for the triggers during it", n)
	}
}

func TestFollowerFailedRequestSyncIsReportedAndNotRetried(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	inner := testkit.NewStore(nil)
	inner.SetLeader(false)
	inner.FailProposals(errors.New("no leader"))
	store := &answeringStore{Store: inner} // records every attempt
	r := newTestReconciler(t, Options{Store: store, Source: &countingSource{}, Evaluator: &countingEval{},
		Poll: time.Minute, Resync: time.Second, Now: clock.Now})

	r.Trigger()
	if res, err := r.step(ctx); err != nil || !res.IsZero() {
		t.Fatalf("a failed request is no pass error (the leader's poll covers it): %+v, %v", res, err)
	}
	if st := r.Status(); !strings.Contains(st.SyncRequestError, "no leader") {
		t.Errorf("status after a failed request: %+v; want the error", st)
	}
	clock.Advance(time.Hour)
	if _, err := r.step(ctx); err != nil || len(store.Proposed()) != 1 {
		t.Fatalf("after a failed request: err %v, %d attempts; want 1 (not retried)", err, len(store.Proposed()))
	}
	inner.FailProposals(nil)
	r.Trigger()
	if _, err := r.step(ctx); err != nil || syncRequests(t, store) != 1 || r.Status().SyncRequestError != "" {
		t.Fatalf("the next trigger: err %v, SyncRequests %d, status %+v", err, syncRequests(t, store), r.Status())
	}
}

func TestLeaderFetchesWhenSyncRequestsMove(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	store := testkit.NewStore(nil)
	src := &countingSource{commit: ""} // nothing to evaluate: only fetches count
	r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: &countingEval{},
		Poll: time.Hour, Resync: time.Second, Now: clock.Now})
	step := func(what string, want int) {
		t.Helper()
		clock.Advance(time.Second)
		if _, err := r.step(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := src.fetches(); got != want {
			t.Fatalf("%s: %d fetches, want %d", what, got, want)
		}
	}

	step("a new term", 1)
	step("nothing new", 1)
	if _, err := store.Propose(ctx, requestSync); err != nil {
		t.Fatal(err)
	}
	step("a follower's request", 2)
	step("the request answered", 2)
	for range 3 {
		if _, err := store.Propose(ctx, requestSync); err != nil {
			t.Fatal(err)
		}
	}
	step("three requests since the last fetch", 3)
	step("the requests answered", 3)
	// The leader's own trigger needs no request: it fetches directly.
	r.Trigger()
	step("the leader's own trigger", 4)
	if n := len(store.ProposedOf(replicated.CmdRequestSync)); n != 4 {
		t.Errorf("%d RequestSync proposals, want the test's 4: the leader proposes none", n)
	}
}

func TestNewLeaderTakesSyncRequestsAsSeen(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	st := replicated.NewState()
	st.SyncRequests = 7 // asked of an earlier leader
	store := testkit.NewStore(st)
	store.SetLeader(false)
	src := &countingSource{}
	r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: &countingEval{},
		Poll: time.Hour, Resync: time.Second, Now: clock.Now})

	if _, err := r.step(ctx); err != nil || src.fetches() != 0 {
		t.Fatalf("as a follower: err %v, %d fetches", err, src.fetches())
	}
	store.SetLeader(true)
	for i := range 3 {
		clock.Advance(time.Second)
		if _, err := r.step(ctx); err != nil || src.fetches() != 1 {
			t.Fatalf("pass %d as the new leader: err %v, %d fetches; want 1 (at once, and no more for old requests)", i, err, src.fetches())
		}
	}
	// Leadership lost and won again: a new term fetches at once again.
	store.SetLeader(false)
	if _, err := r.step(ctx); err != nil {
		t.Fatal(err)
	}
	store.SetLeader(true)
	if _, err := r.step(ctx); err != nil || src.fetches() != 2 {
		t.Fatalf("a second term: err %v, %d fetches; want 2", err, src.fetches())
	}
}

// TestTriggerOnFollowerMakesLeaderFetch runs two loops with Start over one
// replicated state, as two nodes: a send on the follower's Triggers (what
// the webhook handler does) makes the leader fetch, though its poll is an
// hour away. The deadline is a hang guard, not a timing assertion.
func TestTriggerOnFollowerMakesLeaderFetch(t *testing.T) {
	state := testkit.NewStore(nil)
	leaderSrc, followerSrc := &countingSource{commit: "c1"}, &countingSource{commit: "c1"}
	opts := func(id uint64, src Source) Options {
		return Options{Store: testkit.NewReplica(state, id, 1), Source: src, Evaluator: &countingEval{err: errors.New("not evaluated here")},
			Poll: time.Hour, Resync: 20 * time.Millisecond, Logger: testLogger()}
	}
	leader, follower := New(opts(1, leaderSrc)), New(opts(2, followerSrc))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range []*Reconciler{leader, follower} {
		wg.Go(func() {
			if err := r.Start(ctx); err != nil {
				t.Errorf("Start: %v", err)
			}
		})
	}
	defer func() { cancel(); wg.Wait() }()

	testkit.WaitFor(t, 10*time.Second, "the leader's first fetch", testkit.Until(func() bool { return leaderSrc.fetches() >= 1 }))
	before := leaderSrc.fetches()
	follower.Triggers() <- struct{}{}
	testkit.WaitFor(t, 10*time.Second, "the leader to fetch for the follower's trigger", testkit.Until(func() bool {
		return leaderSrc.fetches() > before
	}))
	if n := followerSrc.fetches(); n != 0 {
		t.Errorf("the follower fetched %d times", n)
	}
	if st := follower.Status(); st.SyncRequested.IsZero() || st.SyncRequestError != "" {
		t.Errorf("follower status %+v; want a request without error", st)
	}
}

// flakySource fails its first failures fetches, then answers commit; it
// counts the fetches.
type flakySource struct {
	commit   string
	failures int

	mu sync.Mutex
	n  int
}

func (s *flakySource) Fetch(context.Context) (Fetched, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	if s.n <= s.failures {
		return Fetched{}, errors.New("repository unreachable")
	}
	return Fetched{Commit: s.commit}, nil
}

func (s *flakySource) fetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// TestFailedFetchesAreRetriedBeforeThePoll: a new leader whose fetch fails
// tries again after Resync, then after waits that double, capped at Poll,
// instead of waiting a whole poll interval (an hour here) with the push
// that was announced; after a good fetch the poll interval applies again.
func TestFailedFetchesAreRetriedBeforeThePoll(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	store := testkit.NewStore(nil)
	src := &flakySource{commit: "c1", failures: 7}
	const resync, poll = time.Second, 10 * time.Second
	r := newTestReconciler(t, Options{Store: store, Source: src, Evaluator: &countingEval{err: timeoutErr{}},
		Poll: poll, Resync: resync, Now: clock.Now})
	start := clock.Now()
	if _, err := r.step(ctx); err != nil || src.fetches() != 1 {
		t.Fatalf("first pass of a new leader: err %v, %d fetches; want 1", err, src.fetches())
	}
	// The fetch at +0 s failed; the next ones come at +1, +2, +4, +8, +16
	// and +26 s (the waits stop growing at Poll); the 8th, at +36 s, works.
	for i, at := range []time.Duration{1, 2, 4, 8, 16, 26, 36} {
		at *= time.Second
		clock.Advance(start.Add(at - resync/2).Sub(clock.Now()))
		if res, err := r.step(ctx); err != nil || src.fetches() != i+1 || res.RequeueAfter != resync/2 {
			t.Fatalf("pass at +%s, before retry %d: %+v, err %v, %d fetches; want %d and a requeue in %s",
				at-resync/2, i+1, res, err, src.fetches(), i+1, resync/2)
		}
		clock.Advance(resync / 2)
		if _, err := r.step(ctx); err != nil || src.fetches() != i+2 {
			t.Fatalf("pass at +%s: err %v, %d fetches; want %d", at, err, src.fetches(), i+2)
		}
		if got := r.Status().FetchError; (i+2 <= src.failures) != (got != "") {
			t.Fatalf("after fetch %d: Status().FetchError = %q", i+2, got)
		}
	}
	// Fetching works again: the next fetch is a poll interval later.
	fetchedAt := clock.Now()
	clock.Advance(poll - resync/2)
	if _, err := r.step(ctx); err != nil || src.fetches() != 8 {
		t.Fatalf("pass before the poll: err %v, %d fetches; want still 8", err, src.fetches())
	}
	clock.Advance(fetchedAt.Add(poll).Sub(clock.Now()))
	if _, err := r.step(ctx); err != nil || src.fetches() != 9 {
		t.Fatalf("pass at the poll: err %v, %d fetches; want 9", err, src.fetches())
	}
}

// stalledSource is a remote that accepts the fetch and never answers: its
// Fetch returns only when its context ends.
type stalledSource struct{}

func (stalledSource) Fetch(ctx context.Context) (Fetched, error) {
	<-ctx.Done()
	return Fetched{}, ctx.Err()
}

// TestAStalledFetchIsGivenUp: a fetch that does not return within
// FetchTimeout is stopped and counts as a failed fetch (FetchFailed, the
// status says why), so the leader's pass goes on to liveness and planning.
func TestAStalledFetchIsGivenUp(t *testing.T) {
	ctx := context.Background()
	clock := testkit.NewClock(time.Unix(1000, 0))
	store := testkit.NewStore(nil)
	r := newTestReconciler(t, Options{Store: store, Source: stalledSource{}, Evaluator: &countingEval{},
		Poll: time.Minute, Resync: time.Second, FetchTimeout: 50 * time.Millisecond, Now: clock.Now})
	done := make(chan error, 1)
	go func() {
		_, err := r.step(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pass: %v", err)
		}
	case <-time.After(30 * time.Second): // a hang guard, not a timing assertion
		t.Fatal("the pass waits for a stalled fetch")
	}
	if got := r.Status().FetchError; !strings.Contains(got, "did not finish within 50ms") || !strings.Contains(got, "--fetch-timeout") {
		t.Errorf("Status().FetchError = %q, want it to say the fetch was stopped after 50ms and name --fetch-timeout", got)
	}
	if got := describe(store.Proposed()); len(got) != 1 || !strings.HasPrefix(got[0], "Set FetchFailed") {
		t.Errorf("proposed %q, want one FetchFailed", got)
	}
}
