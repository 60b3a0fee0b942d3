package api

// The agents' views: computed from the local replica for every node while
// agents ask, and the waits of the requests for them (agent.go serves the
// endpoints).

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
)

// agentViews computes the views of every node from the local replica, at
// most once per interval after applied entries, while agents ask for
// them, and wakes the requests whose node's view changed.
type agentViews struct {
	s *Server

	mu      sync.Mutex
	running bool
	poke    chan struct{} // buffered 1: compute soon (a proposal waits)
	// urgent (buffered 1) asks for a computation at once, without the
	// interval's wait: an instance started ahead (WakeAgentViews) is
	// worth something only before its commit, a few milliseconds.
	urgent chan struct{}
	// views is the newest computation (nil before the first), with the
	// instances started ahead lent to their nodes' views; base is the same
	// computation without them, the next one's prev. seq numbers
	// computations in the order they started, done is the seq of the one
	// views holds.
	views   *replicated.Views
	base    *replicated.Views
	seq     uint64
	done    uint64
	changed chan struct{} // closed and replaced when views changes
	// wanted: when each optional part was last asked for; lastAsk: when
	// any agent last asked.
	wanted  map[replicated.ViewPart]time.Time
	lastAsk time.Time
	failed  error // the last computation's error, if it failed
}

func newAgentViews(s *Server) *agentViews {
	return &agentViews{s: s, poke: make(chan struct{}, 1), urgent: make(chan struct{}, 1), changed: make(chan struct{}),
		wanted: map[replicated.ViewPart]time.Time{}}
}

// WakeAgentViews asks for the agent-only nodes' views to be computed again
// at once, when they are being computed: the instances started ahead
// (Options.AgentAhead) changed.
func (s *Server) WakeAgentViews() {
	select {
	case s.agents.urgent <- struct{}{}:
	default:
	}
}

// computed reports whether views were computed since the loop started.
func (a *agentViews) computed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.views != nil
}

// startedNow is the number of the last computation started: a
// computation numbered higher started after now.
func (a *agentViews) startedNow() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seq
}

// await returns the views once node's parts among want differ from have
// and the views are from a state at least after (an index) and from a
// computation numbered above minSeq (0: any) — or, when ctx ends first,
// the newest views and no parts (err is ctx's; views is nil when none was
// ever computed).
func (a *agentViews) await(ctx context.Context, node uint64, want []replicated.ViewPart, have map[replicated.ViewPart]string,
	after, minSeq uint64) (*replicated.Views, []replicated.ViewPart, error) {
	a.ask(want, minSeq > 0)
	for {
		a.mu.Lock()
		v, done, changed, failed := a.views, a.done, a.changed, a.failed
		a.mu.Unlock()
		if v != nil && done > minSeq && v.Applied >= after && hasAll(v, want) {
			if parts := v.Changed(node, want, have); len(parts) > 0 || minSeq > 0 {
				return v, parts, nil
			}
		}
		select {
		case <-ctx.Done():
			if v != nil && (minSeq == 0 || done > minSeq) {
				return v, nil, ctx.Err()
			}
			if failed != nil {
				return nil, nil, failed
			}
			return nil, nil, ctx.Err()
		case <-changed:
		}
	}
}

func hasAll(v *replicated.Views, want []replicated.ViewPart) bool {
	for _, p := range want {
		if !v.Has(p) {
			return false
		}
	}
	return true
}

// ask records what an agent asks for and starts the computing loop when it
// does not run; soon asks for a computation without waiting for an entry.
func (a *agentViews) ask(want []replicated.ViewPart, soon bool) {
	now := time.Now()
	a.mu.Lock()
	a.lastAsk = now
	missing := a.views == nil
	for _, p := range want {
		if slices.Contains(replicated.OptionalViewParts(), p) {
			if _, ok := a.wanted[p]; !ok {
				missing = true
			}
			a.wanted[p] = now
		}
	}
	start := !a.running
	a.running = true
	a.mu.Unlock()
	if start {
		go a.run()
	}
	if soon || missing {
		select {
		case a.poke <- struct{}{}:
		default:
		}
	}
}

// run computes views after applied entries (and every second, for a
// replica that does not signal), at most once per interval, until no
// agent asked for viewsIdle.
func (a *agentViews) run() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	interval := minViewInterval
	var last time.Time
	first := true
	for {
		urgent := false
		if !first {
			applied := a.s.applied.wait()
			select {
			case <-applied:
			case <-a.poke:
			case <-a.urgent:
				urgent = true
			case <-tick.C:
			}
			select {
			case <-a.urgent: // asked for together with another input
				urgent = true
			default:
			}
		}
		first = false
		if wait := time.Until(last.Add(interval)); wait > 0 && !urgent {
			time.Sleep(wait) // coalesces the entries applied meanwhile
		}
		a.mu.Lock()
		now := time.Now()
		if now.Sub(a.lastAsk) > viewsIdle {
			// Idle: stop, and forget the views (a new request computes
			// fresh ones rather than answering from old ones).
			a.running, a.views, a.base, a.done = false, nil, nil, 0
			a.mu.Unlock()
			return
		}
		var optional []replicated.ViewPart
		for p, at := range a.wanted {
			if now.Sub(at) <= viewsIdle {
				optional = append(optional, p)
			} else {
				delete(a.wanted, p)
			}
		}
		slices.Sort(optional)
		a.seq++
		seq, prev := a.seq, a.base
		a.mu.Unlock()

		start := time.Now()
		st, err := a.s.o.Replica.LocalRead()
		var v, served *replicated.Views
		if err == nil {
			v = replicated.ComputeViews(st, optional, prev)
			served = v
			if a.s.o.AgentAhead != nil {
				for node, in := range a.s.o.AgentAhead.Ahead(st) {
					served = served.WithAhead(node, in.State, in.Instances)
				}
			}
		}
		took := time.Since(start)
		last = time.Now()
		interval = min(max(minViewInterval, took), maxViewInterval)

		a.mu.Lock()
		if err != nil {
			a.failed = err
			a.s.log.Warn("computing the agents' views: reading the local replica failed; trying again", "err", err)
		} else {
			a.failed = nil
			a.views, a.base, a.done = served, v, seq
			if took > minViewInterval {
				a.s.log.Debug("agent views computed", "applied", v.Applied, "took", took, "optional", optional)
			}
		}
		close(a.changed)
		a.changed = make(chan struct{})
		a.mu.Unlock()
	}
}
