package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, Health{OK: true, Node: s.o.Replica.NodeID()})
}

func (s *Server) handleState(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.read(w, r); ok {
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, ok := s.read(w, r)
	if !ok {
		return
	}
	var local *reconciler.Status
	if s.o.Reconciler != nil {
		rs := s.o.Reconciler.Status()
		local = &rs
	}
	writeJSON(w, http.StatusOK, NewStatusView(st, s.o.Replica.NodeID(), s.leader(), local))
}

func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.read(w, r); ok {
		writeJSON(w, http.StatusOK, NodeViews(st, s.leader()))
	}
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.read(w, r); ok {
		h := st.History
		if h == nil {
			h = []replicated.Revision{}
		}
		writeJSON(w, http.StatusOK, h)
	}
}

func (s *Server) handleDiff(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.read(w, r); ok {
		d := reconciler.ComputeDrift(st)
		if d == nil {
			d = []reconciler.Drift{}
		}
		writeJSON(w, http.StatusOK, d)
	}
}

// handleReconciler answers this node's own reconciler status.
func (s *Server) handleReconciler(w http.ResponseWriter, _ *http.Request) {
	if s.o.Reconciler == nil {
		writeError(w, http.StatusConflict, s.errNoRepository())
		return
	}
	writeJSON(w, http.StatusOK, s.o.Reconciler.Status())
}

// handleNodeState cordons, drains or readies a node through Raft; the
// leader's next pass moves VMs off a draining node.
func (s *Server) handleNodeState(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("node id %q: want a number > 0", r.PathValue("id")))
		return
	}
	var req NodeStateRequest
	if !decode(w, r, &req, `{"state": "ready|cordoned|draining"}`) {
		return
	}
	switch req.State {
	case replicated.NodeReady, replicated.NodeCordoned, replicated.NodeDraining:
	default:
		writeError(w, http.StatusBadRequest, fmt.Errorf("state %q: want ready, cordoned or draining", req.State))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res, err := s.o.Replica.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: s.o.Now(),
		SetNodeState: &replicated.SetNodeState{ID: id, State: req.State}})
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("setting node %d %s (is a quorum of nodes up?): %w", id, req.State, err))
		return
	}
	if res.Code != replicated.ResultOK {
		code := http.StatusConflict
		if res.Code == replicated.ResultUnknownNode {
			code = http.StatusNotFound
		}
		writeError(w, code, errors.New(res.Message))
		return
	}
	if s.o.Reconciler != nil {
		s.o.Reconciler.Trigger()
	}
	writeJSON(w, http.StatusOK, NodeStateAnswer{Node: id, State: req.State, Message: res.Message})
}

// handleAddMember adds a replica (a voter, or a non-voting member) to the
// shard; the new node then starts with `serve --join`.
func (s *Server) handleAddMember(w http.ResponseWriter, r *http.Request) {
	var req MemberRequest
	if !decode(w, r, &req, `{"id": N, "raftAddr": "HOST:PORT", "nonVoting": bool}`) {
		return
	}
	if req.ID == 0 {
		writeError(w, http.StatusBadRequest, errors.New("id: want a node id > 0"))
		return
	}
	if _, _, err := net.SplitHostPort(req.RaftAddr); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("raftAddr %q: %w", req.RaftAddr, err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := s.o.Replica.AddReplica(ctx, req.ID, req.RaftAddr, req.NonVoting); err != nil {
		writeError(w, http.StatusConflict, fmt.Errorf("adding node %d at %s: %w", req.ID, req.RaftAddr, err))
		return
	}
	next := fmt.Sprintf("start it with: blixard serve --node-id %d --raft-addr %s --join", req.ID, req.RaftAddr)
	if req.NonVoting {
		next += " --non-voting"
	}
	writeJSON(w, http.StatusOK, MemberAnswer{MemberRequest: req, Next: next + " …"})
}

// handlePlan evaluates a commit of the followed repository and plans it
// against the committed state, through reconciler.PlanCommit.
func (s *Server) handlePlan(w http.ResponseWriter, r *http.Request) {
	var req PlanRequest
	if !decode(w, r, &req, `{"commit": "<40 hex digits>"}`) {
		return
	}
	if !commitRE.MatchString(req.Commit) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("commit %q: want a full 40-digit hex SHA", req.Commit))
		return
	}
	if s.o.Evaluator == nil {
		writeError(w, http.StatusConflict, s.errNoRepository())
		return
	}
	ctx := r.Context()
	if s.o.Source != nil {
		// The commit may be newer than the mirror: fetch first (cheap when up to date).
		if _, err := s.o.Source.Fetch(ctx); err != nil {
			s.log.Warn("fetch before plan failed; planning from the mirror as it is", "err", err)
		}
	}
	st, ok := s.read(w, r)
	if !ok {
		return
	}
	p, err := reconciler.PlanCommit(ctx, s.o.Evaluator, req.Commit, st)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Errorf("planning commit %s: %w", req.Commit, err))
		return
	}
	writeJSON(w, http.StatusOK, NewPlanView(p, ""))
}

func (s *Server) handleSync(w http.ResponseWriter, _ *http.Request) {
	if s.o.Reconciler == nil {
		writeError(w, http.StatusConflict, s.errNoRepository())
		return
	}
	s.o.Reconciler.Trigger()
	writeJSON(w, http.StatusAccepted, SyncAnswer{Triggered: true, Node: s.o.Replica.NodeID(), Leader: s.leader()})
}

// handleLogs streams a VM's console log. Any node answers: the node the VM
// is assigned to (or last observed on) serves its file, others proxy to
// it. ?follow=1 keeps streaming until the client goes away.
func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := spec.ValidName(name); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("VM name %q: %w", name, err))
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	self := s.o.Replica.NodeID()
	if r.URL.Query().Get("local") != "1" {
		st, err := s.o.Replica.LocalRead()
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("node %d: reading the local replica: %w", self, err))
			return
		}
		node := uint64(0)
		if as, ok := st.Assignments[name]; ok {
			node = as.Node
		} else if vs, ok := st.Observed[name]; ok {
			node = vs.Node
		}
		if node == 0 {
			writeError(w, http.StatusNotFound, fmt.Errorf("VM %q is neither assigned nor observed on any node (see `blixard status`)", name))
			return
		}
		if node != self {
			n, ok := st.Nodes[node]
			if !ok || n.APIAddr == "" {
				writeError(w, http.StatusBadGateway, fmt.Errorf("VM %q is on node %d, whose API address is unknown", name, node))
				return
			}
			s.proxyLogs(w, r, n.APIAddr, name, follow)
			return
		}
	}
	if s.o.Logs == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("node %d runs no VMs and has no console logs", self))
		return
	}
	sw := &streamWriter{w: w}
	err := s.o.Logs.Tail(r.Context(), name, follow, sw)
	switch {
	case err != nil && !sw.started && errors.Is(err, fs.ErrNotExist):
		writeError(w, http.StatusNotFound, fmt.Errorf("no console log for VM %q on node %d: %w", name, self, err))
	case err != nil && !sw.started:
		writeError(w, http.StatusInternalServerError, fmt.Errorf("reading the console log of VM %q on node %d: %w", name, self, err))
	case err != nil:
		s.log.Debug("log stream ended", "vm", name, "err", err)
	case !sw.started:
		sw.start()
	}
}

func (s *Server) proxyLogs(w http.ResponseWriter, r *http.Request, apiAddr, name string, follow bool) {
	q := url.Values{"local": {"1"}}
	if follow {
		q.Set("follow", "1")
	}
	u := "http://" + apiAddr + "/v1/vms/" + url.PathEscape(name) + "/logs?" + q.Encode()
	req, err := http.NewRequestWithContext(r.Context(), "GET", u, nil)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	resp, err := s.o.HTTPClient.Do(req)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("reaching the node at %s for the logs of VM %q: %w", apiAddr, name, err))
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(&streamWriter{w: w, started: true}, resp.Body)
}

// streamWriter sends a 200 text/plain header before the first byte and
// flushes after every write, so followed logs arrive promptly.
type streamWriter struct {
	w       http.ResponseWriter
	started bool
}

func (s *streamWriter) start() {
	s.started = true
	s.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	s.w.WriteHeader(http.StatusOK)
}

func (s *streamWriter) Write(p []byte) (int, error) {
	if !s.started {
		s.start()
	}
	n, err := s.w.Write(p)
	if fl, ok := s.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

// handleVMRunState starts, stops or restarts VM name (an instance, or a
// declared VM: all its replicas) by committing SetVMRunState; the VM's
// agent acts on the committed choice. The body is empty or {}.
func (s *Server) handleVMRunState(action VMAction) http.HandlerFunc {
	cmd := replicated.SetVMRunState{}
	switch action {
	case VMStart:
		cmd.Want = replicated.RunStateRunning
	case VMStop:
		cmd.Want = replicated.RunStateStopped
	case VMRestart:
		cmd.Restart = true
	}
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if err := spec.ValidName(name); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("VM name %q: %w", name, err))
			return
		}
		var req VMRunStateRequest
		if !decodeOptional(w, r, &req, "no body, or {}") {
			return
		}
		c := cmd
		c.VM = name
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		res, err := s.o.Replica.Propose(ctx, replicated.Command{Type: replicated.CmdSetVMRunState, At: s.o.Now(), SetVMRunState: &c})
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("%s VM %s (is a quorum of nodes up?): %w", action, name, err))
			return
		}
		switch res.Code {
		case replicated.ResultOK:
			writeJSON(w, http.StatusOK, VMRunStateAnswer{VM: name, Action: action, Message: res.Message})
		case replicated.ResultUnknownVM:
			writeError(w, http.StatusNotFound, errors.New(res.Message))
		default:
			writeError(w, http.StatusConflict, errors.New(res.Message))
		}
	}
}
