package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Defaults of [Options].
const (
	DefaultAttempts  = 5
	DefaultQueueSize = 1000
	DefaultTimeout   = 10 * time.Second
	DefaultBackoff   = time.Second
	// MaxBackoff caps the wait between two attempts, Retry-After included.
	MaxBackoff = 30 * time.Second
	// DefaultCheckEvery: leadership is checked this often besides after
	// every applied entry (a leader change applies nothing by itself).
	DefaultCheckEvery = time.Second
	// minResendWindow is the least resend window: a leader change seldom
	// catches an event still in its first attempts later than this.
	minResendWindow = 2 * time.Minute
)

// Headers of every POST.
const (
	HeaderSignature = "X-Blixard-Signature" // "sha256=" + hex HMAC-SHA256 of the body, with a secret
	HeaderEvent     = "X-Blixard-Event"     // the notification's kind
	HeaderDelivery  = "X-Blixard-Delivery"  // the notification's ID
)

// Replica is the node's replica as the notifier needs it;
// *raftstore.Store satisfies it.
type Replica interface {
	// LocalRead returns the local replica's state, possibly stale.
	LocalRead() (*replicated.State, error)
	// LeaderSince returns the leader this replica knows (0: none) and
	// since when.
	LeaderSince() (leader uint64, since time.Time)
	// NodeID is this node's id.
	NodeID() uint64
}

// Options configure a [Notifier]. Zero values take the defaults.
type Options struct {
	Replica Replica
	// URLs are the receivers (http:// or https://); every notification
	// goes to each.
	URLs []string
	// Secret, when set, signs every body (HeaderSignature), like GitHub's
	// and Flux's webhooks.
	Secret []byte
	// Kinds select the events sent (default DefaultKinds()).
	Kinds []string
	// Attempts bounds the POSTs of one notification to one receiver
	// (default 5); Timeout bounds each (default 10s); Backoff is the first
	// wait between two, doubling up to MaxBackoff (default 1s).
	Attempts int
	Timeout  time.Duration
	Backoff  time.Duration
	// QueueSize bounds the notifications waiting for one receiver (default
	// 1000); when it is full the oldest is dropped.
	QueueSize int
	// ResendWindow: a node that becomes leader sends again the events
	// committed this long before (default: the longest one delivery can
	// take, Attempts × Timeout plus the backoffs, and at least 2m).
	ResendWindow time.Duration
	// CheckEvery is how often leadership is checked without an applied
	// entry (default 1s).
	CheckEvery time.Duration
	// Transport carries the POSTs (default: a clone of
	// http.DefaultTransport).
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Stats count what the notifier did since it started, over all receivers.
type Stats struct {
	Sent    uint64 // notifications a receiver accepted (2xx)
	Retried uint64 // attempts that failed and were made again
	Failed  uint64 // notifications given up: every attempt failed, or a permanent refusal
	Dropped uint64 // notifications pushed out of a full queue
	// Discarded are notifications still queued when this node stopped
	// leading; the next leader sends them again (see ResumeAfter).
	Discarded uint64
}

// Notifier sends notifications while its node leads. Construct with [New];
// call [Notifier.Notify] after applied entries and run [Notifier.Run].
type Notifier struct {
	o      Options
	log    *slog.Logger
	self   uint64
	wake   chan struct{}
	client *http.Client

	sent, retried, failed, dropped, discarded atomic.Uint64
}

// New checks o and returns its notifier.
func New(o Options) (*Notifier, error) {
	if o.Replica == nil {
		return nil, errors.New("notify: no replica")
	}
	if len(o.URLs) == 0 {
		return nil, errors.New("notify: no receiver URL (--notify-url)")
	}
	for _, u := range o.URLs {
		if err := CheckURL(u); err != nil {
			return nil, err
		}
	}
	if len(o.Kinds) == 0 {
		o.Kinds = DefaultKinds()
	}
	for _, k := range o.Kinds {
		if err := CheckKind(k); err != nil {
			return nil, err
		}
	}
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	setDefault(&o.Timeout, DefaultTimeout)
	setDefault(&o.Backoff, DefaultBackoff)
	setDefault(&o.CheckEvery, DefaultCheckEvery)
	if o.ResendWindow <= 0 {
		o.ResendWindow = minResendWindow
		longest := time.Duration(o.Attempts) * o.Timeout
		for a := 1; a < o.Attempts; a++ {
			longest += Backoff(o.Backoff, a, 0)
		}
		o.ResendWindow = max(o.ResendWindow, longest)
	}
	if o.Transport == nil {
		o.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Notifier{o: o, log: o.Logger, self: o.Replica.NodeID(), wake: make(chan struct{}, 1),
		client: &http.Client{Transport: o.Transport,
			// A redirected POST becomes a GET: a receiver that moved must be
			// configured anew, which the permanent failure's log line says.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Notify wakes the notifier to look for new events; it never blocks (the
// replica calls it after applied entries).
func (n *Notifier) Notify() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (n *Notifier) Stats() Stats {
	return Stats{Sent: n.sent.Load(), Retried: n.retried.Load(), Failed: n.failed.Load(), Dropped: n.dropped.Load(),
		Discarded: n.discarded.Load()}
}

// Run follows leadership until ctx ends: while this node leads, new events
// of the configured kinds are queued for every receiver. It returns nil.
func (n *Notifier) Run(ctx context.Context) error {
	tick := time.NewTicker(n.o.CheckEvery)
	defer tick.Stop()
	var t *term
	defer func() {
		if t != nil {
			t.stop("the node stops")
		}
	}()
	for {
		leader, since := n.o.Replica.LeaderSince()
		leading := leader != 0 && leader == n.self
		if t != nil && (!leading || !since.Equal(t.since)) {
			t.stop("no longer leading (or leading anew)")
			t = nil
		}
		if leading {
			st, err := n.o.Replica.LocalRead()
			switch {
			case err != nil:
				n.log.Warn("notifications: cannot read the local replica; trying again", "err", err)
			case t == nil:
				t = n.startTerm(ctx, since, st)
				t.collect(st)
			default:
				t.collect(st)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-n.wake:
		case <-tick.C:
		}
	}
}

// term is one stretch of leadership: a cursor and a sender per receiver.
type term struct {
	n      *Notifier
	since  time.Time
	cursor uint64 // the Raft index up to which events were queued
	queues []*queue
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (n *Notifier) startTerm(ctx context.Context, since time.Time, st *replicated.State) *term {
	tctx, cancel := context.WithCancel(ctx)
	t := &term{n: n, since: since, cursor: ResumeAfter(st, since, n.o.ResendWindow), cancel: cancel}
	n.log.Info("leading: sending notifications", "receivers", len(n.o.URLs), "kinds", n.o.Kinds,
		"from", t.cursor+1, "resendWindow", n.o.ResendWindow)
	for _, u := range n.o.URLs {
		q := newQueue(n.o.QueueSize)
		t.queues = append(t.queues, q)
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			n.send(tctx, u, q)
		}()
	}
	return t
}

// collect queues the new events of st for every receiver.
func (t *term) collect(st *replicated.State) {
	if st.Applied <= t.cursor {
		return
	}
	if len(st.Events) == replicated.MaxEvents && st.Events[0].Index > t.cursor+1 {
		// Only when more events than the log holds were committed between
		// two reads (an apply signal comes with every entry).
		t.n.log.Warn("notifications: the bounded event log dropped events before they were read; some were not sent",
			"after", t.cursor, "oldest", st.Events[0].Index)
	}
	for _, note := range Select(st, t.cursor, t.n.o.Kinds) {
		for i, q := range t.queues {
			if old, dropped := q.push(note); dropped {
				total := t.n.dropped.Add(1)
				t.n.log.Warn("notification dropped: the receiver's queue is full (it is down or slow)",
					"receiver", Redact(t.n.o.URLs[i]), "id", old.ID, "queue", t.n.o.QueueSize, "droppedTotal", total)
			}
		}
	}
	t.cursor = st.Applied
}

// stop ends the term for why: senders stop at once, even in the middle of
// a POST, and what is queued is left to the next leader.
func (t *term) stop(why string) {
	t.cancel()
	t.wg.Wait()
	left := 0
	for _, q := range t.queues {
		left += q.len()
	}
	t.n.discarded.Add(uint64(left))
	t.n.log.Info("notifications stop: "+why+"; the next leader sends recent events again", "undelivered", left)
}

// send delivers what q holds to the receiver at u, oldest first, until
// ctx ends.
func (n *Notifier) send(ctx context.Context, u string, q *queue) {
	for {
		note, ok := q.pop(ctx)
		if !ok {
			return
		}
		n.deliver(ctx, u, note)
	}
}

// deliver POSTs note to u until it is accepted, refused for good, out of
// attempts, or ctx ends.
func (n *Notifier) deliver(ctx context.Context, u string, note Notification) {
	body, err := json.Marshal(note)
	if err != nil { // cannot happen: plain fields
		n.log.Error("notification not encodable", "id", note.ID, "err", err)
		return
	}
	log := n.log.With("receiver", Redact(u), "id", note.ID, "kind", note.Kind)
	for attempt := 1; ; attempt++ {
		code, retryAfter, err := n.post(ctx, u, body, note)
		if err == nil {
			n.sent.Add(1)
			log.Debug("notification sent", "attempt", attempt)
			return
		}
		if ctx.Err() != nil {
			return // no longer leading (or stopping): left to the next leader
		}
		temporary := code == 0 || Retryable(code)
		if !temporary || attempt >= n.o.Attempts {
			n.failed.Add(1)
			hint := "the receiver refused it; check its URL and what it expects"
			if temporary {
				hint = "every attempt failed; is the receiver up?"
			}
			log.Warn("notification not delivered: "+hint, "attempts", attempt, "err", err)
			return
		}
		n.retried.Add(1)
		wait := Backoff(n.o.Backoff, attempt, retryAfter)
		log.Info("notification not delivered yet; retrying", "attempt", attempt, "in", wait, "err", err)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// post makes one attempt. It returns the HTTP status (0 when there was no
// answer) and the receiver's Retry-After; err is nil for a 2xx answer.
func (n *Notifier) post(ctx context.Context, u string, body []byte, note Notification) (int, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, n.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, 0, redactErr(err, u)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "blixard-notify")
	req.Header.Set(HeaderEvent, note.Kind)
	req.Header.Set(HeaderDelivery, note.ID)
	if len(n.o.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(n.o.Secret, body))
	}
	resp, err := n.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return 0, 0, fmt.Errorf("no answer within %v", n.o.Timeout)
		}
		return 0, 0, redactErr(err, u)
	}
	// Read a little of the answer so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, 0, nil
	}
	return resp.StatusCode, RetryAfter(resp.Header.Get("Retry-After")), fmt.Errorf("HTTP %s", resp.Status)
}

// redactErr keeps the URL that net/http puts in its errors out of the logs.
func redactErr(err error, u string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s %s: %w", ue.Op, Redact(u), ue.Err)
	}
	return err
}

// Sign is the HeaderSignature value of body: "sha256=" and the hex
// HMAC-SHA256 under secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// queue is one receiver's bounded FIFO.
type queue struct {
	mu    sync.Mutex
	items []Notification // guarded by mu; oldest first
	max   int
	ready chan struct{} // signalled when items were added
}

func newQueue(max int) *queue { return &queue{max: max, ready: make(chan struct{}, 1)} }

// push adds note; when the queue is full it drops and returns the oldest.
func (q *queue) push(note Notification) (Notification, bool) {
	q.mu.Lock()
	var old Notification
	dropped := len(q.items) >= q.max
	if dropped {
		old = q.items[0]
		q.items = q.items[1:]
	}
	q.items = append(q.items, note)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return old, dropped
}

// pop takes the oldest notification, waiting for one until ctx ends.
func (q *queue) pop(ctx context.Context) (Notification, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			note := q.items[0]
			q.items[0] = Notification{}
			q.items = q.items[1:]
			q.mu.Unlock()
			return note, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return Notification{}, false
		case <-q.ready:
		}
	}
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}
