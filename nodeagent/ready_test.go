package nodeagent

import (
	"testing"

	"github.com/blixard/blixard/replicated"
)

// becameReady decides which status changes skip the heartbeat's debounce:
// only the one a gateway's queued requests wait for.
func TestBecameReady(t *testing.T) {
	st := func(phase replicated.Phase, health replicated.HealthState, gen uint64) replicated.VMStatus {
		return replicated.VMStatus{VM: "fn-a-0", Phase: phase, Health: health, Generation: gen}
	}
	running := st(replicated.PhaseRunning, replicated.Healthy, 1)
	for _, tc := range []struct {
		name string
		old  *replicated.VMStatus
		now  replicated.VMStatus
		want bool
	}{
		{"new status, running and healthy", nil, running, true},
		{"new status, running, not judged yet", nil, st(replicated.PhaseRunning, "", 1), false},
		{"starting to running and healthy", new(st(replicated.PhaseStarting, "", 1)), running, true},
		{"running, health judged healthy", new(st(replicated.PhaseRunning, "", 1)), running, true},
		{"unhealthy to healthy", new(st(replicated.PhaseRunning, replicated.Unhealthy, 1)), running, true},
		{"healthy still (another field changed)", new(running), running, false},
		{"a new generation running and healthy", new(running), st(replicated.PhaseRunning, replicated.Healthy, 2), true},
		{"healthy to unhealthy", new(running), st(replicated.PhaseRunning, replicated.Unhealthy, 1), false},
		{"running to stopping", new(running), st(replicated.PhaseStopping, "", 1), false},
		{"starting", nil, st(replicated.PhaseStarting, "", 1), false},
	} {
		if got := becameReady(tc.old, tc.now); got != tc.want {
			t.Errorf("%s: becameReady = %v, want %v", tc.name, got, tc.want)
		}
	}
}
