package replicated

import (
	"fmt"
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
	// StatusSeq, after a NodeHeartbeat of an ordered agent, is the Seq of
	// the node's report whose statuses the state holds ([Node.StatusSeq]).
	// An agent sends liveness-only heartbeats ([NodeHeartbeat.Unchanged])
	// only after a result showed its last full report held; a build that
	// predates them never sets it.
	StatusSeq uint64 `json:"statusSeq,omitempty"`
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
	// A node's part recorded a problem, or it went away (SetNodeProblem).
	EventNodeProblem        = "NodeProblem"
	EventNodeProblemCleared = "NodeProblemCleared"
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
	if res.OK() && AffectsPlanning(cmd.Type) {
		s.PlanInputs++
	}
	return res
}

// AffectsPlanning reports whether an applied command of type t may change
// an input of the planner (nodes' registration and state, assignments,
// the desired spec, the network, functions, run controls, rollouts). It
// lists the types that cannot rather than those that can, so a command
// added later counts until shown otherwise. A heartbeat never does: the
// planner reads no observed status, and liveness becomes a node state
// only through SetNodeState. Nor does FunctionActivity: the planner reads
// a function's want and near node, not its activity (the want it may
// record for a function never scaled is the minInstances the planner
// assumes then), and it comes every 500 ms from every busy gateway, which
// would make every scale-out's plan stale (ScaleFunction.Plan).
func AffectsPlanning(t CommandType) bool {
	switch t {
	case CmdNodeHeartbeat, CmdRequestSync, CmdCreateToken, CmdRevokeToken, CmdRecordMember,
		CmdSetCondition, CmdClearCondition, CmdSetNodeProblem, CmdFunctionActivity:
		return false
	}
	return true
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
	case CmdSetNodeProblem:
		return s.applySetNodeProblem(index, at, cmd.SetNodeProblem)
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

func (s *State) event(index uint64, at time.Time, kind, msg string, about ...About) {
	e := Event{Index: index, At: at, Kind: kind, Message: clip(msg, maxEventMessage)}
	if len(about) > 0 {
		e.About = about[0]
	}
	s.Events = appendBounded(s.Events, e, MaxEvents)
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
			c.Rewrote, index, c.Commit), About{Commit: c.Commit, Revision: index})
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
	s.event(index, at, EventPlanCommitted, msg, About{Commit: c.Commit, Revision: index})
	// After the plan's event: a rollout it starts follows it in the log.
	s.planRollouts(index, at, previous, c.Commit, prevCommit)
	return s.ok("revision %d committed (parent %d, %d assignments)", index, c.Parent, len(assignments))
}

// tokenNameRE is the shape of token names: the shape of certificate user
// names (package pki), so "token NAME" and a user's name read alike in the
// event log.
var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

var tokenHashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
