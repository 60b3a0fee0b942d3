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
	"strings"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

// handleState answers the replicated state, without the tokens' hashes:
// a read-only caller has no use for them.
func (s *Server) handleState(w http.ResponseWriter, r *http.Request) {
	if st, _, ok := s.read(w, r); ok {
		for name, t := range st.Tokens {
			t.Hash = ""
			st.Tokens[name] = t
		}
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	var local *reconciler.Status
	if s.o.Reconciler != nil {
		rs := s.o.Reconciler.Status()
		local = &rs
	}
	v := NewStatusView(st, s.o.Replica.NodeID(), s.leader(), local)
	v.Freshness = fresh
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	if st, _, ok := s.read(w, r); ok {
		writeJSON(w, http.StatusOK, NodeViews(st, s.leader()))
	}
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	if st, _, ok := s.read(w, r); ok {
		h := st.History
		if h == nil {
			h = []replicated.Revision{}
		}
		writeJSON(w, http.StatusOK, h)
	}
}

func (s *Server) handleDiff(w http.ResponseWriter, r *http.Request) {
	if st, _, ok := s.read(w, r); ok {
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
		Actor: callerOf(r.Context()).Name, SetNodeState: &replicated.SetNodeState{ID: id, State: req.State}})
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("setting node %d %s failed; the outcome is unknown (is a quorum of nodes up? see `blixard nodes`)", id, req.State), err)
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
	if err := checkRaftAddr(req.RaftAddr); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("raftAddr %q: %w", req.RaftAddr, err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := s.o.Replica.AddReplica(ctx, req.ID, req.RaftAddr, req.NonVoting); err != nil {
		if refusal(err) { // a taken or removed id, a member's address
			writeError(w, http.StatusConflict, fmt.Errorf("adding node %d at %s: %w", req.ID, req.RaftAddr, err))
			return
		}
		s.internalError(w, r, http.StatusConflict, fmt.Sprintf("adding node %d at %s failed (is the id a member already? is a quorum of nodes up?)", req.ID, req.RaftAddr), err)
		return
	}
	// Dragonboat's membership change leaves no trace in the replicated
	// state; this records who made it. The member is added either way.
	rec := replicated.Command{Type: replicated.CmdRecordMember, At: s.o.Now(), Actor: callerOf(r.Context()).Name,
		RecordMember: &replicated.RecordMember{ID: req.ID, RaftAddr: req.RaftAddr, NonVoting: req.NonVoting}}
	if res, err := s.o.Replica.Propose(ctx, rec); err != nil || !res.OK() {
		s.log.Warn("node added, but recording it in the event log failed", "node", req.ID, "err", err, "result", res.Message)
	}
	next := fmt.Sprintf("start it with: blixard serve --node-id %d --raft-addr %s --join", req.ID, req.RaftAddr)
	if req.NonVoting {
		next += " --non-voting …"
	} else {
		next += " …; it joins as a learner and becomes a voter once it has caught up"
	}
	writeJSON(w, http.StatusOK, MemberAnswer{MemberRequest: req, Next: next})
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
	if wantsProgress(r) {
		s.planStream(w, r, req.Commit) // progress.go
		return
	}
	ctx := r.Context()
	if s.o.Source != nil {
		// The commit may be newer than the mirror: fetch first (cheap when up to date).
		if _, err := s.o.Source.Fetch(ctx); err != nil {
			s.log.Warn("fetch before plan failed; planning from the mirror as it is", "err", err)
		}
	}
	// The plan is a preview and proposes nothing: a stale base is good
	// enough when no quorum answers, and the answer says it is stale.
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	p, err := reconciler.PlanCommit(ctx, s.o.Evaluator, req.Commit, st)
	// The evaluation may outlast the write deadline set when the request
	// came (its timeout is the node's --eval-timeout): the answer gets its own.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Errorf("planning commit %s: %w", req.Commit, err))
		return
	}
	v := NewPlanView(p, "")
	v.Freshness = fresh
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request) {
	if s.o.Reconciler == nil {
		writeError(w, http.StatusConflict, s.errNoRepository())
		return
	}
	s.log.Info("fetch requested", "caller", callerOf(r.Context()).Name)
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
	q, err := logsQuery(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("GET %s: %w", r.URL.Path, err))
		return
	}
	follow := q.follow
	if follow {
		// Each follower holds a connection (and, on the node of the VM, a
		// reader of its log) for as long as it likes: they are capped, and
		// exempt from the write deadline.
		select {
		case s.followers <- struct{}{}:
			defer func() { <-s.followers }()
		default:
			w.Header().Set("Retry-After", "10")
			writeError(w, http.StatusTooManyRequests, fmt.Errorf("node %d already streams %d followed logs, its limit: try again later, or ask another node", s.o.Replica.NodeID(), cap(s.followers)))
			return
		}
		_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	}
	self := s.o.Replica.NodeID()
	if !q.local {
		st, ok := s.localRead(w, r)
		if !ok {
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
	err = s.o.Logs.Tail(r.Context(), name, follow, sw)
	switch {
	case err != nil && !sw.started && errors.Is(err, fs.ErrNotExist):
		// Not %w: the error names the log's file.
		writeError(w, http.StatusNotFound, fmt.Errorf("no console log for VM %q on node %d (has it run there yet? see `blixard status`)", name, self))
	case err != nil && !sw.started:
		s.internalError(w, r, http.StatusInternalServerError, fmt.Sprintf("reading the console log of VM %q failed", name), err)
	case err != nil:
		s.log.Debug("log stream ended", "vm", name, "err", err)
	case !sw.started:
		sw.start()
	}
}

// handleVM answers the instances NAME stands for (an instance, or every
// instance of a declared VM) with their network identities.
func (s *Server) handleVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := spec.ValidName(name); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("VM name %q: %w", name, err))
		return
	}
	st, _, ok := s.read(w, r)
	if !ok {
		return
	}
	vms := VMDetails(st, name)
	if len(vms) == 0 {
		writeError(w, http.StatusNotFound, fmt.Errorf("VM %q is neither an instance nor a declared VM of the committed plan (see `blixard status`)", name))
		return
	}
	writeJSON(w, http.StatusOK, vms)
}

// logsParams are the query parameters of GET /v1/vms/NAME/logs.
type logsParams struct {
	// follow keeps streaming; local serves only this node's log (what a
	// node asks the node of the VM when it proxies).
	follow, local bool
}

// logsQuery parses the query of GET /v1/vms/NAME/logs: follow and local,
// each 0 or 1, and nothing else.
func logsQuery(q url.Values) (logsParams, error) {
	var p logsParams
	for key, vals := range q {
		var dst *bool
		switch key {
		case "follow":
			dst = &p.follow
		case "local":
			dst = &p.local
		default:
			return p, fmt.Errorf("unknown query parameter %q (known: follow=1, local=1)", key)
		}
		if len(vals) != 1 || (vals[0] != "0" && vals[0] != "1") {
			return p, fmt.Errorf("query parameter %s=%q: want 0 or 1, once", key, strings.Join(vals, ","))
		}
		*dst = vals[0] == "1"
	}
	return p, nil
}

// checkRaftAddr accepts a Raft address as Dragonboat takes it: HOST:PORT
// with a port number and a host name or IP address.
func checkRaftAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	if host == "" || strings.ContainsAny(host, "/?#@ \t\n") {
		return fmt.Errorf("host %q: want a host name or an IP address", host)
	}
	return nil
}

func (s *Server) proxyLogs(w http.ResponseWriter, r *http.Request, apiAddr, name string, follow bool) {
	q := url.Values{"local": {"1"}}
	if follow {
		q.Set("follow", "1")
	}
	scheme := "http"
	if s.o.PeerTLS != nil {
		scheme = "https"
	}
	u := (&url.URL{Scheme: scheme, Host: apiAddr, Path: "/v1/vms/" + name + "/logs", RawQuery: q.Encode()}).String()
	req, err := http.NewRequestWithContext(r.Context(), "GET", u, nil)
	if err != nil {
		s.internalError(w, r, http.StatusBadGateway, fmt.Sprintf("node %s holds the logs of VM %q, but its API address is not usable", apiAddr, name), err)
		return
	}
	resp, err := s.peers.Do(req)
	if err != nil {
		s.internalError(w, r, http.StatusBadGateway, fmt.Sprintf("reaching the node at %s for the logs of VM %q failed (is it up?)", apiAddr, name), err)
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
		res, err := s.o.Replica.Propose(ctx, replicated.Command{Type: replicated.CmdSetVMRunState, At: s.o.Now(),
			Actor: callerOf(r.Context()).Name, SetVMRunState: &c})
		if err != nil {
			s.internalError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("%s VM %s failed; the outcome is unknown (is a quorum of nodes up?)", action, name), err)
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
