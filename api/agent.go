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
