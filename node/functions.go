package node

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/fngateway"
	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// The node's function component: the function gateway (package fngateway)
// on the ingress listener, fed from the local replica, and the scaler that
// turns the gateway's demand into committed scale decisions.
//
//   - Instances: every assignment of a function (Assignment.Function), at
//     its committed address and the function's http.port, on its node;
//     ready when its node reports it running and healthy (a TCP probe of
//     the port, reconciler.functionProbe). A function whose instances have
//     all failed to start (none pending) reports the failure, so the
//     gateway answers 502 at once instead of waiting for its timeout.
//   - Scale-out: Scaler.Want proposes ScaleFunction{out} with this node as
//     the receiving node, on a goroutine, at most one proposal in flight
//     per function, and only when the committed want is below the demand;
//     the request itself waits in the gateway's bounded queue, never on
//     Raft. When a function's committed want changes, the local reconciler
//     is woken (reconciler.Wake, a pass without a fetch): when it leads,
//     the plan follows at once instead of at its next resync.
//   - Activity: every fnActivityEvery the gateway's request activity since
//     the last report (and functions with requests in flight, as of now) is
//     proposed as FunctionActivity; the leader scales idle functions in by
//     it (reconciler.ScaleIns). A node that dies reports nothing more.

const (
	// fnActivityEvery is how often a node reports its functions'
	// activity: far below any idleTimeout (at least a second), so a
	// function in use is never judged idle, and one small proposal per
	// node per period at most, only while requests come.
	fnActivityEvery = 500 * time.Millisecond
	// fnProposeTimeout bounds one scale or activity proposal: a request
	// waiting on it is bounded by the gateway's queue timeout anyway.
	fnProposeTimeout = 10 * time.Second
)

// fnStore is what the component needs of the Raft store.
type fnStore interface {
	Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error)
	LocalRead() (*replicated.State, error)
}

// functions is the node's function component. Construct with newFunctions.
type functions struct {
	self    uint64
	store   fnStore
	log     *slog.Logger
	gateway *fngateway.Gateway
	kick    chan struct{} // capacity 1: a newer state applied
	// trigger wakes the local reconciler for a pass, no fetch (nil: no source).
	trigger func()
	// carryPlan: scale-outs carry the plan made from the local replica
	// (reconciler.ScaleOutPlan). Off on agent-only nodes: the server
	// that takes their proposal attaches it (agents may not propose plans).
	carryPlan bool
	// ahead, when set, starts the instances a carried plan places on this
	// node while its scale-out commits (speculate.go).
	ahead *speculation
	// agents, when set (a server), lends the instances that the plan of an
	// agent-only node's scale-out places on that node to its view, so it
	// starts them while the scale-out commits (speculate.go).
	agents *agentGuesses
	now    func() time.Time

	ctxMu sync.Mutex
	ctx   context.Context // Run's; nil before Run

	mu        sync.Mutex
	proposing map[string]bool // guarded by mu: functions with a scale-out proposal in flight
	wants     map[string]int  // guarded by mu: the committed wants last seen

	// front serves the gateway beside ingress (nil until frontDoor).
	front *fngateway.Front
}

// newFunctions returns the component; m receives the gateway's latencies
// (nil: none).
func newFunctions(self uint64, store fnStore, m fngateway.Metrics, log *slog.Logger) *functions {
	f := &functions{self: self, store: store, log: log.With("component", "functions"), kick: make(chan struct{}, 1),
		now: time.Now, proposing: map[string]bool{}, wants: map[string]int{}}
	f.gateway = fngateway.New(fngateway.Options{Node: self, Scaler: f, Metrics: m, Logger: f.log, Ahead: f.noticed})
	return f
}

// Notify tells the component that a newer state applied; it never blocks.
func (f *functions) Notify() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run feeds the gateway from the local replica after every applied entry
// and reports activity, until ctx ends.
func (f *functions) Run(ctx context.Context) error {
	f.ctxMu.Lock()
	f.ctx = ctx
	f.ctxMu.Unlock()
	defer f.gateway.CloseIdleConnections()
	tick := time.NewTicker(fnActivityEvery)
	defer tick.Stop()
	reported := map[string]uint64{} // requests counted at the last report, by function
	f.refresh()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.kick:
			f.refresh()
		case <-tick.C:
			f.reportActivity(ctx, reported)
		}
	}
}

// refresh hands the gateway the functions and instances of the local
// replica and triggers the reconciler when a committed want changed.
func (f *functions) refresh() {
	st, err := f.store.LocalRead()
	if err != nil {
		f.log.Debug("reading the local replica for the gateway", "err", err)
		return
	}
	f.gateway.Update(gatewayFunctions(st, f.self))
	f.gateway.SetPeers(gatewayPeers(st))
	wants := map[string]int{}
	if st.Desired != nil {
		for name := range st.Desired.Functions {
			wants[name] = st.FunctionWant(name)
		}
	}
	f.mu.Lock()
	changed := !maps.Equal(wants, f.wants)
	f.wants = wants
	f.mu.Unlock()
	if changed && f.trigger != nil {
		f.trigger()
	}
}

// gatewayPeers are the addresses the other nodes' gateways may connect
// from (pure): every node's gateway, Raft (underlay) and overlay address
// that is an IP address. A peer connecting from another one loses only
// the pinning of the requests it passes on (they are routed like a
// client's).
func gatewayPeers(st *replicated.State) []netip.Addr {
	var out []netip.Addr
	add := func(hostPort string) {
		if host, _, err := net.SplitHostPort(hostPort); err == nil {
			if a, err := netip.ParseAddr(host); err == nil {
				out = append(out, a)
			}
		}
	}
	for _, n := range st.Nodes {
		add(n.GatewayAddr)
		add(n.RaftAddr)
	}
	if st.Network != nil {
		for _, a := range st.Network.NodeAddrs {
			out = append(out, a)
		}
	}
	return out
}

// gatewayFunctions is node self's gateway's view of st (pure): every
// function of the committed spec with its assigned instances, those of
// other nodes reached through their nodes' gateways when the nodes
// registered one.
func gatewayFunctions(st *replicated.State, self uint64) []fngateway.Function {
	if st.Desired == nil || len(st.Desired.Functions) == 0 {
		return nil
	}
	fns := fngateway.FromSpec(st.Desired.Functions)
	byName := map[string]int{}
	for i := range fns {
		byName[fns[i].Name] = i
	}
	failed := map[string]string{} // function → a failed instance's message
	pending := map[string]bool{}  // function → an instance neither ready nor failed
	for _, name := range slices.Sorted(maps.Keys(st.Assignments)) {
		a := st.Assignments[name]
		i, ok := byName[a.Function]
		if a.Function == "" || !ok {
			continue
		}
		inst := fngateway.Instance{Name: name, Node: a.Node}
		if n := st.Nodes[a.Node]; n != nil && a.Node != self {
			inst.Via = n.GatewayAddr
		}
		if st.Network != nil {
			if id, ok := st.Network.Identities[name]; ok && id.Address.IsValid() {
				inst.Addr = netip.AddrPortFrom(id.Address, uint16(st.Desired.Functions[a.Function].HTTP.Port))
			}
		}
		obs, seen := st.Observed[name]
		switch {
		case seen && obs.Node == a.Node && obs.Phase == replicated.PhaseRunning && obs.Health == replicated.Healthy &&
			obs.Generation == a.Generation:
			inst.Ready = true
		case seen && obs.Node == a.Node && obs.Phase == replicated.PhaseFailed:
			msg := obs.Message
			if msg == "" {
				msg = "its node reports it failed"
			}
			failed[a.Function] = fmt.Sprintf("instance %s on node %d: %s", name, a.Node, msg)
			continue // not starting: the gateway must not wait for it
		default:
			pending[a.Function] = true
		}
		fns[i].Instances = append(fns[i].Instances, inst)
	}
	for fn, msg := range failed {
		if !pending[fn] {
			fns[byName[fn]].StartFailure = msg
		}
	}
	return fns
}

// Want implements fngateway.Scaler: it never blocks.
func (f *functions) Want(fn string, d fngateway.Demand) {
	if !d.ScaleOut() {
		return
	}
	f.mu.Lock()
	if f.proposing[fn] || f.wants[fn] >= d.Want {
		f.mu.Unlock()
		return
	}
	f.proposing[fn] = true
	f.mu.Unlock()
	f.ctxMu.Lock()
	ctx := f.ctx
	f.ctxMu.Unlock()
	if ctx == nil {
		ctx = context.Background() // before Run: the proposal is still bounded by its timeout
	}
	go func() {
		defer func() {
			f.mu.Lock()
			delete(f.proposing, fn)
			f.mu.Unlock()
		}()
		pctx, cancel := context.WithTimeout(ctx, fnProposeTimeout)
		defer cancel()
		reason := fmt.Sprintf("%d in flight, %d queued at node %d's gateway; %d ready, %d starting",
			d.InFlight, d.Queued, f.self, d.Ready, d.Starting)
		cmd := replicated.Command{Type: replicated.CmdScaleFunction, At: f.now(),
			ScaleFunction: &replicated.ScaleFunction{Function: fn, Kind: replicated.ScaleOut, Want: d.Want, Node: f.self, Reason: reason}}
		out, err := f.proposeScaleOut(pctx, cmd)
		switch {
		case err != nil:
			f.log.Warn("function scale-out not committed; the next waiting request asks again", "function", fn, "want", d.Want, "err", err)
		case !out.res.OK():
			f.log.Warn("function scale-out refused", "function", fn, "want", d.Want, "err", out.res.Err())
		default:
			f.log.Info("function scaled out", "function", fn, "want", d.Want, "reason", reason,
				"plan", out.plan, "lead", out.lead, "commit", out.commit, "ahead", out.ahead)
			f.mu.Lock()
			f.wants[fn] = max(f.wants[fn], d.Want)
			f.mu.Unlock()
		}
	}()
}

// ProposeScaleOut implements api.ScaleOuts: a scale-out that an agent-only
// node's gateway sent this server (POST /v1/agent/propose) goes the way
// of this node's own gateway's: with the plan made from this replica, and
// the instances it places here or on other nodes with a replica started
// ahead of its commit.
func (f *functions) ProposeScaleOut(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	out, err := f.proposeScaleOut(ctx, cmd)
	if err == nil && out.res.OK() {
		sf := cmd.ScaleFunction
		f.log.Info("function scaled out for another node's gateway", "function", sf.Function, "want", sf.Want, "for", sf.Node,
			"reason", sf.Reason, "plan", out.plan, "lead", out.lead, "commit", out.commit, "ahead", out.ahead)
	}
	return out.res, err
}

// scaleOutcome is what proposing a scale-out did.
type scaleOutcome struct {
	res replicated.Result
	// ahead: an instance was started before the commit, on this node or
	// on the agent-only node that asked (lent to its view).
	ahead bool
	// plan: reading the replica and making the plan that rides along;
	// lead: waiting for the starts ahead, here and on the nodes told;
	// commit: Raft, until this node's replica applied it.
	plan, lead, commit time.Duration
}

// proposeScaleOut proposes cmd, a ScaleFunction scale-out. With carryPlan
// the plan made from the local replica rides along (one commit instead of
// the scale's and then the leader's; Apply drops it if the state moved),
// the other nodes it places new instances on are told by their gateways
// and start them ahead (speculate.go), and so does this node.
func (f *functions) proposeScaleOut(ctx context.Context, cmd replicated.Command) (scaleOutcome, error) {
	began := time.Now()
	sf := *cmd.ScaleFunction
	var st *replicated.State
	if f.carryPlan {
		var err error
		if st, err = f.store.LocalRead(); err == nil {
			sf = reconciler.ScaleOutPlan(st, sf)
		}
	}
	cmd.ScaleFunction = &sf
	var out scaleOutcome
	out.plan = time.Since(began)
	var notices sync.WaitGroup
	if st != nil && f.ahead != nil {
		// Each node told answers once it ran its instances (at most
		// aheadLead).
		for node, via := range aheadTargets(st, sf, f.self) {
			if node == sf.Node {
				continue // an agent-only node asking for itself: its view carries the guess (below)
			}
			notices.Go(func() {
				n := fngateway.AheadNotice{Function: sf.Function, Want: sf.Want, From: sf.Node}
				if err := f.gateway.SendAhead(ctx, via, n); err != nil {
					f.log.Debug("ahead notice not taken; the instance starts once committed", "function", sf.Function, "node", node, "err", err)
				}
			})
		}
	}
	var proposed time.Time
	propose := func(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
		// The commit's work would compete for the CPUs with the starts
		// the notices asked for (speculate.go, aheadLead).
		waitAtMost(&notices, aheadNoticeWait)
		proposed = time.Now()
		return f.store.Propose(ctx, cmd)
	}
	agentGuess := -1
	if st != nil && f.agents != nil && sf.Node != f.self {
		if g, ok := guessFrom(st, cmd, sf.Node); ok {
			agentGuess = f.agents.add(g)
		}
	}
	var err error
	if f.ahead != nil && st != nil {
		out.res, out.ahead, err = f.ahead.propose(ctx, st, cmd, propose)
	} else {
		out.res, err = propose(ctx, cmd)
	}
	out.lead, out.commit = proposed.Sub(began)-out.plan, time.Since(proposed)
	if agentGuess >= 0 {
		out.ahead = true
		if err == nil && out.res.OK() {
			time.AfterFunc(aheadHold, func() { f.agents.drop(agentGuess) })
		} else {
			f.agents.drop(agentGuess)
		}
	}
	return out, err
}

// noticed is the gateway's Ahead: a peer proposes a scale-out of n.Function
// whose plan may place an instance here. This node makes the plan its own
// replica gives for that scale-out (trusting the notice for nothing but
// the function and the want) and runs what it places here while the
// proposal commits, for at most aheadHold.
func (f *functions) noticed(ctx context.Context, n fngateway.AheadNotice) {
	if f.ahead == nil || !f.carryPlan {
		return
	}
	began := time.Now()
	st, err := f.store.LocalRead()
	if err != nil {
		return
	}
	sf := reconciler.ScaleOutPlan(st, replicated.ScaleFunction{Function: n.Function, Kind: replicated.ScaleOut, Want: n.Want,
		Node: n.From, Reason: fmt.Sprintf("ahead notice from node %d", n.From)})
	g, ok := guessFrom(st, replicated.Command{Type: replicated.CmdScaleFunction, At: f.now(), ScaleFunction: &sf}, f.self)
	if !ok {
		f.log.Debug("ahead notice: this replica's plan starts nothing here", "function", n.Function, "want", n.Want, "from", n.From)
		return
	}
	wait := f.ahead.expect(slices.Sorted(maps.Keys(g.assignments)))
	held := f.ahead.hold(g, aheadHold)
	guessed := time.Since(began)
	lead := aheadLead
	if !held {
		lead = 0 // a notice sent twice: its first is being started
	}
	ran := wait(ctx, lead)
	// lead: until the agent ran them (ran), and the notice is answered.
	f.log.Debug("instances started ahead of a peer's scale-out", "function", n.Function, "from", n.From,
		"instances", slices.Sorted(maps.Keys(g.assignments)), "held", held, "guess", guessed, "lead", time.Since(began)-guessed, "ran", ran)
}

// aheadTargets are the other nodes sf's plan places new instances on, by
// their gateways' addresses (pure; nodes without one are left out).
func aheadTargets(st *replicated.State, sf replicated.ScaleFunction, self uint64) map[uint64]string {
	out := map[uint64]string{}
	if sf.Plan == nil {
		return out
	}
	for _, a := range sf.Plan.Assignments {
		if _, had := st.Assignments[a.VM]; had || a.Node == self {
			continue
		}
		if n := st.Nodes[a.Node]; n != nil && n.GatewayAddr != "" {
			out[a.Node] = n.GatewayAddr
		}
	}
	return out
}

// reportActivity proposes the functions that saw requests since the last
// report (reported: their request counters then) or have some in flight.
func (f *functions) reportActivity(ctx context.Context, reported map[string]uint64) {
	now := f.now()
	active := activeFunctions(f.gateway.Stats(), reported, now)
	if len(active) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, fnProposeTimeout)
	defer cancel()
	res, err := f.store.Propose(pctx, replicated.Command{Type: replicated.CmdFunctionActivity, At: now,
		FunctionActivity: &replicated.FunctionActivity{Node: f.self, Active: active}})
	if err == nil && !res.OK() {
		err = res.Err()
	}
	if err != nil {
		// The counters stay: the next report carries it.
		f.log.Warn("reporting function activity", "err", err)
		return
	}
	for _, s := range f.gateway.Stats() {
		if _, ok := active[s.Function]; ok {
			reported[s.Function] = s.Requests
		}
	}
}

// activeFunctions decides what a node reports (pure): a function with
// requests in flight or waiting is active now; one whose request counter
// moved since the last report was active at its LastActive.
func activeFunctions(stats []fngateway.Stats, reported map[string]uint64, now time.Time) map[string]time.Time {
	out := map[string]time.Time{}
	for _, s := range stats {
		switch {
		case s.InFlight+s.Queued > 0:
			out[s.Function] = now
		case s.Requests != reported[s.Function]:
			out[s.Function] = s.LastActive
		}
	}
	return out
}

// FunctionStats implements api.FunctionStats: this node's gateway.
func (f *functions) FunctionStats() []api.FunctionLocal {
	var out []api.FunctionLocal
	for _, s := range f.gateway.Stats() {
		l := api.FunctionLocal{Function: s.Function, Ready: s.Ready, Starting: s.Starting, InFlight: s.InFlight, Queued: s.Queued,
			Requests: s.Requests, ColdStarts: s.ColdStarts, QueueFull: s.QueueFull, TimedOut: s.TimedOut,
			StartFailed: s.StartFailed, Unreachable: s.Unreachable, ColdStartP50: s.QueueWaitP50, ColdStartP99: s.QueueWaitP99,
			LastActive: s.LastActive, StartFailure: s.StartFailure}
		if f.front != nil {
			l.RequestP50, l.RequestP99 = f.front.Latency(s.Function)
		}
		out = append(out, l)
	}
	return out
}

// frontDoor returns the handler of the ingress listener: ingress's routes
// and the gateway's (fngateway.Front).
func (f *functions) frontDoor(in *ingress.Server) *fngateway.Front {
	f.front = fngateway.NewFront(in, f.gateway)
	return f.front
}
