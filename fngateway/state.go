package fngateway

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/blixard/blixard/internal/stats"
)

// waitWindow is how many of the latest queue waits Stats' percentiles
// cover: enough for a p99, bounded so that the bookkeeping of a busy
// function stays small.
const waitWindow = 1024

// slot is one instance with this gateway's load on it. It is kept across
// Updates while the instance keeps its name and address, with what was
// learned (in flight, down); once an Update removed the instance, the
// requests still running there finish and release it, and nothing picks
// it again.
type slot struct {
	inst      Instance
	inflight  int
	fromPeers int       // of inflight, the requests other gateways passed on
	downUntil time.Time // refused a connection; not picked before then
}

// grant is what a request is handed: an instance (counted in flight
// already) with a copy of what the source said about it when it was
// handed (Update rewrites slot.inst under the lock), or the error that
// ends the request.
type grant struct {
	s    *slot
	inst Instance
	err  error
	// direct: the request came from another gateway, so it goes to the
	// instance itself even when the instance has a Via.
	direct bool
}

// via is where the request goes when not to the instance itself.
func (gr grant) via() string {
	if gr.direct {
		return ""
	}
	return gr.inst.Via
}

type waiter struct {
	grant chan grant // buffered (1): dispatch never blocks under the lock
	since time.Time
	// pin is the instance a request passed on by another gateway waits
	// for (request.pin); nil: any.
	pin    *slot
	direct bool
	peer   bool // passed on by another gateway
}

type counters struct {
	requests, coldStarts, queueFull, timedOut, startFailed, unreachable, canceled uint64
}

// fnState is one function on this gateway: its instances with their load,
// its queue and its bookkeeping. One mutex guards it all; it is held only
// for bookkeeping, never across I/O or a call to the Scaler.
type fnState struct {
	g    *Gateway
	name string

	mu         sync.Mutex
	fn         Function // the latest settings (Instances are in slots)
	slots      []*slot  // the current instances, in the source's order
	queue      []*waiter
	removed    bool
	turn       uint64
	lastActive time.Time
	cands      []Candidate // Pick's input, reused
	st         counters
	waits      []time.Duration // ring of the last waitWindow waits
	waitNext   int
	wake       *time.Timer // dispatches again when a down mark expires
}

func newFnState(g *Gateway, name string, now time.Time) *fnState {
	return &fnState{g: g, name: name, lastActive: now}
}

// request is one HTTP request's passage through the gateway, across its
// attempts (an instance that refuses the connection is skipped).
type request struct {
	f          *fnState
	arrived    time.Time      // by the real clock, as deadline
	deadline   time.Time      // of the whole wait (Options.QueueTimeout from arrival)
	counted    bool           // in Requests already
	waited     bool           // in ColdStarts already
	tried      map[*slot]bool // instances that refused this request
	triedNames []string
	lastErr    error
	// pin is the instance another gateway passed this request on for
	// (HeaderInstance): it is served there, by this gateway's count of the
	// instance's requests; "" for a client's request.
	pin string
}

// acquire returns an instance for rq, counted in flight, waiting in the
// queue when none is free; or the error that answers rq.
func (f *fnState) acquire(ctx context.Context, rq *request) grant {
	f.mu.Lock()
	if f.removed {
		f.mu.Unlock()
		return grant{err: &Error{Kind: NoRoute}}
	}
	now := f.g.o.Now()
	// A request passed on by another gateway is that gateway's to count
	// (Requests, ColdStarts); here it is load on this node's instance.
	pin, direct := f.pinned(rq)
	if !rq.counted {
		rq.counted = true
		if rq.pin == "" {
			f.st.requests++
		}
		f.lastActive = now
	}
	i := -1
	if !f.waitingFor(pin) { // first come, first served: nobody passes those waiting
		i = f.pickFor(now, rq.tried, pin)
	}
	ready, starting := f.counts()
	act := Admit(AdmitInput{Free: i >= 0, Ready: ready, Starting: starting, Queued: len(f.queue),
		QueueLimit: f.g.o.QueueLimit, StartFailed: f.fn.StartFailure != "", TriedAll: f.triedAll(rq.tried)})
	switch act {
	case Serve:
		s := f.slots[i]
		f.take(s, rq.pin != "")
		gr := grant{s: s, inst: s.inst, direct: direct}
		f.mu.Unlock()
		return gr
	case FailStart:
		f.st.startFailed++
		// The scaler decides whether (and when) to try again: it needs to
		// know that requests still come, this one included.
		reason, d := f.fn.StartFailure, f.demand()
		d.Want = Desired(d.InFlight, d.Queued+1, f.fn.Concurrency, f.fn.MinInstances, f.fn.MaxInstances)
		f.mu.Unlock()
		f.g.want(f.name, d)
		return grant{err: &Error{Kind: StartFailed, Function: f.name, Reason: reason}}
	case FailUnreachable:
		f.st.unreachable++
		f.mu.Unlock()
		return grant{err: &Error{Kind: Unreachable, Function: f.name, Tried: rq.triedNames, Err: rq.lastErr}}
	case QueueIsFull:
		f.st.queueFull++
		f.mu.Unlock()
		return grant{err: &Error{Kind: QueueFull, Function: f.name}}
	}
	w := &waiter{grant: make(chan grant, 1), since: now, pin: pin, direct: direct, peer: rq.pin != ""}
	f.queue = append(f.queue, w)
	f.armWake(now) // an instance that is only down for a moment takes it then
	if !rq.waited {
		rq.waited = true
		if rq.pin == "" {
			f.st.coldStarts++
		}
	}
	d := f.demand()
	f.mu.Unlock()
	f.g.want(f.name, d)
	return f.wait(ctx, rq, w)
}

// wait waits for w's grant until rq's deadline or the client leaves.
func (f *fnState) wait(ctx context.Context, rq *request, w *waiter) grant {
	timer := time.NewTimer(time.Until(rq.deadline))
	defer timer.Stop()
	select {
	case gr := <-w.grant:
		return gr
	case <-timer.C:
	case <-ctx.Done():
	}
	f.mu.Lock()
	if !f.dequeue(w) {
		// Dispatch handed w its grant just as the wait ended.
		f.mu.Unlock()
		gr := <-w.grant
		if gr.s != nil && ctx.Err() != nil {
			f.release(gr.s, rq.pin != "")
			return grant{err: ctx.Err()}
		}
		return gr
	}
	if ctx.Err() != nil {
		f.st.canceled++
		f.mu.Unlock()
		return grant{err: ctx.Err()}
	}
	f.st.timedOut++
	reason := f.timeoutReason(f.g.o.Now())
	f.mu.Unlock()
	return grant{err: &Error{Kind: Timeout, Function: f.name, Waited: time.Since(rq.arrived), Reason: reason}}
}

// timeoutReason says why no instance was free, without naming any.
// Called with mu held.
func (f *fnState) timeoutReason(now time.Time) string {
	ready, starting := f.counts()
	down := 0
	for _, s := range f.slots {
		if s.inst.Ready && s.downUntil.After(now) {
			down++
		}
	}
	switch {
	case ready == 0 && starting == 0:
		return "no instance is running or starting"
	case ready == 0:
		return "its instances are still starting"
	case down == ready:
		return "its instances refused connections"
	}
	return fmt.Sprintf("its %d ready instance(s) stayed busy", ready)
}

// dequeue removes w from the queue, reporting whether it was there.
func (f *fnState) dequeue(w *waiter) bool {
	for i, q := range f.queue {
		if q == w {
			f.queue = append(f.queue[:i:i], f.queue[i+1:]...)
			return true
		}
	}
	return false
}

// take counts a request in flight on s (peer: passed on by another
// gateway). Called with mu held.
func (f *fnState) take(s *slot, peer bool) {
	s.inflight++
	if peer {
		s.fromPeers++
	}
}

// release ends a request's use of s (its answer's body was closed, or it
// failed) and hands s to the next waiting request.
func (f *fnState) release(s *slot, peer bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.inflight--
	if peer {
		s.fromPeers--
	}
	now := f.g.o.Now()
	f.lastActive = now
	f.dispatch(now)
}

// refused ends a request's attempt on s, which refused the connection:
// s is not picked for Options.DownFor.
func (f *fnState) refused(s *slot, peer bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.inflight--
	if peer {
		s.fromPeers--
	}
	now := f.g.o.Now()
	s.downUntil = now.Add(f.g.o.DownFor)
	f.dispatch(now)
}

// pinned returns the slot of the instance rq was passed on for, when
// this gateway knows it as its own node's; and whether rq must go to the
// instance itself (it came from another gateway: it is never passed on
// again, even when the two gateways' views of the instances differ for a
// moment). Called with mu held.
func (f *fnState) pinned(rq *request) (*slot, bool) {
	if rq.pin == "" {
		return nil, false
	}
	for _, s := range f.slots {
		if s.inst.Name == rq.pin && s.inst.Via == "" {
			return s, true
		}
	}
	return nil, true
}

// waitingFor reports whether a queued request waits for what a new
// request pinned to pin (nil: any instance) could take: any queued request
// for a pinned one (every pinned request may take any instance of this
// node, pickFor); a request waiting for any instance for one that is not
// pinned — a pinned request waiting for this node's instances does not
// keep it from another node's. Called with mu held.
func (f *fnState) waitingFor(pin *slot) bool {
	for _, w := range f.queue {
		if w.pin == nil || pin != nil {
			return true
		}
	}
	return false
}

// dispatch hands free instances to waiting requests, first come first
// served, and ends the waits that cannot succeed: a request passed on
// for an instance of this node lets the ones behind it pass while every
// instance of this node is busy. Called with mu held.
func (f *fnState) dispatch(now time.Time) {
	if f.removed {
		return
	}
	for q := 0; q < len(f.queue); {
		w := f.queue[q]
		if w.pin != nil && !slices.Contains(f.slots, w.pin) {
			w.pin = nil // gone from this node: any instance, straight
		}
		i := f.pickFor(now, nil, w.pin)
		if i < 0 {
			if w.pin == nil {
				break // no instance is free: nobody behind it is served either
			}
			q++
			continue
		}
		s := f.slots[i]
		f.take(s, w.peer)
		f.queue = slices.Delete(f.queue, q, q+1)
		f.recordWait(now.Sub(w.since))
		w.grant <- grant{s: s, inst: s.inst, direct: w.direct}
	}
	if len(f.queue) == 0 {
		return
	}
	if ready, _ := f.counts(); f.fn.StartFailure != "" && ready == 0 {
		for _, w := range f.queue {
			f.st.startFailed++
			w.grant <- grant{err: &Error{Kind: StartFailed, Function: f.name, Reason: f.fn.StartFailure}}
		}
		f.queue = nil
		return
	}
	f.armWake(now)
}

// armWake makes dispatch run again when the first down mark of a ready
// instance with room expires: nothing else would wake the queue then.
func (f *fnState) armWake(now time.Time) {
	var first time.Time
	for _, s := range f.slots {
		if s.inst.Ready && s.inflight < f.fn.Concurrency && s.downUntil.After(now) && (first.IsZero() || s.downUntil.Before(first)) {
			first = s.downUntil
		}
	}
	if first.IsZero() {
		return
	}
	if f.wake != nil {
		f.wake.Stop()
	}
	f.wake = time.AfterFunc(first.Sub(now), func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.dispatch(f.g.o.Now())
	})
}

// pickFor is pick for a request pinned to pin (nil: any instance): the
// index of pin when it can take a request now, else of another instance
// of this node that can (the request came here because this node runs
// the function, and this gateway holds each of its instances to the
// function's concurrency; the gateway that passed it on counted it at pin
// and finds that instance freer than it thought for a moment), else -1.
// Never another node's instance: a passed-on request is not passed on
// again. Called with mu held.
func (f *fnState) pickFor(now time.Time, tried map[*slot]bool, pin *slot) int {
	if pin == nil {
		return f.pick(now, tried, false)
	}
	i := slices.Index(f.slots, pin)
	if i < 0 || !pin.inst.Ready || !pin.inst.Addr.IsValid() || pin.downUntil.After(now) || tried[pin] ||
		pin.inflight >= f.fn.Concurrency {
		return f.pick(now, tried, true)
	}
	return i
}

// pick runs Pick over the current instances, this node's only when
// localOnly. Called with mu held.
func (f *fnState) pick(now time.Time, tried map[*slot]bool, localOnly bool) int {
	f.cands = f.cands[:0]
	for _, s := range f.slots {
		local := f.g.o.Node != 0 && s.inst.Node == f.g.o.Node
		f.cands = append(f.cands, Candidate{
			Local:    local,
			Ready:    s.inst.Ready && s.inst.Addr.IsValid(),
			InFlight: s.inflight,
			Down:     s.downUntil.After(now),
			Tried:    tried[s] || localOnly && !local,
		})
	}
	i := Pick(f.cands, f.fn.Concurrency, f.turn)
	if i >= 0 {
		f.turn++
	}
	return i
}

// counts returns the ready and the starting instances.
func (f *fnState) counts() (ready, starting int) {
	for _, s := range f.slots {
		if s.inst.Ready && s.inst.Addr.IsValid() {
			ready++
		} else if !s.inst.Ready {
			starting++
		}
	}
	return ready, starting
}

// triedAll reports whether every ready instance refused this request.
func (f *fnState) triedAll(tried map[*slot]bool) bool {
	if len(tried) == 0 {
		return false
	}
	for _, s := range f.slots {
		if s.inst.Ready && s.inst.Addr.IsValid() && !tried[s] {
			return false
		}
	}
	return true
}

// demand is the function's Demand now. Called with mu held.
func (f *fnState) demand() Demand {
	d := Demand{Queued: len(f.queue)}
	for _, s := range f.slots {
		d.InFlight += s.inflight
	}
	d.Ready, d.Starting = f.counts()
	d.Want = Desired(d.InFlight, d.Queued, f.fn.Concurrency, f.fn.MinInstances, f.fn.MaxInstances)
	return d
}

func (f *fnState) recordWait(d time.Duration) {
	if m := f.g.o.Metrics; m != nil {
		m.ObserveQueueWait(f.name, d)
	}
	if len(f.waits) < waitWindow {
		f.waits = append(f.waits, d)
		return
	}
	f.waits[f.waitNext] = d
	f.waitNext = (f.waitNext + 1) % waitWindow
}

// update makes fn the function's settings and instances, keeping the load
// of the instances that stay, and dispatches. It returns the demand to
// tell the Scaler when requests still wait for more instances than are
// ready or starting (an instance went away, a start failed), else nil.
func (f *fnState) update(fn Function, now time.Time) *Demand {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn.Concurrency = max(fn.Concurrency, 1)
	insts := fn.Instances
	fn.Instances = nil
	if fn.StartFailure != "" && fn.StartFailure != f.fn.StartFailure {
		f.g.log.Warn("fngateway: function failed to start an instance; requests get 502 while none is ready",
			"function", f.name, "reason", fn.StartFailure)
	}
	f.fn = fn
	old := make(map[string]*slot, len(f.slots))
	for _, s := range f.slots {
		old[s.inst.Name] = s
	}
	next := make([]*slot, 0, len(insts))
	for _, in := range insts {
		if s, ok := old[in.Name]; ok && s.inst.Addr == in.Addr {
			delete(old, in.Name)
			if in.Ready && !s.inst.Ready && len(f.queue) > 0 {
				// The moment a cold start's requests are handed out.
				f.g.log.Debug("fngateway: instance ready; dispatching the queue", "function", f.name,
					"instance", in.Name, "queued", len(f.queue))
			}
			s.inst = in
			next = append(next, s)
			continue
		}
		next = append(next, &slot{inst: in})
	}
	f.slots = next // the slots left in old are gone: see slot
	f.dispatch(now)
	if len(f.queue) > 0 {
		if d := f.demand(); d.ScaleOut() {
			return &d
		}
	}
	return nil
}

// remove ends the function on this gateway: waiting requests get 404, as
// later ones will; requests in flight finish.
func (f *fnState) remove() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = true
	for _, w := range f.queue {
		w.grant <- grant{err: &Error{Kind: NoRoute}}
	}
	f.queue = nil
	f.slots = nil
	if f.wake != nil {
		f.wake.Stop()
	}
}

// stats is the function's Stats now: the requests other gateways passed
// on are load here (in the Demand) but theirs to count.
func (f *fnState) stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.demand()
	for _, s := range f.slots {
		d.InFlight -= s.fromPeers
	}
	for _, w := range f.queue {
		if w.peer {
			d.Queued--
		}
	}
	return Stats{
		Function: f.name, Ready: d.Ready, Starting: d.Starting, InFlight: d.InFlight, Queued: d.Queued,
		LastActive: f.lastActive, Requests: f.st.requests, ColdStarts: f.st.coldStarts,
		QueueFull: f.st.queueFull, TimedOut: f.st.timedOut, StartFailed: f.st.startFailed,
		Unreachable: f.st.unreachable, Canceled: f.st.canceled,
		QueueWaitP50: stats.Quantile(f.waits, 0.50), QueueWaitP99: stats.Quantile(f.waits, 0.99),
		StartFailure: f.fn.StartFailure,
	}
}
