package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// apiServer serves the HTTP JSON API of one node. Reads are linearizable
// (they go through Raft's ReadIndex); writes are proposals, which Raft
// forwards to the leader.
type apiServer struct {
	store         *raftstore.Store
	rec           *reconciler.Reconciler // nil when the node follows no repository
	mirror        *gitsync.Mirror        // nil likewise
	eval          *nixeval.Evaluator
	attr          string
	webhookSecret string
	stateDir      string // the agent's state dir, for console logs
	log           *slog.Logger
}

const maxRequestBody = 1 << 20

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

func (a *apiServer) routes() http.Handler {
	type route struct {
		method, path string
		h            http.Handler
	}
	routes := []route{
		{"GET", "/healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]any{"ok": true, "node": a.store.NodeID()})
		})},
		{"GET", "/v1/state", http.HandlerFunc(a.handleState)},
		{"GET", "/v1/status", http.HandlerFunc(a.handleStatus)},
		{"GET", "/v1/nodes", http.HandlerFunc(a.handleNodes)},
		{"GET", "/v1/history", http.HandlerFunc(a.handleHistory)},
		{"GET", "/v1/diff", http.HandlerFunc(a.handleDiff)},
		{"GET", "/v1/reconciler", http.HandlerFunc(a.handleReconciler)},
		{"POST", "/v1/nodes/{id}/state", http.HandlerFunc(a.handleNodeState)},
		{"POST", "/v1/members", http.HandlerFunc(a.handleAddMember)},
		{"POST", "/v1/plan", http.HandlerFunc(a.handlePlan)},
		{"POST", "/v1/sync", http.HandlerFunc(a.handleSync)},
		{"GET", "/v1/vms/{name}/logs", http.HandlerFunc(a.handleLogs)},
		{"GET", "/metrics", http.HandlerFunc(a.handleMetrics)},
	}
	if a.rec != nil {
		routes = append(routes, route{"POST", "/v1/webhook", gitsync.WebhookHandler(a.webhookSecret, a.rec.Triggers(), a.log)})
	}
	mux := http.NewServeMux()
	allowed := map[string][]string{} // path pattern → methods
	for _, r := range routes {
		mux.Handle(r.method+" "+r.path, r.h)
		allowed[r.path] = append(allowed[r.path], r.method)
	}
	// A known path with another method is 405; anything else 404.
	for path, methods := range allowed {
		allow := strings.Join(methods, ", ")
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, allow))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s (see `blixard --help`)", r.Method, r.URL.Path))
	})
	return mux
}

func (a *apiServer) read(w http.ResponseWriter, r *http.Request) (*replicated.State, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	s, err := a.store.Read(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("reading the replicated state (is a quorum of nodes up?): %w", err))
		return nil, false
	}
	return s, true
}

func (a *apiServer) leader() uint64 {
	id, _ := a.store.Leader()
	return id
}

func (a *apiServer) handleState(w http.ResponseWriter, r *http.Request) {
	if s, ok := a.read(w, r); ok {
		writeJSON(w, http.StatusOK, s)
	}
}

func (a *apiServer) handleStatus(w http.ResponseWriter, r *http.Request) {
	s, ok := a.read(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, newStatusView(s, a.store.NodeID(), a.leader(), a.leaderReconciler(r.Context(), s)))
}

// leaderReconciler is the reconciler status of the leader — the only node
// that fetches, so the only one that knows about fetch errors. A follower
// asks the leader's API; nil when that fails.
func (a *apiServer) leaderReconciler(ctx context.Context, s *replicated.State) *reconciler.Status {
	leader := a.leader()
	if leader == a.store.NodeID() || leader == 0 {
		if a.rec == nil {
			return nil
		}
		st := a.rec.Status()
		return &st
	}
	n, ok := s.Nodes[leader]
	if !ok || n.APIAddr == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+n.APIAddr+"/v1/reconciler", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st reconciler.Status
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, maxRequestBody)).Decode(&st) != nil {
		return nil
	}
	return &st
}

// nodeStateRequest sets a node's scheduling state.
type nodeStateRequest struct {
	State replicated.NodeState `json:"state"`
}

// handleNodeState cordons, drains or readies a node through Raft; the leader's
// next pass moves VMs off a draining node.
func (a *apiServer) handleNodeState(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("node id %q: want a number > 0", r.PathValue("id")))
		return
	}
	var req nodeStateRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("request body: want {\"state\": \"ready|cordoned|draining\"}: %w", err))
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
	res, err := a.store.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: time.Now(),
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
	if a.rec != nil {
		a.rec.Trigger()
	}
	writeJSON(w, http.StatusOK, map[string]any{"node": id, "state": req.State, "message": res.Message})
}

// memberRequest adds a Raft replica to the shard.
type memberRequest struct {
	ID        uint64 `json:"id"`
	RaftAddr  string `json:"raftAddr"`
	NonVoting bool   `json:"nonVoting"`
}

// handleAddMember adds a replica (a voter, or a non-voting member) to the
// shard; the new node then starts with `serve --join`.
func (a *apiServer) handleAddMember(w http.ResponseWriter, r *http.Request) {
	var req memberRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("request body: want {\"id\": N, \"raftAddr\": \"HOST:PORT\", \"nonVoting\": bool}: %w", err))
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
	if err := a.store.AddReplica(ctx, req.ID, req.RaftAddr, req.NonVoting); err != nil {
		writeError(w, http.StatusConflict, fmt.Errorf("adding node %d at %s: %w", req.ID, req.RaftAddr, err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": req.ID, "raftAddr": req.RaftAddr, "nonVoting": req.NonVoting,
		"next": fmt.Sprintf("start it with: blixard serve --node-id %d --raft-addr %s --join%s …", req.ID, req.RaftAddr,
			map[bool]string{true: " --non-voting", false: ""}[req.NonVoting])})
}

// handleReconciler answers this node's own reconciler status.
func (a *apiServer) handleReconciler(w http.ResponseWriter, _ *http.Request) {
	if a.rec == nil {
		writeError(w, http.StatusConflict, errors.New("this node follows no repository (started without --repo)"))
		return
	}
	writeJSON(w, http.StatusOK, a.rec.Status())
}

func (a *apiServer) handleNodes(w http.ResponseWriter, r *http.Request) {
	if s, ok := a.read(w, r); ok {
		writeJSON(w, http.StatusOK, nodeViews(s, a.leader()))
	}
}

func (a *apiServer) handleHistory(w http.ResponseWriter, r *http.Request) {
	if s, ok := a.read(w, r); ok {
		h := s.History
		if h == nil {
			h = []replicated.Revision{}
		}
		writeJSON(w, http.StatusOK, h)
	}
}

func (a *apiServer) handleDiff(w http.ResponseWriter, r *http.Request) {
	if s, ok := a.read(w, r); ok {
		d := reconciler.ComputeDrift(s)
		if d == nil {
			d = []reconciler.Drift{}
		}
		writeJSON(w, http.StatusOK, d)
	}
}

// planRequest asks the node to evaluate a commit of the tracked repository
// and plan it against the committed state.
type planRequest struct {
	Commit string `json:"commit"`
}

func (a *apiServer) handlePlan(w http.ResponseWriter, r *http.Request) {
	var req planRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("request body: want {\"commit\": \"<40 hex digits>\"}: %w", err))
		return
	}
	if !commitRE.MatchString(req.Commit) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("commit %q: want a full 40-digit hex SHA", req.Commit))
		return
	}
	if a.mirror == nil {
		writeError(w, http.StatusConflict, errors.New("this node follows no repository (started without --repo)"))
		return
	}
	ctx := r.Context()
	// The commit may be newer than the mirror: fetch first (cheap when up to date).
	if _, err := a.mirror.Fetch(ctx); err != nil {
		a.log.Warn("fetch before plan failed; planning from the mirror as it is", "err", err)
	}
	res, err := a.eval.Eval(ctx, a.mirror.FlakeURL(req.Commit), a.attr, req.Commit)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Errorf("evaluating %s: %w", req.Commit, err))
		return
	}
	s, ok := a.read(w, r)
	if !ok {
		return
	}
	v, err := newPlanView(s, res.Spec, req.Commit, "")
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Errorf("planning %s: %w", req.Commit, err))
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *apiServer) handleSync(w http.ResponseWriter, _ *http.Request) {
	if a.rec == nil {
		writeError(w, http.StatusConflict, errors.New("this node follows no repository (started without --repo)"))
		return
	}
	a.rec.Trigger()
	writeJSON(w, http.StatusAccepted, map[string]any{"triggered": true, "node": a.store.NodeID(), "leader": a.leader()})
}

// handleLogs streams a VM's console log. Any node answers: the node the VM is
// assigned to (or last observed on) serves its file, others proxy to it.
// ?follow=1 keeps streaming until the client goes away.
func (a *apiServer) handleLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := spec.ValidName(name); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("VM name %q: %w", name, err))
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	local := r.URL.Query().Get("local") == "1"
	if !local {
		s, err := a.store.LocalRead()
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		node := uint64(0)
		if as, ok := s.Assignments[name]; ok {
			node = as.Node
		} else if st, ok := s.Observed[name]; ok {
			node = st.Node
		}
		if node == 0 {
			writeError(w, http.StatusNotFound, fmt.Errorf("VM %q is neither assigned nor observed on any node (see `blixard status`)", name))
			return
		}
		if node != a.store.NodeID() {
			n, ok := s.Nodes[node]
			if !ok || n.APIAddr == "" {
				writeError(w, http.StatusBadGateway, fmt.Errorf("VM %q is on node %d, whose API address is unknown", name, node))
				return
			}
			a.proxyLogs(w, r, n.APIAddr, name, follow)
			return
		}
	}
	path := nodeagent.LogPath(a.stateDir, name)
	if _, err := os.Stat(path); err != nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("no console log for VM %q on node %d: %w", name, a.store.NodeID(), err))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if err := nodeagent.TailLog(r.Context(), path, follow, flushWriter{w}); err != nil {
		a.log.Debug("log stream ended", "vm", name, "err", err)
	}
}

func (a *apiServer) proxyLogs(w http.ResponseWriter, r *http.Request, apiAddr, name string, follow bool) {
	q := "?local=1"
	if follow {
		q += "&follow=1"
	}
	req, err := http.NewRequestWithContext(r.Context(), "GET", "http://"+apiAddr+"/v1/vms/"+name+"/logs"+q, nil)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("reaching node at %s for the logs of %q: %w", apiAddr, name, err))
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(flushWriter{w}, resp.Body)
}

// flushWriter flushes after every write so followed logs arrive promptly.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, apiError{Error: err.Error()})
}
