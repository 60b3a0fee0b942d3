package reconciler

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Functions in the plan. A function's committed scale
// (replicated.FunctionState.Want, clamped to [minInstances, maxInstances])
// is expanded into that many instances named replicated.FunctionInstance
// (fn-NAME-0 …), which Compute keeps, moves and gives network identities
// exactly like VM instances (rules 0, 2 and 4 of plan.go). Only rule 3
// differs: a new function instance goes to the node whose gateway asked
// for it (FunctionState.Near) when that node may take it and it fits — the
// requests arrive there, so the answer takes no hop over the overlay — and
// otherwise to the least loaded eligible node (lowest mean of memory and
// vCPU shares; then the fewest instances of the function; then the lowest
// id), since a function's instances come and go with load and spreading
// them keeps room for bursts on every node. Function instances are placed
// after VM instances: a burst of requests never displaces a declared VM.

// functionProbe is the health check every function instance gets: a TCP
// connect to its http.port. An instance counts as ready for the gateways
// once its server accepts connections, not merely when its runner runs
// (a guest still booting would refuse the first requests). The interval is
// the shortest the agent allows: it bounds what the check adds to a cold
// start.
func functionProbe(port int) *spec.HealthCheck {
	return &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: port}, Interval: spec.MinHealthInterval,
		Timeout: spec.MinHealthInterval * 4 / 5, HealthyAfter: 1, UnhealthyAfter: 3}
}

// FunctionWant is how many instances function name (f) wants: its
// committed scale clamped to its bounds, minInstances before any scale.
func FunctionWant(f spec.Function, st replicated.FunctionState, scaled bool) int {
	if !scaled {
		return f.MinInstances
	}
	return replicated.ClampWant(f, st.Want)
}

// functionInstances returns the desired instances of the functions of
// desired at their committed scale, sorted by name, and which function
// each belongs to.
func functionInstances(desired *spec.Cluster, scale map[string]replicated.FunctionState) ([]spec.Instance, map[string]string) {
	if desired == nil || len(desired.Functions) == 0 {
		return nil, nil
	}
	var out []spec.Instance
	of := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(desired.Functions)) {
		f := desired.Functions[name]
		st, scaled := scale[name]
		for i := range FunctionWant(f, st, scaled) {
			inst := replicated.FunctionInstance(name, i)
			of[inst] = name
			out = append(out, spec.Instance{Name: inst, Declared: name, VM: spec.VM{
				Runner: f.Runner, VCPU: f.VCPU, MemMiB: f.MemMiB, Replicas: 1, Autostart: true,
				Placement: f.Placement, Health: functionProbe(f.HTTP.Port),
			}})
		}
	}
	slices.SortFunc(out, func(a, b spec.Instance) int { return strings.Compare(a.Name, b.Name) })
	return out, of
}

// functionSnapshot reports whether the instances of function fn ("" for
// a VM's instance) carry Assignment.Snapshot: its spec says snapshot =
// true. The agent needs it on the assignment because it never reads the
// desired spec.
func functionSnapshot(desired *spec.Cluster, fn string) bool {
	if fn == "" || desired == nil {
		return false
	}
	f, ok := desired.Functions[fn]
	return ok && f.Snapshot
}

// placeFunctions places the function instances place left (rule 3 for
// functions, above), by name.
func (s *scheduler) placeFunctions() {
	for i := range s.insts {
		it := &s.insts[i]
		if it.fn == "" || it.node >= 0 || it.why != "" {
			continue
		}
		n, why := s.chooseFunction(it)
		if n < 0 {
			it.why = s.unschedulableReason(it)
			continue
		}
		it.fnWhy = why
		s.assign(it, n)
	}
}

// chooseFunction returns the node a new function instance goes to and
// why, or -1: the near node when it may take the instance, else the least
// loaded eligible node.
func (s *scheduler) chooseFunction(it *instance) (int32, string) {
	c := &s.classes[s.decls[it.decl].class]
	may := func(n int32) bool { return s.conflictOn(it.decl, n) < 0 && s.fits(it, n) }
	near := s.in.Functions[it.fn].Near
	if n, ok := s.nodeIdx[near]; ok && slices.Contains(c.eligible, n) && may(n) {
		return n, fmt.Sprintf("near: node %d received the requests", near)
	}
	best, bestAlloc, bestHere := int32(-1), int32(0), 0
	for _, n := range c.eligible {
		if !may(n) {
			continue
		}
		a := allocPPM(s.nodes[n].Capacity, s.freeMem[n], s.freeCPU[n])
		here := s.functionInstancesOn(it.fn, n)
		if best < 0 || a < bestAlloc || a == bestAlloc && here < bestHere {
			best, bestAlloc, bestHere = n, a, here
		}
	}
	if best < 0 {
		return -1, ""
	}
	why := fmt.Sprintf("least loaded: %d%% used", bestAlloc/(allocMax/100))
	if near != 0 && s.ids[best] != near {
		why = fmt.Sprintf("node %d (the requests') cannot take it; %s", near, why)
	}
	return best, why
}

// functionInstancesOn counts function fn's instances placed on node n.
func (s *scheduler) functionInstancesOn(fn string, n int32) int {
	k := 0
	for i := range s.insts {
		if s.insts[i].fn == fn && s.insts[i].node == n {
			k++
		}
	}
	return k
}

// IdleMark is when this leader first saw a function's activity marks
// (FunctionState.LastActive and ScaledAt) at their current values, on its
// own clock.
type IdleMark struct {
	LastActive, ScaledAt time.Time
	Seen                 time.Time
}

// ScaleIns are the leader's idle decisions (pure): every function of the
// committed revision that wants more than minInstances and whose activity
// marks (FunctionState.LastActive from the gateways, ScaledAt) have not
// moved for its idleTimeout scales in to minInstances.
//
// Idleness is timed on the leader's clock, from when it first saw the
// current marks (seen, updated and returned), never by comparing the
// gateways' clocks with its own: a gateway whose clock runs behind would
// otherwise make a busy function look idle and lose its instances, one
// ahead would keep an idle one up. Like node liveness, a new leader
// counts from when it first looks (an idle function scales in at most
// idleTimeout later after a leader change). It returns the commands and,
// when some function is not idle yet, when the next one may be (zero:
// none).
func ScaleIns(st *replicated.State, now time.Time, seen map[string]IdleMark) ([]replicated.ScaleFunction, time.Time, map[string]IdleMark) {
	if st == nil || st.Desired == nil {
		return nil, time.Time{}, nil
	}
	var out []replicated.ScaleFunction
	var next time.Time
	marks := map[string]IdleMark{}
	for _, name := range slices.Sorted(maps.Keys(st.Desired.Functions)) {
		f := st.Desired.Functions[name]
		fs, scaled := st.Functions[name]
		want := FunctionWant(f, fs, scaled)
		if want <= f.MinInstances {
			continue
		}
		mark, ok := seen[name]
		if !ok || !mark.LastActive.Equal(fs.LastActive) || !mark.ScaledAt.Equal(fs.ScaledAt) {
			mark = IdleMark{LastActive: fs.LastActive, ScaledAt: fs.ScaledAt, Seen: now}
		}
		marks[name] = mark
		if due := mark.Seen.Add(f.IdleTimeout); now.Before(due) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		out = append(out, replicated.ScaleFunction{Function: name, Kind: replicated.ScaleIn, Want: f.MinInstances,
			From: want, Idle: fs.LastActive,
			Reason: fmt.Sprintf("no requests for %s (idleTimeout %s)", now.Sub(mark.Seen).Round(time.Second), f.IdleTimeout)})
	}
	return out, next, marks
}

// reconcileFunctions proposes the scale-ins ScaleIns decides. It reports
// whether one committed (the plan must be made again against it) and when
// the next function may go idle.
func (r *Reconciler) reconcileFunctions(ctx context.Context, state *replicated.State, now time.Time) (bool, Result, error) {
	cmds, next, marks := ScaleIns(state, now, r.loop.idle)
	r.loop.idle = marks
	var res Result
	if !next.IsZero() {
		res.RequeueAfter = next.Sub(now)
	}
	committed := false
	var errs []error
	for _, c := range cmds {
		out, err := r.opts.Store.Propose(ctx, replicated.Command{Type: replicated.CmdScaleFunction, At: now, ScaleFunction: &c})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("scaling function %s in: %w", c.Function, err))
		case out.Code == replicated.ResultStaleParent:
			// A request was reported (or another scale committed) since
			// the judgement: decided again at the next pass.
			r.opts.Logger.Debug("function scale-in not committed: stale", "function", c.Function, "detail", out.Message)
			res = sooner(res, Result{RequeueAfter: r.opts.Resync})
		case !out.OK():
			errs = append(errs, TerminalError(fmt.Errorf("scaling function %s in: %w", c.Function, out.Err())))
		default:
			r.opts.Logger.Info("function scaled in", "function", c.Function, "from", c.From, "to", c.Want, "reason", c.Reason)
			committed = true
		}
	}
	if len(errs) > 0 {
		return committed, res, joinErrors(errs)
	}
	return committed, res, nil
}

// byInstanceName orders instances as Compute expects them.
func byInstanceName(a, b spec.Instance) int { return cmp.Compare(a.Name, b.Name) }

// placeWhy says why a new or moved instance went to its node.
func (s *scheduler) placeWhy(it *instance) string {
	if it.fn != "" {
		return it.fnWhy
	}
	return s.why(it)
}

// Wake asks for a pass without a fetch, as soon as possible: a node calls
// it when a function's committed scale changed, so that on the leader the
// plan that starts or stops its instances follows at once rather than at
// the next Resync. On a follower the pass does nothing. It never blocks;
// wakes coalesce.
func (r *Reconciler) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// MaxCarriedPlan bounds the plans a scale-out carries
// (replicated.ScaleFunction.Plan): a plan holds the whole spec and every
// assignment, and a bigger cluster's cold starts take the two-commit path
// (the scale, then the leader's plan) rather than growing every scale-out
// entry of the Raft log by the cluster's size.
const MaxCarriedPlan = 512

// ScaleOutPlan attaches to scale-out c, proposed by a node that reads
// state st from its replica, the plan the leader would commit right after
// it: the re-plan of the running revision with c's scale applied (Compute
// and HoldBack on the same inputs as the leader's pass), and the state's
// PlanInputs it was made from. Apply commits it with the scale when nothing
// the planner reads changed in between, so the new instance is assigned
// in the entry that asked for it. It leaves c alone when c changes no
// Want, when nothing is committed yet, when the plan would change nothing
// (no room: the leader records why) or when the cluster is too big for
// a plan to ride along (MaxCarriedPlan).
func ScaleOutPlan(st *replicated.State, c replicated.ScaleFunction) replicated.ScaleFunction {
	c.Plan, c.Inputs = nil, 0
	if st == nil || st.Revision == nil || st.Desired == nil || len(st.Assignments) >= MaxCarriedPlan {
		return c
	}
	fns, ok := st.ScaledOut(c)
	if !ok {
		return c
	}
	rev := st.Revision
	plan := Compute(Input{Desired: st.Desired, Nodes: st.Nodes, Current: st.Assignments, Previous: st.Desired,
		Network: st.Network, Functions: fns, Observed: st.Observed})
	plan = HoldBack(plan, st.Assignments, st.Desired, rev.Commit)
	if !plan.HasChanges() {
		return c
	}
	c.Plan = &replicated.CommitPlan{
		Parent: rev.ID, Commit: rev.Commit, Ref: rev.Ref, EvalHash: rev.EvalHash, Signer: rev.Signer,
		Summary: plan.Summary(), Spec: st.Desired, Assignments: plan.Assignments, Unschedulable: plan.Unschedulable,
	}
	c.Inputs = st.PlanInputs
	return c
}
