package raftstore

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// BenchmarkCommitPlan3Replicas measures Propose (SyncPropose) of a replicated.CommitPlan
// with 10 assignments on the leader of 3 replicas on loopback, one proposal
// at a time; it reports p50/p99 latency besides ns/op.
func BenchmarkCommitPlan3Replicas(b *testing.B) {
	stores, _ := startCluster(b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, s := range stores {
		mustPropose(b, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
	}
	leader := leaderOf(b, stores)
	var as []replicated.Assignment
	for i := range 10 {
		as = append(as, testkit.Assign(fmt.Sprintf("vm-%d", i), uint64(i%3+1), "v1"))
	}
	parent := uint64(0)
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		r, err := leader.Propose(ctx, testkit.Plan(parent, "c", as...))
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
