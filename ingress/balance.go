package ingress

import (
	"cmp"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Balancing is least-in-flight with a round-robin tie-break, and passive
// health checks:
//
//   - Least in flight, because ingress carries streams (server-sent events,
//     downloads, upgraded connections) next to short requests: round-robin
//     would keep sending every other request to an instance already busy
//     with long streams, while counting what is in flight sends it to the
//     one with the least work, whatever each request costs. It also needs
//     no global state: each proxy node counts its own requests.
//   - The rotation breaks ties, so that when nothing is in flight (light
//     traffic, one request at a time) the instances still take turns
//     instead of the first one taking everything.
//   - An instance that refused a connection (or did not accept it within
//     the dial timeout) is down for Options.DownFor: it is tried after every
//     instance that is up, so it costs no latency while others answer, and
//     it is still tried when nothing else is left (the mark is a guess, and
//     a refusal from the last instance is no worse than a 502 unasked).
//     A response from it marks it up again.

// health is the load and passive health of one backend address. It is
// shared by every table that routes to the address, so an Update keeps
// what was learned and a request in flight across an Update keeps counting
// against the address it uses.
type health struct {
	inflight  atomic.Int64
	downUntil atomic.Int64 // Unix nanoseconds; up when not after now
}

// markDown marks h down until now+d and reports whether it was up.
func (h *health) markDown(now time.Time, d time.Duration) (wasUp bool) {
	return h.downUntil.Swap(now.Add(d).UnixNano()) <= now.UnixNano()
}

// markUp marks h up and reports whether it was down.
func (h *health) markUp(now time.Time) (wasDown bool) {
	return h.downUntil.Swap(0) > now.UnixNano()
}

// candidate is one backend's state at the moment of a choice.
type candidate struct {
	inflight  int64
	downUntil int64 // Unix nanoseconds, 0 when never marked
}

// order returns the indexes of cands in the order to try them, at now
// (Unix nanoseconds) with rotation start: those up first, fewest in flight
// first; then those down, the soonest to come back first. Ties go by
// rotation: index start mod n first, then the next ones. It is pure.
func order(cands []candidate, start uint64, now int64) []int {
	n := len(cands)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	if n == 0 {
		return idx
	}
	rot := func(i int) int { return (i - int(start%uint64(n)) + n) % n }
	slices.SortFunc(idx, func(a, b int) int {
		ca, cb := cands[a], cands[b]
		downA, downB := ca.downUntil > now, cb.downUntil > now
		switch {
		case downA != downB:
			if downA {
				return 1
			}
			return -1
		case downA:
			if c := cmp.Compare(ca.downUntil, cb.downUntil); c != 0 {
				return c
			}
		default:
			if c := cmp.Compare(ca.inflight, cb.inflight); c != 0 {
				return c
			}
		}
		return cmp.Compare(rot(a), rot(b))
	})
	return idx
}

// snapshot is a table with the balancing state of its backends; the
// server swaps whole snapshots, so a request sees one table throughout.
type snapshot struct {
	table  *Table
	health map[netip.AddrPort]*health // every backend address of table
	turns  map[string]*atomic.Uint64  // the rotation, by entry name
}

// newSnapshot wraps t, keeping prev's health of the addresses t still
// routes to (prev may be nil).
func newSnapshot(t *Table, prev *snapshot) *snapshot {
	if t == nil {
		t = NewTable(nil, nil)
	}
	sn := &snapshot{table: t, health: map[netip.AddrPort]*health{}, turns: map[string]*atomic.Uint64{}}
	add := func(entry string, bs []Backend) {
		sn.turns[entry] = new(atomic.Uint64)
		if prev != nil && prev.turns[entry] != nil {
			sn.turns[entry].Store(prev.turns[entry].Load())
		}
		for _, b := range bs {
			if _, ok := sn.health[b.Addr]; ok {
				continue
			}
			h := (*health)(nil)
			if prev != nil {
				h = prev.health[b.Addr]
			}
			if h == nil {
				h = new(health)
			}
			sn.health[b.Addr] = h
		}
	}
	for _, r := range t.Routes() {
		add(r.Entry, r.Backends)
	}
	for _, r := range t.TCP() {
		add(r.Entry, r.Backends)
	}
	return sn
}

// target is a backend with its health, as a request tries it.
type target struct {
	Backend
	h *health
}

// targets returns the backends of entry in the order to try them at now.
func (sn *snapshot) targets(entry string, bs []Backend, now time.Time) []target {
	cands := make([]candidate, len(bs))
	for i, b := range bs {
		h := sn.health[b.Addr]
		cands[i] = candidate{inflight: h.inflight.Load(), downUntil: h.downUntil.Load()}
	}
	var start uint64
	if t := sn.turns[entry]; t != nil {
		start = t.Add(1) - 1
	}
	out := make([]target, 0, len(bs))
	for _, i := range order(cands, start, now.UnixNano()) {
		out = append(out, target{Backend: bs[i], h: sn.health[bs[i].Addr]})
	}
	return out
}
