package replicated

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blixard/blixard/spec"
)

// ResultCode is the outcome of applying a command. Every code but ResultOK is
// a rejection, and a rejection changes nothing but [State.Applied].
type ResultCode uint64

const (
	// ResultOK: the command was applied.
	ResultOK ResultCode = iota
	// ResultInvalid: the command breaks a rule (bad id, negative capacity,
	// duplicate VM, unknown state…); retrying the same command cannot help.
	ResultInvalid
	// ResultStaleParent: a CommitPlan was made against a revision that is no
	// longer current; re-read the state and plan again.
	ResultStaleParent
	// ResultUnknownNode: the command names a node that is not registered.
	ResultUnknownNode
	// ResultUndecodable: the Raft entry is not a command this build can decode.
	ResultUndecodable
	// ResultUnknownVM: the command names a VM that is neither an instance
	// nor a declared VM of the current revision.
	ResultUnknownVM
	// ResultUnknownToken: RevokeToken names no token.
	ResultUnknownToken
)

// String is the code's stable, lower-case name.
func (c ResultCode) String() string {
	switch c {
	case ResultOK:
		return "ok"
	case ResultInvalid:
		return "invalid"
	case ResultStaleParent:
		return "stale-parent"
	case ResultUnknownNode:
		return "unknown-node"
	case ResultUndecodable:
		return "undecodable"
	case ResultUnknownVM:
		return "unknown-vm"
	case ResultUnknownToken:
		return "unknown-token"
	}
	return fmt.Sprintf("code-%d", uint64(c))
}

// Result is what applying one command returns to its proposer.
type Result struct {
	Code    ResultCode `json:"code"`
	Message string     `json:"message"`
	// Revision is the current revision ID after the command (0 when none);
	// for an applied CommitPlan it is the new revision's ID.
	Revision uint64 `json:"revision"`
}

// OK reports whether the command was applied.
func (r Result) OK() bool { return r.Code == ResultOK }

// Err is nil when the command was applied, else a *[RejectedError].
func (r Result) Err() error {
	if r.OK() {
		return nil
	}
	return &RejectedError{Result: r}
}

// RejectedError is a command the state machine refused; Result.Code says why.
type RejectedError struct{ Result Result }

func (e *RejectedError) Error() string {
	return fmt.Sprintf("command rejected (%s): %s", e.Result.Code, e.Result.Message)
}

// Event kinds written to the event log.
const (
	EventNodeRegistered   = "NodeRegistered"
	EventNodeUpdated      = "NodeUpdated"
	EventNodeStateChanged = "NodeStateChanged"
	EventPlanCommitted    = "PlanCommitted"
	EventEvalFailed       = "EvalFailed"
	EventFetchFailed      = "FetchFailed"
	EventConditionCleared = "ConditionCleared"
	EventHistoryRewritten = "HistoryRewritten"
	EventSignatureRefused = "SignatureRefused"
	EventVMRunState       = "VMRunStateChanged"
	EventSyncRequested    = "SyncRequested"
	EventTokenCreated     = "TokenCreated"
	EventTokenRevoked     = "TokenRevoked"
	EventMemberAdded      = "MemberAdded"
	EventNodeUnfenced     = "NodeUnfenced"
)

// maxEventMessage bounds an event message (the full text stays elsewhere,
// e.g. in a Condition).
const maxEventMessage = 512

// Apply applies cmd, the command of the Raft entry at index, and returns its
// result. It is deterministic: it reads only cmd and s, never a clock,
// randomness or I/O, and keeps no reference to cmd's maps, slices or spec.
// It always sets s.Applied = index; a rejected command changes nothing else.
func (s *State) Apply(index uint64, cmd Command) Result {
	s.Applied = index
	if err := checkEnvelope(&cmd); err != nil {
		return s.reject(ResultInvalid, err.Error())
	}
	if err := checkActor(cmd.Actor); err != nil {
		return s.reject(ResultInvalid, fmt.Sprintf("%s: %v", cmd.Type, err))
	}
	res := s.apply(index, cmd)
	if res.OK() && cmd.Actor != "" {
		s.attribute(index, cmd.Actor)
	}
	return res
}

// apply dispatches cmd, whose envelope and actor are valid.
func (s *State) apply(index uint64, cmd Command) Result {
	at := canonicalTime(cmd.At)
	switch cmd.Type {
	case CmdRegisterNode:
		return s.applyRegisterNode(index, at, cmd.RegisterNode)
	case CmdNodeHeartbeat:
		return s.applyNodeHeartbeat(index, at, cmd.NodeHeartbeat)
	case CmdCommitPlan:
		return s.applyCommitPlan(index, at, cmd.CommitPlan)
	case CmdSetCondition:
		return s.applySetCondition(index, at, cmd.SetCondition)
	case CmdClearCondition:
		return s.applyClearCondition(index, at, cmd.ClearCondition)
	case CmdSetNodeState:
		return s.applySetNodeState(index, at, cmd.SetNodeState)
	case CmdSetVMRunState:
		return s.applySetVMRunState(index, at, cmd.SetVMRunState)
	case CmdRequestSync:
		return s.applyRequestSync(index, at)
	case CmdCreateToken:
		return s.applyCreateToken(index, at, cmd.Actor, cmd.CreateToken)
	case CmdRevokeToken:
		return s.applyRevokeToken(index, at, cmd.RevokeToken)
	case CmdRecordMember:
		return s.applyRecordMember(index, at, cmd.RecordMember)
	case CmdUnfenceNode:
		return s.applyUnfenceNode(index, at, cmd.UnfenceNode)
	case CmdRolloutStep:
		return s.applyRolloutStep(index, at, cmd.RolloutStep)
	case CmdSetFollowing:
		return s.applySetFollowing(index, at, cmd.Actor, cmd.SetFollowing)
	case CmdRecordPending:
		return s.applyRecordPending(at, cmd.RecordPending)
	case CmdScaleFunction:
		return s.applyScaleFunction(index, at, cmd.ScaleFunction)
	case CmdFunctionActivity:
		return s.applyFunctionActivity(cmd.FunctionActivity)
	}
	// Unreachable: checkEnvelope knows every type handled above.
	return s.reject(ResultInvalid, fmt.Sprintf("unknown command type %q", cmd.Type))
}

func (s *State) revisionID() uint64 {
	if s.Revision == nil {
		return 0
	}
	return s.Revision.ID
}

func (s *State) ok(format string, args ...any) Result {
	return Result{Code: ResultOK, Message: fmt.Sprintf(format, args...), Revision: s.revisionID()}
}

func (s *State) reject(code ResultCode, msg string) Result {
	return Result{Code: code, Message: msg, Revision: s.revisionID()}
}

func (s *State) event(index uint64, at time.Time, kind, msg string) {
	s.Events = appendBounded(s.Events, Event{Index: index, At: at, Kind: kind, Message: clip(msg, maxEventMessage)}, MaxEvents)
}

// clip cuts msg to at most n bytes (on a rune boundary), marking the cut.
func clip(msg string, n int) string {
	if len(msg) <= n {
		return msg
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "…"
}

// maxActor bounds [Command.Actor]: certificate user and token names are at
// most 64 bytes, and "token " is the longest prefix.
const maxActor = 80

// checkActor refuses an actor that could not have come from the API: too
// long, or with characters that would garble the event log.
func checkActor(actor string) error {
	if len(actor) > maxActor {
		return fmt.Errorf("actor is %d bytes long, at most %d", len(actor), maxActor)
	}
	if !utf8.ValidString(actor) {
		return fmt.Errorf("actor %q is not UTF-8", actor)
	}
	for _, r := range actor {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("actor %q holds a control character", actor)
		}
	}
	return nil
}

// attribute names actor in the events the entry at index recorded (the
// newest events with that index): every change made through the API says
// who asked for it.
func (s *State) attribute(index uint64, actor string) {
	suffix := " (by " + actor + ")"
	for i := len(s.Events) - 1; i >= 0 && s.Events[i].Index == index; i-- {
		e := &s.Events[i]
		e.Actor = actor
		e.Message = clip(e.Message, maxEventMessage-len(suffix)) + suffix
	}
}

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
	msg := fmt.Sprintf("node %d %s: vcpu %d, memMiB %d", c.ID, verb, c.Capacity.VCPU, c.Capacity.MemMiB)
	if c.RaftAddr != "" {
		msg += ", raft " + c.RaftAddr
	}
	if c.APIAddr != "" {
		msg += ", api " + c.APIAddr
	}
	s.event(index, at, kind, msg)
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
		return s.ok("node %d heartbeat %d: statuses of report %d ignored (report %d of this agent applied already)",
			c.ID, n.LastHeartbeatSeq, c.Seq, n.ReportSeq)
	}
	if c.Epoch != 0 {
		n.ReportEpoch, n.ReportSeq = c.Epoch, c.Seq
	}
	n.LastHeartbeatAt = at
	n.ReportedCephAddrs = addrSet(c.CephAddrs)
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
		return s.ok("node %d heartbeat %d: %d statuses, %d ignored (another node's report of the VM stands: it is assigned there, or may run there)",
			c.ID, n.LastHeartbeatSeq, len(c.Statuses), ignored)
	}
	return s.ok("node %d heartbeat %d: %d statuses", c.ID, n.LastHeartbeatSeq, len(c.Statuses))
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

// applyCommitPlan replaces the assignments and the desired spec with a new
// revision, if the plan's parent is the current revision.
func (s *State) applyCommitPlan(index uint64, at time.Time, c *CommitPlan) Result {
	cur := s.revisionID()
	if c.Parent != cur {
		return s.reject(ResultStaleParent, fmt.Sprintf(
			"CommitPlan: stale parent: the plan was made against revision %d but the current revision is %d; re-read the state and plan again",
			c.Parent, cur))
	}
	if c.Spec == nil {
		return s.reject(ResultInvalid, "CommitPlan: the plan has no spec")
	}
	seen := make(map[string]bool, len(c.Assignments))
	for _, a := range c.Assignments {
		switch {
		case a.VM == "":
			return s.reject(ResultInvalid, "CommitPlan: an assignment has no VM name")
		case seen[a.VM]:
			return s.reject(ResultInvalid, fmt.Sprintf("CommitPlan: VM %q is assigned twice", a.VM))
		case a.VCPU < 0 || a.MemMiB < 0:
			return s.reject(ResultInvalid, fmt.Sprintf("CommitPlan: VM %q: resources must not be negative (vcpu=%d memMiB=%d)", a.VM, a.VCPU, a.MemMiB))
		case !slices.IsSortedFunc(a.Volumes, func(x, y spec.VolumeRef) int { return strings.Compare(x.Name, y.Name) }):
			return s.reject(ResultInvalid, fmt.Sprintf("CommitPlan: VM %q: volumes are not sorted by name", a.VM))
		}
		if _, ok := s.Nodes[a.Node]; !ok {
			return s.reject(ResultUnknownNode, fmt.Sprintf("CommitPlan: VM %q is assigned to node %d, which is not registered", a.VM, a.Node))
		}
		seen[a.VM] = true
	}

	prevCommit := ""
	if s.Revision != nil {
		prevCommit = s.Revision.Commit
	}
	desired := cloneCluster(c.Spec)
	canonicalCluster(desired)
	network, err := s.planNetwork(c, desired)
	if err != nil {
		return s.reject(ResultInvalid, "CommitPlan: "+err.Error())
	}
	unschedulable := nilIfEmpty(slices.Clone(c.Unschedulable))
	slices.SortFunc(unschedulable, func(x, y Unschedulable) int { return strings.Compare(x.VM, y.VM) })
	// The operators' choices stay for the instances the plan still has
	// (placed or not) and are forgotten with the others.
	var controls map[string]RunControl
	for _, u := range unschedulable {
		if rc, ok := s.RunControls[u.VM]; ok {
			controls = putControl(controls, u.VM, rc)
		}
	}
	assignments := make(map[string]Assignment, len(c.Assignments))
	for _, a := range c.Assignments {
		a.Generation = index
		if a.Commit == "" {
			a.Commit = c.Commit
		}
		a = holdBack(desired, s.Assignments, a, prevCommit)
		if old, ok := s.Assignments[a.VM]; ok && old.Node == a.Node && old.SameWorkload(a) {
			a.Generation = old.Generation
		}
		a.Volumes = nilIfEmpty(slices.Clone(a.Volumes))
		rc, ok := s.RunControls[a.VM]
		if ok {
			controls = putControl(controls, a.VM, rc)
		}
		a.Stopped = KeptStopped(autostart(desired, a), rc.Want)
		a.Restart = rc.Restart
		assignments[a.VM] = a
	}
	rev := Revision{
		ID:          index,
		Parent:      c.Parent,
		Commit:      c.Commit,
		Ref:         c.Ref,
		EvalHash:    c.EvalHash,
		CommittedAt: at,
		Summary:     c.Summary,
		Rewrote:     c.Rewrote,
		Signer:      c.Signer,
	}
	s.Revision = &rev
	s.History = appendBounded(s.History, rev, MaxRevisionHistory)
	previous := s.Desired
	s.Desired = desired
	s.Network = network
	s.Assignments = assignments
	s.Unschedulable = unschedulable
	s.RunControls = controls
	s.pruneFunctions()
	// A plan of another commit supersedes the recorded eval error, and so does
	// a plan of the very commit that failed. A re-plan of the running commit
	// (say, after a node change) keeps a newer commit's error visible.
	// The same holds for a refused signature.
	for _, t := range []ConditionType{EvalFailed, SignatureRefused} {
		if e, ok := s.Condition(t); ok && (c.Commit != prevCommit || c.Commit == e.Commit) {
			s.removeCondition(t)
		}
	}
	if c.Rewrote != "" {
		s.event(index, at, EventHistoryRewritten, fmt.Sprintf("history rewritten (force-push): commit %s was replaced; revision %d follows commit %s",
			c.Rewrote, index, c.Commit))
	}
	msg := fmt.Sprintf("revision %d (parent %d) of commit %s", index, c.Parent, c.Commit)
	if c.Ref != "" {
		msg += " (" + c.Ref + ")"
	}
	if c.Signer != "" {
		msg += ", signed by " + c.Signer
	}
	if c.Summary != "" {
		msg += ": " + c.Summary
	}
	s.event(index, at, EventPlanCommitted, msg)
	// After the plan's event: a rollout it starts follows it in the log.
	s.planRollouts(index, at, previous, c.Commit, prevCommit)
	return s.ok("revision %d committed (parent %d, %d assignments)", index, c.Parent, len(assignments))
}

// Condition returns the condition of type t when it is true.
func (s *State) Condition(t ConditionType) (Condition, bool) {
	for _, c := range s.Conditions {
		if c.Type == t {
			return c, true
		}
	}
	return Condition{}, false
}

func (s *State) removeCondition(t ConditionType) {
	s.Conditions = nilIfEmpty(slices.DeleteFunc(s.Conditions, func(c Condition) bool { return c.Type == t }))
}

func validConditionType(t ConditionType) bool {
	return t == FetchFailed || t == EvalFailed || t == SignatureRefused
}

// applySetCondition makes a condition true. Since is kept while the
// condition stays true for the same commit, so "failing since" means what
// it says across repeated records.
func (s *State) applySetCondition(index uint64, at time.Time, c *SetCondition) Result {
	if !validConditionType(c.Type) {
		return s.reject(ResultInvalid, fmt.Sprintf("SetCondition: type %q is not one of FetchFailed, EvalFailed, SignatureRefused", c.Type))
	}
	if c.Message == "" {
		return s.reject(ResultInvalid, fmt.Sprintf("SetCondition: %s of commit %s: the message is empty", c.Type, c.Commit))
	}
	since := at
	if old, ok := s.Condition(c.Type); ok && old.Commit == c.Commit {
		since = old.Since
	}
	s.removeCondition(c.Type)
	s.Conditions = append(s.Conditions, Condition{Type: c.Type, Commit: c.Commit, Message: c.Message,
		Retryable: c.Retryable, Since: since, At: at})
	slices.SortFunc(s.Conditions, func(x, y Condition) int { return strings.Compare(string(x.Type), string(y.Type)) })
	first, _, more := strings.Cut(c.Message, "\n")
	if more {
		first += " …"
	}
	kind := EventEvalFailed
	switch c.Type {
	case FetchFailed:
		kind = EventFetchFailed
	case SignatureRefused:
		kind = EventSignatureRefused
	}
	s.event(index, at, kind, fmt.Sprintf("commit %s: %s", orNone(c.Commit), first))
	return s.ok("%s of commit %s recorded; revision %d stays", c.Type, orNone(c.Commit), s.revisionID())
}

func (s *State) applyClearCondition(index uint64, at time.Time, c *ClearCondition) Result {
	if !validConditionType(c.Type) {
		return s.reject(ResultInvalid, fmt.Sprintf("ClearCondition: type %q is not one of FetchFailed, EvalFailed, SignatureRefused", c.Type))
	}
	if _, ok := s.Condition(c.Type); !ok {
		return s.ok("%s is not set", c.Type)
	}
	s.removeCondition(c.Type)
	s.event(index, at, EventConditionCleared, string(c.Type)+" cleared")
	return s.ok("%s cleared", c.Type)
}

func orNone(commit string) string {
	if commit == "" {
		return "(none)"
	}
	return commit
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
	s.event(index, at, EventNodeStateChanged, msg)
	return s.ok("%s", msg)
}

// autostart is the flake's autostart of a's declared VM; true when the
// spec does not declare it (a plan made without one).
func autostart(desired *spec.Cluster, a Assignment) bool {
	if a.Function != "" {
		return true // a function's instances exist only to run
	}
	declared := a.Declared
	if declared == "" {
		declared = a.VM
	}
	if desired == nil {
		return true
	}
	vm, ok := desired.VMs[declared]
	return !ok || vm.Autostart
}

func putControl(m map[string]RunControl, vm string, rc RunControl) map[string]RunControl {
	if m == nil {
		m = map[string]RunControl{}
	}
	m[vm] = rc
	return m
}

// instancesNamed resolves name to the instances of the current revision:
// the instance of that name, else every instance of the declared VM of that
// name (its replicas). The revision's instances are its assignments and its
// unschedulable instances. The result is sorted; nil when name is unknown.
func (s *State) instancesNamed(name string) []string {
	if _, ok := s.Assignments[name]; ok {
		return []string{name}
	}
	for _, u := range s.Unschedulable {
		if u.VM == name {
			return []string{name}
		}
	}
	var out []string
	for vm, a := range s.Assignments {
		if a.Declared == name {
			out = append(out, vm)
		}
	}
	for _, u := range s.Unschedulable {
		if u.Declared == name {
			out = append(out, u.VM)
		}
	}
	slices.Sort(out)
	return out
}

// instance is the assignment of instance vm, or for an unschedulable
// instance its name and declared name.
func (s *State) instance(vm string) Assignment {
	if a, ok := s.Assignments[vm]; ok {
		return a
	}
	for _, u := range s.Unschedulable {
		if u.VM == vm {
			return Assignment{VM: vm, Declared: u.Declared}
		}
	}
	return Assignment{VM: vm}
}

// applySetVMRunState records an operator's run-state choice for the
// instances name resolves to and derives their assignments' Stopped and
// Restart from it. A restart is refused unless every instance is then
// wanted running: restarting a VM kept stopped would start it behind the
// operator's back.
func (s *State) applySetVMRunState(index uint64, at time.Time, c *SetVMRunState) Result {
	switch {
	case c.VM == "":
		return s.reject(ResultInvalid, "SetVMRunState: no VM named; name an instance (web-1) or a declared VM (web)")
	case c.Want != "" && c.Want != RunStateRunning && c.Want != RunStateStopped:
		return s.reject(ResultInvalid, fmt.Sprintf("SetVMRunState: VM %q: want %q is not one of running, stopped", c.VM, c.Want))
	case c.Want == "" && !c.Restart:
		return s.reject(ResultInvalid, fmt.Sprintf("SetVMRunState: VM %q: nothing to do (set want or restart)", c.VM))
	}
	names := s.instancesNamed(c.VM)
	if len(names) == 0 {
		return s.reject(ResultUnknownVM, fmt.Sprintf(
			"SetVMRunState: VM %q is neither an instance nor a declared VM of revision %d; see `blixard status` for the VMs",
			c.VM, s.revisionID()))
	}
	want := func(vm string) RunState {
		if c.Want != "" {
			return c.Want
		}
		return s.RunControls[vm].Want
	}
	if c.Restart {
		var stopped []string
		for _, vm := range names {
			if KeptStopped(autostart(s.Desired, s.instance(vm)), want(vm)) != "" {
				stopped = append(stopped, vm)
			}
		}
		if len(stopped) > 0 {
			return s.reject(ResultInvalid, fmt.Sprintf(
				"SetVMRunState: cannot restart %s: kept stopped (autostart = false or `blixard vm stop`); start it with `blixard vm start %s`",
				strings.Join(stopped, ", "), stopped[0]))
		}
	}
	changed := false
	for _, vm := range names {
		rc := s.RunControls[vm]
		old := rc
		rc.Want = want(vm)
		if c.Restart {
			rc.Restart = index
		}
		if rc.Want == old.Want && rc.Restart == old.Restart {
			continue
		}
		changed = true
		rc.At = at
		s.RunControls = putControl(s.RunControls, vm, rc)
		if a, ok := s.Assignments[vm]; ok {
			a.Stopped = KeptStopped(autostart(s.Desired, a), rc.Want)
			a.Restart = rc.Restart
			s.Assignments[vm] = a
		}
	}
	what := "wanted " + string(c.Want)
	switch {
	case c.Want != "" && c.Restart:
		what += ", restarted"
	case c.Restart:
		what = "restarted"
	}
	if !changed {
		return s.ok("%s: already %s", strings.Join(names, ", "), what)
	}
	msg := fmt.Sprintf("%s: %s", strings.Join(names, ", "), what)
	if c.Restart {
		msg += fmt.Sprintf(" (restart %d)", index)
	}
	s.event(index, at, EventVMRunState, msg)
	return s.ok("%s", msg)
}

// applyRequestSync counts a request for a fetch. A run of requests with
// nothing else in between keeps one event, the last: webhooks for a busy
// repository (one per push to any branch) must not push plans, failures and
// node changes out of the bounded event log.
func (s *State) applyRequestSync(index uint64, at time.Time) Result {
	s.SyncRequests++
	ev := Event{Index: index, At: at, Kind: EventSyncRequested,
		Message: fmt.Sprintf("fetch of the tracked ref requested (request %d)", s.SyncRequests)}
	if n := len(s.Events); n > 0 && s.Events[n-1].Kind == EventSyncRequested {
		s.Events[n-1] = ev
	} else {
		s.Events = appendBounded(s.Events, ev, MaxEvents)
	}
	return s.ok("sync request %d recorded", s.SyncRequests)
}

// tokenNameRE is the shape of token names: the shape of certificate user
// names (package pki), so "token NAME" and a user's name read alike in the
// event log.
var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// ValidTokenName reports whether name can name an API token, and why not.
func ValidTokenName(name string) error {
	if !tokenNameRE.MatchString(name) {
		return fmt.Errorf("token name %q must be 1–64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", name)
	}
	return nil
}

// validTokenRole is the roles of user certificates (package pki).
func validTokenRole(role string) bool {
	return role == "read" || role == "operate" || role == "admin"
}

var tokenHashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (s *State) applyCreateToken(index uint64, at time.Time, actor string, c *CreateToken) Result {
	if err := ValidTokenName(c.Name); err != nil {
		return s.reject(ResultInvalid, "CreateToken: "+err.Error())
	}
	if !validTokenRole(c.Role) {
		return s.reject(ResultInvalid, fmt.Sprintf("CreateToken: token %s: role %q is not one of read, operate, admin", c.Name, c.Role))
	}
	if !tokenHashRE.MatchString(c.Hash) {
		return s.reject(ResultInvalid, fmt.Sprintf("CreateToken: token %s: the hash is not a hex SHA-256", c.Name))
	}
	if _, ok := s.Tokens[c.Name]; ok {
		return s.reject(ResultInvalid, fmt.Sprintf("CreateToken: a token named %s exists; revoke it first (`blixard token revoke %s`) or choose another name", c.Name, c.Name))
	}
	if s.Tokens == nil {
		s.Tokens = map[string]Token{}
	}
	s.Tokens[c.Name] = Token{Name: c.Name, Role: c.Role, Hash: c.Hash, CreatedAt: at, CreatedBy: actor}
	s.event(index, at, EventTokenCreated, fmt.Sprintf("token %s created with role %s", c.Name, c.Role))
	return s.ok("token %s created with role %s", c.Name, c.Role)
}

func (s *State) applyRevokeToken(index uint64, at time.Time, c *RevokeToken) Result {
	t, ok := s.Tokens[c.Name]
	if !ok {
		return s.reject(ResultUnknownToken, fmt.Sprintf("RevokeToken: no token is named %q; see `blixard token list`", c.Name))
	}
	delete(s.Tokens, c.Name)
	if len(s.Tokens) == 0 {
		s.Tokens = nil
	}
	s.event(index, at, EventTokenRevoked, fmt.Sprintf("token %s (role %s) revoked", c.Name, t.Role))
	return s.ok("token %s revoked", c.Name)
}

func (s *State) applyRecordMember(index uint64, at time.Time, c *RecordMember) Result {
	if c.ID == 0 {
		return s.reject(ResultInvalid, "RecordMember: node id must be > 0")
	}
	kind := "voting"
	if c.NonVoting {
		kind = "non-voting"
	}
	msg := fmt.Sprintf("node %d added to the Raft shard as a %s member at %s", c.ID, kind, c.RaftAddr)
	s.event(index, at, EventMemberAdded, msg)
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
	s.event(index, at, EventNodeUnfenced, msg)
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
