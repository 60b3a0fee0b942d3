package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// lightFlake declares n small VMs whose runners all carry version v.
func lightFlake(n int, v string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "        vm%02d = { runner = runner \"vm%02d\" %q; vcpu = 1; memMiB = 64; };\n", i, i, v)
	}
	return lightRunnerFlake("bench", b.String())
}

// BenchmarkPushTo30VMsRunning measures, on three `blixard serve` processes,
// the time from `git push` of a new version of all 30 light VMs to all 30
// reported running that version (fetch, eval, plan, Raft, realise — nix
// builds included —, restart, heartbeat). The poll interval of the cluster
// (300 ms here) is part of it; a webhook would shorten it.
func BenchmarkPushTo30VMsRunning(b *testing.B) {
	const n = 30
	r := newRepo(b)
	r.push(lightFlake(n, "v0"), "v0")
	c := startCluster(b, r.url(), []nodeSpec{{16, 8192, ""}, {16, 8192, ""}, {16, 8192, ""}})
	waitVersion(b, c, n, "")
	var samples []time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		commit := r.push(lightFlake(n, fmt.Sprintf("v%d", i+1)), "bump")
		waitVersion(b, c, n, commit)
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	b.ReportMetric(float64(samples[len(samples)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(samples[len(samples)*99/100].Milliseconds()), "p99-ms")
}

// waitVersion waits until n VMs run and the revision is commit (any when "").
func waitVersion(tb testing.TB, c *cluster, n int, commit string) {
	tb.Helper()
	testkit.WaitFor(tb, 120*time.Second, fmt.Sprintf("%d VMs running revision %s", n, commit), func() error {
		var s struct {
			Revision *struct{ Commit string } `json:"revision"`
			VMs      []struct{ Phase string } `json:"vms"`
		}
		if err := cliJSON(tb, &s, "status", "--server", c.nodes[0].api); err != nil {
			return err
		}
		if s.Revision == nil || (commit != "" && s.Revision.Commit != commit) {
			return fmt.Errorf("revision %+v", s.Revision)
		}
		if len(s.VMs) != n {
			return fmt.Errorf("%d VMs", len(s.VMs))
		}
		for _, vm := range s.VMs {
			if vm.Phase != "running" {
				return fmt.Errorf("phase %s", vm.Phase)
			}
		}
		// Running is not enough: diff exits 0 only when every VM runs its
		// committed out path.
		var drift []any
		return cliJSON(tb, &drift, "diff", "--server", c.nodes[0].api)
	})
}
