package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
)

// GET /v1/events?after=INDEX&wait=DURATION is a long poll: the events with
// a Raft index after INDEX, answered as soon as there is one, or an empty
// list once DURATION (at most MaxEventWait) passed without one. Like every
// read it answers from the local replica when no leader confirms in time
// (marked stale), so any node can be followed. `blixard events -f` calls it
// in a loop, each time after the last index it printed. Waiting polls are
// capped per node (Options.MaxEventFollowers; further ones get 429 with
// Retry-After), as followed logs are.

// Bounds of the events long poll.
const (
	// MaxEventWait is the longest wait a poll may ask for.
	MaxEventWait = time.Minute
	// DefaultEventWait is the wait the client asks for when following.
	DefaultEventWait = 30 * time.Second
	// DefaultMaxEventFollowers is Options.MaxEventFollowers when not set.
	DefaultMaxEventFollowers = 64
	// eventRecheck: a waiting poll reads the replica this often even
	// without an applied-entry signal (Server.Applied), so that a server
	// nobody signals still answers.
	eventRecheck = time.Second
)

// HeaderEventsGap is "true" on an answer whose first event is newer than
// after+1 while the bounded event log is full: events between may have been
// pushed out of the log (replicated.MaxEvents) before they were read.
const HeaderEventsGap = "Blixard-Events-Gap"

// broadcast wakes every waiter at once: wait returns a channel that the
// next signal closes.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{} // guarded by mu
}

func newBroadcast() *broadcast { return &broadcast{ch: make(chan struct{})} }

func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcast) signal() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}

// Applied tells waiting event polls that the replica applied an entry; it
// never blocks (the node calls it after every applied entry, coalesced).
func (s *Server) Applied() { s.applied.signal() }

// eventsParams are the query parameters of GET /v1/events.
type eventsParams struct {
	after    uint64
	wait     time.Duration
	hasAfter bool
}

// eventsQuery parses after (a Raft index) and wait (a duration up to
// MaxEventWait); consistent is the read's own. Anything else is refused.
func eventsQuery(q url.Values) (eventsParams, error) {
	var p eventsParams
	for key, vals := range q {
		if len(vals) != 1 {
			return p, fmt.Errorf("query parameter %s given %d times, want once", key, len(vals))
		}
		v := vals[0]
		switch key {
		case "after":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return p, fmt.Errorf("after=%q: want a Raft index (the last event's index you have)", v)
			}
			p.after, p.hasAfter = n, true
		case "wait":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > MaxEventWait {
				return p, fmt.Errorf("wait=%q: want a duration from 0s to %v, e.g. 30s", v, MaxEventWait)
			}
			p.wait = d
		case "consistent":
		default:
			return p, fmt.Errorf("unknown query parameter %q (known: after=INDEX, wait=DURATION, consistent)", key)
		}
	}
	return p, nil
}

// EventsAfter returns the events of log with an index after after, oldest
// first, and whether some between may have been pushed out of the bounded
// log (see HeaderEventsGap).
func EventsAfter(log []replicated.Event, after uint64) ([]replicated.Event, bool) {
	i := 0
	for i < len(log) && log[i].Index <= after {
		i++
	}
	gap := after > 0 && i == 0 && len(log) >= replicated.MaxEvents && log[0].Index > after+1
	out := make([]replicated.Event, len(log)-i)
	copy(out, log[i:])
	return out, gap
}

// handleEventsPoll answers GET /v1/events: the whole log without after and
// wait, else the long poll.
func (s *Server) handleEventsPoll(w http.ResponseWriter, r *http.Request) {
	p, err := eventsQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("GET %s: %w", r.URL.Path, err))
		return
	}
	if !p.hasAfter && p.wait == 0 {
		s.handleEvents(w, r)
		return
	}
	if p.wait > 0 {
		select {
		case s.eventFollowers <- struct{}{}:
			defer func() { <-s.eventFollowers }()
		default:
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusTooManyRequests, fmt.Errorf("node %d already answers %d waiting event polls, its limit: try again later, or ask another node",
				s.o.Replica.NodeID(), cap(s.eventFollowers)))
			return
		}
		// The answer may be written only after the wait.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(p.wait + s.o.WriteTimeout))
	}
	// Taken before the first read, so that no entry applied after it is missed.
	woken := s.applied.wait()
	st, _, ok := s.read(w, r)
	if !ok {
		return
	}
	evs, gap := EventsAfter(st.Events, p.after)
	if len(evs) == 0 && p.wait > 0 {
		evs, gap, ok = s.waitEvents(w, r, woken, p)
		if !ok {
			return
		}
	}
	if gap {
		w.Header().Set(HeaderEventsGap, "true")
	}
	writeJSON(w, http.StatusOK, evs)
}

// waitEvents waits up to p.wait for events after p.after in the local
// replica. It answers 503 itself (and returns false) when the replica
// cannot be read; it returns none when the wait ended empty.
func (s *Server) waitEvents(w http.ResponseWriter, r *http.Request, woken <-chan struct{}, p eventsParams) ([]replicated.Event, bool, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), p.wait)
	defer cancel()
	recheck := time.NewTicker(eventRecheck)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return []replicated.Event{}, false, r.Context().Err() == nil
		case <-woken:
		case <-recheck.C:
		}
		woken = s.applied.wait()
		st, ok := s.localRead(w, r)
		if !ok {
			return nil, false, false
		}
		if evs, gap := EventsAfter(st.Events, p.after); len(evs) > 0 {
			// A local read may be ahead of the first, linearizable one,
			// never behind it: it only adds entries.
			w.Header().Set(HeaderAppliedIndex, strconv.FormatUint(st.Applied, 10))
			return evs, gap, true
		}
	}
}

// EventsPage is one answer of the events long poll.
type EventsPage struct {
	// Events are the events after the index asked for, oldest first; none
	// when the wait ended without one.
	Events []replicated.Event
	Freshness
	// Gap: events between the index asked for and the first of Events may
	// have been pushed out of the bounded log unread (HeaderEventsGap).
	Gap bool
}

// EventsAfter asks the node for the events after the Raft index after,
// waiting up to wait (at most MaxEventWait) for one. The call may take wait
// plus the client's timeout. A node at its cap of waiting polls answers an
// [*Error] with Code 429.
func (c *Client) EventsAfter(ctx context.Context, after uint64, wait time.Duration) (EventsPage, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	ctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/events?"+q.Encode(), nil)
	if err != nil {
		return EventsPage{}, fmt.Errorf("--server %q: %w", c.base, err)
	}
	c.authorize(req)
	resp, err := c.stream.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return EventsPage{}, fmt.Errorf("no answer from %s to GET /v1/events within %v (the wait plus --timeout): %w", c.base, wait+c.timeout, err)
		}
		return EventsPage{}, c.unreachable(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return EventsPage{}, c.failed("GET", "/v1/events", fmt.Errorf("reading the answer: %w", err))
	}
	if resp.StatusCode != http.StatusOK {
		return EventsPage{}, errorOf(resp.StatusCode, data)
	}
	p := EventsPage{Freshness: FreshnessOf(resp.Header), Gap: resp.Header.Get(HeaderEventsGap) == "true"}
	if err := json.Unmarshal(data, &p.Events); err != nil {
		return EventsPage{}, fmt.Errorf("decoding the answer of GET /v1/events from %s: %w", c.base, err)
	}
	return p, nil
}
