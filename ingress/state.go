package ingress

import (
	"cmp"
	"slices"

	"github.com/blixard/blixard/replicated"
)

// FromState is the table of a replicated state: the ingress entries of the
// current revision's spec (State.Desired) routed to [RunningInstances]. A
// state before the first plan gives an empty table.
func FromState(s *replicated.State) *Table {
	if s == nil || s.Desired == nil {
		return NewTable(nil, nil)
	}
	return NewTable(s.Desired.Ingress, RunningInstances(s))
}

// RunningInstances are the instances ingress may send traffic to, by
// declared VM name, sorted by instance name: those assigned to a node, not
// kept stopped, observed running on that same node, and with a cluster
// address. Observed on another node means a move is under way (the old
// node's copy is being stopped, the new one is not up yet); kept stopped
// means its unit is about to be stopped: both are left out so that new
// requests go to instances that stay. Passive health checks cover the
// rest (an instance that reports running but refuses connections).
func RunningInstances(s *replicated.State) map[string][]Instance {
	out := map[string][]Instance{}
	for vm, a := range s.Assignments {
		if a.Stopped != "" {
			continue
		}
		st, seen := s.Observed[vm]
		if !seen || st.Node != a.Node || st.Phase != replicated.PhaseRunning {
			continue
		}
		id, ok := s.Identity(vm)
		if !ok || !id.Address.IsValid() {
			continue
		}
		out[a.Declared] = append(out[a.Declared], Instance{Name: vm, Addr: id.Address})
	}
	for _, insts := range out {
		slices.SortFunc(insts, func(a, b Instance) int { return cmp.Compare(a.Name, b.Name) })
	}
	return out
}
