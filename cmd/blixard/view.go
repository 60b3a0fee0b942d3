package main

import (
	"sort"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// statusView is the answer of GET /v1/status and `blixard status --json`.
type statusView struct {
	Node     uint64               `json:"node"`   // the node that answered
	Leader   uint64               `json:"leader"` // 0 when unknown
	Revision *replicated.Revision `json:"revision"`
	// LastError is the EvalFailed condition, if true.
	LastError *replicated.Condition `json:"lastError"`
	// Conditions are the source's failures that are true now.
	Conditions []replicated.Condition `json:"conditions"`
	VMs        []vmView               `json:"vms"`
	// Unschedulable lists desired VMs the committed plan could not place, with why.
	Unschedulable []replicated.Unschedulable `json:"unschedulable"`
	Nodes         []nodeView                 `json:"nodes"`
	Reconciler    *reconciler.Status         `json:"reconciler,omitempty"` // the leader's loop (fetch errors live there)
}

type vmView struct {
	Name       string           `json:"name"`
	Node       uint64           `json:"node"`
	OutPath    string           `json:"outPath"`
	Drv        string           `json:"drv"`
	VCPU       int              `json:"vcpu"`
	MemMiB     int              `json:"memMiB"`
	Generation uint64           `json:"generation"`
	Phase      replicated.Phase `json:"phase"`
	Message    string           `json:"message,omitempty"`
}

type nodeView struct {
	ID              uint64               `json:"id"`
	State           replicated.NodeState `json:"state"`
	Leader          bool                 `json:"leader"`
	APIAddr         string               `json:"apiAddr"`
	RaftAddr        string               `json:"raftAddr"`
	Capacity        replicated.Resources `json:"capacity"`
	Allocated       replicated.Resources `json:"allocated"`
	VMs             int                  `json:"vms"`
	Labels          map[string]string    `json:"labels,omitempty"`
	LastHeartbeatAt time.Time            `json:"lastHeartbeatAt"`
	Heartbeats      uint64               `json:"heartbeats"`
}

func newStatusView(s *replicated.State, self, leader uint64, rec *reconciler.Status) statusView {
	v := statusView{Node: self, Leader: leader, Revision: s.Revision, Conditions: s.Conditions,
		VMs: vmViews(s), Unschedulable: s.Unschedulable, Nodes: nodeViews(s, leader), Reconciler: rec}
	if v.Conditions == nil {
		v.Conditions = []replicated.Condition{}
	}
	if v.Unschedulable == nil {
		v.Unschedulable = []replicated.Unschedulable{}
	}
	if c, ok := s.Condition(replicated.EvalFailed); ok {
		v.LastError = &c
	}
	return v
}

func vmViews(s *replicated.State) []vmView {
	out := make([]vmView, 0, len(s.Assignments))
	for name, a := range s.Assignments {
		v := vmView{Name: name, Node: a.Node, OutPath: a.OutPath, Drv: a.Drv, VCPU: a.VCPU, MemMiB: a.MemMiB,
			Generation: a.Generation, Phase: replicated.PhasePending}
		if st, ok := s.Observed[name]; ok && st.Node == a.Node {
			v.Phase, v.Message = st.Phase, st.Message
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func nodeViews(s *replicated.State, leader uint64) []nodeView {
	out := make([]nodeView, 0, len(s.Nodes))
	for _, id := range sortedNodeIDs(s.Nodes) {
		n := s.Nodes[id]
		v := nodeView{ID: id, State: n.State, Leader: id == leader, APIAddr: n.APIAddr, RaftAddr: n.RaftAddr,
			Capacity: n.Capacity, Labels: n.Labels, LastHeartbeatAt: n.LastHeartbeatAt, Heartbeats: n.LastHeartbeatSeq}
		for _, a := range s.Assignments {
			if a.Node == id {
				v.VMs++
				v.Allocated.VCPU += a.VCPU
				v.Allocated.MemMiB += a.MemMiB
			}
		}
		out = append(out, v)
	}
	return out
}

// planView is the answer of POST /v1/plan and `blixard plan --json`.
type planView struct {
	Commit     string          `json:"commit,omitempty"`
	Flake      string          `json:"flake,omitempty"`
	Base       uint64          `json:"baseRevision"` // the revision the plan is computed against
	HasChanges bool            `json:"hasChanges"`
	Summary    string          `json:"summary"`
	Plan       reconciler.Plan `json:"plan"`
}
