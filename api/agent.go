package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// The agent endpoints serve agent-only nodes (`serve --agent-only`), which
// hold no replica: GET /v1/agent/view long-polls the parts of the node's
// view (replicated.ComputeViews) whose versions differ from the ones the
// agent holds, and POST /v1/agent/propose commits the commands an agent
// sends, for its own node only, answering once the command committed and
// with the view parts that changed up to it. Only a node certificate (or
// an API without authentication) may call them, for the node it names.

// Bounds of the agent endpoints.
const (
	// DefaultAgentWait is how long a view poll waits for a change when
	// the agent gives no wait; MaxAgentWait the longest it may ask for.
	DefaultAgentWait = 30 * time.Second
	MaxAgentWait     = 50 * time.Second
	// minViewInterval is the shortest time between two computations of
	// the views: a burst of applied entries (1,000 nodes heartbeating
	// commit ~500 a second) costs one computation per interval. The
	// interval grows to the last computation's duration, so views never
	// take more than half a core.
	minViewInterval = 50 * time.Millisecond
	maxViewInterval = time.Second
	// viewsIdle: the views stop being computed after this long without an
	// agent asking; the next request starts them again.
	viewsIdle = time.Minute
	// firstViewWait bounds the wait for the first computation.
	firstViewWait = 10 * time.Second
	// proposeTimeout bounds an agent's proposal on the server (its own
	// context usually ends sooner).
	proposeTimeout = 15 * time.Second
)

// AgentViewAnswer is the body of GET /v1/agent/view and part of the
// answer of POST /v1/agent/propose.
type AgentViewAnswer struct {
	Node uint64 `json:"node"`
	// Applied is the applied index of the state the parts come from.
	Applied uint64 `json:"applied"`
	// Parts are the parts whose version differs from the request's; none
	// when nothing changed during the wait.
	Parts map[replicated.ViewPart]replicated.EncodedPart `json:"parts"`
}

// AgentProposal is the body of POST /v1/agent/propose.
type AgentProposal struct {
	Command replicated.Command `json:"command"`
	// Have are the versions of the view parts the agent holds; Optional
	// the opt-in parts it wants (replicated.OptionalViewParts).
	Have     map[replicated.ViewPart]string `json:"have,omitempty"`
	Optional []replicated.ViewPart          `json:"optional,omitempty"`
}

// AgentProposeAnswer is the answer of POST /v1/agent/propose: the command
// committed (Result says whether Apply accepted it) and the view parts
// that changed up to a state that includes it.
type AgentProposeAnswer struct {
	Result replicated.Result `json:"result"`
	View   AgentViewAnswer   `json:"view"`
}

// agentCommandField is the JSON field of the commands an agent proposes
// (ok false for any other command).
func agentCommandField(t replicated.CommandType) (field string, ok bool) {
	switch t {
	case replicated.CmdRegisterNode:
		return "registerNode", true
	case replicated.CmdNodeHeartbeat:
		return "nodeHeartbeat", true
	case replicated.CmdScaleFunction:
		return "scaleFunction", true
	case replicated.CmdFunctionActivity:
		return "functionActivity", true
	case replicated.CmdSetNodeProblem:
		return "setNodeProblem", true
	}
	return "", false
}

// agentCaller authenticates a caller of the agent endpoints: a node
// certificate, or anyone on an API without authentication. It answers 401
// or 403 and returns false otherwise; node is the certificate's node (0:
// any, without authentication).
func (s *Server) agentCaller(w http.ResponseWriter, r *http.Request) (c Caller, node uint64, ok bool) {
	if s.o.Insecure {
		return Caller{Name: Anonymous, Role: pki.RoleAdmin}, 0, true
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		id, err := pki.IdentityOf(r.TLS.VerifiedChains[0][0])
		if err != nil {
			s.unauthorized(w, fmt.Errorf("client certificate: %w", err))
			return Caller{}, 0, false
		}
		if id.Kind != pki.KindNode || id.NodeID == 0 {
			hangUp(w)
			writeError(w, http.StatusForbidden, fmt.Errorf("%s %s serves agent-only nodes: it takes a node certificate (`blixard cert issue --node ID`), not %s's user certificate",
				r.Method, r.URL.Path, id.Name))
			return Caller{}, 0, false
		}
		return Caller{Name: id.Name, Role: id.Role}, id.NodeID, true
	}
	if r.Header.Get("Authorization") != "" {
		hangUp(w)
		writeError(w, http.StatusForbidden, fmt.Errorf("%s %s serves agent-only nodes: it takes a node certificate, not a bearer token", r.Method, r.URL.Path))
		return Caller{}, 0, false
	}
	s.unauthorized(w, errors.New("no credentials: the agent endpoints take the node's certificate (--cert and --key of an agent-only node)"))
	return Caller{}, 0, false
}

// agentNode parses the node query parameter and checks that the caller
// (certNode, 0: any) may act for it; it answers 400 or 403 and returns
// false otherwise.
func agentNode(w http.ResponseWriter, r *http.Request, certNode uint64) (uint64, bool) {
	vals := r.URL.Query()["node"]
	if len(vals) != 1 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%s %s: query parameter node (the agent's node id) given %d times, want once", r.Method, r.URL.Path, len(vals)))
		return 0, false
	}
	id, err := strconv.ParseUint(vals[0], 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%s %s: node=%q is not a node id (a positive integer)", r.Method, r.URL.Path, vals[0]))
		return 0, false
	}
	if certNode != 0 && certNode != id {
		hangUp(w)
		writeError(w, http.StatusForbidden, fmt.Errorf("node-%d's certificate may not act for node %d: an agent reads and reports for its own node only", certNode, id))
		return 0, false
	}
	return id, true
}

// viewQuery is what GET /v1/agent/view asks for.
type viewQuery struct {
	have     map[replicated.ViewPart]string
	optional []replicated.ViewPart
	wait     time.Duration
	// after: answer only from a state at least this new (the agent's,
	// so a server lagging behind the one it left sends nothing older).
	after uint64
}

// parseViewQuery reads PART=VERSION for the parts the agent holds,
// optional=PART,… for the opt-in parts, wait=DURATION and after=INDEX;
// anything else is refused.
func parseViewQuery(q url.Values) (viewQuery, error) {
	vq := viewQuery{have: map[replicated.ViewPart]string{}, wait: DefaultAgentWait}
	for key, vals := range q {
		if len(vals) != 1 {
			return vq, fmt.Errorf("query parameter %s given %d times, want once", key, len(vals))
		}
		v := vals[0]
		switch key {
		case "node":
		case "optional":
			parts, err := parseOptional(strings.Split(v, ","))
			if err != nil {
				return vq, err
			}
			vq.optional = parts
		case "wait":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > MaxAgentWait {
				return vq, fmt.Errorf("wait=%q: want a duration from 0s to %s", v, MaxAgentWait)
			}
			vq.wait = d
		case "after":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return vq, fmt.Errorf("after=%q: want a Raft index", v)
			}
			vq.after = n
		default:
			p, err := replicated.ParseViewPart(key)
			if err != nil {
				return vq, fmt.Errorf("query parameter %s: %w", key, err)
			}
			vq.have[p] = v
		}
	}
	return vq, nil
}

func parseOptional(names []string) ([]replicated.ViewPart, error) {
	var out []replicated.ViewPart
	for _, n := range names {
		if n == "" {
			continue
		}
		p, err := replicated.ParseViewPart(n)
		if err != nil || !slices.Contains(replicated.OptionalViewParts(), p) {
			return nil, fmt.Errorf("optional=%s: want a comma-separated list of %v", n, replicated.OptionalViewParts())
		}
		out = append(out, p)
	}
	return out, nil
}

// handleAgentView: GET /v1/agent/view?node=ID&PART=VERSION…&optional=…&wait=30s.
func (s *Server) handleAgentView(w http.ResponseWriter, r *http.Request) {
	_, certNode, ok := s.agentCaller(w, r)
	if !ok {
		return
	}
	node, ok := agentNode(w, r, certNode)
	if !ok {
		return
	}
	vq, err := parseViewQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("GET /v1/agent/view: %w", err))
		return
	}
	want := append(replicated.BaseViewParts(), vq.optional...)
	wait := vq.wait
	if !s.agents.computed() {
		// The first request after a start (or an idle spell) waits for the
		// first computation, whatever it asked: it has nothing to answer
		// from before.
		wait = max(wait, firstViewWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	v, parts, err := s.agents.await(ctx, node, want, vq.have, vq.after, 0)
	if err != nil && v == nil {
		if r.Context().Err() != nil {
			return // the agent went away
		}
		s.internalError(w, r, http.StatusServiceUnavailable, "computing the agent's view failed (is the node starting or stopping?)", err)
		return
	}
	writeAgentJSON(w, http.StatusOK, viewAnswer(node, v, parts))
}

// handleAgentPropose: POST /v1/agent/propose?node=ID with an [AgentProposal].
func (s *Server) handleAgentPropose(w http.ResponseWriter, r *http.Request) {
	c, certNode, ok := s.agentCaller(w, r)
	if !ok {
		return
	}
	node, ok := agentNode(w, r, certNode)
	if !ok {
		return
	}
	var p AgentProposal
	if !decode(w, r, &p, "an agent proposal {command, have, optional}") {
		return
	}
	if err := checkAgentCommand(p.Command, node); err != nil {
		code := http.StatusForbidden
		if errors.Is(err, errMalformed) {
			code = http.StatusBadRequest
		}
		writeError(w, code, fmt.Errorf("POST /v1/agent/propose: %w", err))
		return
	}
	optional, err := parseOptional(stringsOf(p.Optional))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("POST /v1/agent/propose: %w", err))
		return
	}
	cmd := p.Command
	cmd.Actor = c.Name
	ctx, cancel := context.WithTimeout(r.Context(), proposeTimeout)
	defer cancel()
	// raftstore forwards a follower's proposal to the leader and returns
	// once this replica applied it: every view computed from now on
	// includes it.
	var res replicated.Result
	switch {
	case cmd.Type == replicated.CmdScaleFunction && s.o.ScaleOuts != nil:
		// As this node's own gateway's: the plan rides along, and what
		// it places on nodes with a replica starts ahead of the commit.
		res, err = s.o.ScaleOuts.ProposeScaleOut(ctx, cmd)
	case cmd.Type == replicated.CmdScaleFunction:
		// The plan the leader would commit next rides along, made from
		// this replica (Apply drops it when the state moved meanwhile):
		// the agent-only node's cold start waits for one commit, as a
		// replica's does.
		if st, err := s.o.Replica.LocalRead(); err == nil {
			sf := reconciler.ScaleOutPlan(st, *cmd.ScaleFunction)
			cmd.ScaleFunction = &sf
		}
		res, err = s.o.Replica.Propose(ctx, cmd)
	default:
		res, err = s.o.Replica.Propose(ctx, cmd)
	}
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		s.internalError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("proposing %s for node %d: the outcome is unknown (no quorum, or a leader change); try again", cmd.Type, node), err)
		return
	}
	want := append(replicated.BaseViewParts(), optional...)
	minSeq := s.agents.startedNow()
	if cmd.Type == replicated.CmdScaleFunction {
		// The gateway asks for no more of the function until this answer:
		// the views after the commit are computed at once, not after the
		// interval (an instance lent ahead was just computed). Scale-outs
		// are few; heartbeats, the many, wait for the interval.
		s.WakeAgentViews()
	}
	v, parts, err := s.agents.await(ctx, node, want, p.Have, 0, minSeq)
	if v == nil {
		if r.Context().Err() != nil {
			return
		}
		s.internalError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("%s for node %d committed, but its view could not be computed after it", cmd.Type, node), err)
		return
	}
	writeAgentJSON(w, http.StatusOK, AgentProposeAnswer{Result: res, View: viewAnswer(node, v, parts)})
}

func stringsOf(ps []replicated.ViewPart) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

func viewAnswer(node uint64, v *replicated.Views, parts []replicated.ViewPart) AgentViewAnswer {
	a := AgentViewAnswer{Node: node, Applied: v.Applied, Parts: map[replicated.ViewPart]replicated.EncodedPart{}}
	for _, p := range parts {
		if e, ok := v.Part(node, p); ok {
			a.Parts[p] = e
		}
	}
	return a
}

// writeAgentJSON writes v compactly: views are large and read by programs.
func writeAgentJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// errMalformed marks a proposal that is not a well-formed agent command
// (400, not 403).
var errMalformed = errors.New("malformed command")

// checkAgentCommand allows only the commands an agent sends, for its own
// node: RegisterNode and NodeHeartbeat of node, ScaleFunction scale-outs
// asked for by node's gateway, FunctionActivity of node's gateway,
// SetNodeProblem of node's parts.
func checkAgentCommand(cmd replicated.Command, node uint64) error {
	field, ok := agentCommandField(cmd.Type)
	if !ok {
		return fmt.Errorf("an agent may propose %s, %s, %s, %s and %s only, not %q", replicated.CmdRegisterNode, replicated.CmdNodeHeartbeat,
			replicated.CmdScaleFunction, replicated.CmdFunctionActivity, replicated.CmdSetNodeProblem, cmd.Type)
	}
	// Exactly the type's own field: anything else would be applied too
	// under a command an agent may send.
	raw, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	for k := range fields {
		switch k {
		case "v", "type", "at", "actor", field:
		default:
			return fmt.Errorf("%w: a %s command carries %q besides %q", errMalformed, cmd.Type, k, field)
		}
	}
	var named uint64
	switch cmd.Type {
	case replicated.CmdRegisterNode:
		if cmd.RegisterNode == nil {
			return fmt.Errorf("%w: %s without %q", errMalformed, cmd.Type, field)
		}
		named = cmd.RegisterNode.ID
	case replicated.CmdNodeHeartbeat:
		if cmd.NodeHeartbeat == nil {
			return fmt.Errorf("%w: %s without %q", errMalformed, cmd.Type, field)
		}
		named = cmd.NodeHeartbeat.ID
		for _, st := range cmd.NodeHeartbeat.Statuses {
			if st.Node != node {
				return fmt.Errorf("node %d's heartbeat reports %s as node %d's: a node reports its own VMs only", node, st.VM, st.Node)
			}
		}
	case replicated.CmdScaleFunction:
		if cmd.ScaleFunction == nil {
			return fmt.Errorf("%w: %s without %q", errMalformed, cmd.Type, field)
		}
		if cmd.ScaleFunction.Kind != replicated.ScaleOut {
			return fmt.Errorf("a gateway scales out only (kind %q); scaling in is the leader's", replicated.ScaleOut)
		}
		if cmd.ScaleFunction.Plan != nil || cmd.ScaleFunction.Inputs != 0 {
			return errors.New("an agent's scale-out carries no plan: the server that takes it attaches one from its replica")
		}
		named = cmd.ScaleFunction.Node
	case replicated.CmdFunctionActivity:
		if cmd.FunctionActivity == nil {
			return fmt.Errorf("%w: %s without %q", errMalformed, cmd.Type, field)
		}
		named = cmd.FunctionActivity.Node
	case replicated.CmdSetNodeProblem:
		if cmd.SetNodeProblem == nil {
			return fmt.Errorf("%w: %s without %q", errMalformed, cmd.Type, field)
		}
		named = cmd.SetNodeProblem.ID
	}
	if named != node {
		return fmt.Errorf("node %d may not propose %s for node %d: an agent proposes for its own node only", node, cmd.Type, named)
	}
	return nil
}

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

// agentOnlyRoutes are the routes of an agent-only node's API: what it can
// answer from its own view and its own VMs. Status, plans, members and
// the rest are the servers'.
func (s *Server) agentOnlyRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.handleAgentOnlyHealth)
	mux.Handle("GET /metrics", s.guard(pki.RoleRead, s.metricsHandler()))
	mux.Handle("GET /v1/vms/{name}/logs", s.guard(pki.RoleRead, http.HandlerFunc(s.handleLogs)))
	mux.Handle("GET /v1/functions", s.guard(pki.RoleRead, http.HandlerFunc(s.handleAgentOnlyFunctions)))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("node %d is an agent-only node: it serves /healthz, /metrics, /v1/functions (its gateway) "+
			"and its VMs' logs; ask a server (its --servers) for %s %s", s.o.Replica.NodeID(), r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
		mux.ServeHTTP(w, r)
	})
}

// handleAgentOnlyFunctions: GET /v1/functions on an agent-only node, the
// counts of its own gateway, which a server's `GET /v1/functions?nodes=all`
// sums with every other node's. The rest of the answer comes from the
// node's view (no scale reasons or activity times: ask a server), so it is
// marked stale; nodes=all is the servers' to answer.
func (s *Server) handleAgentOnlyFunctions(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Has("nodes") {
		writeError(w, http.StatusBadRequest, fmt.Errorf("node %d is an agent-only node: it answers for its own gateway only; "+
			"ask a server (its --servers) for GET /v1/functions?nodes=all", s.o.Replica.NodeID()))
		return
	}
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, "agent-only node without a view from the servers", err)
		return
	}
	v := functionsView(st, s.o.Replica.NodeID(), s.localFunctions())
	v.Freshness = Freshness{Stale: true, AppliedIndex: st.Applied,
		StaleReason: fmt.Sprintf("agent-only node %d: from its view of the servers' state; ask a server for the committed functions", s.o.Replica.NodeID())}
	v.Freshness.setHeaders(w.Header())
	writeJSON(w, http.StatusOK, v)
}

// handleAgentOnlyHealth: 200 once the node has a view from the servers.
func (s *Server) handleAgentOnlyHealth(w http.ResponseWriter, _ *http.Request) {
	h := Health{OK: true, Node: s.o.Replica.NodeID()}
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		h.OK, h.Reason = false, "agent-only node without a view from the servers: "+err.Error()
		writeJSON(w, http.StatusServiceUnavailable, h)
		return
	}
	h.AppliedIndex = st.Applied
	writeJSON(w, http.StatusOK, h)
}
