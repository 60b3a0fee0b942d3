package notify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/notify"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/replicated"
)

// receiver is a webhook receiver: it records every POST and answers what
// answer says for it (nil: 200).
type receiver struct {
	t      testing.TB
	secret []byte
	srv    *httptest.Server

	mu     sync.Mutex
	got    []notify.Notification // in arrival order, accepted or not
	answer func(n notify.Notification, attempt int) int
	seen   map[string]int // ID → attempts
	// arrived, when set, is told the ID of every POST (it must not block).
	arrived chan string
}

func newReceiver(t testing.TB, secret []byte, answer func(n notify.Notification, attempt int) int) *receiver {
	r := &receiver{t: t, secret: secret, answer: answer, seen: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	var n notify.Notification
	if err := json.Unmarshal(body, &n); err != nil {
		r.t.Errorf("a POST that is not a notification: %v: %s", err, body)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if want := notify.Sign(r.secret, body); len(r.secret) > 0 && req.Header.Get(notify.HeaderSignature) != want {
		r.t.Errorf("notification %s signed %q, want %q", n.ID, req.Header.Get(notify.HeaderSignature), want)
	}
	if req.Header.Get(notify.HeaderDelivery) != n.ID || req.Header.Get(notify.HeaderEvent) != n.Kind ||
		req.Header.Get("Content-Type") != "application/json" {
		r.t.Errorf("notification %s: headers %v", n.ID, req.Header)
	}
	r.mu.Lock()
	r.got = append(r.got, n)
	r.seen[n.ID]++
	attempt, answer := r.seen[n.ID], r.answer
	r.mu.Unlock()
	if r.arrived != nil {
		r.arrived <- n.ID
	}
	code := http.StatusOK
	if answer != nil {
		code = answer(n, attempt)
	}
	w.WriteHeader(code)
}

// attempts is how many POSTs of id arrived.
func (r *receiver) attempts(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

// received is every notification that arrived, by ID (the last one).
func (r *receiver) received() map[string]notify.Notification {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]notify.Notification{}
	for _, n := range r.got {
		out[n.ID] = n
	}
	return out
}

// startStores starts n real Raft voters on loopback, closed when the test
// ends (closing one before is fine). Like the node, each wakes its
// notifier after every applied entry: run registers it in wake.
func startStores(t testing.TB, n int) []*replica {
	t.Helper()
	members := map[uint64]string{}
	for i := range n {
		members[uint64(i+1)] = testkit.FreeLoopbackAddr(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stores := make([]*raftstore.Store, n)
	wakers := make([]atomic.Pointer[notify.Notifier], n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		id := uint64(i + 1)
		w := &wakers[i]
		cfg := raftstore.Config{NodeID: id, RaftAddr: members[id], DataDir: filepath.Join(t.TempDir(), fmt.Sprint(id)),
			Members: members, QuietRaftLog: true, Logger: slog.New(slog.DiscardHandler),
			OnApply: func(uint64) {
				if n := w.Load(); n != nil {
					n.Notify()
				}
			}}
		wg.Go(func() { stores[i], errs[i] = raftstore.Start(ctx, cfg) })
	}
	wg.Wait()
	for _, s := range stores {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	out := make([]*replica, n)
	for i, s := range stores {
		out[i] = &replica{Store: s, notifier: &wakers[i]}
	}
	return out
}

// replica is a real replica and the notifier its applied entries wake.
type replica struct {
	*raftstore.Store
	notifier *atomic.Pointer[notify.Notifier]
}

// run starts a notifier on r until the test ends (or stop is called).
func run(t testing.TB, r *replica, o notify.Options) (*notify.Notifier, func()) {
	t.Helper()
	o.Replica = r.Store
	n, err := notify.New(o)
	if err != nil {
		t.Fatal(err)
	}
	r.notifier.Store(n)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Run(ctx)
	}()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return n, stop
}

// propose commits cmd through s, stamped now (the resend window is
// measured against the events' times).
func propose(t testing.TB, s *replica, cmd replicated.Command) replicated.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd.At = time.Now()
	res, err := s.ProposeOK(ctx, cmd, time.Now)
	if err != nil {
		t.Fatalf("proposing %s: %v", cmd.Type, err)
	}
	return res
}

// commitPlans commits n plans one after the other on s; it returns the
// revision ids.
func commitPlans(t *testing.T, s *replica, n int) []uint64 {
	t.Helper()
	st, err := s.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Nodes[1] == nil {
		propose(t, s, testkit.Register(1))
	}
	parent := uint64(0)
	if st.Revision != nil {
		parent = st.Revision.ID
	}
	var ids []uint64
	for i := range n {
		res := propose(t, s, testkit.Plan(parent, fmt.Sprintf("%040x", parent*1000+uint64(i)+1), testkit.Assign("web", 1, fmt.Sprint(i))))
		parent = res.Revision
		ids = append(ids, parent)
	}
	return ids
}

func leaderOf(t *testing.T, stores []*replica) *replica {
	t.Helper()
	var leader *replica
	testkit.WaitFor(t, 30*time.Second, "a leader", func() error {
		for _, s := range stores {
			if s != nil && s.IsLeader() {
				leader = s
				return nil
			}
		}
		return errors.New("none yet")
	})
	return leader
}

// TestCommittedEventsReachTheReceiverSigned: a real replica commits a
// plan and marks a node down; the receiver gets both, signed, with the
// revision's commit and the node — and nothing of the kinds not asked for.
func TestCommittedEventsReachTheReceiverSigned(t *testing.T) {
	stores := startStores(t, 1)
	s := stores[0]
	secret := []byte("s3cret")
	r := newReceiver(t, secret, nil)
	run(t, s, notify.Options{URLs: []string{r.srv.URL + "/hook?token=x"}, Secret: secret, CheckEvery: 50 * time.Millisecond})

	propose(t, s, testkit.Register(1))
	propose(t, s, testkit.Register(2))
	rev := commitPlans(t, s, 1)[0]
	down := propose(t, s, replicated.Command{Type: replicated.CmdSetNodeState,
		SetNodeState: &replicated.SetNodeState{ID: 2, State: replicated.NodeDown, Reason: "silent for 30s"}})
	planID, downID := fmt.Sprintf("%d-PlanCommitted", rev), "" // the down event's index is read below
	st, _ := s.Read(context.Background())
	for _, e := range st.Events {
		if e.Kind == replicated.EventNodeStateChanged {
			downID = fmt.Sprintf("%d-NodeStateChanged", e.Index)
		}
	}
	testkit.WaitFor(t, 30*time.Second, "the plan and the node down notified", func() error {
		got := r.received()
		if _, ok := got[planID]; !ok {
			return fmt.Errorf("got %v", got)
		}
		if _, ok := got[downID]; !ok {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
	got := r.received()
	if p := got[planID]; p.Revision != rev || p.Commit != st.Revision.Commit || p.Cluster != "t" || p.Kind != replicated.EventPlanCommitted {
		t.Errorf("plan notification %+v, want revision %d of commit %s in cluster t", p, rev, st.Revision.Commit)
	}
	if d := got[downID]; d.Node != 2 || d.State != "down" || d.Message != down.Message {
		t.Errorf("node down notification %+v, want node 2 down with %q", d, down.Message)
	}
	if len(got) != 2 {
		t.Errorf("received %d notifications, want only the plan and the node down: %+v", len(got), got)
	}
}

// TestAReceiverAnswering500IsRetried: two 500s, then 200: delivered once,
// after three attempts.
func TestAReceiverAnswering500IsRetried(t *testing.T) {
	s := startStores(t, 1)[0]
	r := newReceiver(t, nil, func(_ notify.Notification, attempt int) int {
		if attempt <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	n, _ := run(t, s, notify.Options{URLs: []string{r.srv.URL}, Backoff: 10 * time.Millisecond, CheckEvery: 50 * time.Millisecond})
	id := fmt.Sprintf("%d-PlanCommitted", commitPlans(t, s, 1)[0])
	testkit.WaitFor(t, 30*time.Second, "the plan delivered", testkit.Until(func() bool { return n.Stats().Sent == 1 }))
	if got := r.attempts(id); got != 3 {
		t.Errorf("%s arrived %d times, want 3 (two 500s, one 200)", id, got)
	}
	if st := n.Stats(); st.Retried != 2 || st.Failed != 0 {
		t.Errorf("stats %+v, want 2 retries and no failure", st)
	}
}

// TestADeadReceiverCostsABoundedNumberOfAttempts: a receiver that always
// fails gets Attempts POSTs per notification and no more; one that refuses
// (400) gets one.
func TestADeadReceiverCostsABoundedNumberOfAttempts(t *testing.T) {
	s := startStores(t, 1)[0]
	dead := newReceiver(t, nil, func(notify.Notification, int) int { return http.StatusServiceUnavailable })
	refusing := newReceiver(t, nil, func(notify.Notification, int) int { return http.StatusBadRequest })
	n, stop := run(t, s, notify.Options{URLs: []string{dead.srv.URL, refusing.srv.URL}, Attempts: 3, Backoff: 10 * time.Millisecond,
		CheckEvery: 50 * time.Millisecond})
	id := fmt.Sprintf("%d-PlanCommitted", commitPlans(t, s, 1)[0])
	testkit.WaitFor(t, 30*time.Second, "both receivers given up", testkit.Until(func() bool { return n.Stats().Failed == 2 }))
	stop() // nothing is sent after Run returned: the counts are final
	if got := dead.attempts(id); got != 3 {
		t.Errorf("the dead receiver got %d attempts, want 3", got)
	}
	if got := refusing.attempts(id); got != 1 {
		t.Errorf("the refusing receiver got %d attempts, want 1", got)
	}
	if st := n.Stats(); st.Sent != 0 || st.Retried != 2 {
		t.Errorf("stats %+v, want nothing sent and 2 retries", st)
	}
}

// TestAHangingReceiverNeverHoldsUpCommits: while the receiver hangs, plans
// keep committing; its queue keeps the newest (the oldest are dropped and
// counted), and once it answers again the newest plan arrives.
func TestAHangingReceiverNeverHoldsUpCommits(t *testing.T) {
	s := startStores(t, 1)[0]
	release := make(chan struct{})
	var once sync.Once
	r := newReceiver(t, nil, func(notify.Notification, int) int { <-release; return http.StatusOK })
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the server closes
	const queue, plans = 3, 20
	n, _ := run(t, s, notify.Options{URLs: []string{r.srv.URL}, QueueSize: queue, Timeout: time.Hour, CheckEvery: 50 * time.Millisecond})

	revs := commitPlans(t, s, plans) // each returns once committed: none waits on the receiver
	last := fmt.Sprintf("%d-PlanCommitted", revs[plans-1])
	testkit.WaitFor(t, 30*time.Second, "the oldest plans dropped", testkit.Detail(func() (bool, string) {
		st := n.Stats()
		// One POST hangs; the queue holds the newest; the rest were dropped.
		return st.Dropped >= plans-queue-1, fmt.Sprintf("stats %+v", st)
	}))
	once.Do(func() { close(release) })
	testkit.WaitFor(t, 30*time.Second, "the newest plan delivered", testkit.Detail(func() (bool, string) {
		st := n.Stats()
		return r.attempts(last) == 1 && st.Sent+st.Dropped == plans, fmt.Sprintf("stats %+v, %s attempts %d", st, last, r.attempts(last))
	}))
}

// TestANewLeaderSendsWhatTheOldOneCouldNot: while node A leads, the
// receiver fails, so A cannot deliver a plan; A stops; the receiver comes
// back; the new leader sends the plan (from its resend window).
func TestANewLeaderSendsWhatTheOldOneCouldNot(t *testing.T) {
	stores := startStores(t, 3)
	var mu sync.Mutex
	up := false
	r := newReceiver(t, nil, func(notify.Notification, int) int {
		mu.Lock()
		defer mu.Unlock()
		if up {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	stops := map[*replica]func(){}
	notifiers := map[*replica]*notify.Notifier{}
	for _, s := range stores {
		notifiers[s], stops[s] = run(t, s, notify.Options{URLs: []string{r.srv.URL}, Backoff: 20 * time.Millisecond,
			Attempts: 1000, CheckEvery: 50 * time.Millisecond})
	}
	old := leaderOf(t, stores)
	id := fmt.Sprintf("%d-PlanCommitted", commitPlans(t, old, 1)[0])
	testkit.WaitFor(t, 30*time.Second, "the old leader trying", testkit.Until(func() bool { return r.attempts(id) >= 2 }))

	stops[old]()
	old.Close()
	var rest []*replica
	for _, s := range stores {
		if s != old {
			rest = append(rest, s)
		}
	}
	mu.Lock()
	up = true
	mu.Unlock()
	nl := leaderOf(t, rest)
	testkit.WaitFor(t, 30*time.Second, "the plan delivered by the new leader", testkit.Detail(func() (bool, string) {
		st := notifiers[nl].Stats()
		return st.Sent >= 1, fmt.Sprintf("new leader %d stats %+v", nl.NodeID(), st)
	}))
	if st := notifiers[old].Stats(); st.Sent != 0 {
		t.Errorf("the old leader delivered %d notifications while the receiver was down", st.Sent)
	}
}
