package reconciler

import (
	"reflect"
	"testing"

	"github.com/blixard/blixard/replicated"
)

func TestComputeDrift(t *testing.T) {
	assign := map[string]replicated.Assignment{
		"web": {VM: "web", Node: 1, OutPath: "/nix/store/new-web"},
	}
	tests := []struct {
		name     string
		observed map[string]replicated.VMStatus
		want     []string // reasons, in VM order
	}{
		{"running the assigned closure is in sync", map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
		}, nil},
		{"unreported VM is drift", nil, []string{"not yet reported by node 1"}},
		{"failed VM is drift with its message", map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseFailed, Message: "build failed"},
		}, []string{"phase failed, want running: build failed"}},
		{"old closure is drift", map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/old-web"},
		}, []string{"runs an old closure"}},
		{"VM on the wrong node is drift", map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 2, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
		}, []string{"observed on node 2, assigned to node 1"}},
		{"unassigned running VM is drift, unassigned stopped VM is not", map[string]replicated.VMStatus{
			"web":  {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
			"gone": {VM: "gone", Node: 3, Phase: replicated.PhaseRunning},
			"old":  {VM: "old", Node: 3, Phase: replicated.PhaseStopped},
		}, []string{"not assigned but running on node 3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ComputeDrift(&replicated.State{Assignments: assign, Observed: tt.observed})
			var reasons []string
			for _, d := range got {
				reasons = append(reasons, d.Reason)
			}
			if !reflect.DeepEqual(reasons, tt.want) {
				t.Fatalf("drift reasons = %q, want %q", reasons, tt.want)
			}
		})
	}
}
