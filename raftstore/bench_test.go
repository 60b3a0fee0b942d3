package raftstore

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
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

// BenchmarkProposeFromFollower measures what a function's scale-out pays
// for Raft: a small command proposed on one follower (SyncPropose, which
// Dragonboat forwards to the leader), until the other follower — the node
// an instance would start on — has applied it (its OnApply hook ran). 3
// replicas on loopback, one proposal at a time; it reports p50/p99 of
// that and of the proposer's own Propose.
func BenchmarkProposeFromFollower(b *testing.B) {
	var applied [4]atomic.Int64 // by node id: Unix ns of the last OnApply
	stores, _ := startClusterWith(b, 3, func(uint64) TLSFiles { return TLSFiles{} }, func(id uint64) func(uint64) {
		return func(uint64) { applied[id].Store(time.Now().UnixNano()) }
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, s := range stores {
		mustPropose(b, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
	}
	leader := leaderOf(b, stores)
	var followers []*Store
	for _, s := range stores {
		if s != leader {
			followers = append(followers, s)
		}
	}
	from, to := followers[0], followers[1]
	var toApplied, proposed []time.Duration
	for b.Loop() {
		start := time.Now()
		before := applied[to.NodeID()].Load()
		if _, err := from.Propose(ctx, testkit.Register(from.NodeID())); err != nil {
			b.Fatalf("propose on node %d: %v", from.NodeID(), err)
		}
		proposed = append(proposed, time.Since(start))
		for applied[to.NodeID()].Load() == before {
			time.Sleep(20 * time.Microsecond)
		}
		toApplied = append(toApplied, time.Duration(applied[to.NodeID()].Load()-start.UnixNano()))
		time.Sleep(5 * time.Millisecond) // one at a time, like cold starts
	}
	ms := func(ds []time.Duration, q float64) float64 {
		slices.Sort(ds)
		return float64(ds[int(q*float64(len(ds)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(toApplied, 0.50), "other-follower-applied-p50-ms")
	b.ReportMetric(ms(toApplied, 0.99), "other-follower-applied-p99-ms")
	b.ReportMetric(ms(proposed, 0.50), "propose-p50-ms")
	b.ReportMetric(ms(proposed, 0.99), "propose-p99-ms")
}
