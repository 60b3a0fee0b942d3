package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Read-only calls answer at once, with or without a quorum: each tries a
// linearizable read for [Options.ReadWait] and otherwise answers from the
// node's local replica, marked stale. An operator asking `blixard status`
// during an election, or on the one node left of three, learns what that
// node knows and how old it is, instead of waiting for a quorum that may
// never come back.

// Defaults of [Options] for reads and health.
const (
	// DefaultReadWait is the linearizable read's wait when Options.ReadWait
	// is not set: three quarters of a heartbeat period with Raft's default
	// timing (see raftstore.Config.ReadWait, which the node passes).
	DefaultReadWait = 75 * time.Millisecond
	// DefaultStalledAfter is Options.StalledAfter when not set.
	DefaultStalledAfter = 10 * time.Second
	// unconfirmedReadWaits: after a leader did not confirm a read, reads
	// answer from the local replica at once for this many ReadWaits (0.75s by
	// default, under an election timeout), unless another leader is elected
	// sooner. A leader that died stays known to its followers for an
	// election timeout or two, and every read would wait ReadWait in vain.
	unconfirmedReadWaits = 10
)

// unconfirmed remembers the last leader that did not confirm a
// linearizable read in time, and when.
type unconfirmed struct {
	mu     sync.Mutex
	leader uint64    // guarded by mu; 0: none
	at     time.Time // guarded by mu
}

// recent returns when leader last failed to confirm a read, if that was
// less than within ago.
func (u *unconfirmed) recent(leader uint64, now time.Time, within time.Duration) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.at, u.leader == leader && now.Sub(u.at) < within
}

func (u *unconfirmed) set(leader uint64, at time.Time) {
	u.mu.Lock()
	u.leader, u.at = leader, at
	u.mu.Unlock()
}

// The headers of every read-only answer, which say what [Freshness] says
// (also for answers whose body is a list).
const (
	HeaderStale        = "Blixard-Stale"         // "true" or "false"
	HeaderStaleReason  = "Blixard-Stale-Reason"  // why, when stale
	HeaderAppliedIndex = "Blixard-Applied-Index" // the state's last applied Raft index
)

// ReplicaHealth is what the API needs to know about the replica beyond its
// state, without waiting on Raft; *raftstore.Store satisfies it.
type ReplicaHealth interface {
	// LeaderSince returns the leader this replica knows (0: none) and
	// since when that has been so.
	LeaderSince() (leader uint64, since time.Time)
	// LastApplied returns the index of the last entry the replica applied
	// and when.
	LastApplied() (index uint64, at time.Time)
}

// Freshness says whether a read-only answer reflects every change the
// cluster committed before the request. It is part of the answers of
// GET /v1/status and POST /v1/plan, and the headers of every read-only
// answer ([HeaderStale], [HeaderStaleReason], [HeaderAppliedIndex]).
type Freshness struct {
	// Stale is set when no leader confirmed a linearizable read in time:
	// the answer comes from the answering node's local replica, which may
	// lack changes committed since its AppliedIndex.
	Stale bool `json:"stale"`
	// StaleReason says why, e.g. "no leader: election in progress (no
	// Raft leader known for 3.2s)".
	StaleReason string `json:"staleReason,omitempty"`
	// AppliedIndex is the Raft index of the last entry in the state the
	// answer comes from.
	AppliedIndex uint64 `json:"appliedIndex"`
}

// setHeaders writes f as the answer's headers.
func (f Freshness) setHeaders(h http.Header) {
	h.Set(HeaderStale, strconv.FormatBool(f.Stale))
	if f.StaleReason != "" {
		h.Set(HeaderStaleReason, f.StaleReason)
	}
	h.Set(HeaderAppliedIndex, strconv.FormatUint(f.AppliedIndex, 10))
}

// FreshnessOf reads the freshness headers of an answer; an answer without
// them (a node of an older version) counts as fresh.
func FreshnessOf(h http.Header) Freshness {
	f := Freshness{Stale: h.Get(HeaderStale) == "true", StaleReason: h.Get(HeaderStaleReason)}
	f.AppliedIndex, _ = strconv.ParseUint(h.Get(HeaderAppliedIndex), 10, 64)
	return f
}

// WriteStale writes the one-line warning the CLI prints above a stale
// answer; nothing for a fresh one.
func WriteStale(w io.Writer, f Freshness) {
	if !f.Stale {
		return
	}
	fmt.Fprintf(w, "WARNING: stale answer, from the node's own replica at Raft index %d (later changes may be missing): %s\n",
		f.AppliedIndex, f.StaleReason)
}

// leaderSince is the leader this replica knows (0: none) and since when
// (zero without Options.Health).
func (s *Server) leaderSince() (uint64, time.Time) {
	if s.o.Health != nil {
		return s.o.Health.LeaderSince()
	}
	id, _ := s.o.Replica.Leader()
	return id, time.Time{}
}

// noLeader says how long this replica has been without a leader.
func (s *Server) noLeader(what string, since time.Time) string {
	if since.IsZero() {
		return what
	}
	return fmt.Sprintf("%s (no Raft leader known for %.1fs)", what, s.o.Now().Sub(since).Seconds())
}

// read returns the state a read-only call answers from, and writes its
// freshness headers: a linearizable read when this replica knows a leader
// that confirms it within ReadWait, else the local replica, marked stale.
// It answers 503 (and returns false) only when not even the local replica
// can be read, or the caller went away.
func (s *Server) read(w http.ResponseWriter, r *http.Request) (*replicated.State, Freshness, bool) {
	if r.URL.Query().Has("consistent") {
		return s.consistentRead(w, r)
	}
	var reason string
	leader, since := s.leaderSince()
	failed, recent := s.unconfirmed.recent(leader, s.o.Now(), unconfirmedReadWaits*s.o.ReadWait)
	switch {
	case leader == 0:
		// Every read would wait for an election that may not end: answer now.
		reason = s.noLeader("no leader: election in progress", since)
	case recent:
		reason = fmt.Sprintf("leader node %d did not confirm a linearizable read within %v, %.1fs ago (it may be gone, cut off or overloaded)",
			leader, s.o.ReadWait, s.o.Now().Sub(failed).Seconds())
	default:
		ctx, cancel := context.WithTimeout(r.Context(), s.o.ReadWait)
		st, err := s.o.Replica.Read(ctx)
		cancel()
		if err == nil {
			f := Freshness{AppliedIndex: st.Applied}
			f.setHeaders(w.Header())
			return st, f, true
		}
		if r.Context().Err() != nil {
			return nil, Freshness{}, false // the caller went away: nobody reads an answer
		}
		if errors.Is(err, context.DeadlineExceeded) {
			s.unconfirmed.set(leader, s.o.Now())
			reason = fmt.Sprintf("leader node %d did not confirm a linearizable read within %v (it may be gone, cut off or overloaded)",
				leader, s.o.ReadWait)
		} else {
			ref := s.refs.Add(1)
			s.log.Warn("linearizable read failed; answering from the local replica", "err", err, "ref", ref, "path", r.URL.Path)
			reason = fmt.Sprintf("the linearizable read failed (details in the node's log, ref %d)", ref)
		}
	}
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable,
			"reading the replicated state failed: no quorum answered and the local replica cannot be read (is the node starting or stopping?)", err)
		return nil, Freshness{}, false
	}
	f := Freshness{Stale: true, StaleReason: reason, AppliedIndex: st.Applied}
	f.setHeaders(w.Header())
	return st, f, true
}

// consistentReadWait bounds a read asked for with ?consistent.
const consistentReadWait = 5 * time.Second

// consistentRead serves `?consistent` (as Consul's): a linearizable read or
// nothing — 503 when no leader confirms one within consistentReadWait or
// the caller's own deadline. For clients that must not see stale data
// (the fault harness checks linearizability with it).
func (s *Server) consistentRead(w http.ResponseWriter, r *http.Request) (*replicated.State, Freshness, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), consistentReadWait)
	defer cancel()
	st, err := s.o.Replica.Read(ctx)
	if err != nil {
		if r.Context().Err() != nil {
			return nil, Freshness{}, false
		}
		leader, since := s.leaderSince()
		reason := fmt.Sprintf("leader node %d did not confirm a linearizable read within %v", leader, consistentReadWait)
		if leader == 0 {
			reason = s.noLeader("no leader: election in progress", since)
		}
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("no quorum: ?consistent asks for a linearizable read and none was possible: %s "+
			"(leave out ?consistent for this node's own, possibly stale, state)", reason))
		return nil, Freshness{}, false
	}
	f := Freshness{AppliedIndex: st.Applied}
	f.setHeaders(w.Header())
	return st, f, true
}

// handleHealth answers at once, without Raft: 200 while this replica
// knows a leader and applies entries (every node heartbeats through Raft
// every few seconds, so a replica that applies nothing for StalledAfter is
// cut off from a cluster that commits, or the cluster commits nothing);
// 503 with the reason otherwise.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	leader, since := s.leaderSince()
	h := Health{OK: true, Node: s.o.Replica.NodeID(), Leader: leader}
	var appliedAt time.Time
	if s.o.Health != nil {
		h.AppliedIndex, appliedAt = s.o.Health.LastApplied()
	}
	switch idle := s.o.Now().Sub(appliedAt); {
	case leader == 0:
		h.OK, h.Reason = false, "no quorum: no Raft leader known"
		if !since.IsZero() {
			h.Reason += fmt.Sprintf(" for %.1fs", s.o.Now().Sub(since).Seconds())
		}
	case s.o.Health != nil && idle > s.o.StalledAfter:
		h.OK = false
		h.Reason = fmt.Sprintf("no progress: leader node %d is known but this replica applied nothing for %.1fs "+
			"(every node heartbeats through Raft every few seconds: this node is cut off, or the cluster commits nothing)",
			leader, idle.Seconds())
	}
	code := http.StatusOK
	if !h.OK {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}
