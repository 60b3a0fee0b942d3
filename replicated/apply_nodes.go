package replicated

// Apply of the commands about nodes: registration, heartbeats, their scheduling state and fences.

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

func (s *State) applyRegisterNode(index uint64, at time.Time, c *RegisterNode) Result {
	if c.ID == 0 {
		return s.reject(ResultInvalid, "RegisterNode: node id must be > 0")
	}
	if c.Capacity.VCPU < 0 || c.Capacity.MemMiB < 0 {
		return s.reject(ResultInvalid, fmt.Sprintf("RegisterNode: node %d: capacity must not be negative (vcpu=%d memMiB=%d)",
			c.ID, c.Capacity.VCPU, c.Capacity.MemMiB))
	}
	if s.Nodes == nil {
		s.Nodes = map[uint64]*Node{}
	}
	n, exists := s.Nodes[c.ID]
	kind, verb := EventNodeUpdated, "updated"
	if !exists {
		n = &Node{ID: c.ID, State: NodeReady, RegisteredAt: at}
		s.Nodes[c.ID] = n
		kind, verb = EventNodeRegistered, "registered"
	}
	n.RaftAddr = c.RaftAddr
	n.APIAddr = c.APIAddr
	n.Capacity = c.Capacity
	n.Labels = nilIfEmptyMap(maps.Clone(c.Labels))
	n.CephAddrs = nilIfEmpty(slices.Clone(c.CephAddrs))
	n.ReportedCephAddrs = addrSet(c.CephAddrs)
	// Registered addresses mean Ceph too: nodes registered by a build
	// without the Ceph field keep their volumes.
	n.Ceph = c.Ceph || len(c.CephAddrs) > 0
	n.CacheURL, n.CacheKey = c.CacheURL, c.CacheKey
	n.GatewayAddr = c.GatewayAddr
	msg := fmt.Sprintf("node %d %s: vcpu %d, memMiB %d", c.ID, verb, c.Capacity.VCPU, c.Capacity.MemMiB)
	if c.RaftAddr != "" {
		msg += ", raft " + c.RaftAddr
	}
	if c.APIAddr != "" {
		msg += ", api " + c.APIAddr
	}
	s.event(index, at, kind, msg, About{Node: c.ID})
	return s.ok("node %d %s", c.ID, verb)
}

func validPhase(p Phase) bool {
	switch p {
	case PhasePending, PhaseBuilding, PhaseStarting, PhaseRunning, PhaseStopping, PhaseStopped, PhaseFailed:
		return true
	}
	return false
}

// applyNodeHeartbeat records that a node is alive. Its statuses are the
// node's complete observation: they replace every Observed entry the node
// reported before. When two nodes report the same VM (a VM being moved), the
// report of the node the VM is assigned to wins.
//
// Every valid heartbeat advances the liveness sequence and adds its Ceph
// addresses to the node's (what fencing blocklists): it proves the node
// reached the quorum, whatever its order. Only a newer report (see
// [heartbeatNewer]) replaces the statuses, ReportedCephAddrs and
// LastHeartbeatAt: an older snapshot that commits late (its proposal was
// retried while later ones committed) must not bring back what the node
// reported since — a VM running again that it said stopped, or one it
// dropped.
func (s *State) applyNodeHeartbeat(index uint64, at time.Time, c *NodeHeartbeat) Result {
	n, ok := s.Nodes[c.ID]
	if !ok {
		return s.reject(ResultUnknownNode, fmt.Sprintf("NodeHeartbeat: node %d is not registered; its agent must send RegisterNode first", c.ID))
	}
	seen := make(map[string]bool, len(c.Statuses))
	for _, st := range c.Statuses {
		switch {
		case st.VM == "":
			return s.reject(ResultInvalid, fmt.Sprintf("NodeHeartbeat: node %d: a status has no VM name", c.ID))
		case seen[st.VM]:
			return s.reject(ResultInvalid, fmt.Sprintf("NodeHeartbeat: node %d: VM %q is reported twice", c.ID, st.VM))
		case !validPhase(st.Phase):
			return s.reject(ResultInvalid, fmt.Sprintf("NodeHeartbeat: node %d: VM %q has unknown phase %q", c.ID, st.VM, st.Phase))
		case st.Health != "" && st.Health != Healthy && st.Health != Unhealthy:
			return s.reject(ResultInvalid, fmt.Sprintf("NodeHeartbeat: node %d: VM %q has unknown health %q", c.ID, st.VM, st.Health))
		}
		seen[st.VM] = true
	}
	if c.Unchanged != 0 && (c.Epoch == 0 || c.Unchanged >= c.Seq || len(c.Statuses) > 0) {
		return s.reject(ResultInvalid, fmt.Sprintf(
			"NodeHeartbeat: node %d: a liveness-only heartbeat (unchanged=%d) needs an epoch, a seq after %d and no statuses (epoch=%d seq=%d, %d statuses)",
			c.ID, c.Unchanged, c.Unchanged, c.Epoch, c.Seq, len(c.Statuses)))
	}

	n.LastHeartbeatSeq++
	// The clients of the node's volumes come and go with its VMs (a daemon
	// per volume, restarted when it dies): each is added to the node's
	// addresses, none is dropped before the node registers again, so a
	// fence blocklists every client that may still write.
	for _, a := range c.CephAddrs {
		if a != "" && !slices.Contains(n.CephAddrs, a) {
			n.CephAddrs = append(n.CephAddrs, a)
		}
	}
	if !heartbeatNewer(n, c) {
		return s.heartbeatOK(n, c, "node %d heartbeat %d: statuses of report %d ignored (report %d of this agent applied already)",
			c.ID, n.LastHeartbeatSeq, c.Seq, n.ReportSeq)
	}
	if c.Unchanged != 0 {
		if c.Epoch != n.ReportEpoch || c.Unchanged != n.StatusSeq {
			// The report it refers to was lost or has not committed yet:
			// keeping what is stored could keep stale statuses.
			return s.heartbeatOK(n, c, "node %d heartbeat %d: liveness only: its statuses are those of report %d/%d, but this state holds report %d/%d's; the agent must send them in full",
				c.ID, n.LastHeartbeatSeq, c.Epoch, c.Unchanged, n.ReportEpoch, n.StatusSeq)
		}
		n.ReportSeq = c.Seq
		n.LastHeartbeatAt = at
		n.ReportedCephAddrs = addrSet(c.CephAddrs)
		return s.heartbeatOK(n, c, "node %d heartbeat %d: statuses unchanged since report %d", c.ID, n.LastHeartbeatSeq, c.Unchanged)
	}
	if c.Epoch != 0 {
		n.ReportEpoch, n.ReportSeq = c.Epoch, c.Seq
	}
	// An unordered report replaces the statuses too: no liveness-only
	// heartbeat may refer to an older one any more.
	n.StatusSeq = c.Seq
	n.LastHeartbeatAt = at
	n.ReportedCephAddrs = addrSet(c.CephAddrs)
	// This scan of every observed status is the cost of a full heartbeat
	// in a large cluster (~0.2 ms at 10,000 VMs); liveness-only heartbeats
	// skip it.
	for vm, st := range s.Observed {
		if st.Node == c.ID && !seen[vm] {
			delete(s.Observed, vm)
		}
	}
	if s.Observed == nil && len(c.Statuses) > 0 {
		s.Observed = map[string]VMStatus{}
	}
	ignored := 0
	for _, st := range c.Statuses {
		st.Node = c.ID
		if st.ObservedAt.IsZero() {
			st.ObservedAt = at
		}
		st.ObservedAt = canonicalTime(st.ObservedAt)
		st.HealthSince = canonicalTime(st.HealthSince)
		prev, had := s.Observed[st.VM]
		if had && prev.Node != c.ID && !replacesReport(s.Assignments, prev, st) {
			ignored++
			continue
		}
		s.functionStatusEvent(index, at, prev, had, st)
		s.Observed[st.VM] = st
	}
	if ignored > 0 {
		return s.heartbeatOK(n, c, "node %d heartbeat %d: %d statuses, %d ignored (another node's report of the VM stands: it is assigned there, or may run there)",
			c.ID, n.LastHeartbeatSeq, len(c.Statuses), ignored)
	}
	return s.heartbeatOK(n, c, "node %d heartbeat %d: %d statuses", c.ID, n.LastHeartbeatSeq, len(c.Statuses))
}

// heartbeatOK is the result of an applied heartbeat: for an ordered
// agent, it says whose statuses the state holds now (Result.StatusSeq), so
// the agent knows whether it may send liveness-only heartbeats.
func (s *State) heartbeatOK(n *Node, c *NodeHeartbeat, format string, args ...any) Result {
	r := s.ok(format, args...)
	if c.Epoch != 0 && c.Epoch == n.ReportEpoch {
		r.StatusSeq = n.StatusSeq
	}
	return r
}

// replacesReport reports whether st, a node's status of a VM, replaces
// prev, another node's. The report of the node the VM is assigned to
// stands against others (their copies are on their way out). Other than
// that the newest report wins, except that a stopped copy does not hide
// another node's that may run: a node taking the VM over waits until the
// node that runs it reports it stopped (nodeagent.Decide), and a third
// node's leftover "stopped" (one that ran the VM before, fenced or just
// thawed) must not end that wait.
func replacesReport(as map[string]Assignment, prev, st VMStatus) bool {
	a, assigned := as[st.VM]
	switch {
	case assigned && a.Node == prev.Node:
		return false
	case assigned && a.Node == st.Node:
		return true
	}
	return st.Phase != PhaseStopped || prev.Phase == PhaseStopped
}

// heartbeatNewer reports whether c is a newer report than the last one
// applied for n: unordered (epoch 0, as every heartbeat was before the
// order existed), of another agent process than the last (a restarted
// agent starts its numbers again; its predecessor sends nothing more), or
// later in the same process's order. A duplicate (a retried proposal
// applied twice) is not newer.
func heartbeatNewer(n *Node, c *NodeHeartbeat) bool {
	return c.Epoch == 0 || c.Epoch != n.ReportEpoch || c.Seq > n.ReportSeq
}

func validNodeState(st NodeState) bool {
	switch st {
	case NodeReady, NodeCordoned, NodeDraining, NodeDown:
		return true
	}
	return false
}

func (s *State) applySetNodeState(index uint64, at time.Time, c *SetNodeState) Result {
	n, ok := s.Nodes[c.ID]
	if !ok {
		return s.reject(ResultUnknownNode, fmt.Sprintf("SetNodeState: node %d is not registered; see the registered nodes with `blixard nodes`", c.ID))
	}
	if !validNodeState(c.State) {
		return s.reject(ResultInvalid, fmt.Sprintf("SetNodeState: node %d: state %q is not one of ready, cordoned, draining, down", c.ID, c.State))
	}
	if n.State == c.State {
		return s.ok("node %d is already %s", c.ID, c.State)
	}
	if c.State == NodeDown && c.HeartbeatSeq != 0 && n.LastHeartbeatSeq != c.HeartbeatSeq {
		return s.reject(ResultStaleParent, fmt.Sprintf(
			"SetNodeState: node %d was judged silent at heartbeat %d but has sent heartbeat %d since; it stays %s",
			c.ID, c.HeartbeatSeq, n.LastHeartbeatSeq, n.State))
	}
	old := n.State
	n.State = c.State
	// A fence is lifted only by UnfenceNode, once the fenced clients are
	// gone: a node made ready keeps it, and a new fence adds to one not
	// lifted yet.
	if c.State == NodeDown {
		n.Fenced = addrSet(append(slices.Clone(n.Fenced), c.Fenced...))
	}
	msg := fmt.Sprintf("node %d: %s -> %s", c.ID, old, c.State)
	if c.Reason != "" {
		msg += " (" + c.Reason + ")"
	}
	if len(c.Fenced) > 0 {
		msg += "; fenced " + strings.Join(c.Fenced, ", ")
	}
	s.event(index, at, EventNodeStateChanged, msg, About{Node: c.ID, State: string(c.State)})
	return s.ok("%s", msg)
}

// applyUnfenceNode drops addresses whose blocklist entries the leader
// lifted from the node's fenced and known addresses.
func (s *State) applyUnfenceNode(index uint64, at time.Time, c *UnfenceNode) Result {
	n, ok := s.Nodes[c.ID]
	if !ok {
		return s.reject(ResultUnknownNode, fmt.Sprintf("UnfenceNode: node %d is not registered", c.ID))
	}
	if len(c.Addrs) == 0 || slices.Contains(c.Addrs, "") {
		return s.reject(ResultInvalid, fmt.Sprintf("UnfenceNode: node %d: the addresses %q must be non-empty", c.ID, c.Addrs))
	}
	if n.State == NodeDown {
		return s.reject(ResultStaleParent, fmt.Sprintf("UnfenceNode: node %d is down again: its fence stays until it is made ready and reports new Ceph clients", c.ID))
	}
	lifted := intersect(n.Fenced, c.Addrs)
	if len(lifted) == 0 {
		return s.ok("node %d: none of %s is fenced", c.ID, strings.Join(c.Addrs, ", "))
	}
	n.Fenced = nilIfEmpty(slices.DeleteFunc(n.Fenced, func(a string) bool { return slices.Contains(lifted, a) }))
	n.CephAddrs = nilIfEmpty(slices.DeleteFunc(n.CephAddrs, func(a string) bool { return slices.Contains(lifted, a) }))
	msg := fmt.Sprintf("node %d: fence lifted: blocklist entries of %s removed", c.ID, strings.Join(lifted, ", "))
	if len(n.ReportedCephAddrs) > 0 {
		msg += "; its Ceph clients now: " + strings.Join(n.ReportedCephAddrs, ", ")
	}
	s.event(index, at, EventNodeUnfenced, msg, About{Node: c.ID})
	return s.ok("%s", msg)
}

// addrSet returns the non-empty addresses of addrs, each once, in their
// first order (nil when none).
func addrSet(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// intersect returns the elements of a that are in b, in a's order.
func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// maxProblemMessage bounds a node problem's message.
const maxProblemMessage = 512

// applySetNodeProblem records or clears node c.ID's problem of part
// c.Part; the same message again changes nothing (no event).
func (s *State) applySetNodeProblem(index uint64, at time.Time, c *SetNodeProblem) Result {
	n, ok := s.Nodes[c.ID]
	if !ok {
		return s.reject(ResultUnknownNode, fmt.Sprintf("SetNodeProblem: node %d is not registered", c.ID))
	}
	if !validProblemPart(c.Part) {
		return s.reject(ResultInvalid, fmt.Sprintf("SetNodeProblem: node %d: part %q must be 1 to 32 lower-case letters or '-'", c.ID, c.Part))
	}
	msg := clip(c.Message, maxProblemMessage)
	old, had := n.Problems[c.Part]
	switch {
	case msg == "" && !had:
		return s.ok("node %d: %s has no problem", c.ID, c.Part)
	case msg == "":
		delete(n.Problems, c.Part)
		if len(n.Problems) == 0 {
			n.Problems = nil
		}
		s.event(index, at, EventNodeProblemCleared, fmt.Sprintf("node %d: %s: resolved (was: %s)", c.ID, c.Part, old.Message), About{Node: c.ID})
		return s.ok("node %d: %s problem cleared", c.ID, c.Part)
	case had && old.Message == msg:
		return s.ok("node %d: %s problem already recorded", c.ID, c.Part)
	}
	if n.Problems == nil {
		n.Problems = map[string]NodeProblem{}
	}
	n.Problems[c.Part] = NodeProblem{Message: msg, Since: at}
	s.event(index, at, EventNodeProblem, fmt.Sprintf("node %d: %s: %s", c.ID, c.Part, msg), About{Node: c.ID})
	return s.ok("node %d: %s problem recorded", c.ID, c.Part)
}

func validProblemPart(p string) bool {
	if p == "" || len(p) > 32 {
		return false
	}
	for _, r := range p {
		if (r < 'a' || r > 'z') && r != '-' {
			return false
		}
	}
	return true
}
