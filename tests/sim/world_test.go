package sim

import (
	"container/heap"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"time"
)

// Virtual time is in milliseconds since base; the pure code gets it as a
// time.Time through at.
var base = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int64) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }

func msOf(d time.Duration) int64 { return d.Milliseconds() }

// agentTimings are the agent's heartbeat period (nodeagent.Options.Heartbeat)
// and lease (Options.Lease) for a node timeout, by the rule node.Config
// applies when serve is given neither --heartbeat nor --lease: heartbeat =
// min(2s, nodeTimeout/10), lease = nodeTimeout - max(nodeTimeout/4, 1s).
// The gap between the lease and the node timeout is the time a fenced
// node has to kill its runners before the leader may place them elsewhere.
func agentTimings(nodeTimeout time.Duration) (heartbeat, lease time.Duration) {
	return min(2*time.Second, nodeTimeout/10), nodeTimeout - max(nodeTimeout/4, time.Second)
}

// Timings of the modelled programs, in ms. They are the defaults of the
// real options unless a comment says otherwise.
const (
	agentInterval     = 1000   // nodeagent.Options.Interval
	heartbeatDebounce = 100    // nodeagent report(): a change is sent ~100 ms later
	commandTimeout    = 10000  // one RegisterNode attempt and an operator command (heartbeats: the lease, agent.hbTimeout)
	buildRetry        = 30000  // nodeagent.Options.BuildRetry
	volumeRetry       = 5000   // nodeagent.Options.VolumeRetry
	pollEvery         = 5000   // reconciler.Options.Poll (serve --poll 5s)
	resyncEvery       = 1000   // reconciler.Options.Resync
	maxPassBackoff    = 30000  // reconciler maxBackoff
	electionMin       = 1000   // raftstore: a follower campaigns after 1–2 s
	electionMax       = 2000   //
	attemptTimeout    = 3000   // raftstore: one SyncPropose attempt
	noLeaderRetry     = 250    // a proposal without a reachable leader is tried again (raftstore retries every 20 ms; coarser here)
	restartBackoff    = 250    // ProcessOptions.RestartBackoff
	maxRestartBackoff = 30000  // ProcessOptions.MaxRestartBackoff
	resetBackoffAfter = 10000  // ProcessOptions.ResetBackoffAfter
	hungStop          = 40000  // microvm-shutdown times out (30 s), then SIGTERM is ignored for 10 s: SIGKILL
	checkEvery        = 250    // the periodic invariant check
	stableFor         = 5000   // converged this long ends the run
	leaderProposalTTL = 600000 // the loop's proposals have no deadline of their own
)

// event is one thing that happens at a virtual time; seq orders events
// with the same time by when they were scheduled, so a run is a pure
// function of its seed.
type event struct {
	at  int64
	seq uint64
	fn  func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return e
}

// after runs fn d ms from now (d < 0 counts as 0).
func (w *world) after(d int64, fn func()) {
	w.seq++
	heap.Push(&w.q, &event{at: w.now + max(d, 0), seq: w.seq, fn: fn})
}

// afterOn runs fn d ms from now on node n's blixard process: not at all
// when that process has died meanwhile (its goroutines died with it), and
// only after it is thawed when it is frozen (SIGSTOP stops its goroutines
// too).
func (w *world) afterOn(n *node, d int64, fn func()) {
	epoch := n.epoch
	w.after(d, func() {
		if n.epoch != epoch || !n.procUp {
			return
		}
		if n.frozen {
			n.deferred = append(n.deferred, fn)
			return
		}
		fn()
	})
}

// rnd returns a uniform value in [lo, hi].
func (w *world) rnd(lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + w.rng.Int64N(hi-lo+1)
}

func (w *world) chance(p float64) bool { return p > 0 && w.rng.Float64() < p }

// pick returns a uniform index in [0, n).
func (w *world) pick(n int) int { return w.rng.IntN(n) }

// tracer keeps the last lines of the trace and a hash of all of them.
type tracer struct {
	hash uint64
	ring []string
	next int
	full bool
	all  []string // every line, when keepAll
	keep bool
}

func newTracer(size int, keepAll bool) *tracer {
	return &tracer{hash: 14695981039346656037, ring: make([]string, size), keep: keepAll}
}

func (t *tracer) add(line string) {
	h := fnv.New64a()
	var b [8]byte
	for i := range 8 {
		b[i] = byte(t.hash >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(line))
	t.hash = h.Sum64()
	t.ring[t.next] = line
	t.next = (t.next + 1) % len(t.ring)
	if t.next == 0 {
		t.full = true
	}
	if t.keep {
		t.all = append(t.all, line)
	}
}

// last returns the kept lines, oldest first.
func (t *tracer) last() []string {
	if !t.full {
		return append([]string(nil), t.ring[:t.next]...)
	}
	return append(append([]string(nil), t.ring[t.next:]...), t.ring[:t.next]...)
}

// tracef records one line of the trace, stamped with the virtual time.
func (w *world) tracef(format string, args ...any) {
	w.trace.add(fmt.Sprintf("%9.3fs ", float64(w.now)/1000) + fmt.Sprintf(format, args...))
}

// mix adds values to the trace hash without formatting a line, for
// frequent events (heartbeats, passes) that the kept trace leaves out.
func (w *world) mix(vals ...uint64) {
	h := w.trace.hash
	for _, v := range vals {
		h ^= v
		h *= 1099511628211
	}
	w.trace.hash = h
}

func (w *world) traceText() string {
	var b strings.Builder
	for _, l := range w.trace.last() {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
