package api

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/netdns"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Health is the answer of GET /healthz: 200 with OK, or 503 with Reason.
type Health struct {
	OK     bool   `json:"ok"`
	Node   uint64 `json:"node"`
	Leader uint64 `json:"leader"` // 0: none known
	// AppliedIndex is the last Raft index this replica applied (0 when the
	// node does not report it).
	AppliedIndex uint64 `json:"appliedIndex"`
	// Reason says why the node is not healthy, e.g. "no quorum: no Raft
	// leader known for 3.2s".
	Reason string `json:"reason,omitempty"`
}

// StatusView is the answer of GET /v1/status and `blixard status --json`.
// Everything in it but Node, Leader and Reconciler's local fields comes from
// the replicated state, so every node answers the same.
type StatusView struct {
	// Freshness says whether the answer is stale: from the answering
	// node's own replica, because no quorum confirmed a read in time.
	Freshness
	Node     uint64               `json:"node"`   // the node that answered
	Leader   uint64               `json:"leader"` // 0 when unknown
	Revision *replicated.Revision `json:"revision"`
	// LastError is the EvalFailed condition, if true.
	LastError *replicated.Condition `json:"lastError"`
	// Conditions are the source's failures that are true now.
	Conditions []replicated.Condition `json:"conditions"`
	VMs        []VMView               `json:"vms"`
	// Unschedulable lists desired VMs the committed plan could not place, with why.
	Unschedulable []replicated.Unschedulable `json:"unschedulable"`
	Nodes         []NodeView                 `json:"nodes"`
	// Reconciler is this node's loop, with FetchError taken from the
	// FetchFailed condition; nil on a node without a reconciler while no
	// fetch fails.
	Reconciler *reconciler.Status `json:"reconciler,omitempty"`
	// Suspended is set while the cluster does not follow its tracked ref
	// (`blixard suspend` or `rollback`), with the fetched commit it has not
	// applied.
	Suspended *replicated.Suspension `json:"suspended,omitempty"`
	// Rollouts are the rolling updates in progress, by VM (`blixard rollout
	// status` shows every one).
	Rollouts []replicated.Rollout `json:"rollouts,omitempty"`
}

// VMView is one assigned VM with its observed phase.
type VMView struct {
	Name       string `json:"name"`
	Node       uint64 `json:"node"`
	OutPath    string `json:"outPath"`
	Drv        string `json:"drv"`
	VCPU       int    `json:"vcpu"`
	MemMiB     int    `json:"memMiB"`
	Generation uint64 `json:"generation"`
	// Want is whether the VM should run (running) or is kept stopped on
	// purpose (stopped; Stopped says why: autostart, operator).
	Want    replicated.RunState   `json:"want"`
	Stopped replicated.StopReason `json:"stopped,omitempty"`
	Phase   replicated.Phase      `json:"phase"`
	Message string                `json:"message,omitempty"`
	// Health, HealthSince and HealthError are its node's judgement of the
	// running instance (replicated.VMStatus): "healthy", "unhealthy" (with
	// the last failed probe's error), absent while it does not run or is
	// not judged yet.
	Health      replicated.HealthState `json:"health,omitempty"`
	HealthSince time.Time              `json:"healthSince,omitzero"`
	HealthError string                 `json:"healthError,omitempty"`
	// Address is the instance's cluster address (State.Network), absent
	// before it has one.
	Address netip.Addr `json:"address,omitzero"`
}

// NodeView is one registered node with what is assigned to it.
type NodeView struct {
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
	// Problems are what the node's parts could not fix (by part, e.g.
	// "network"); none while all is well.
	Problems map[string]replicated.NodeProblem `json:"problems,omitempty"`
}

// NewStatusView builds the status of s as node self sees it; local is
// self's own reconciler status (nil: it runs none).
func NewStatusView(s *replicated.State, self, leader uint64, local *reconciler.Status) StatusView {
	v := StatusView{Node: self, Leader: leader, Revision: s.Revision, Conditions: s.Conditions,
		VMs: VMViews(s), Unschedulable: s.Unschedulable, Nodes: NodeViews(s, leader)}
	if v.Conditions == nil {
		v.Conditions = []replicated.Condition{}
	}
	if v.Unschedulable == nil {
		v.Unschedulable = []replicated.Unschedulable{}
	}
	if c, ok := s.Condition(replicated.EvalFailed); ok {
		v.LastError = &c
	}
	v.Suspended = s.Suspended
	for _, name := range slices.Sorted(maps.Keys(s.Rollouts)) {
		if r := s.Rollouts[name]; r.Phase == replicated.RolloutProgressing {
			v.Rollouts = append(v.Rollouts, r)
		}
	}
	if local != nil {
		rs := *local
		v.Reconciler = &rs
	}
	if c, ok := s.Condition(replicated.FetchFailed); ok {
		if v.Reconciler == nil {
			v.Reconciler = &reconciler.Status{}
		}
		v.Reconciler.FetchError = c.Message
	}
	return v
}

// VMViews lists the assigned VMs by name; a VM's phase is pending until its
// node observed it.
func VMViews(s *replicated.State) []VMView {
	out := make([]VMView, 0, len(s.Assignments))
	for name, a := range s.Assignments {
		v := VMView{Name: name, Node: a.Node, OutPath: a.OutPath, Drv: a.Drv, VCPU: a.VCPU, MemMiB: a.MemMiB,
			Generation: a.Generation, Want: replicated.RunStateRunning, Stopped: a.Stopped, Phase: replicated.PhasePending}
		if a.Stopped != "" {
			v.Want = replicated.RunStateStopped
		}
		if st, ok := s.Observed[name]; ok && st.Node == a.Node {
			v.Phase, v.Message = st.Phase, st.Message
			v.Health, v.HealthSince, v.HealthError = st.Health, st.HealthSince, st.HealthError
		}
		if id, ok := s.Identity(name); ok {
			v.Address = id.Address
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// VMDetail is one instance as `blixard vm NAME` shows it (GET
// /v1/vms/NAME): its assignment and phase, its network identity, and the
// names the cluster's DNS gives it.
type VMDetail struct {
	VMView
	// Declared is the VM's name in the flake (web for web-1).
	Declared string `json:"declared"`
	// HealthCheck is the check its node probes it with (the assignment's);
	// absent: healthy once it runs.
	HealthCheck *spec.HealthCheck `json:"healthCheck,omitempty"`
	// Unschedulable is why the committed plan could not place it ("" when
	// placed); Node is then 0.
	Unschedulable string `json:"unschedulable,omitempty"`
	// The network identity (replicated.Identity), absent before the
	// instance has one; Gateway and CIDR are the cluster network's.
	MAC      string       `json:"mac,omitempty"`
	Tap      string       `json:"tap,omitempty"`
	Hostname string       `json:"hostname,omitempty"`
	Gateway  netip.Addr   `json:"gateway,omitzero"`
	CIDR     netip.Prefix `json:"cidr,omitzero"`
	// DNSNames resolve to Address on every node's DNS (the gateway) while
	// the instance runs on its node: HOSTNAME.DOMAIN, and DECLARED.DOMAIN,
	// which also gives the other running replicas.
	DNSNames []string `json:"dnsNames"`
	// Resolvable says whether DNSNames answer now (the instance runs).
	Resolvable bool `json:"resolvable"`
	// Ingress lists the ingress entries that route to the instance's VM,
	// as "NAME: HOST/PATH → PORT" (HTTP) or "NAME: :LISTENPORT → PORT" (TCP).
	Ingress []string `json:"ingress,omitempty"`
}

// VMDetails lists the instances name stands for, sorted by instance name:
// the instance itself, or every instance of a declared VM; placed or
// unschedulable. None when the committed plan has no such VM.
func VMDetails(s *replicated.State, name string) []VMDetail {
	var out []VMDetail
	running := map[string]bool{}
	for _, insts := range ingress.RunningInstances(s) {
		for _, in := range insts {
			running[in.Name] = true
		}
	}
	for _, v := range VMViews(s) {
		a := s.Assignments[v.Name]
		if v.Name == name || a.Declared == name {
			d := vmDetail(s, v, a.Declared, "", running[v.Name])
			d.HealthCheck = a.Health
			out = append(out, d)
		}
	}
	for _, u := range s.Unschedulable {
		declared := cmp.Or(u.Declared, u.VM)
		if u.VM == name || declared == name {
			v := VMView{Name: u.VM, Want: replicated.RunStateRunning, Phase: replicated.PhasePending}
			if id, ok := s.Identity(u.VM); ok {
				v.Address = id.Address
			}
			out = append(out, vmDetail(s, v, declared, u.Reason, false))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func vmDetail(s *replicated.State, v VMView, declared, unschedulable string, running bool) VMDetail {
	d := VMDetail{VMView: v, Declared: cmp.Or(declared, v.Name), Unschedulable: unschedulable, DNSNames: []string{}, Resolvable: running}
	id, ok := s.Identity(v.Name)
	if !ok || s.Network == nil {
		return d
	}
	d.MAC, d.Tap, d.Hostname, d.Gateway, d.CIDR = id.MAC.String(), id.Tap, id.Hostname, s.Network.Gateway, s.Network.CIDR
	cluster := ""
	if s.Desired != nil {
		cluster = s.Desired.Name
		names := make([]string, 0, len(s.Desired.Ingress))
		for n := range s.Desired.Ingress {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			e := s.Desired.Ingress[n]
			if e.To != d.Declared {
				continue
			}
			if e.Protocol == spec.IngressTCP {
				d.Ingress = append(d.Ingress, fmt.Sprintf("%s: :%d → %d", n, e.ListenPort, e.Port))
			} else {
				d.Ingress = append(d.Ingress, fmt.Sprintf("%s: %s%s → %d", n, e.Host, e.Path, e.Port))
			}
		}
	}
	// netdns's names: the hostname's, and the declared VM's for all its
	// running instances.
	domain := netdns.Domain(cluster)
	d.DNSNames = append(d.DNSNames, id.Hostname+"."+domain)
	if n := d.Declared + "." + domain; n != d.DNSNames[0] {
		d.DNSNames = append(d.DNSNames, n)
	}
	return d
}

// NodeViews lists the registered nodes by id.
func NodeViews(s *replicated.State, leader uint64) []NodeView {
	out := make([]NodeView, 0, len(s.Nodes))
	for _, id := range sortedNodeIDs(s.Nodes) {
		n := s.Nodes[id]
		v := NodeView{ID: id, State: n.State, Leader: id == leader, APIAddr: n.APIAddr, RaftAddr: n.RaftAddr,
			Capacity: n.Capacity, Labels: n.Labels, LastHeartbeatAt: n.LastHeartbeatAt, Heartbeats: n.LastHeartbeatSeq,
			Problems: n.Problems}
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

func sortedNodeIDs[V any](m map[uint64]V) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// PlanRequest asks a node to evaluate a commit of the repository it follows
// and plan it against the committed state (POST /v1/plan).
type PlanRequest struct {
	Commit string `json:"commit"`
}

// PlanView is the answer of POST /v1/plan and `blixard plan --json`.
type PlanView struct {
	// Freshness is that of the committed state the plan is computed
	// against: a stale base may lack the latest revision.
	Freshness
	Commit     string          `json:"commit,omitempty"`
	Flake      string          `json:"flake,omitempty"`
	Base       uint64          `json:"baseRevision"` // the revision the plan is computed against
	EvalHash   string          `json:"evalHash,omitempty"`
	HasChanges bool            `json:"hasChanges"`
	Summary    string          `json:"summary"`
	Plan       reconciler.Plan `json:"plan"`
}

// NewPlanView presents a preview; flake is the local directory evaluated
// ("" for a commit).
func NewPlanView(p reconciler.Preview, flake string) PlanView {
	return PlanView{Commit: p.Commit, Flake: flake, Base: p.Base, EvalHash: p.Hash,
		HasChanges: p.Plan.HasChanges(), Summary: p.Plan.Summary(), Plan: p.Plan}
}

// NodeStateRequest sets a node's scheduling state (POST /v1/nodes/ID/state).
type NodeStateRequest struct {
	State replicated.NodeState `json:"state"`
}

// NodeStateAnswer is the answer of POST /v1/nodes/ID/state.
type NodeStateAnswer struct {
	Node    uint64               `json:"node"`
	State   replicated.NodeState `json:"state"`
	Message string               `json:"message"`
}

// MemberRequest adds a Raft replica to the shard (POST /v1/members).
type MemberRequest struct {
	ID        uint64 `json:"id"`
	RaftAddr  string `json:"raftAddr"`
	NonVoting bool   `json:"nonVoting"`
}

// MemberAnswer is the answer of POST /v1/members; Next is the command to
// start the new node with.
type MemberAnswer struct {
	MemberRequest
	Next string `json:"next"`
}

// SyncAnswer is the answer of POST /v1/sync.
type SyncAnswer struct {
	Triggered bool   `json:"triggered"`
	Node      uint64 `json:"node"`
	Leader    uint64 `json:"leader"`
}

// VMAction is what POST /v1/vms/NAME/ACTION does to a VM.
type VMAction string

const (
	VMStart   VMAction = "start"   // keep it running (`blixard vm start`)
	VMStop    VMAction = "stop"    // keep it stopped (`blixard vm stop`)
	VMRestart VMAction = "restart" // restart it once (`blixard vm restart`)
)

// VMRunStateRequest is the (optional, empty) body of POST
// /v1/vms/NAME/start|stop|restart.
type VMRunStateRequest struct{}

// VMRunStateAnswer is the answer of POST /v1/vms/NAME/start|stop|restart:
// the choice is committed; the VM's agent acts on it.
type VMRunStateAnswer struct {
	VM      string   `json:"vm"`
	Action  VMAction `json:"action"`
	Message string   `json:"message"`
}

// TokenRequest creates a bearer token (POST /v1/tokens).
type TokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// TokenAnswer is the answer of POST /v1/tokens. Token is the secret: it is
// in no other answer, and nowhere in the cluster.
type TokenAnswer struct {
	Name    string `json:"name"`
	Role    string `json:"role"`
	Token   string `json:"token"`
	Message string `json:"message"`
}

// TokenView is one token of GET /v1/tokens (its secret is not kept).
type TokenView struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"createdAt"`
	CreatedBy string    `json:"createdBy,omitempty"`
}

// RevokeAnswer is the answer of DELETE /v1/tokens/NAME.
type RevokeAnswer struct {
	Name    string `json:"name"`
	Message string `json:"message"`
}
