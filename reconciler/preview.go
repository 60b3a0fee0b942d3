package reconciler

import (
	"context"
	"fmt"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Preview is what committing one evaluated commit would do to a state.
type Preview struct {
	// Commit is the evaluated commit (or the caller's token for a working
	// tree).
	Commit string `json:"commit,omitempty"`
	// Base is the revision the plan was computed against (0: none yet).
	Base uint64        `json:"baseRevision"`
	Spec *spec.Cluster `json:"-"`
	Hash string        `json:"evalHash"`
	Plan Plan          `json:"plan"`
}

// PlanCommit is the one evaluation path: it evaluates commit, refuses a spec
// the cluster would refuse (a volume shrink, see CheckVolumes) and plans it
// against st. The leader loop, POST /v1/plan and `blixard plan` all use it,
// so a preview says exactly what a push would do. An error is the
// evaluation's (nix's message, an invalid spec) or the refusal; it does not
// touch st.
func PlanCommit(ctx context.Context, ev Evaluator, commit string, st *replicated.State) (Preview, error) {
	res, err := ev.Evaluate(ctx, commit)
	if err != nil {
		return Preview{}, err
	}
	return PlanSpec(st, commit, res)
}

// PlanSpec is PlanCommit after the evaluation: the volume check and the plan.
func PlanSpec(st *replicated.State, commit string, res Evaluation) (Preview, error) {
	if res.Spec == nil {
		return Preview{}, fmt.Errorf("commit %s: the evaluation returned no spec", commit)
	}
	if err := CheckVolumes(st.Desired, res.Spec); err != nil {
		return Preview{}, err
	}
	p := Compute(Input{Desired: res.Spec, Nodes: st.Nodes, Current: st.Assignments, Previous: st.Desired, Network: st.Network,
		Functions: st.Functions, Observed: st.Observed})
	p.Rollouts = Rollouts(p, st.Assignments, res.Spec)
	pv := Preview{Commit: commit, Spec: res.Spec, Hash: res.Hash, Plan: p}
	if st.Revision != nil {
		pv.Base = st.Revision.ID
	}
	return pv, nil
}
