package api

// The API of an agent-only node itself: what it answers from its own view
// and its own VMs.

import (
	"fmt"
	"net/http"
	"time"

	"github.com/blixard/blixard/pki"
)

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
