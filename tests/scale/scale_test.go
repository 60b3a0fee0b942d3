package scale

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// perNode is how many light VMs a simulated node offers room for (1 vCPU
// and 64 MiB each): M = 10 × N fills every node exactly, so placement
// spreads the instances over all of them.
const perNode = 10

// TestScale100 measures 100 simulated nodes × 1,000 VMs. It runs in the
// normal suite (~40 s, most of it the steady-state window): the servers must converge the cluster, or it fails.
func TestScale100(t *testing.T) {
	measure(t, 100)
}

// result is one measurement, as docs/benchmarks.md lists it.
type result struct {
	nodes, vms int
	// pushToPlan: push until the revision with every instance placed
	// committed (its committedAt: fetch, nix eval, plan, Raft);
	// pushToRunning: until the committed state held every instance
	// running, as the first of two observers saw it: the answers of the
	// simulated nodes' heartbeats, which say which report Raft holds
	// (Result.StatusSeq), and a follower's /v1/status polled every 3 s
	// (at 10,000 instances one status takes seconds to a minute on a
	// loaded machine; answers are late when heartbeats time out). Both
	// see it after it happened, never before.
	pushToPlan, pushToRunning time.Duration
	placementsPerSec          float64
	// The leader at steady state (every instance running, over window):
	// CPU in cores, RSS now and at its peak.
	window        time.Duration
	leaderCPU     float64
	leaderRSS     uint64
	leaderPeakRSS uint64
	// Raft entries and bytes per second from the simulated nodes'
	// heartbeats at steady state (full and liveness-only), and all
	// entries the leader applied per second.
	hbFullPerSec, hbLivePerSec float64
	hbBytesPerSec              float64
	appliedPerSec              float64
	convergeFull, convergeLive int64 // heartbeats while converging
	fullBytes, liveBytes       int64 // their mean Raft payload
	snapshotBytes              int64
	heartbeatFailures          int64
	convergeCPU                float64 // leader cores while converging
	// nodesUp: until every simulated node registered, has its first view
	// and its agent started.
	nodesUp time.Duration
}

func (r result) String() string {
	mb := func(b uint64) string { return fmt.Sprintf("%.0f MB", float64(b)/1e6) }
	return fmt.Sprintf("N=%d M=%d: nodes up in %v; push→plan %v, push→all running %v (%.0f placements/s); "+
		"leader while converging %.2f cores; steady over %v: leader %.2f cores, RSS %s (peak %s); "+
		"heartbeats %.1f full/s + %.1f liveness-only/s = %.0f B/s; Raft applied %.1f entries/s; "+
		"heartbeats while converging: %d full (%d B each), %d liveness-only (%d B each); %d heartbeats not committed; newest leader snapshot %d bytes",
		r.nodes, r.vms, r.nodesUp.Round(time.Millisecond),
		r.pushToPlan.Round(time.Millisecond), r.pushToRunning.Round(time.Millisecond), r.placementsPerSec,
		r.convergeCPU, r.window, r.leaderCPU, mb(r.leaderRSS), mb(r.leaderPeakRSS),
		r.hbFullPerSec, r.hbLivePerSec, r.hbBytesPerSec, r.appliedPerSec,
		r.convergeFull, r.fullBytes, r.convergeLive, r.liveBytes, r.heartbeatFailures, r.snapshotBytes)
}

// measure runs one measurement of n simulated nodes and 10 × n VMs and
// logs its result (see result). It fails only when the cluster does not
// converge at all (a hang guard, not a timing assertion) or a node stops.
func measure(t *testing.T, n int) result {
	requireTools(t, "nix", "git")
	m := perNode * n
	res := result{nodes: n, vms: m}
	r := newRepo(t)
	r.push(scaleFlake(0, "v0"), "empty")
	ss := startServers(t, r.url())
	var apis []string
	for _, s := range ss {
		apis = append(apis, s.api)
	}
	var lead *server
	waitFor(t, time.Minute, "a leader", func() error {
		var err error
		lead, err = leader(ss)
		return err
	})

	start := time.Now()
	sim := startSimNodes(t, apis, 101, n, perNode, 2*time.Second)
	res.nodesUp = time.Since(start)
	// Progress is read from a follower's /v1/status (what the cluster
	// committed; ~5 MB at 10,000 instances, so not from the leader being
	// measured, and every 3 s).
	var follower *server
	for _, s := range ss {
		if s != lead {
			follower = s
			break
		}
	}
	// Every simulated node must be up: one the leader marked down (its
	// heartbeats did not commit for the node timeout: the machine is
	// overloaded) gets no instances, and the measurement would be of
	// another cluster.
	waitFor(t, 2*time.Minute, fmt.Sprintf("all %d simulated nodes ready", n), func() error {
		st, err := status(follower.api)
		if err != nil {
			return err
		}
		ready := 0
		for _, nd := range st.Nodes {
			if nd.ID > 100 && nd.State == "ready" {
				ready++
			}
		}
		if ready != n {
			return fmt.Errorf("%d of %d ready", ready, n)
		}
		return nil
	})

	// The push.
	before := sim.traffic.snapshot()
	cpu0, err := sampleProc(lead.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	pushed := time.Now()
	commit := r.push(scaleFlake(m, "v1"), fmt.Sprintf("%d VMs", m))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = postSync(ctx, lead.api)
	cancel()
	if err != nil {
		t.Logf("POST /v1/sync: %v (the leader's poll fetches the push)", err)
	}
	var planned time.Time
	last := time.Now()
	var reached time.Time
	// Two observers, each late in its own way: the heartbeats' answers
	// (late when answers time out under load, although the reports
	// committed) and a follower's status, polled on the side (late by
	// its poll and by the seconds a status of 10,000 instances takes).
	// Converged is when the first of them saw it.
	pctx, stopPoll := context.WithCancel(context.Background())
	defer stopPoll()
	var seen atomic.Int64 // unix nanoseconds when a status showed all running (0: not yet)
	go func() {
		for pctx.Err() == nil {
			if allRunningIn(follower.api, commit, m) == nil {
				seen.Store(time.Now().UnixNano())
				return
			}
			select {
			case <-pctx.Done():
			case <-time.After(3 * time.Second):
			}
		}
	}()
	waitForEvery(t, 15*time.Minute, 100*time.Millisecond, fmt.Sprintf("the committed reports of all %d instances running", m), func() error {
		if err := sim.err(); err != nil {
			t.Fatal(err)
		}
		n, at := sim.running.count(m)
		if ns := seen.Load(); ns != 0 && (at.IsZero() || time.Unix(0, ns).Before(at)) {
			at = time.Unix(0, ns)
		}
		if !at.IsZero() {
			reached = at
			return nil
		}
		if time.Since(last) > 10*time.Second {
			t.Logf("after %v: the committed reports hold %d of %d instances running", time.Since(pushed).Round(time.Second), n, m)
			last = time.Now()
		}
		return fmt.Errorf("%d of %d running", n, m)
	})
	// Converging ends here: the leader's CPU and the heartbeats until now.
	cpu1, err := sampleProc(lead.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	res.convergeCPU = (cpu1.cpu - cpu0.cpu).Seconds() / cpu1.at.Sub(cpu0.at).Seconds()
	conv := sim.traffic.snapshot()
	waitForEvery(t, 15*time.Minute, 3*time.Second, fmt.Sprintf("a follower's status: all %d instances of %s running", m, commit[:12]), func() error {
		if err := sim.err(); err != nil {
			t.Fatal(err)
		}
		err := func() error {
			st, err := status(follower.api)
			if err != nil {
				return err
			}
			if st.Revision == nil || st.Revision.Commit != commit {
				return fmt.Errorf("the revision of %s is not committed yet", commit[:12])
			}
			planned = st.Revision.CommittedAt
			running := 0
			for _, vm := range st.VMs {
				if vm.Phase == "running" {
					running++
				}
			}
			if len(st.VMs) != m || running != m {
				return fmt.Errorf("%d of %d placed instances running", running, len(st.VMs))
			}
			return nil
		}()
		if err != nil && time.Since(last) > 10*time.Second {
			t.Logf("after %v: %v (the committed reports hold all running since %v)", time.Since(pushed).Round(time.Second), err,
				reached.Sub(pushed).Round(time.Millisecond))
			last = time.Now()
		}
		return err
	})
	stopPoll()
	allRunning := reached
	res.pushToRunning = allRunning.Sub(pushed)
	res.pushToPlan = planned.Sub(pushed)
	res.placementsPerSec = float64(m) / res.pushToRunning.Seconds()
	res.convergeFull, res.convergeLive = conv.full-before.full, conv.live-before.live
	if res.convergeFull > 0 {
		res.fullBytes = (conv.fullBytes - before.fullBytes) / res.convergeFull
	}
	if res.convergeLive > 0 {
		res.liveBytes = (conv.liveBytes - before.liveBytes) / res.convergeLive
	}

	// Steady state: every instance runs; let the heartbeats settle into
	// liveness-only ones, then measure a window.
	time.Sleep(10 * time.Second)
	res.window = 20 * time.Second
	if v := os.Getenv("BLIXARD_SCALE_WINDOW"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			res.window = d
		}
	}
	// The applied index from a simulated node's view, not the leader's
	// /metrics: at 10,000 instances a scrape renders ~80,000 per-VM series
	// and takes seconds, which would load the leader being measured.
	applied := func() float64 {
		st, err := sim.nodes[0].link.LocalRead()
		if err != nil {
			t.Fatal(err)
		}
		return float64(st.Applied)
	}
	a0 := applied()
	p0, err := sampleProc(lead.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t0 := sim.traffic.snapshot()
	time.Sleep(res.window)
	t1 := sim.traffic.snapshot()
	p1, err := sampleProc(lead.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	a1 := applied()
	secs := t1.at.Sub(t0.at).Seconds()
	res.leaderCPU = (p1.cpu - p0.cpu).Seconds() / p1.at.Sub(p0.at).Seconds()
	res.leaderRSS, res.leaderPeakRSS = p1.rss, p1.peakRSS
	res.hbFullPerSec = float64(t1.full-t0.full) / secs
	res.hbLivePerSec = float64(t1.live-t0.live) / secs
	res.hbBytesPerSec = float64(t1.fullBytes-t0.fullBytes+t1.liveBytes-t0.liveBytes) / secs
	res.appliedPerSec = (a1 - a0) / secs
	res.heartbeatFailures = t1.failed
	res.snapshotBytes = snapshotSize(lead.dataDir)
	if err := sim.err(); err != nil {
		t.Fatal(err)
	}
	if l, err := leader(ss); err != nil || l != lead {
		t.Logf("the leader changed during the measurement (was %d): its CPU and RSS are of server %d", lead.id, lead.id)
	}
	t.Logf("RESULT %s", res)
	return res
}

// allRunningIn reads api's /v1/status: nil once commit's revision is
// committed with m instances, all running.
func allRunningIn(api, commit string, m int) error {
	st, err := status(api)
	if err != nil {
		return err
	}
	if st.Revision == nil || st.Revision.Commit != commit {
		return fmt.Errorf("the revision of %s is not committed yet", commit[:12])
	}
	running := 0
	for _, vm := range st.VMs {
		if vm.Phase == "running" {
			running++
		}
	}
	if len(st.VMs) != m || running != m {
		return fmt.Errorf("%d of %d placed instances running", running, len(st.VMs))
	}
	return nil
}

// waitFor polls cond every 200 ms until it returns nil or d passes (a hang
// guard: the measurements report durations, they do not assert them).
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	waitForEvery(t, d, 200*time.Millisecond, what, cond)
}

// waitForEvery is waitFor polling every period.
func waitForEvery(t testing.TB, d, period time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", d, what, err)
		}
		time.Sleep(period)
	}
}
