package reconciler

import (
	"math/rand/v2"
	"testing"
)

// benchInput is a 1000-node, 10000-instance cluster: every node ready with
// 64 vCPU and 256 GiB, a fifth of the VMs with label or node rules or
// anti-affinity.
func benchInput(b *testing.B) Input {
	r := rand.New(rand.NewPCG(1, 2))
	cfg := genConfig{nodes: 1000, declared: 5000, maxReplicas: 3, constrained: 0.2, readyOnly: true, bigNodes: true}
	nodes := randomNodes(r, cfg)
	c := randomCluster(r, cfg, maxNodeID(nodes))
	// Top up to exactly 10000 instances with unconstrained VMs.
	n := len(c.Instances())
	if n > 10000 {
		b.Fatalf("generator made %d instances, want at most 10000", n)
	}
	for i := 0; n < 10000; i++ {
		c.VMs[fillName(i)] = mkVM(fillName(i), 1+r.IntN(8), 256*(1+r.IntN(32)))
		n++
	}
	return Input{Desired: c, Nodes: nodes}
}

func fillName(i int) string {
	const digits = "0123456789"
	s := []byte("fill")
	for _, d := range []int{i / 1000 % 10, i / 100 % 10, i / 10 % 10, i % 10} {
		s = append(s, digits[d])
	}
	return string(s)
}

// BenchmarkPlan1000Nodes10000VMs measures Compute on a fresh placement (no
// current assignments) and on a stable re-plan (Current holds the previous
// plan, nothing to change).
func BenchmarkPlan1000Nodes10000VMs(b *testing.B) {
	in := benchInput(b)
	first := Compute(in)
	if len(first.Assignments) < 9000 {
		b.Fatalf("only %d of 10000 placed; the benchmark cluster is too small: %s", len(first.Assignments), first.Summary())
	}
	b.Run("fresh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Compute(in)
		}
	})
	b.Run("stable", func(b *testing.B) {
		stable := in
		stable.Current = asCurrent(first.Assignments, 1)
		if p := Compute(stable); p.HasChanges() {
			b.Fatalf("stable re-plan has changes: %s", p.Summary())
		}
		b.ReportAllocs()
		for b.Loop() {
			Compute(stable)
		}
	})
}
