package replicated

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkCommitPlan3Replicas measures Propose (SyncPropose) of a CommitPlan
// with 10 assignments on the leader of 3 replicas on loopback, one proposal
// at a time; it reports p50/p99 latency besides ns/op.
func BenchmarkCommitPlan3Replicas(b *testing.B) {
	stores, _ := startCluster(b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, s := range stores {
		mustPropose(b, ctx, s, reg(s.NodeID()), ResultOK)
	}
	leader := leaderOf(b, stores)
	var as []Assignment
	for i := range 10 {
		as = append(as, asg(fmt.Sprintf("vm-%d", i), uint64(i%3+1), "v1"))
	}
	parent := uint64(0)
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		r, err := leader.Propose(ctx, plan(parent, "c", as...))
		lat = append(lat, time.Since(start))
		if err != nil || !r.OK() {
			b.Fatalf("propose: %+v %v", r, err)
		}
		parent = r.Revision
	}
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

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
