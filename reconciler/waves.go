package reconciler

import (
	"maps"
	"slices"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// RolloutPreview says how a plan's change of a VM with an update block
// reaches its instances: not at once, as the plan's lines read, but in
// waves the leader starts one after the other (see rollout.go).
type RolloutPreview struct {
	VM string `json:"vm"`
	// Instances are the instances whose workload changes, sorted.
	Instances []string `json:"instances"`
	// Waves is how many waves that takes when no other instance of the VM
	// is unavailable meanwhile (each unavailable one shrinks a wave).
	Waves  int         `json:"waves"`
	Update spec.Update `json:"update"`
}

// Rollouts are the rollouts committing p would start, sorted by VM: for
// each VM declaring an update block in desired, its instances with a
// committed assignment whose workload p changes (HoldBack's rule: exactly
// the instances it holds back).
func Rollouts(p Plan, current map[string]replicated.Assignment, desired *spec.Cluster) []RolloutPreview {
	if desired == nil {
		return nil
	}
	byVM := map[string][]string{}
	for _, a := range p.Assignments {
		if _, ok := rolls(a, current, desired); !ok {
			continue
		}
		byVM[a.Declared] = append(byVM[a.Declared], a.VM)
	}
	var out []RolloutPreview
	for _, name := range slices.Sorted(maps.Keys(byVM)) {
		u := desired.VMs[name].Update
		insts := byVM[name]
		slices.Sort(insts)
		out = append(out, RolloutPreview{VM: name, Instances: insts, Waves: waveCount(len(insts), u), Update: u})
	}
	return out
}

// waveCount is how many waves n instances take under u: a canary wave first
// when u has one, then waves of MaxUnavailable.
func waveCount(n int, u spec.Update) int {
	size := max(u.MaxUnavailable, 1)
	if u.Canary > 0 {
		if n <= u.Canary {
			return 1
		}
		return 1 + (n-u.Canary+size-1)/size
	}
	return (n + size - 1) / size
}
