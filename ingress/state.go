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
	return NewTable(s.Desired.Ingress, ServingInstances(s))
}

// ServingInstances are the running instances (see [RunningInstances]) that
// ingress sends traffic to, by declared VM name: of each VM's running
// instances, the healthy ones; when none is healthy, those not judged yet
// (a just-started instance, or every instance after its agent restarted);
// when every one is unhealthy, all of them. Like Kubernetes' readiness, a
// failing instance leaves the rotation while others can serve; unlike it, a
// VM whose instances all fail keeps its traffic (Envoy's panic mode), so a
// health check that is wrong everywhere degrades to what ingress did without
// one instead of refusing every request.
func ServingInstances(s *replicated.State) map[string][]Instance {
	out := RunningInstances(s)
	for vm, insts := range out {
		out[vm] = bestHealth(insts, func(name string) replicated.HealthState { return s.Observed[name].Health })
	}
	return out
}

// bestHealth keeps the instances of the best health class present:
// healthy, then not judged, then unhealthy. Order is kept.
func bestHealth(insts []Instance, health func(name string) replicated.HealthState) []Instance {
	rank := func(h replicated.HealthState) int {
		switch h {
		case replicated.Healthy:
			return 2
		case replicated.Unhealthy:
			return 0
		default:
			return 1
		}
	}
	best := -1
	for _, in := range insts {
		best = max(best, rank(health(in.Name)))
	}
	return slices.DeleteFunc(slices.Clone(insts), func(in Instance) bool { return rank(health(in.Name)) != best })
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
