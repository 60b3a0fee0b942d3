package api

import (
	"fmt"
	"io"
	"net/http"

	"github.com/blixard/blixard/replicated"
)

// handleMetrics serves Prometheus' text exposition format, computed from the
// local replica on each scrape (no client library: a handful of gauges).
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	st, ok := s.localRead(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	WriteMetrics(w, st, s.o.Replica.NodeID(), s.leader())
}

// WriteMetrics writes the gauges of state s as node self sees it.
func WriteMetrics(w io.Writer, s *replicated.State, self, leader uint64) {
	gauge := func(name, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	}
	gauge("blixard_node_is_leader", "1 when this node leads the Raft shard.")
	fmt.Fprintf(w, "blixard_node_is_leader{node=\"%d\"} %d\n", self, b2i(self == leader && leader != 0))
	gauge("blixard_applied_index", "Raft index of the last entry this replica applied.")
	fmt.Fprintf(w, "blixard_applied_index %d\n", s.Applied)
	gauge("blixard_revision", "ID (Raft index) of the current revision; 0 before the first plan.")
	var rev uint64
	if s.Revision != nil {
		rev = s.Revision.ID
	}
	fmt.Fprintf(w, "blixard_revision %d\n", rev)
	gauge("blixard_eval_error", "1 while the tracked ref's last evaluation failed.")
	_, evalFailed := s.Condition(replicated.EvalFailed)
	fmt.Fprintf(w, "blixard_eval_error %d\n", b2i(evalFailed))
	gauge("blixard_fetch_error", "1 while the leader cannot fetch the tracked ref.")
	_, fetchFailed := s.Condition(replicated.FetchFailed)
	fmt.Fprintf(w, "blixard_fetch_error %d\n", b2i(fetchFailed))

	phases := map[replicated.Phase]int{}
	for _, v := range VMViews(s) {
		phases[v.Phase]++
	}
	gauge("blixard_vms", "Assigned VMs by observed phase.")
	for _, p := range []replicated.Phase{replicated.PhasePending, replicated.PhaseBuilding, replicated.PhaseStarting,
		replicated.PhaseRunning, replicated.PhaseStopping, replicated.PhaseStopped, replicated.PhaseFailed} {
		fmt.Fprintf(w, "blixard_vms{phase=%q} %d\n", p, phases[p])
	}
	gauge("blixard_node_heartbeats", "Heartbeats applied per node.")
	for _, id := range sortedNodeIDs(s.Nodes) {
		fmt.Fprintf(w, "blixard_node_heartbeats{node=\"%d\",state=%q} %d\n", id, s.Nodes[id].State, s.Nodes[id].LastHeartbeatSeq)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
