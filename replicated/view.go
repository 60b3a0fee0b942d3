package replicated

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/blixard/blixard/spec"
)

// An agent-only node (`serve --agent-only`) holds no replica: it reads what
// its agent needs from a server's view of it, in parts that change at
// different rates, each with a content version, so that a long poll sends
// only the parts whose version differs from what the agent holds. A
// heartbeat of another node changes no part of a node's view unless it
// changes a status that view shows (or, opted in, an instance's phase or
// health anywhere: ViewRunning).

// ViewPart names one part of a node's view.
type ViewPart string

const (
	// ViewSelf is the node's own record, whole (its heartbeat sequence
	// and time included: the lease starts from them). It changes with
	// every committed heartbeat of the node itself.
	ViewSelf ViewPart = "self"
	// ViewWork is the current revision, the cluster's name, the node's
	// assignments and the operators' run controls of those instances.
	// It changes when a plan or an operator changes them.
	ViewWork ViewPart = "work"
	// ViewStatuses are the committed statuses of the instances assigned
	// to the node (whichever node reported them: a move waits for the old
	// node's report) and of those the node reported itself.
	ViewStatuses ViewPart = "statuses"
	// ViewNodes are every node's slow-changing fields (no heartbeat
	// sequence or time).
	ViewNodes ViewPart = "nodes"
	// ViewNetwork is the committed cluster network: CIDR, gateway and the
	// nodes' overlay addresses (the node's own instances' identities are
	// in ViewWork, everyone's in ViewPlacement: 10,000 identities are
	// about a megabyte, which a node that runs no network component must
	// not receive on every plan).
	ViewNetwork ViewPart = "network"
	// ViewPlacement (opt-in) is where every instance runs and what, its
	// network identity, the
	// cluster's ingress and functions and the functions' committed wants:
	// what the network component, ingress, the function gateway and the
	// binary cache need of the other nodes' work. Changes with plans and
	// scaling.
	ViewPlacement ViewPart = "placement"
	// ViewRunning (opt-in) is every instance's phase and health as its
	// node reported it, without times: what ingress and the function
	// gateway route by. Changes when any instance changes phase or health.
	ViewRunning ViewPart = "running"
)

// BaseViewParts are the parts every agent needs.
func BaseViewParts() []ViewPart {
	return []ViewPart{ViewSelf, ViewWork, ViewStatuses, ViewNodes, ViewNetwork}
}

// OptionalViewParts are asked for by nodes that run the network
// component, ingress, the function gateway or a binary cache.
func OptionalViewParts() []ViewPart { return []ViewPart{ViewPlacement, ViewRunning} }

// ParseViewPart checks a part's name.
func ParseViewPart(s string) (ViewPart, error) {
	p := ViewPart(s)
	if slices.Contains(BaseViewParts(), p) || slices.Contains(OptionalViewParts(), p) {
		return p, nil
	}
	return "", fmt.Errorf("unknown view part %q (want one of self, work, statuses, nodes, network, placement, running)", s)
}

// ViewWorkPart is the content of [ViewWork].
type ViewWorkPart struct {
	Revision *Revision `json:"revision,omitempty"`
	// Cluster is the desired spec's name (DNS domain, image names).
	Cluster     string                `json:"cluster,omitempty"`
	Assignments map[string]Assignment `json:"assignments"`
	RunControls map[string]RunControl `json:"runControls,omitempty"`
	// Identities are the network identities of the node's instances.
	Identities map[string]Identity `json:"identities,omitempty"`
	// Ahead names the instances among Assignments that are not committed
	// yet: the server that took the node's scale-out started them ahead
	// of its commit ([Views.WithAhead]). The node's agent and network run
	// them ([AgentView.StateAhead]); its gateway does not dispatch to them
	// ([AgentView.State] leaves them out).
	Ahead []string `json:"ahead,omitempty"`
}

// ViewNode is a node's slow-changing fields that other nodes use
// ([ViewNodes]): its state (a node marked down hands its VMs over), its
// addresses (underlay from RaftAddr's host, logs from APIAddr) and its
// binary cache. Not its capacity or labels (placement is the servers'),
// nor its heartbeat sequence and time, which change every heartbeat.
type ViewNode struct {
	ID       uint64    `json:"id"`
	RaftAddr string    `json:"raftAddr,omitempty"`
	APIAddr  string    `json:"apiAddr,omitempty"`
	State    NodeState `json:"state"`
	Ceph     bool      `json:"ceph,omitempty"`
	CacheURL string    `json:"cacheURL,omitempty"`
	CacheKey string    `json:"cacheKey,omitempty"`
	// GatewayAddr: an agent-only node's gateway passes requests for
	// another node's function instances there.
	GatewayAddr string `json:"gatewayAddr,omitempty"`
}

// ViewPlacementPart is the content of [ViewPlacement].
type ViewPlacementPart struct {
	// Instances are every assignment without what only its own node needs
	// (volumes, health check, restarts).
	Instances map[string]ViewInstance `json:"instances"`
	// Identities are every instance's network identity.
	Identities map[string]Identity      `json:"identities,omitempty"`
	Ingress    map[string]spec.Ingress  `json:"ingress,omitempty"`
	Functions  map[string]spec.Function `json:"functions,omitempty"`
	Wants      map[string]int           `json:"wants,omitempty"` // FunctionState.Want by function
}

// ViewInstance is one assignment as other nodes see it.
type ViewInstance struct {
	Declared   string `json:"declared"`
	Node       uint64 `json:"node"`
	Drv        string `json:"drv,omitempty"`
	OutPath    string `json:"outPath,omitempty"`
	Generation uint64 `json:"generation"`
	OwnRunner  bool   `json:"ownRunner,omitempty"`
	Commit     string `json:"commit,omitempty"`
	Function   string `json:"function,omitempty"`
	// Stopped: the instance is kept stopped (KeptStopped), so ingress and
	// DNS leave it out before its node stopped it, as on a replica.
	Stopped StopReason `json:"stopped,omitempty"`
}

// ViewStatus is an instance's reported phase and health without times
// ([ViewRunning]); Message only for a failed one (the gateway shows it).
type ViewStatus struct {
	Node       uint64      `json:"node"`
	Phase      Phase       `json:"phase"`
	Health     HealthState `json:"health,omitempty"`
	Generation uint64      `json:"generation"`
	Message    string      `json:"message,omitempty"`
}

// EncodedPart is one part as the server sends it: its JSON and version.
type EncodedPart struct {
	Version string          `json:"version"`
	Data    json.RawMessage `json:"data"`
}

// Views are every node's view of one state, computed once per state for
// all the nodes that wait (grouping by node done once, not per agent).
type Views struct {
	// Applied is the state's applied index.
	Applied uint64
	shared  map[ViewPart]EncodedPart
	perNode map[uint64]*nodeView
	// empty are the per-node parts of a node the state does not know yet.
	empty map[ViewPart]EncodedPart
	// planInputs and cluster are the state's State.PlanInputs and spec
	// name, assigned its instances grouped by node (each sorted): while
	// PlanInputs stays, no command changed an assignment, run control,
	// identity or the revision (AffectsPlanning), so every node's work
	// part is the previous one and is not compared again (at 1,000 nodes
	// and 10,000 instances the comparison was a third of a computation,
	// made for every batch of heartbeats).
	planInputs uint64
	cluster    string
	assigned   map[uint64][]string
	// The shared parts' inputs, to reuse their encoding when unchanged.
	nodes     []ViewNode
	network   *Network
	placement *ViewPlacementPart
	running   map[string]ViewStatus
}

// nodeView is one node's own parts and what they were made of.
type nodeView struct {
	parts    map[ViewPart]EncodedPart
	self     *Node
	work     ViewWorkPart
	statuses []VMStatus
}

// ComputeViews computes the views of every node of st, with the optional
// parts in optional (nil: none). It is pure: a server calls it once per
// coalesced batch of applied entries and answers every waiting agent from
// the result. prev (nil: none) is the previous computation: a part whose
// content did not change keeps its encoding, so a computation encodes
// only what changed (comparing is far cheaper than encoding).
func ComputeViews(st *State, optional []ViewPart, prev *Views) *Views {
	v := &Views{Applied: st.Applied, shared: map[ViewPart]EncodedPart{}, perNode: make(map[uint64]*nodeView, len(st.Nodes))}
	if prev == nil {
		prev = &Views{}
	}
	cluster := ""
	if st.Desired != nil {
		cluster = st.Desired.Name
	}
	// Group once: each node's assigned instances and the instances it
	// reported.
	sameWork := prev.assigned != nil && prev.planInputs == st.PlanInputs && prev.cluster == cluster
	assigned := prev.assigned
	if !sameWork {
		assigned = map[uint64][]string{}
		for name, a := range st.Assignments {
			assigned[a.Node] = append(assigned[a.Node], name)
		}
		for _, names := range assigned {
			slices.Sort(names)
		}
	}
	v.planInputs, v.cluster, v.assigned = st.PlanInputs, cluster, assigned
	reported := map[uint64][]string{}
	for name, o := range st.Observed {
		reported[o.Node] = append(reported[o.Node], name)
	}
	for id, n := range st.Nodes {
		names := assigned[id]
		old := prev.perNode[id]
		if old == nil {
			old = &nodeView{}
		}
		nv := &nodeView{parts: make(map[ViewPart]EncodedPart, 3)}
		if e, ok := old.parts[ViewSelf]; ok && reflect.DeepEqual(old.self, n) {
			nv.self, nv.parts[ViewSelf] = old.self, e
		} else {
			// A copy: the caller's state may change in place after this.
			nv.self = n.clone()
			nv.parts[ViewSelf] = encodePart(n)
		}
		// Compared before it is built: most nodes' work is unchanged.
		if e, ok := old.parts[ViewWork]; ok && (sameWork || workUnchanged(old.work, st, cluster, names)) {
			nv.work, nv.parts[ViewWork] = old.work, e
		} else {
			nv.work = workOf(st, cluster, names)
			nv.parts[ViewWork] = encodePart(nv.work)
		}
		nv.statuses = statusesOf(st, names, reported[id])
		if e, ok := old.parts[ViewStatuses]; ok && slices.Equal(old.statuses, nv.statuses) {
			nv.parts[ViewStatuses] = e
		} else {
			nv.parts[ViewStatuses] = encodePart(statusesMap(nv.statuses))
		}
		v.perNode[id] = nv
	}
	v.empty = map[ViewPart]EncodedPart{
		ViewSelf:     encodePart((*Node)(nil)),
		ViewWork:     encodePart(workOf(st, cluster, nil)),
		ViewStatuses: encodePart(map[string]VMStatus{}),
	}
	v.nodes = nodesOf(st)
	if e, ok := prev.shared[ViewNodes]; ok && reflect.DeepEqual(prev.nodes, v.nodes) {
		v.shared[ViewNodes] = e
	} else {
		v.shared[ViewNodes] = encodePart(v.nodes)
	}
	v.network = networkOf(st.Network)
	if e, ok := prev.shared[ViewNetwork]; ok && reflect.DeepEqual(prev.network, v.network) {
		v.shared[ViewNetwork] = e
	} else {
		v.shared[ViewNetwork] = encodePart(v.network)
	}
	for _, p := range optional {
		switch p {
		case ViewPlacement:
			pl := placementOf(st)
			if e, ok := prev.shared[p]; ok && samePlacement(prev.placement, &pl) {
				v.shared[p], v.placement = e, prev.placement
			} else {
				v.shared[p], v.placement = encodePart(pl), &pl
			}
		case ViewRunning:
			r := runningOf(st)
			if e, ok := prev.shared[p]; ok && maps.Equal(prev.running, r) {
				v.shared[p], v.running = e, prev.running
			} else {
				v.shared[p], v.running = encodePart(r), r
			}
		}
	}
	return v
}

// WithAhead returns v with node id's work part made from st, the state v
// was computed from with the instances ahead (on node id, not committed
// yet) added, and naming them as Ahead (pure; v is not changed, and is
// returned as it is when ahead is empty). Only node id's view changes: the
// instances are no other node's business before they commit. A Views
// returned by WithAhead must not be passed to [ComputeViews] as prev.
func (v *Views) WithAhead(id uint64, st *State, ahead []string) *Views {
	nv, ok := v.perNode[id]
	if !ok || len(ahead) == 0 {
		return v
	}
	var names []string
	for name, a := range st.Assignments {
		if a.Node == id {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	w := workOf(st, v.cluster, names)
	w.Ahead = slices.Sorted(slices.Values(ahead))
	n := *v
	n.perNode = maps.Clone(v.perNode)
	c := *nv
	c.parts = maps.Clone(nv.parts)
	c.work, c.parts[ViewWork] = w, encodePart(w)
	n.perNode[id] = &c
	return &n
}

// Part returns part p of node id's view; ok is false for an optional part
// this computation left out.
func (v *Views) Part(id uint64, p ViewPart) (EncodedPart, bool) {
	if e, ok := v.shared[p]; ok {
		return e, true
	}
	if nv, ok := v.perNode[id]; ok {
		e, ok := nv.parts[p]
		return e, ok
	}
	e, ok := v.empty[p]
	return e, ok
}

// Has reports whether the computation includes part p.
func (v *Views) Has(p ViewPart) bool {
	if _, ok := v.shared[p]; ok {
		return true
	}
	_, ok := v.empty[p]
	return ok
}

// Changed lists the parts of node id's view among want whose version
// differs from have (a part missing from have counts as changed).
func (v *Views) Changed(id uint64, want []ViewPart, have map[ViewPart]string) []ViewPart {
	var out []ViewPart
	for _, p := range want {
		e, ok := v.Part(id, p)
		if ok && e.Version != have[p] {
			out = append(out, p)
		}
	}
	return out
}

func workOf(st *State, cluster string, names []string) ViewWorkPart {
	w := ViewWorkPart{Revision: st.Revision, Cluster: cluster, Assignments: make(map[string]Assignment, len(names))}
	for _, name := range names {
		w.Assignments[name] = st.Assignments[name]
		if rc, ok := st.RunControls[name]; ok {
			if w.RunControls == nil {
				w.RunControls = map[string]RunControl{}
			}
			w.RunControls[name] = rc
		}
		if st.Network != nil {
			if id, ok := st.Network.Identities[name]; ok {
				if w.Identities == nil {
					w.Identities = map[string]Identity{}
				}
				w.Identities[name] = id
			}
		}
	}
	return w
}

// workUnchanged reports whether the work part w was made from what st
// holds for a node with the assignments names (sorted), without building
// the part again.
func workUnchanged(w ViewWorkPart, st *State, cluster string, names []string) bool {
	if w.Assignments == nil || w.Cluster != cluster || len(w.Assignments) != len(names) ||
		(w.Revision == nil) != (st.Revision == nil) || (w.Revision != nil && *w.Revision != *st.Revision) {
		return false
	}
	ids := 0
	rcs := 0
	for _, name := range names {
		a, ok := w.Assignments[name]
		if !ok || !sameAssignment(a, st.Assignments[name]) {
			return false
		}
		rc, had := w.RunControls[name]
		if now, has := st.RunControls[name]; had != has || rc != now {
			return false
		}
		if had {
			rcs++
		}
		var now Identity
		has := false
		if st.Network != nil {
			now, has = st.Network.Identities[name]
		}
		if id, had := w.Identities[name]; had != has || id != now {
			return false
		} else if had {
			ids++
		}
	}
	return ids == len(w.Identities) && rcs == len(w.RunControls)
}

// sameAssignment compares every field of two assignments, without
// reflection (reflect.DeepEqual of every assignment made a computation
// at 10,000 instances several times slower). TestSameAssignment fails
// when a field is added to Assignment and not compared here.
func sameAssignment(a, b Assignment) bool {
	return a.VM == b.VM && a.Declared == b.Declared && a.Node == b.Node && a.Drv == b.Drv && a.OutPath == b.OutPath &&
		a.VCPU == b.VCPU && a.MemMiB == b.MemMiB && slices.Equal(a.Volumes, b.Volumes) && a.Generation == b.Generation &&
		a.Stopped == b.Stopped && a.Restart == b.Restart && a.OwnRunner == b.OwnRunner && a.Commit == b.Commit &&
		(a.Health == b.Health || (a.Health != nil && b.Health != nil && reflect.DeepEqual(*a.Health, *b.Health))) &&
		a.Function == b.Function && a.Snapshot == b.Snapshot
}

// statusesOf lists the statuses of the instances assigned to a node and of
// those it reported, sorted by name.
func statusesOf(st *State, assigned, reported []string) []VMStatus {
	seen := make(map[string]bool, len(assigned)+len(reported))
	out := make([]VMStatus, 0, len(assigned)+len(reported))
	for _, set := range [][]string{assigned, reported} {
		for _, name := range set {
			if o, ok := st.Observed[name]; ok && !seen[name] {
				seen[name] = true
				out = append(out, o)
			}
		}
	}
	slices.SortFunc(out, func(a, b VMStatus) int { return strings.Compare(a.VM, b.VM) })
	return out
}

func statusesMap(sts []VMStatus) map[string]VMStatus {
	out := make(map[string]VMStatus, len(sts))
	for _, s := range sts {
		out[s.VM] = s
	}
	return out
}

func nodesOf(st *State) []ViewNode {
	out := make([]ViewNode, 0, len(st.Nodes))
	for _, id := range slices.Sorted(maps.Keys(st.Nodes)) {
		n := st.Nodes[id]
		out = append(out, ViewNode{ID: n.ID, RaftAddr: n.RaftAddr, APIAddr: n.APIAddr, State: n.State, Ceph: n.Ceph,
			CacheURL: n.CacheURL, CacheKey: n.CacheKey, GatewayAddr: n.GatewayAddr})
	}
	return out
}

// networkOf is the network without the instances' identities (each node
// gets its own instances' in its work part; all of them come with the
// placement part).
func networkOf(n *Network) *Network {
	if n == nil {
		return nil
	}
	return &Network{CIDR: n.CIDR, Gateway: n.Gateway, NodeAddrs: n.NodeAddrs}
}

func placementOf(st *State) ViewPlacementPart {
	p := ViewPlacementPart{Instances: make(map[string]ViewInstance, len(st.Assignments))}
	for name, a := range st.Assignments {
		p.Instances[name] = ViewInstance{Declared: a.Declared, Node: a.Node, Drv: a.Drv, OutPath: a.OutPath, Generation: a.Generation,
			OwnRunner: a.OwnRunner, Commit: a.Commit, Function: a.Function, Stopped: a.Stopped}
	}
	if st.Network != nil {
		p.Identities = st.Network.Identities
	}
	if st.Desired != nil {
		p.Ingress, p.Functions = st.Desired.Ingress, st.Desired.Functions
	}
	for name, f := range st.Functions {
		if p.Wants == nil {
			p.Wants = map[string]int{}
		}
		p.Wants[name] = f.Want
	}
	return p
}

func samePlacement(a, b *ViewPlacementPart) bool {
	return a != nil && maps.Equal(a.Instances, b.Instances) && maps.Equal(a.Identities, b.Identities) &&
		maps.Equal(a.Wants, b.Wants) && reflect.DeepEqual(a.Ingress, b.Ingress) && reflect.DeepEqual(a.Functions, b.Functions)
}

func runningOf(st *State) map[string]ViewStatus {
	out := make(map[string]ViewStatus, len(st.Observed))
	for name, o := range st.Observed {
		s := ViewStatus{Node: o.Node, Phase: o.Phase, Health: o.Health, Generation: o.Generation}
		if o.Phase == PhaseFailed {
			s.Message = o.Message
		}
		out[name] = s
	}
	return out
}

// encodePart encodes v (maps marshal with sorted keys, so equal content
// gives equal bytes) with its version: the first 16 hex digits of the
// bytes' SHA-256.
func encodePart(v any) EncodedPart {
	b, err := json.Marshal(v)
	if err != nil {
		// Every type here marshals; a failure is a programming error.
		panic(fmt.Sprintf("replicated: encoding a view part: %v", err))
	}
	sum := sha256.Sum256(b)
	return EncodedPart{Version: hex.EncodeToString(sum[:8]), Data: b}
}

// AgentView is a node's view as its agent holds it: the parts received so
// far (nil until received), decoded.
type AgentView struct {
	Applied   uint64
	Versions  map[ViewPart]string
	Self      *Node
	Work      *ViewWorkPart
	Statuses  map[string]VMStatus
	Nodes     []ViewNode
	Network   *Network
	Placement *ViewPlacementPart
	Running   map[string]ViewStatus
	// nodes are Nodes as the records State hands out, made once per
	// nodes part received: an agent's view is rebuilt after every
	// heartbeat it commits (its self part), and allocating every node's
	// record each time cost a simulated cluster of 1,000 agent-only
	// nodes (1,000 × 1,000 records every 2 s) most of its CPU.
	nodes map[uint64]*Node
}

// Merge decodes the parts into a copy of v, whose Applied becomes applied;
// v itself is not changed (readers hold the states built from it).
func (v *AgentView) Merge(applied uint64, parts map[ViewPart]EncodedPart) (*AgentView, error) {
	n := *v
	n.Applied = applied
	n.Versions = maps.Clone(v.Versions)
	if n.Versions == nil {
		n.Versions = map[ViewPart]string{}
	}
	for p, e := range parts {
		var err error
		switch p {
		case ViewSelf:
			n.Self = nil
			err = json.Unmarshal(e.Data, &n.Self)
		case ViewWork:
			n.Work = nil
			err = json.Unmarshal(e.Data, &n.Work)
		case ViewStatuses:
			n.Statuses = nil
			err = json.Unmarshal(e.Data, &n.Statuses)
		case ViewNodes:
			n.Nodes, n.nodes = nil, nil
			if err = json.Unmarshal(e.Data, &n.Nodes); err == nil {
				n.nodes = nodeRecords(n.Nodes)
			}
		case ViewNetwork:
			n.Network = nil
			err = json.Unmarshal(e.Data, &n.Network)
		case ViewPlacement:
			n.Placement = nil
			err = json.Unmarshal(e.Data, &n.Placement)
		case ViewRunning:
			n.Running = nil
			err = json.Unmarshal(e.Data, &n.Running)
		default:
			err = errors.New("unknown part: a newer server? upgrade this node")
		}
		if err != nil {
			return nil, fmt.Errorf("view part %s (version %s): %w", p, e.Version, err)
		}
		n.Versions[p] = e.Version
	}
	return &n, nil
}

// nodeRecords are the node records of a nodes part.
func nodeRecords(nodes []ViewNode) map[uint64]*Node {
	out := make(map[uint64]*Node, len(nodes))
	for _, n := range nodes {
		out[n.ID] = &Node{ID: n.ID, RaftAddr: n.RaftAddr, APIAddr: n.APIAddr, State: n.State, Ceph: n.Ceph,
			CacheURL: n.CacheURL, CacheKey: n.CacheKey, GatewayAddr: n.GatewayAddr}
	}
	return out
}

// State rebuilds a [State] from the view for node self's agent, the cache
// sharing, the network component and the function gateway: every field
// they read is filled in from the parts received (the other nodes'
// assignments and statuses only from the opt-in parts). Fields the view
// does not carry (history, events, tokens, rollouts, conditions, the
// desired VMs) stay empty: nothing on an agent-only node reads them.
//
// The states built from one view (and the views merged from it while the
// nodes part stays) share the other nodes' records: treat them as
// read-only, or Clone them.
func (v *AgentView) State(self uint64) *State { return v.state(self, false) }

// StateAhead is State with the node's instances started ahead of their
// commit ([ViewWorkPart.Ahead]) assigned too, with their identities: what
// the node's agent and network read.
func (v *AgentView) StateAhead(self uint64) *State { return v.state(self, true) }

func (v *AgentView) state(self uint64, withAhead bool) *State {
	st := &State{Applied: v.Applied, Assignments: map[string]Assignment{}, Observed: map[string]VMStatus{}}
	if v.nodes != nil && len(v.nodes) == len(v.Nodes) {
		st.Nodes = maps.Clone(v.nodes)
	} else {
		st.Nodes = nodeRecords(v.Nodes)
	}
	if v.Self != nil {
		n := *v.Self
		st.Nodes[self] = &n
	}
	if v.Network != nil {
		nw := *v.Network
		nw.Identities = map[string]Identity{}
		st.Network = &nw
	}
	identity := func(ids map[string]Identity) {
		if st.Network == nil {
			return
		}
		maps.Copy(st.Network.Identities, ids)
	}
	desired := &spec.Cluster{}
	if p := v.Placement; p != nil {
		for name, in := range p.Instances {
			st.Assignments[name] = Assignment{VM: name, Declared: in.Declared, Node: in.Node, Drv: in.Drv, OutPath: in.OutPath,
				Generation: in.Generation, OwnRunner: in.OwnRunner, Commit: in.Commit, Function: in.Function, Stopped: in.Stopped}
		}
		identity(p.Identities)
		desired.Ingress, desired.Functions = p.Ingress, p.Functions
		for name, want := range p.Wants {
			if st.Functions == nil {
				st.Functions = map[string]FunctionState{}
			}
			st.Functions[name] = FunctionState{Want: want}
		}
	}
	for name, s := range v.Running {
		st.Observed[name] = VMStatus{VM: name, Node: s.Node, Phase: s.Phase, Health: s.Health, Generation: s.Generation, Message: s.Message}
	}
	if w := v.Work; w != nil {
		st.Revision = w.Revision
		desired.Name = w.Cluster
		for name, a := range w.Assignments {
			st.Assignments[name] = a
		}
		identity(w.Identities)
		if !withAhead {
			for _, name := range w.Ahead {
				delete(st.Assignments, name)
				if st.Network != nil {
					delete(st.Network.Identities, name)
				}
			}
		}
		if len(w.RunControls) > 0 {
			st.RunControls = maps.Clone(w.RunControls)
		}
		if w.Revision != nil {
			st.Desired = desired
		}
	}
	for name, s := range v.Statuses {
		st.Observed[name] = s
	}
	return st
}
