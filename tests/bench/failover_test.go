//go:build load

package bench

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/stats"
)

// TestLoadNodeKillFailover kills whole nodes — `blixard serve` and its VMs'
// runners, kill -9 — of a three-node cluster running BLIXARD_FAILOVER_VMS
// (default 6) light VMs, and measures the time from the kill until every VM
// of the killed node runs on the others per `status`, once per node timeout
// in BLIXARD_FAILOVER_TIMEOUTS (default "5s,30s"), BLIXARD_FAILOVER_KILLS
// times each (default 10). The victims rotate over the nodes that run VMs,
// the Raft leader included; after each kill the node is started again and
// readied (`blixard node ready`). --heartbeat is serve's default unless
// BLIXARD_FAILOVER_HEARTBEAT sets it.
//
//	BLIXARD_LOAD=1 go test -tags load ./tests/bench -run TestLoadNodeKillFailover -v -timeout 60m
func TestLoadNodeKillFailover(t *testing.T) {
	requireLoad(t)
	requireTools(t, "nix", "nix-store", "git")
	kills := envInt(t, "BLIXARD_FAILOVER_KILLS", 10)
	vms := envInt(t, "BLIXARD_FAILOVER_VMS", 6)
	heartbeat := os.Getenv("BLIXARD_FAILOVER_HEARTBEAT")
	timeouts := os.Getenv("BLIXARD_FAILOVER_TIMEOUTS")
	if timeouts == "" {
		timeouts = "5s,30s"
	}
	const tag = "failover"
	prebuildRunners(t, vms, tag)
	for _, to := range strings.Split(timeouts, ",") {
		d, err := time.ParseDuration(to)
		if err != nil {
			t.Fatalf("BLIXARD_FAILOVER_TIMEOUTS: %v", err)
		}
		t.Run("node-timeout="+to, func(t *testing.T) { measureFailover(t, d, heartbeat, kills, vms, tag) })
	}
}

type failover struct {
	victim    uint64
	leader    bool // the victim led the Raft shard
	moved     int  // VMs it ran
	down      time.Duration
	elsewhere time.Duration
}

func measureFailover(t *testing.T, nodeTimeout time.Duration, heartbeat string, kills, vms int, tag string) {
	r := newRepo(t)
	commit := r.push(lightFlake(vms, tag), fmt.Sprintf("%d VMs", vms))
	args := []string{"--node-timeout", nodeTimeout.String(), "--capacity-vcpu", fmt.Sprint(vms),
		"--capacity-mem-mib", fmt.Sprint(64 * vms), "--log-level", "info"}
	if heartbeat != "" {
		args = append(args, "--heartbeat", heartbeat)
	}
	c := startCluster(t, r.url(), 3, args...)
	waitFor(t, 3*time.Minute, fmt.Sprintf("%d VMs running commit %s", vms, commit[:12]), func() error {
		s, err := c.status()
		if err != nil {
			return err
		}
		if s.Revision == nil || s.Revision.Commit != commit {
			return fmt.Errorf("revision %+v", s.Revision)
		}
		return allRunningOff(s, vms, 0)
	})

	var samples []failover
	for i := range kills {
		s, err := c.status()
		if err != nil {
			t.Fatal(err)
		}
		on := map[uint64]int{}
		for _, vm := range s.VMs {
			on[vm.Node]++
		}
		var victim *node
		for k := range c.nodes {
			if nd := c.nodes[(i+k)%len(c.nodes)]; on[nd.id] > 0 {
				victim = nd
				break
			}
		}
		var survivors []*node
		for _, nd := range c.nodes {
			if nd != victim {
				survivors = append(survivors, nd)
			}
		}
		f := failover{victim: victim.id, leader: s.Leader == victim.id, moved: on[victim.id]}

		killed := time.Now()
		victim.kill9()
		victim.killRunners()
		waitFor(t, nodeTimeout+3*time.Minute, fmt.Sprintf("node %d's %d VMs running elsewhere", victim.id, f.moved), func() error {
			s, err := c.statusFrom(survivors)
			if err != nil {
				return err
			}
			for _, n := range s.Nodes {
				if n.ID == victim.id && n.State == "down" && f.down == 0 {
					f.down = time.Since(killed)
				}
			}
			return allRunningOff(s, vms, victim.id)
		})
		f.elsewhere = time.Since(killed)
		samples = append(samples, f)
		t.Logf("kill %d: node %d (leader: %v, %d VMs): marked down after %v, its VMs running elsewhere after %v",
			i+1, f.victim, f.leader, f.moved, f.down.Round(10*time.Millisecond), f.elsewhere.Round(10*time.Millisecond))

		// Bring the node back for the next round. `node ready` waits for two
		// of its heartbeats: readying a node the leader still sees silent
		// has it marked down again at once.
		seq := func() float64 {
			m, _ := metrics(survivors[0].api)
			return m[fmt.Sprintf(`blixard_node_heartbeats{node="%d",state="down"}`, victim.id)]
		}
		before := seq()
		c.start(victim)
		waitFor(t, 2*time.Minute, fmt.Sprintf("node %d to heartbeat again", victim.id), func() error {
			if got := seq(); got < before+2 {
				return fmt.Errorf("%v heartbeats, want %v", got, before+2)
			}
			return nil
		})
		if _, stderr, code := cli(t, "node", "ready", fmt.Sprint(victim.id), "--server", survivors[0].api); code != 0 {
			t.Fatalf("node ready %d: exit %d: %s", victim.id, code, stderr)
		}
		waitFor(t, 2*time.Minute, fmt.Sprintf("node %d ready and every VM running", victim.id), func() error {
			s, err := c.status()
			if err != nil {
				return err
			}
			for _, n := range s.Nodes {
				if n.State != "ready" {
					return fmt.Errorf("node %d is %s", n.ID, n.State)
				}
			}
			return allRunningOff(s, vms, 0)
		})
		time.Sleep(3 * time.Second) // a few heartbeats of the returned node
	}

	var all, leaders, followers, downs []time.Duration
	for _, f := range samples {
		all = append(all, f.elsewhere)
		downs = append(downs, f.down)
		if f.leader {
			leaders = append(leaders, f.elsewhere)
		} else {
			followers = append(followers, f.elsewhere)
		}
	}
	hb := heartbeat
	if hb == "" {
		hb = "serve's default"
	}
	r2 := func(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }
	t.Logf("--node-timeout %v, --heartbeat %s, %d kills, %d VMs: killed → VMs running elsewhere p50 %v, max %v (marked down p50 %v, max %v)",
		nodeTimeout, hb, len(samples), vms, r2(stats.Quantile(all, 0.5)), r2(stats.Quantile(all, 1)), r2(stats.Quantile(downs, 0.5)), r2(stats.Quantile(downs, 1)))
	t.Logf("  followers killed: %d, p50 %v, max %v; leaders killed: %d, p50 %v, max %v",
		len(followers), r2(stats.Quantile(followers, 0.5)), r2(stats.Quantile(followers, 1)),
		len(leaders), r2(stats.Quantile(leaders, 0.5)), r2(stats.Quantile(leaders, 1)))
	fmt.Printf("FAILOVERRESULT timeout=%v heartbeat=%s kills=%d p50=%v max=%v down_p50=%v down_max=%v followers=%d/%v/%v leaders=%d/%v/%v\n",
		nodeTimeout, hb, len(samples), r2(stats.Quantile(all, 0.5)), r2(stats.Quantile(all, 1)), r2(stats.Quantile(downs, 0.5)), r2(stats.Quantile(downs, 1)),
		len(followers), r2(stats.Quantile(followers, 0.5)), r2(stats.Quantile(followers, 1)),
		len(leaders), r2(stats.Quantile(leaders, 0.5)), r2(stats.Quantile(leaders, 1)))
}

// status asks the nodes in turn for /v1/status; the first answer wins.
func (c *cluster) status() (statusJSON, error) { return c.statusFrom(c.nodes) }

func (c *cluster) statusFrom(nodes []*node) (statusJSON, error) {
	var errs []error
	for _, nd := range nodes {
		if nd.cmd == nil {
			continue
		}
		var s statusJSON
		err := getJSON(nd.api, "/v1/status", &s)
		if err == nil {
			return s, nil
		}
		errs = append(errs, fmt.Errorf("node %d: %w", nd.id, err))
	}
	return statusJSON{}, errors.Join(errs...)
}

// allRunningOff checks that status lists want VMs, all running, none on
// node off (0: any node).
func allRunningOff(s statusJSON, want int, off uint64) error {
	if len(s.VMs) != want {
		return fmt.Errorf("%d VMs, want %d", len(s.VMs), want)
	}
	for _, vm := range s.VMs {
		if vm.Node == off && off != 0 {
			return fmt.Errorf("%s still assigned to node %d", vm.Name, off)
		}
		if vm.Phase != "running" {
			return fmt.Errorf("%s on node %d is %s", vm.Name, vm.Node, vm.Phase)
		}
	}
	return nil
}
