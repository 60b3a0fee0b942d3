package replicated

import (
	"fmt"
	"testing"
)

// BenchmarkApplyHeartbeat50 measures the pure Apply of a NodeHeartbeat that
// carries 50 VM statuses.
func BenchmarkApplyHeartbeat50(b *testing.B) {
	s := NewState()
	applyAll(b, s, reg(1))
	var as []Assignment
	var sts []VMStatus
	for i := range 50 {
		vm := fmt.Sprintf("vm-%d", i)
		as = append(as, asg(vm, 1, "v1"))
		sts = append(sts, VMStatus{VM: vm, Phase: PhaseRunning, BootedOut: "/nix/store/" + vm + "-v1", Generation: 2})
	}
	applyAll(b, s, plan(0, "c", as...))
	c := hb(1, sts...)
	index := s.Applied
	for b.Loop() {
		index++
		if r := s.Apply(index, c); !r.OK() {
			b.Fatal(r.Message)
		}
	}
	b.ReportMetric(float64(b.N)*50/b.Elapsed().Seconds(), "statuses/s")
}
