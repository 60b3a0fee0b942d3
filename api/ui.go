package api

// The live status page: every node serves it, from its own replica.
//
//	GET /ui/         one HTML page, its CSS and JS inline (go:embed; no build step, no external assets) (read)
//	GET /ui/events   a server-sent event stream of UIView: at once, then after applied entries (read)
//
// Who may see it: the read role, as every status endpoint. A browser
// authenticates with a client certificate from the cluster CA (imported into
// the browser) or, on `blixard dev` and `serve --insecure` (plain HTTP on
// loopback), without credentials. A bearer token is accepted in the
// Authorization header only, as everywhere: EventSource cannot send one, and
// the page does not ask for one on purpose. A token in the URL ends up in
// browser history, proxy and access logs and Referer headers; a token in a
// cookie is sent by the browser on its own, so every route that accepted it
// would have to defend against cross-site requests (CSRF) — the API's
// operate and admin routes included, unless the cookie's role were capped
// and its path confined. Neither is worth it for a page that a
// certificate, or an authenticating reverse proxy that adds the header,
// already serves.

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// Bounds of the status page's stream.
const (
	// DefaultMaxUIStreams is Options.MaxUIStreams when not set.
	DefaultMaxUIStreams = 64
	// uiCoalesce: a stream sends at most one view this often, however many
	// entries are applied meanwhile (a burst of heartbeats costs one).
	uiCoalesce = 250 * time.Millisecond
	// uiHeartbeat: a comment line this often on a quiet stream, so proxies
	// and the browser keep it open and a vanished client is noticed.
	uiHeartbeat = 15 * time.Second
	// uiRecheck: a stream reads the replica this often even without an
	// applied-entry signal, and sends the view when it changed (the function
	// gateway's counters change without Raft entries).
	uiRecheck = time.Second
	// uiRetry is the reconnect delay the stream asks EventSource for.
	uiRetry = 2 * time.Second
	// UIHistory revisions and UIEvents events are in a stream's first view.
	UIHistory = 10
	UIEvents  = 50
)

//go:embed ui/index.html
var uiPage string

// uiNonce is the placeholder in ui/index.html that each answer replaces
// with its own Content-Security-Policy nonce.
const uiNonce = "{{nonce}}"

// UIView is one message of GET /ui/events (event "view"): everything the
// page shows. Events are those applied since the stream's previous message
// (the last UIEvents in the first one, or those after Last-Event-ID when
// the browser reconnects); the rest is complete each time.
type UIView struct {
	Status StatusView `json:"status"`
	// History is the last UIHistory revisions, newest first.
	History []replicated.Revision `json:"history"`
	// Rollouts is every VM's last rollout (see GET /v1/rollouts).
	Rollouts  []reconciler.RolloutView `json:"rollouts"`
	Functions []FunctionView           `json:"functions"`
	Events    []replicated.Event       `json:"events"`
	// EventsGap: events between the previous message and these may have
	// been pushed out of the bounded log (HeaderEventsGap).
	EventsGap bool `json:"eventsGap,omitempty"`
}

// NewUIView builds the page's view of st as node self sees it, with the
// events after after (the last UIEvents when first).
func NewUIView(st *replicated.State, self, leader uint64, local *reconciler.Status, fns []FunctionLocal, after uint64, first bool, now time.Time) UIView {
	v := UIView{Status: NewStatusView(st, self, leader, local), Rollouts: rolloutsView(st, "", now).Rollouts,
		Functions: functionsView(st, self, fns).Functions}
	h := st.History[max(0, len(st.History)-UIHistory):]
	v.History = make([]replicated.Revision, 0, len(h))
	for i := len(h) - 1; i >= 0; i-- {
		v.History = append(v.History, h[i])
	}
	v.Events, v.EventsGap = EventsAfter(st.Events, after)
	if first && after == 0 && len(v.Events) > UIEvents {
		v.Events = v.Events[len(v.Events)-UIEvents:]
	}
	return v
}

// handleUIPage serves the page with a Content-Security-Policy that allows
// its own inline script and style (by nonce) and connections to this node
// only: nothing the state holds (VM names, messages, events) can run as
// script, and the page loads nothing from elsewhere.
func (s *Server) handleUIPage(w http.ResponseWriter, _ *http.Request) {
	b := make([]byte, 18)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	nonce := base64.StdEncoding.EncodeToString(b)
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", fmt.Sprintf("default-src 'none'; script-src 'nonce-%s'; style-src 'nonce-%s'; "+
		"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'", nonce, nonce))
	w.WriteHeader(http.StatusOK)
	_, _ = strings.NewReplacer(uiNonce, nonce).WriteString(w, uiPage)
}

// handleUIEvents streams UIView messages: one at once, then one after
// applied entries (coalesced to one per uiCoalesce) or when the view
// changed otherwise, with a heartbeat comment on a quiet stream. Each
// message's id is the state's applied index, so a browser that reconnects
// (EventSource does, by itself) sends it as Last-Event-ID and gets the
// events it missed. Streams are capped per node (Options.MaxUIStreams;
// further ones get 429).
func (s *Server) handleUIEvents(w http.ResponseWriter, r *http.Request) {
	var after uint64
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("Last-Event-ID %q: want the Raft index of the last message received", id))
			return
		}
		after = n
	}
	select {
	case s.uiStreams <- struct{}{}:
		defer func() { <-s.uiStreams }()
	default:
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusTooManyRequests, fmt.Errorf("node %d already streams %d status pages, its limit: try again later, or open another node's /ui/",
			s.o.Replica.NodeID(), cap(s.uiStreams)))
		return
	}
	// ReadTimeout does not end the stream (net/http lifts the read deadline
	// once the request is read; its background read then ends only when the
	// client hangs up, which cancels r.Context()); the write deadline is
	// renewed before each write (uiStream.write) instead of lifted, so a
	// client that stops reading is cut off after WriteTimeout.
	rc := http.NewResponseController(w)

	// Taken before the first read, so that no entry applied after it is missed.
	woken := s.applied.wait()
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each message on at once
	w.WriteHeader(http.StatusOK)
	st2 := &uiStream{s: s, w: w, rc: rc, after: after}
	if err := st2.write(fmt.Sprintf("retry: %d\n\n", uiRetry.Milliseconds())); err != nil {
		return
	}
	if _, err := st2.send(st, fresh, true); err != nil {
		s.log.Debug("status page stream ended", "err", err)
		return
	}
	ctx := r.Context()
	recheck := time.NewTicker(uiRecheck)
	defer recheck.Stop()
	quiet := time.NewTimer(uiHeartbeat)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-quiet.C:
			if err := st2.write(": heartbeat\n\n"); err != nil {
				return
			}
			quiet.Reset(uiHeartbeat)
			continue
		case <-woken:
		case <-recheck.C:
		}
		// Coalesce: wait out the rest of uiCoalesce since the last message.
		if wait := time.Until(st2.sentAt.Add(uiCoalesce)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		woken = s.applied.wait()
		st, err := s.o.Replica.LocalRead()
		if err != nil {
			// The browser reconnects after uiRetry; the new stream answers
			// 503 while the replica cannot be read.
			s.log.Warn("status page stream: reading the local replica failed; ending the stream", "err", err)
			return
		}
		// A local read may be ahead of the first, linearizable one, never
		// behind it: it only adds entries. It is stale only without a leader.
		fresh := Freshness{AppliedIndex: st.Applied}
		if leader, since := s.leaderSince(); leader == 0 {
			fresh.Stale, fresh.StaleReason = true, s.noLeader("no leader: election in progress", since)
		}
		sent, err := st2.send(st, fresh, false)
		if err != nil {
			s.log.Debug("status page stream ended", "err", err)
			return
		}
		if sent {
			quiet.Reset(uiHeartbeat)
		}
	}
}

// uiStream is one GET /ui/events stream's writer and what it sent.
type uiStream struct {
	s      *Server
	w      http.ResponseWriter
	rc     *http.ResponseController
	after  uint64    // the applied index of the last message sent
	last   []byte    // the last view sent, without its events
	sentAt time.Time // when the last message was sent
}

// send writes the view of st unless it equals the last one sent and no
// event is new, and reports whether it wrote.
func (u *uiStream) send(st *replicated.State, fresh Freshness, first bool) (bool, error) {
	s := u.s
	var local *reconciler.Status
	if s.o.Reconciler != nil {
		rs := s.o.Reconciler.Status()
		local = &rs
	}
	v := NewUIView(st, s.o.Replica.NodeID(), s.leader(), local, s.localFunctions(), u.after, first, s.o.Now())
	v.Status.Freshness = fresh
	evs, gap := v.Events, v.EventsGap
	v.Events, v.EventsGap = nil, false
	same, err := json.Marshal(v)
	if err != nil {
		return false, fmt.Errorf("encoding the status page's view: %w", err)
	}
	if !first && len(evs) == 0 && bytes.Equal(same, u.last) {
		return false, nil
	}
	u.last = same
	if evs == nil {
		evs = []replicated.Event{}
	}
	v.Events, v.EventsGap = evs, gap
	data, err := json.Marshal(v) // one line: JSON escapes every newline
	if err != nil {
		return false, fmt.Errorf("encoding the status page's view: %w", err)
	}
	u.after = max(u.after, st.Applied)
	if err := u.write("id: " + strconv.FormatUint(u.after, 10) + "\nevent: view\ndata: " + string(data) + "\n\n"); err != nil {
		return false, err
	}
	u.sentAt = time.Now()
	return true, nil
}

// write writes and flushes msg within the server's write timeout: a
// client that stops reading is cut off, one that reads stays as long as
// it likes.
func (u *uiStream) write(msg string) error {
	_ = u.rc.SetWriteDeadline(time.Now().Add(u.s.o.WriteTimeout))
	if _, err := u.w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("writing to the status page's stream: %w", err)
	}
	if err := u.rc.Flush(); err != nil {
		return fmt.Errorf("flushing the status page's stream: %w", err)
	}
	return nil
}
