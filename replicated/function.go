package replicated

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/spec"
)

// Functions (spec.Function) scale between minInstances and maxInstances
// on demand. How many instances a function has is committed state, so
// that every node's gateway sees the same instances, a leader change loses
// no decision and a dead node's decisions outlive it:
//
//   - [FunctionState.Want] is the number of instances the function wants.
//     The planner (reconciler.Compute) turns it into Want assignments named
//     [FunctionInstance] (fn-NAME-0, fn-NAME-1, …), placed like VM
//     instances and given network identities by the same rule, which the
//     agents run like VMs. Apply never places anything itself.
//   - [ScaleFunction] changes Want: a gateway's node proposes scale-out
//     (monotone: it only raises Want, so duplicates and reorderings are
//     harmless), the leader proposes scale-in after idleTimeout without
//     requests (a compare-and-set on Want and on the activity it judged,
//     so a request reported meanwhile wins over the leader's judgement).
//   - [FunctionActivity] carries the gateways' last request times, by which
//     the leader judges idleness. A node that dies reports nothing more,
//     so its functions go idle and shrink; its instances move off it with
//     its VMs.

// FunctionState is one function's committed scale.
type FunctionState struct {
	// Want is how many instances the function wants; the planner clamps
	// it to the committed spec's [minInstances, maxInstances].
	Want int `json:"want"`
	// LastActive is the newest request activity a gateway reported
	// ([FunctionActivity]), on that gateway's clock.
	LastActive time.Time `json:"lastActive,omitzero"`
	// ScaledAt is when Want last changed (the proposer's clock): a
	// function that just scaled counts as active since.
	ScaledAt time.Time `json:"scaledAt,omitzero"`
	// Reason is why Want last changed.
	Reason string `json:"reason,omitempty"`
	// Near is the node whose gateway asked for the last scale-out: the
	// planner places new instances there when they fit (the requests
	// arrive there), else on the least loaded eligible node.
	Near uint64 `json:"near,omitempty"`
}

// ScaleKind says who scales a function and how Apply checks it.
type ScaleKind string

const (
	// ScaleOut raises Want to the demand a gateway saw; never lowers it.
	ScaleOut ScaleKind = "out"
	// ScaleIn lowers Want after the function went idle (the leader's).
	ScaleIn ScaleKind = "in"
)

// ScaleFunction changes a function's Want (see [FunctionState]).
type ScaleFunction struct {
	Function string    `json:"function"`
	Kind     ScaleKind `json:"kind"`
	// Want is the instances asked for; Apply clamps it to the committed
	// spec's [minInstances, maxInstances].
	Want int `json:"want"`
	// From (ScaleIn) is the Want the leader judged idle, and Idle the
	// LastActive it judged by: the command is refused as stale when
	// either moved since.
	From int       `json:"from,omitempty"`
	Idle time.Time `json:"idle,omitzero"`
	// Node (ScaleOut) is the node whose gateway received the requests.
	Node uint64 `json:"node,omitempty"`
	// Reason says why, for the event log ("5 in flight, 12 queued on node 2").
	Reason string `json:"reason,omitempty"`
	// Plan (ScaleOut only, optional) is the re-plan of the running
	// revision with this scale-out applied, made by the proposer from a
	// state whose PlanInputs was Inputs (reconciler.ScaleOutPlan). Apply
	// commits it in the same entry when the state still stands there and
	// the scale-out changed Want, so a cold start waits for one Raft commit
	// instead of two (the scale, then the leader's plan); otherwise it is
	// dropped and the leader plans as for any scale-out.
	Plan   *CommitPlan `json:"plan,omitempty"`
	Inputs uint64      `json:"inputs,omitempty"`
}

// FunctionActivity reports when a node's gateway last saw requests for
// functions (arrived, ended or still in flight).
type FunctionActivity struct {
	Node   uint64               `json:"node"`
	Active map[string]time.Time `json:"active"`
}

// EventFunctionScaled records a change of a function's Want;
// EventFunctionStartFailed a function instance its node reports failed.
const (
	EventFunctionScaled      = "FunctionScaled"
	EventFunctionStartFailed = "FunctionStartFailed"
)

// functionInstancePrefix starts every function instance's name, so that
// instance names of functions do not collide with replica names of VMs
// (spec validation reserves it: no VM is named fn-…).
const functionInstancePrefix = spec.FunctionInstancePrefix

// FunctionInstance is the name of function fn's instance i (from 0): a
// unit, directory and network-identity name like a VM instance's.
func FunctionInstance(fn string, i int) string {
	return functionInstancePrefix + fn + "-" + strconv.Itoa(i)
}

// FunctionInstanceIndex returns i when name is FunctionInstance(fn, i).
func FunctionInstanceIndex(fn, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, functionInstancePrefix+fn+"-")
	if !ok || rest == "" || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil && i >= 0
}

// FunctionMayRun reports whether the placement rules that do not change
// with load let an instance of f run on n: its node list, its labels and
// n's whole capacity (what is free changes with every cold start). A node
// that may run f keeps f's runner fetched ahead and a tap ready for f's
// next instance.
func FunctionMayRun(f spec.Function, n *Node) bool {
	if n == nil {
		return false
	}
	if len(f.Placement.Nodes) > 0 && !slices.Contains(f.Placement.Nodes, n.ID) {
		return false
	}
	for k, v := range f.Placement.Labels {
		if n.Labels[k] != v {
			return false
		}
	}
	return f.VCPU <= n.Capacity.VCPU && f.MemMiB <= n.Capacity.MemMiB
}

// ClampWant is the one bound on a function's instances: want within
// [minInstances, maxInstances] of f.
func ClampWant(f spec.Function, want int) int {
	return min(max(want, f.MinInstances), max(f.MaxInstances, f.MinInstances))
}

// FunctionWant is how many instances function name of the committed spec
// wants now: its committed Want, clamped; minInstances before any scale.
func (s *State) FunctionWant(name string) int {
	if s.Desired == nil {
		return 0
	}
	f, ok := s.Desired.Functions[name]
	if !ok {
		return 0
	}
	st, ok := s.Functions[name]
	if !ok {
		return f.MinInstances
	}
	return ClampWant(f, st.Want)
}

func (s *State) applyScaleFunction(index uint64, at time.Time, c *ScaleFunction) Result {
	var f spec.Function
	ok := false
	if s.Desired != nil {
		f, ok = s.Desired.Functions[c.Function]
	}
	switch {
	case !ok:
		return s.reject(ResultUnknownVM, fmt.Sprintf("ScaleFunction: %q is not a function of the committed revision", c.Function))
	case c.Kind != ScaleOut && c.Kind != ScaleIn:
		return s.reject(ResultInvalid, fmt.Sprintf("ScaleFunction %s: kind %q is neither %q nor %q", c.Function, c.Kind, ScaleOut, ScaleIn))
	case c.Want < 0:
		return s.reject(ResultInvalid, fmt.Sprintf("ScaleFunction %s: want must be >= 0, got %d", c.Function, c.Want))
	}
	if c.Kind == ScaleOut && c.Node != 0 {
		if _, ok := s.Nodes[c.Node]; !ok {
			return s.reject(ResultUnknownNode, fmt.Sprintf("ScaleFunction %s: node %d is not registered", c.Function, c.Node))
		}
	}
	if c.Plan != nil && c.Kind != ScaleOut {
		return s.reject(ResultInvalid, fmt.Sprintf("ScaleFunction %s: only a scale-out carries a plan", c.Function))
	}
	cur := s.FunctionWant(c.Function)
	want := ClampWant(f, c.Want)
	st := s.Functions[c.Function]
	switch c.Kind {
	case ScaleOut:
		if want <= cur {
			return s.ok("function %s wants %d instances already (asked for %d)", c.Function, cur, c.Want)
		}
		st.Near = c.Node
	case ScaleIn:
		if c.From != cur || !st.LastActive.Equal(canonicalTime(c.Idle)) {
			return s.reject(ResultStaleParent, fmt.Sprintf(
				"ScaleFunction %s: stale: judged %d instances idle since %s, but the function wants %d and was last active %s",
				c.Function, c.From, c.Idle.Format(time.RFC3339Nano), cur, st.LastActive.Format(time.RFC3339Nano)))
		}
		if want >= cur {
			return s.ok("function %s wants %d instances already (asked for %d)", c.Function, cur, c.Want)
		}
	}
	st.Want, st.ScaledAt, st.Reason = want, at, clip(c.Reason, maxEventMessage/2)
	if s.Functions == nil {
		s.Functions = map[string]FunctionState{}
	}
	s.Functions[c.Function] = st
	msg := fmt.Sprintf("function %s scaled %s: %d → %d instances", c.Function, c.Kind, cur, want)
	if c.Reason != "" {
		msg += " (" + c.Reason + ")"
	}
	s.event(index, at, EventFunctionScaled, msg, About{Function: c.Function})
	if c.Plan == nil {
		return s.ok("function %s wants %d instances", c.Function, want)
	}
	// Apply has not counted this entry in PlanInputs yet: equal means no
	// command the planner reads came between the proposer's read and now.
	if c.Inputs != s.PlanInputs || c.Plan.Parent != s.revisionID() {
		return s.ok("function %s wants %d instances; its plan was made against plan inputs %d of revision %d, the state is at %d of revision %d: left to the leader",
			c.Function, want, c.Inputs, c.Plan.Parent, s.PlanInputs, s.revisionID())
	}
	if res := s.applyCommitPlan(index, at, c.Plan); !res.OK() {
		return s.ok("function %s wants %d instances; its plan was refused, left to the leader: %s", c.Function, want, res.Message)
	}
	return s.ok("function %s wants %d instances; revision %d placed them in the same entry", c.Function, want, index)
}

// ScaledOut returns the functions' scale as scale-out c would leave it,
// and false when c would change no Want (or be refused): what a proposer
// plans with to send the plan along (ScaleFunction.Plan). It is
// applyScaleFunction's scale-out without the event, on a copy.
func (s *State) ScaledOut(c ScaleFunction) (map[string]FunctionState, bool) {
	if c.Kind != ScaleOut || s.Desired == nil || c.Want < 0 {
		return nil, false
	}
	f, ok := s.Desired.Functions[c.Function]
	if !ok {
		return nil, false
	}
	if _, ok := s.Nodes[c.Node]; c.Node != 0 && !ok {
		return nil, false
	}
	want := ClampWant(f, c.Want)
	if want <= s.FunctionWant(c.Function) {
		return nil, false
	}
	st := s.Functions[c.Function]
	st.Want, st.Near = want, c.Node
	out := maps.Clone(s.Functions)
	if out == nil {
		out = map[string]FunctionState{}
	}
	out[c.Function] = st
	return out, true
}

func (s *State) applyFunctionActivity(c *FunctionActivity) Result {
	if _, ok := s.Nodes[c.Node]; !ok {
		return s.reject(ResultUnknownNode, fmt.Sprintf("FunctionActivity: node %d is not registered", c.Node))
	}
	if s.Desired == nil {
		return s.ok("no functions: nothing committed yet")
	}
	n := 0
	// Sorted, so the map a new function gets is made the same way everywhere.
	for _, fn := range slices.Sorted(maps.Keys(c.Active)) {
		t := canonicalTime(c.Active[fn])
		if _, ok := s.Desired.Functions[fn]; !ok {
			continue // removed by a plan since the node read it
		}
		st := s.Functions[fn]
		if !t.After(st.LastActive) {
			continue
		}
		st.LastActive = t
		if st.Want == 0 && st.ScaledAt.IsZero() {
			st.Want = s.Desired.Functions[fn].MinInstances
		}
		if s.Functions == nil {
			s.Functions = map[string]FunctionState{}
		}
		s.Functions[fn] = st
		n++
	}
	return s.ok("node %d: activity of %d functions recorded", c.Node, n)
}

// pruneFunctions forgets the scale of functions the committed spec no
// longer declares (a plan removed them).
func (s *State) pruneFunctions() {
	for fn := range s.Functions {
		if s.Desired == nil {
			delete(s.Functions, fn)
		} else if _, ok := s.Desired.Functions[fn]; !ok {
			delete(s.Functions, fn)
		}
	}
	if len(s.Functions) == 0 {
		s.Functions = nil
	}
}

// functionStatusEvent records a function instance's failed start in the
// event log, once per failure (when its phase turns failed), so that a
// 502 the gateway answered has its reason in `blixard events`.
func (s *State) functionStatusEvent(index uint64, at time.Time, prev VMStatus, had bool, st VMStatus) {
	a, ok := s.Assignments[st.VM]
	if !ok || a.Function == "" || st.Phase != PhaseFailed || (had && prev.Phase == PhaseFailed && prev.Node == st.Node) {
		return
	}
	msg := fmt.Sprintf("function %s: instance %s failed to start on node %d", a.Function, st.VM, st.Node)
	if st.Message != "" {
		msg += ": " + st.Message
	}
	s.event(index, at, EventFunctionStartFailed, msg, About{Function: a.Function, VM: st.VM, Node: st.Node})
}
