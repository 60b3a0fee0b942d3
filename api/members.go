package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Membership is what the API needs to list and remove the Raft shard's
// members. The node's *raftstore.Store satisfies it; the server uses it
// when [Options.Replica] does, and answers 409 on the member endpoints
// otherwise.
type Membership interface {
	// RaftMembers returns the shard's members by role, id → Raft address,
	// as the leader confirms them (an error: no quorum answered).
	RaftMembers(ctx context.Context) (voters, learners, witnesses map[uint64]string, err error)
	// RemoveReplica removes member id; unless force, a voter only while a
	// quorum of the remaining voters is reachable. A refusal is an error
	// with a method Refused() bool that returns true; any other error
	// leaves the outcome unknown.
	RemoveReplica(ctx context.Context, id uint64, force bool) error
}

// Member roles, as [MemberView.Role] names them.
const (
	RoleVoter   = "voter"
	RoleLearner = "learner"
	RoleWitness = "witness"
)

// MemberView is one Raft member (GET /v1/members).
type MemberView struct {
	ID       uint64 `json:"id"`
	RaftAddr string `json:"raftAddr"`
	// Role is voter, learner (replicates, never votes) or witness.
	Role   string `json:"role"`
	Leader bool   `json:"leader"`
	// Registered says the node registered with the replicated state; then
	// State and LastHeartbeatAt (the node's clock) are its. A member that
	// never registered has never run `blixard serve`.
	Registered      bool                 `json:"registered"`
	State           replicated.NodeState `json:"state,omitempty"`
	LastHeartbeatAt *time.Time           `json:"lastHeartbeatAt,omitempty"`
}

// RemoveMemberRequest removes a Raft member (POST /v1/members/remove).
type RemoveMemberRequest struct {
	ID uint64 `json:"id"`
	// Force skips the check that a quorum of the remaining voters is
	// reachable (never the refusal to remove the last voter).
	Force bool `json:"force,omitempty"`
}

// RemoveMemberAnswer is the answer of POST /v1/members/remove.
type RemoveMemberAnswer struct {
	ID   uint64 `json:"id"`
	Role string `json:"role"`
	// Warning is set when the node removed itself or the leader.
	Warning string `json:"warning,omitempty"`
	// Next says what to do with the removed node.
	Next string `json:"next"`
}

// MemberViews joins the members with their nodes in st (nil: none
// known), sorted by id.
func MemberViews(voters, learners, witnesses map[uint64]string, leader uint64, st *replicated.State) []MemberView {
	out := []MemberView{}
	for role, set := range map[string]map[uint64]string{RoleVoter: voters, RoleLearner: learners, RoleWitness: witnesses} {
		for id, addr := range set {
			v := MemberView{ID: id, RaftAddr: addr, Role: role, Leader: id == leader}
			if st != nil {
				if n, ok := st.Nodes[id]; ok && n != nil {
					v.Registered, v.State = true, n.State
					if !n.LastHeartbeatAt.IsZero() {
						at := n.LastHeartbeatAt
						v.LastHeartbeatAt = &at
					}
				}
			}
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// WriteMembers writes the members as `blixard node list-members`.
func WriteMembers(w io.Writer, ms []MemberView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tRAFT-ADDR\tSTATE\tLAST-HEARTBEAT")
	for _, m := range ms {
		id := fmt.Sprint(m.ID)
		if m.Leader {
			id += "*"
		}
		state, beat := "not registered", "-"
		if m.Registered {
			state = string(m.State)
		}
		if m.LastHeartbeatAt != nil {
			beat = m.LastHeartbeatAt.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id, m.Role, m.RaftAddr, state, beat)
	}
	return tw.Flush()
}

// refusal reports whether err is a membership change the replica refused
// (retrying it unchanged cannot help), as opposed to an unknown outcome.
func refusal(err error) bool {
	var r interface{ Refused() bool }
	return errors.As(err, &r) && r.Refused()
}

// membership is the replica's Membership; without one it answers 409.
func (s *Server) membership(w http.ResponseWriter) (Membership, bool) {
	m, ok := s.o.Replica.(Membership)
	if !ok {
		writeError(w, http.StatusConflict, fmt.Errorf("node %d cannot list or change Raft members (its replica does not offer it)", s.o.Replica.NodeID()))
	}
	return m, ok
}

// handleListMembers answers every Raft member with its role and, when it
// registered, its node's state and last heartbeat (from the local
// replica: the members themselves come from the leader).
func (s *Server) handleListMembers(w http.ResponseWriter, r *http.Request) {
	mem, ok := s.membership(w)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	voters, learners, witnesses, err := mem.RaftMembers(ctx)
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable,
			"reading the Raft members failed (is a quorum of nodes up? `blixard nodes` answers from any node's own replica)", err)
		return
	}
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		s.log.Warn("listing members without their nodes: the local replica cannot be read", "err", err)
		st = nil
	}
	leader, _ := s.o.Replica.Leader()
	writeJSON(w, http.StatusOK, MemberViews(voters, learners, witnesses, leader, st))
}

// handleRemoveMember removes a Raft member after the replica's checks.
func (s *Server) handleRemoveMember(w http.ResponseWriter, r *http.Request) {
	var req RemoveMemberRequest
	if !decode(w, r, &req, `{"id": N, "force": bool}`) {
		return
	}
	if req.ID == 0 {
		writeError(w, http.StatusBadRequest, errors.New("id: want a node id > 0"))
		return
	}
	mem, ok := s.membership(w)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	voters, learners, witnesses, err := mem.RaftMembers(ctx)
	if err != nil {
		s.internalError(w, r, http.StatusServiceUnavailable, "reading the Raft members failed (is a quorum of nodes up?)", err)
		return
	}
	var role, addr string
	for r, set := range map[string]map[uint64]string{RoleVoter: voters, RoleLearner: learners, RoleWitness: witnesses} {
		if a, ok := set[req.ID]; ok {
			role, addr = r, a
		}
	}
	leader, _ := s.o.Replica.Leader()
	if err := mem.RemoveReplica(ctx, req.ID, req.Force); err != nil {
		if refusal(err) {
			writeError(w, http.StatusConflict, fmt.Errorf("removing node %d: %w", req.ID, err))
			return
		}
		s.internalError(w, r, http.StatusServiceUnavailable,
			fmt.Sprintf("removing node %d failed and the outcome is unknown (is a quorum of nodes up? check with `blixard node list-members`)", req.ID), err)
		return
	}
	caller := callerOf(r.Context()).Name
	s.log.Info("Raft member removed", "removed", req.ID, "role", role, "force", req.Force, "caller", caller)
	ans := RemoveMemberAnswer{ID: req.ID, Role: role,
		Next: fmt.Sprintf("stop blixard on node %d (%s); to bring that host back, wipe its raft directory (DATA/raft) and join it under a new id: "+
			"`blixard node add NEW-ID %s`, then `blixard serve --node-id NEW-ID --join …`", req.ID, addr, addr)}
	switch req.ID {
	case s.o.Replica.NodeID():
		ans.Warning = fmt.Sprintf("node %d removed itself: its replica takes no further part in Raft, so this node can no longer commit or read anything new", req.ID)
	case leader:
		ans.Warning = fmt.Sprintf("node %d was the leader: it steps down and the other voters elect a new one", req.ID)
	}
	writeJSON(w, http.StatusOK, ans)
}

// Members lists the Raft members (GET /v1/members).
func (c *Client) Members(ctx context.Context) ([]MemberView, error) {
	var v []MemberView
	return v, c.do(ctx, "GET", "/v1/members", nil, &v)
}

// RemoveMember removes Raft member id (POST /v1/members/remove).
func (c *Client) RemoveMember(ctx context.Context, id uint64, force bool) (RemoveMemberAnswer, error) {
	var v RemoveMemberAnswer
	return v, c.do(ctx, "POST", "/v1/members/remove", RemoveMemberRequest{ID: id, Force: force}, &v)
}
