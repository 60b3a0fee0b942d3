package reconciler

import (
	"fmt"
	"sort"

	"github.com/blixard/blixard/replicated"
)

// Drift is one difference between the committed desired state and what the
// agents observe.
type Drift struct {
	VM       string           `json:"vm"`
	Node     uint64           `json:"node"`             // where it should run (0: nowhere)
	Observed uint64           `json:"observedNode"`     // where it was seen (0: nowhere)
	Phase    replicated.Phase `json:"phase,omitempty"`  // observed phase
	Want     string           `json:"want,omitempty"`   // desired out path
	Booted   string           `json:"booted,omitempty"` // observed out path
	// Stopped says why the VM is kept stopped on purpose ("" when it
	// should run).
	Stopped replicated.StopReason `json:"stopped,omitempty"`
	Reason  string                `json:"reason"`
}

// ComputeDrift compares assignments with observed statuses. A VM is in sync
// when it is observed running on its assigned node with the assigned out
// path, or — kept stopped on purpose (replicated.Assignment.Stopped:
// autostart = false, `blixard vm stop`) — observed stopped there; an
// observed VM that is not assigned anywhere and still runs is drift.
// The result is sorted by VM name.
func ComputeDrift(s *replicated.State) []Drift {
	var out []Drift
	for name, a := range s.Assignments {
		st, seen := s.Observed[name]
		d := Drift{VM: name, Node: a.Node, Want: a.OutPath, Stopped: a.Stopped}
		want := replicated.PhaseRunning
		if a.Stopped != "" {
			want = replicated.PhaseStopped
		}
		switch {
		case !seen:
			d.Reason = fmt.Sprintf("not yet reported by node %d", a.Node)
		case st.Node != a.Node:
			d.Observed, d.Phase, d.Booted = st.Node, st.Phase, st.BootedOut
			d.Reason = fmt.Sprintf("observed on node %d, assigned to node %d", st.Node, a.Node)
		case st.Phase != want:
			d.Observed, d.Phase, d.Booted = st.Node, st.Phase, st.BootedOut
			d.Reason = fmt.Sprintf("phase %s, want %s", st.Phase, want)
			if a.Stopped != "" {
				d.Reason += " (" + a.Stopped.Why() + ")"
			}
			if st.Message != "" {
				d.Reason += ": " + st.Message
			}
		case want == replicated.PhaseStopped:
			continue // stopped on purpose: whatever it booted last does not matter
		case st.BootedOut != a.OutPath:
			d.Observed, d.Phase, d.Booted = st.Node, st.Phase, st.BootedOut
			d.Reason = "runs an old closure"
		default:
			continue
		}
		out = append(out, d)
	}
	for name, st := range s.Observed {
		if _, assigned := s.Assignments[name]; assigned {
			continue
		}
		if st.Phase == replicated.PhaseStopped {
			continue
		}
		out = append(out, Drift{VM: name, Observed: st.Node, Phase: st.Phase, Booted: st.BootedOut,
			Reason: fmt.Sprintf("not assigned but %s on node %d", st.Phase, st.Node)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}
