package node

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/replicated"
)

// Starts ahead of their commit. A scale-out that a gateway places on its
// own node carries its plan (reconciler.ScaleOutPlan), so this node knows,
// before Raft does, the instance it will run and its network identity: the
// node's agent and network read the local replica with that instance added
// (speculation.overlay), and the runner is exec'd before the commit
// instead of after it: the proposal waits until the agent ran the
// instance (at most aheadLead), so that the commit's work does not compete
// with the fork and exec for the CPUs. The gateway still dispatches only
// to committed instances its node reports ready. A scale-out placed on
// another node reaches that node as an ahead notice (functions.noticed):
// the receiver makes its own guess from its own replica, holds it for a
// while (hold), as it never sees the proposal return, and answers the
// notice once it ran the instance (at most aheadLead); the proposer
// proposes once its notices were answered.
//
// A guess is read only while the replica is at the revision it was made
// from, has no instance of its name (once the commit, or the leader's plan
// when the carried one was dropped, assigns it anywhere, the replica's own
// wins), no other instance with its address or tap, and room for it on
// this node beside everything assigned here. It is dropped when its
// proposal fails, and aheadHold after it committed or was noticed: an
// instance nothing committed by then is no longer assigned, and the
// agent's pass stops it like any other.

// aheadHold is how long a guess outlives its committed proposal, or a
// notice's guess its notice: far beyond a commit's few milliseconds, and
// time for the leader's plan when the carried one was dropped.
const aheadHold = 3 * time.Second

// guess is one scale-out's new local instances, as its plan assigns them.
type guess struct {
	function string
	node     uint64 // the node the instances are placed on
	noticed  bool   // a notice's (hold), not this node's own proposal's
	// inputs and revision are the replica's PlanInputs and revision ID the
	// plan was made from.
	inputs, revision uint64
	assignments      map[string]replicated.Assignment
	identities       map[string]replicated.Identity
}

// aheadLead bounds how long a scale-out waits for the instances it starts
// ahead to run before it is proposed (and a notice's receiver before it
// answers). Proposing at once would put the commit's work (encoding, Raft
// and its fsyncs, every node applying) on the CPUs at the moment the
// runners are forked and exec'd; the commit is not on a cold start's path
// any more (the guest boots meanwhile, the gateway dispatches only once it
// is ready), so it waits for the starts, a few milliseconds, and never
// longer than this when the agent is slow to start them (a runner to
// fetch, a busy agent).
const aheadLead = 20 * time.Millisecond

// aheadNoticeWait bounds how long a scale-out waits for its notices'
// answers (each receiver answers within aheadLead, plus the round trip).
const aheadNoticeWait = aheadLead + 10*time.Millisecond

// waitAtMost waits for wg, at most d.
func waitAtMost(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
}

// guessSet holds guesses by id, and wakes whoever reads them (an agent,
// the agents' views) when one comes or goes.
type guessSet struct {
	mu      sync.Mutex
	next    int
	guesses map[int]guess // guarded by mu
	wake    func()        // guarded by mu (nil until set)
}

// setWake sets what wakes the readers when a guess comes or goes.
func (gs *guessSet) setWake(wake func()) {
	gs.mu.Lock()
	gs.wake = wake
	gs.mu.Unlock()
}

// add holds g until drop(id); the readers are woken.
func (gs *guessSet) add(g guess) (id int) {
	gs.mu.Lock()
	if gs.guesses == nil {
		gs.guesses = map[int]guess{}
	}
	id = gs.next
	gs.next++
	gs.guesses[id] = g
	wake := gs.wake
	gs.mu.Unlock()
	if wake != nil {
		wake()
	}
	return id
}

// drop forgets guess id, and wakes the readers: what an agent started and
// nothing committed stops now, not at a resync.
func (gs *guessSet) drop(id int) {
	gs.mu.Lock()
	delete(gs.guesses, id)
	wake := gs.wake
	gs.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// sortedLocked returns the guesses in the order they were added; gs.mu
// is held.
func (gs *guessSet) sortedLocked() []guess {
	ids := slices.Sorted(maps.Keys(gs.guesses))
	out := make([]guess, len(ids))
	for i, id := range ids {
		out[i] = gs.guesses[id]
	}
	return out
}

// speculation holds the guesses of the scale-outs in flight on this node;
// their reader is the node's agent.
type speculation struct {
	self uint64
	log  *slog.Logger

	guessSet // its mu also guards waiting
	// waiting are closed when the agent runs their instance (or it
	// failed): the proposals and notices waiting for their starts.
	waiting map[string]chan struct{} // guarded by mu
}

func newSpeculation(self uint64, log *slog.Logger) *speculation {
	return &speculation{self: self, log: log.With("component", "functions"), waiting: map[string]chan struct{}{}}
}

// phase is the agent's OnPhase: an instance that runs, or failed to,
// releases what waits for its start.
func (sp *speculation) phase(vm string, p replicated.Phase) {
	if p != replicated.PhaseRunning && p != replicated.PhaseFailed {
		return
	}
	sp.mu.Lock()
	if ch, ok := sp.waiting[vm]; ok {
		close(ch)
		delete(sp.waiting, vm)
	}
	sp.mu.Unlock()
}

// expect starts watching for instances to run, before their guess wakes
// the agent; the returned wait waits until every one of them ran, at most
// lead, and reports whether they did.
func (sp *speculation) expect(instances []string) (wait func(ctx context.Context, lead time.Duration) bool) {
	sp.mu.Lock()
	chs := make(map[string]chan struct{}, len(instances))
	for _, name := range instances {
		ch, ok := sp.waiting[name]
		if !ok {
			ch = make(chan struct{})
			sp.waiting[name] = ch
		}
		chs[name] = ch
	}
	sp.mu.Unlock()
	return func(ctx context.Context, lead time.Duration) bool {
		timer := time.NewTimer(lead)
		defer timer.Stop()
		ran := true
		for _, ch := range chs {
			select {
			case <-ch:
				continue
			case <-timer.C:
			case <-ctx.Done():
			}
			ran = false
			break
		}
		if !ran {
			sp.mu.Lock()
			for name, ch := range chs {
				if sp.waiting[name] == ch {
					delete(sp.waiting, name)
				}
			}
			sp.mu.Unlock()
		}
		return ran
	}
}

// propose adds cmd's guess made from st (when cmd places a new instance on
// this node), waits until the agent runs its instances (at most
// aheadLead), proposes it with propose, and drops the guess when the
// proposal fails, or aheadHold after it committed; it reports whether
// there was a guess.
func (sp *speculation) propose(ctx context.Context, st *replicated.State, cmd replicated.Command,
	propose func(context.Context, replicated.Command) (replicated.Result, error)) (replicated.Result, bool, error) {
	began := time.Now()
	g, ok := guessFrom(st, cmd, sp.self)
	if !ok {
		res, err := propose(ctx, cmd)
		return res, false, err
	}
	guessed := time.Since(began)
	wait := sp.expect(slices.Sorted(maps.Keys(g.assignments)))
	id := sp.add(g)
	ran := wait(ctx, aheadLead)
	lead := time.Since(began) - guessed
	res, err := propose(ctx, cmd)
	committed := err == nil && res.OK()
	if committed {
		time.AfterFunc(aheadHold, func() { sp.drop(id) })
	} else {
		sp.drop(id)
	}
	// guess: copying the replica and applying the scale-out to the copy;
	// lead: until the agent ran them (ran) or aheadLead passed.
	sp.log.Debug("instances started ahead of their scale-out's commit", "instances", slices.Sorted(maps.Keys(g.assignments)),
		"guess", guessed, "lead", lead, "ran", ran, "committed", committed)
	return res, true, err
}

// hold adds g for d (a notice's guess: this node does not see the
// proposal return), unless a guess for the same function made from the
// same inputs is held (a notice sent twice); a notice's guess for the
// same function made from other inputs is replaced (a burst's next
// scale-out). It reports whether it added g.
func (sp *speculation) hold(g guess, d time.Duration) bool {
	g.noticed = true
	sp.mu.Lock()
	for id, other := range sp.guesses {
		switch {
		case other.function != g.function:
		case other.inputs == g.inputs && other.revision == g.revision:
			sp.mu.Unlock()
			return false
		case other.noticed:
			delete(sp.guesses, id)
		}
	}
	sp.mu.Unlock()
	id := sp.add(g)
	time.AfterFunc(d, func() { sp.drop(id) })
	return true
}

// overlay is s with the guesses held (s itself when there are none).
func (sp *speculation) overlay(s *replicated.State) *replicated.State {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(sp.guesses) == 0 {
		return s
	}
	return overlayGuesses(s, sp.self, sp.sortedLocked())
}

// guessFrom is cmd's guess made from st (pure): the instances that
// applying cmd to a copy of st newly assigns to node self, with their
// identities. None (false) when cmd carries no plan, is refused, or
// assigns nothing new here.
func guessFrom(st *replicated.State, cmd replicated.Command, self uint64) (guess, bool) {
	if st == nil || st.Revision == nil || cmd.Type != replicated.CmdScaleFunction || cmd.ScaleFunction == nil ||
		cmd.ScaleFunction.Plan == nil {
		return guess{}, false
	}
	next := st.Clone()
	cmd.V = replicated.CommandVersion // as the replica decodes it (the store sets it when encoding)
	if res := next.Apply(st.Applied+1, cmd); !res.OK() {
		return guess{}, false
	}
	g := guess{function: cmd.ScaleFunction.Function, node: self, inputs: st.PlanInputs, revision: st.Revision.ID,
		assignments: map[string]replicated.Assignment{}, identities: map[string]replicated.Identity{}}
	for name, a := range next.Assignments {
		if _, had := st.Assignments[name]; had || a.Node != self {
			continue
		}
		g.assignments[name] = a
		if next.Network != nil {
			if id, ok := next.Network.Identities[name]; ok {
				g.identities[name] = id
			}
		}
	}
	return g, len(g.assignments) > 0
}

// overlayGuesses is s with the guesses' instances on node self added, in
// order (pure; s is not changed, and is returned as it is when nothing is
// added): a guess counts while s is at the revision it was made from; an
// instance s already has, one whose address or tap another instance of s
// has, and one there is no room for on self beside s's assignments there
// and the guesses added before it, are left out.
func overlayGuesses(s *replicated.State, self uint64, guesses []guess) *replicated.State {
	if s == nil || s.Revision == nil || s.Nodes[self] == nil {
		return s
	}
	room := s.Nodes[self].Capacity
	for _, a := range s.Assignments {
		if a.Node == self {
			room.VCPU -= a.VCPU
			room.MemMiB -= a.MemMiB
		}
	}
	var out *replicated.State
	taken := func(name string, id replicated.Identity) bool {
		nw := s.Network
		if out != nil {
			nw = out.Network
		}
		if nw == nil {
			return false
		}
		for other, oid := range nw.Identities {
			if other != name && (oid.Address == id.Address || oid.Tap == id.Tap) {
				return true
			}
		}
		return false
	}
	for _, g := range guesses {
		if g.revision != s.Revision.ID {
			continue
		}
		for _, name := range slices.Sorted(maps.Keys(g.assignments)) {
			a := g.assignments[name]
			if _, ok := s.Assignments[name]; ok || a.VCPU > room.VCPU || a.MemMiB > room.MemMiB {
				continue
			}
			if out != nil {
				if _, ok := out.Assignments[name]; ok {
					continue // an earlier guess has it
				}
			}
			id, hasID := g.identities[name]
			if hasID && taken(name, id) {
				continue
			}
			if out == nil {
				c := *s
				c.Assignments = maps.Clone(s.Assignments)
				if c.Assignments == nil {
					c.Assignments = map[string]replicated.Assignment{}
				}
				if s.Network != nil {
					nw := *s.Network
					nw.Identities = maps.Clone(s.Network.Identities)
					c.Network = &nw
				}
				out = &c
			}
			out.Assignments[name] = a
			room.VCPU -= a.VCPU
			room.MemMiB -= a.MemMiB
			if hasID && out.Network != nil {
				if out.Network.Identities == nil {
					out.Network.Identities = map[string]replicated.Identity{}
				}
				out.Network.Identities[name] = id
			}
		}
	}
	if out == nil {
		return s
	}
	return out
}

// speculativeState is a node's state as its agent and network read it:
// the local replica with the guesses in flight.
type speculativeState struct {
	nodeState
	sp *speculation
}

func (r speculativeState) LocalRead() (*replicated.State, error) {
	s, err := r.nodeState.LocalRead()
	if err != nil {
		return nil, err
	}
	return r.sp.overlay(s), nil
}

// agentGuesses are the instances this server starts ahead of their
// commit on agent-only nodes: the guesses of the scale-outs their gateways
// sent it (functions.ProposeScaleOut) for themselves, lent to those
// nodes' views (api.AgentAhead), whose agents start them as this node's
// agent starts its own guesses; dropped when the proposal fails, and
// aheadHold after it committed. Their reader is the API's view
// computation (setWake: WakeAgentViews).
type agentGuesses struct{ guessSet }

func newAgentGuesses() *agentGuesses { return &agentGuesses{} }

// Ahead implements api.AgentAhead: for each node with guesses, st with
// them added as overlayGuesses adds them (only while st is at the revision
// they were made from, has no instance of their names, …), and their names.
func (a *agentGuesses) Ahead(st *replicated.State) map[uint64]api.AheadInstances {
	a.mu.Lock()
	byNode := map[uint64][]guess{}
	for _, g := range a.sortedLocked() {
		byNode[g.node] = append(byNode[g.node], g)
	}
	a.mu.Unlock()
	var out map[uint64]api.AheadInstances
	for node, gs := range byNode {
		with := overlayGuesses(st, node, gs)
		if with == st {
			continue
		}
		var names []string
		for name, as := range with.Assignments {
			if _, had := st.Assignments[name]; !had && as.Node == node {
				names = append(names, name)
			}
		}
		if out == nil {
			out = map[uint64]api.AheadInstances{}
		}
		out[node] = api.AheadInstances{State: with, Instances: names}
	}
	return out
}
