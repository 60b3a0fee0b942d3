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
	stopped := map[string]replicated.Assignment{
		"web": {VM: "web", Node: 1, OutPath: "/nix/store/new-web", Stopped: replicated.StoppedByOperator},
	}
	tests := []struct {
		name     string
		assign   map[string]replicated.Assignment // nil: web runs on node 1
		observed map[string]replicated.VMStatus
		want     []string // reasons, in VM order
	}{
		{"a VM stopped on purpose and observed stopped is in sync", stopped, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseStopped, Message: "kept stopped"},
		}, nil},
		{"a VM stopped on purpose that still runs is drift naming why it should not", stopped, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
		}, []string{"phase running, want stopped (stopped with `blixard vm stop`)"}},
		{"a VM stopped on purpose that no agent reported is drift", stopped, nil, []string{"not yet reported by node 1"}},
		{"a stopped VM that should run is drift", nil, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseStopped},
		}, []string{"phase stopped, want running"}},
		{"running the assigned closure is in sync", nil, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
		}, nil},
		{"unreported VM is drift", nil, nil, []string{"not yet reported by node 1"}},
		{"failed VM is drift with its message", nil, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseFailed, Message: "build failed"},
		}, []string{"phase failed, want running: build failed"}},
		{"old closure is drift", nil, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/old-web"},
		}, []string{"runs an old closure"}},
		{"VM on the wrong node is drift", nil, map[string]replicated.VMStatus{
			"web": {VM: "web", Node: 2, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
		}, []string{"observed on node 2, assigned to node 1"}},
		{"unassigned running VM is drift, unassigned stopped VM is not", nil, map[string]replicated.VMStatus{
			"web":  {VM: "web", Node: 1, Phase: replicated.PhaseRunning, BootedOut: "/nix/store/new-web"},
			"gone": {VM: "gone", Node: 3, Phase: replicated.PhaseRunning},
			"old":  {VM: "old", Node: 3, Phase: replicated.PhaseStopped},
		}, []string{"not assigned but running on node 3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as := tt.assign
			if as == nil {
				as = assign
			}
			got := ComputeDrift(&replicated.State{Assignments: as, Observed: tt.observed})
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
