//go:build load

package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLoadStartManyVMs starts BLIXARD_LOAD_VMS (default 2,000) light VMs
// at once on three `blixard serve` processes of this machine and checks
// that Raft stays healthy meanwhile: no leader change and no missed
// heartbeat, from the push until every VM runs and 10 s after.
//
// Measured: leader changes (a node other than the last leader claims
// leadership on /metrics, polled every BLIXARD_LOAD_POLL, default 100 ms),
// election attempts and step-downs in Dragonboat's log (`became PreVote
// candidate`, `became candidate`, `has lost quorum`), missed heartbeats
// (per node, every gap between two committed heartbeats longer than two
// --heartbeat periods counts floor(gap/period)−1), the agents' heartbeat
// proposals, `heartbeat not committed` warnings, and nodes marked down
// (--node-timeout, default 5 s here).
//
// The runners are built before the cluster starts (BLIXARD_LOAD_PREBUILD=0
// builds them inside the measurement instead): what is measured is the
// agents realising (`nix-store --add-root`) and starting them. Set
// BLIXARD_BIN to measure another build of blixard, BLIXARD_LOAD_LOGS to a
// directory to keep the nodes' logs. The test stops every
// node and runner if the machine's MemAvailable falls below 3 GiB.
//
//	BLIXARD_LOAD=1 go test -tags load ./tests/bench -run TestLoadStartManyVMs -v -timeout 60m
func TestLoadStartManyVMs(t *testing.T) {
	requireLoad(t)
	requireTools(t, "nix", "nix-store", "git")
	n := envInt(t, "BLIXARD_LOAD_VMS", 2000)
	heartbeat := envDuration(t, "BLIXARD_LOAD_HEARTBEAT", time.Second)
	nodeTimeout := envDuration(t, "BLIXARD_LOAD_NODE_TIMEOUT", 5*time.Second)
	poll := envDuration(t, "BLIXARD_LOAD_POLL", 100*time.Millisecond)
	const tag = "load"
	if os.Getenv("BLIXARD_LOAD_PREBUILD") != "0" {
		prebuildRunners(t, n, tag)
	}

	r := newRepo(t)
	first := r.push(lightFlake(0, tag), "no VMs")
	perNode := (n + 2) / 3 // an even spread: first-fit fills the nodes in turn
	c := startCluster(t, r.url(), 3, "--heartbeat", heartbeat.String(), "--node-timeout", nodeTimeout.String(),
		"--capacity-vcpu", fmt.Sprint(perNode), "--capacity-mem-mib", fmt.Sprint(64*perNode), "--log-level", "info")
	waitFor(t, 90*time.Second, "the cluster at the first commit with every node heartbeating", func() error {
		for _, nd := range c.nodes {
			var s statusJSON
			if err := getJSONWithin(nd.api, "/v1/status", &s, 10*time.Second); err != nil {
				return err
			}
			if s.Revision == nil || s.Revision.Commit != first {
				return fmt.Errorf("node %d has revision %+v", nd.id, s.Revision)
			}
		}
		m, err := metrics(c.nodes[0].api)
		if err != nil {
			return err
		}
		for _, nd := range c.nodes {
			if m[fmt.Sprintf(`blixard_node_heartbeats{node="%d",state="ready"}`, nd.id)] < 3 {
				return fmt.Errorf("node %d has not heartbeaten 3 times", nd.id)
			}
		}
		return nil
	})
	time.Sleep(3 * time.Second) // let the start's elections and registrations settle

	offsets := make([]int64, len(c.nodes))
	for i, nd := range c.nodes {
		if fi, err := os.Stat(nd.logPath); err == nil {
			offsets[i] = fi.Size()
		}
	}
	mon := newMonitor(c, poll, heartbeat)
	go mon.run()
	time.Sleep(2 * poll)
	pushed := time.Now()
	commit := r.push(lightFlake(n, tag), fmt.Sprintf("%d VMs", n))
	mon.mark("push")
	// Wait until every VM runs, or nothing more starts for 3 minutes (a node
	// marked down leaves its VMs unschedulable: each node offers a third).
	var allRunning time.Duration
	stalled := ""
	progress, progressAt := -1, time.Now()
	for {
		if why := mon.aborted(); why != "" {
			for _, nd := range c.nodes {
				nd.kill9()
				nd.killRunners()
			}
			mon.stop()
			t.Fatalf("stopped the measurement: %s", why)
		}
		running := mon.running()
		if running >= n {
			allRunning = time.Since(pushed)
			break
		}
		if running > progress {
			progress, progressAt = running, time.Now()
		}
		if time.Since(progressAt) > 3*time.Minute {
			allRunning = progressAt.Sub(pushed)
			stalled = fmt.Sprintf("only %d of %d VMs ran after %v; none started in the last 3 minutes", running, n, allRunning.Round(time.Second))
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	mon.mark("all running")
	if stalled == "" {
		time.Sleep(10 * time.Second)
	}
	res := mon.stop()

	logs := map[string]int{}
	for i, nd := range c.nodes {
		b, err := os.ReadFile(nd.logPath)
		if err != nil {
			t.Fatal(err)
		}
		b = b[min(offsets[i], int64(len(b))):]
		for _, what := range []string{"became PreVote candidate", "became candidate", "has lost quorum",
			"heartbeat not committed", "heartbeat refused", "context deadline exceeded", "shard not ready"} {
			logs[what] += bytes.Count(b, []byte(what))
		}
	}

	if dir := os.Getenv("BLIXARD_LOAD_LOGS"); dir != "" {
		for _, nd := range c.nodes {
			if b, err := os.ReadFile(nd.logPath); err == nil {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("node-%d.log", nd.id)), b, 0o644)
			}
		}
	}
	t.Logf("binary %s; %d VMs, --heartbeat %v, --node-timeout %v, poll %v", blixardBin, n, heartbeat, nodeTimeout, poll)
	t.Logf("push → %d VMs running: %v", mon.running(), allRunning.Round(100*time.Millisecond))
	t.Logf("leader changes (/metrics): %d %v; longest time without a known leader: %v",
		res.leaderChanges, res.leaderEvents, res.leaderless.Round(time.Millisecond))
	t.Logf("Dragonboat log: %d PreVote campaigns, %d elections (term bumps), %d leader step-downs (lost quorum)",
		logs["became PreVote candidate"], logs["became candidate"], logs["has lost quorum"])
	missedTotal := 0
	for _, id := range res.nodeIDs() {
		h := res.heartbeats[id]
		missedTotal += h.missed
		t.Logf("node %d: %d heartbeats committed (%d proposals from the push to all running), longest gap %v, missed %d",
			id, h.committed, h.duringStart, h.maxGap.Round(time.Millisecond), h.missed)
	}
	t.Logf("agent warnings: %d `heartbeat not committed`, %d `heartbeat refused` (log lines with `context deadline exceeded`: %d, `shard not ready`: %d)",
		logs["heartbeat not committed"], logs["heartbeat refused"], logs["context deadline exceeded"], logs["shard not ready"])
	t.Logf("nodes marked down: %v; /metrics scrapes failed: %d, slowest %v; lowest MemAvailable %.1f GiB; peak load average %.1f",
		res.down, res.scrapeFailures, res.slowestScrape.Round(time.Millisecond), float64(res.minMem)/(1<<30), res.peakLoad)
	fmt.Printf("LOADRESULT vms=%d/%d running_s=%.1f leader_changes=%d prevote=%d elections=%d stepdowns=%d missed=%d not_committed=%d down=%d hb_start=%v max_gap=%v leaderless=%v\n",
		mon.running(), n, allRunning.Seconds(), res.leaderChanges, logs["became PreVote candidate"], logs["became candidate"], logs["has lost quorum"],
		missedTotal, logs["heartbeat not committed"], len(res.down), res.proposalsDuringStart(), res.maxGap().Round(time.Millisecond),
		res.leaderless.Round(time.Millisecond))

	if stalled != "" {
		t.Error(stalled)
	} else {
		// What status says (a linearizable read of 2,000 VMs: give it time).
		waitFor(t, time.Minute, fmt.Sprintf("status to list %d VMs running commit %s", n, commit[:12]), func() error {
			var s statusJSON
			if err := getJSONWithin(c.nodes[0].api, "/v1/status", &s, 20*time.Second); err != nil {
				return err
			}
			running := 0
			for _, vm := range s.VMs {
				if vm.Phase == "running" {
					running++
				}
			}
			if s.Revision == nil || s.Revision.Commit != commit || running != n {
				return fmt.Errorf("revision %+v, %d of %d VMs running", s.Revision, running, n)
			}
			return nil
		})
	}
	if res.leaderChanges > 0 || logs["became candidate"] > 0 {
		t.Errorf("Raft changed leaders while %d VMs started (%d changes seen, %d elections logged)", n, res.leaderChanges, logs["became candidate"])
	}
	if missedTotal > 0 || logs["heartbeat not committed"] > 0 {
		t.Errorf("heartbeats were missed while %d VMs started: %d periods without one, %d not committed", n, missedTotal, logs["heartbeat not committed"])
	}
	if len(res.down) > 0 {
		t.Errorf("healthy nodes were marked down: %v", res.down)
	}
}

// monitor polls every node's /metrics and keeps what the load test reports.
type monitor struct {
	c         *cluster
	poll      time.Duration
	heartbeat time.Duration
	quit      chan struct{}
	done      chan struct{}

	mu  sync.Mutex
	res loadResult // guarded by mu
	// guarded by mu:
	leader      uint64
	leaderSince time.Time // when the last known leader was last seen; zero while one is
	lastSeq     map[uint64]float64
	lastAdvance map[uint64]time.Time
	seqAtPush   map[uint64]float64
	abortWhy    string
	runningMax  int
}

type loadResult struct {
	leaderChanges  int
	leaderEvents   []string
	leaderless     time.Duration
	heartbeats     map[uint64]*heartbeatStats
	down           []uint64
	scrapeFailures int
	slowestScrape  time.Duration
	minMem         uint64
	peakLoad       float64
}

type heartbeatStats struct {
	committed   int // heartbeats committed while monitored
	duringStart int // from the push to all VMs running
	maxGap      time.Duration
	missed      int
}

func (r loadResult) nodeIDs() []uint64 {
	var ids []uint64
	for id := range r.heartbeats {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (r loadResult) proposalsDuringStart() []int {
	var out []int
	for _, id := range r.nodeIDs() {
		out = append(out, r.heartbeats[id].duringStart)
	}
	return out
}

func (r loadResult) maxGap() time.Duration {
	var m time.Duration
	for _, h := range r.heartbeats {
		m = max(m, h.maxGap)
	}
	return m
}

func newMonitor(c *cluster, poll, heartbeat time.Duration) *monitor {
	return &monitor{c: c, poll: poll, heartbeat: heartbeat, quit: make(chan struct{}), done: make(chan struct{}),
		res:     loadResult{heartbeats: map[uint64]*heartbeatStats{}, minMem: memAvailable(), peakLoad: loadAvg()},
		lastSeq: map[uint64]float64{}, lastAdvance: map[uint64]time.Time{}, seqAtPush: map[uint64]float64{}}
}

func (m *monitor) run() {
	defer close(m.done)
	t := time.NewTicker(m.poll)
	defer t.Stop()
	for {
		select {
		case <-m.quit:
			return
		case <-t.C:
		}
		m.scrape(time.Now())
	}
}

// scrape reads every node's /metrics concurrently and folds them in.
func (m *monitor) scrape(now time.Time) {
	got := make([]map[string]float64, len(m.c.nodes))
	took := make([]time.Duration, len(m.c.nodes))
	var wg sync.WaitGroup
	for i, nd := range m.c.nodes {
		wg.Go(func() {
			start := time.Now()
			got[i], _ = metrics(nd.api)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	mem := memAvailable()

	m.mu.Lock()
	defer m.mu.Unlock()
	if mem > 0 && mem < m.res.minMem {
		m.res.minMem = mem
	}
	if mem > 0 && mem < 3<<30 && m.abortWhy == "" {
		m.abortWhy = fmt.Sprintf("MemAvailable fell to %.1f GiB", float64(mem)/(1<<30))
	}
	m.res.peakLoad = max(m.res.peakLoad, loadAvg())
	var claimants []uint64
	leaderScraped := false
	seq := map[uint64]float64{}
	for i, nd := range m.c.nodes {
		m.res.slowestScrape = max(m.res.slowestScrape, took[i])
		mm := got[i]
		if mm == nil {
			m.res.scrapeFailures++
			continue
		}
		if nd.id == m.leader {
			leaderScraped = true
		}
		if mm[fmt.Sprintf(`blixard_node_is_leader{node="%d"}`, nd.id)] == 1 {
			claimants = append(claimants, nd.id)
		}
		m.runningMax = max(m.runningMax, int(mm[`blixard_vms{phase="running"}`]))
		for series, v := range mm {
			if !strings.HasPrefix(series, "blixard_node_heartbeats{") {
				continue
			}
			id, err := strconv.ParseUint(label(series, "node"), 10, 64)
			if err != nil {
				continue
			}
			seq[id] = max(seq[id], v)
			if label(series, "state") == "down" && !containsID(m.res.down, id) {
				m.res.down = append(m.res.down, id)
			}
		}
	}
	switch {
	case len(claimants) == 1 && claimants[0] != m.leader:
		if m.leader != 0 {
			m.res.leaderChanges++
			m.res.leaderEvents = append(m.res.leaderEvents, fmt.Sprintf("%s %d→%d", now.Format("15:04:05.000"), m.leader, claimants[0]))
		}
		m.leader, m.leaderSince = claimants[0], time.Time{}
	case len(claimants) >= 1:
		m.leaderSince = time.Time{}
	case leaderScraped: // the last leader answered and does not lead
		if m.leaderSince.IsZero() {
			m.leaderSince = now
		}
		m.res.leaderless = max(m.res.leaderless, now.Sub(m.leaderSince))
	}
	for id, v := range seq {
		h := m.res.heartbeats[id]
		if h == nil {
			h = &heartbeatStats{}
			m.res.heartbeats[id] = h
		}
		last, seen := m.lastSeq[id]
		if !seen {
			m.lastSeq[id], m.lastAdvance[id] = v, now
			continue
		}
		if v > last {
			m.gapLocked(h, now.Sub(m.lastAdvance[id]))
			h.committed += int(v - last)
			m.lastSeq[id], m.lastAdvance[id] = v, now
		}
	}
}

// gapLocked records a gap between two committed heartbeats of one node.
func (m *monitor) gapLocked(h *heartbeatStats, gap time.Duration) {
	h.maxGap = max(h.maxGap, gap)
	if missed := int(gap/m.heartbeat) - 1; missed > 0 {
		h.missed += missed
	}
}

// mark records the heartbeat sequences at the push ("push") and counts the
// heartbeats since then ("all running").
func (m *monitor) mark(what string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, v := range m.lastSeq {
		switch what {
		case "push":
			m.seqAtPush[id] = v
		case "all running":
			if h := m.res.heartbeats[id]; h != nil {
				h.duringStart = int(v - m.seqAtPush[id])
			}
		}
	}
}

func (m *monitor) running() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runningMax
}

func (m *monitor) aborted() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.abortWhy
}

// stop ends the polling and returns the results; the time since each
// node's last committed heartbeat counts as a gap too.
func (m *monitor) stop() loadResult {
	close(m.quit)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for id, h := range m.res.heartbeats {
		m.gapLocked(h, now.Sub(m.lastAdvance[id]))
	}
	return m.res
}

func containsID(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
