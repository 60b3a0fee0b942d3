package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// TestNixGitRaftSilentNodeIsMarkedDownAndItsVMsMove kills a node's blixard
// process (its runners keep running, as on a host whose agent died): after
// --node-timeout the leader marks it down and its VMs run elsewhere; when
// the node comes back, its agent stops its stale copies.
func TestNixGitRaftSilentNodeIsMarkedDownAndItsVMsMove(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	commit := r.push(clusterFlake(nil), "six VMs")
	c := startCluster(t, r.url(), []nodeSpec{{8, 8192, ""}, {8, 8192, ""}, {8, 8192, ""}}, "--node-timeout", "3s")
	waitRevision(t, c, commit)
	vms := waitAllRunning(t, c, 6)

	// The victim: a node that runs VMs.
	var victim *node
	for _, n := range c.nodes {
		for _, vm := range vms {
			if vm.node == n.id {
				victim = n
			}
		}
	}
	stale := map[string]int{}
	for name, vm := range vms {
		if vm.node == victim.id {
			stale[name] = victim.runnerPID(name)
		}
	}
	victim.kill9()
	var alive0 *node
	for _, n := range c.nodes {
		if n != victim {
			alive0 = n
			break
		}
	}

	testkit.WaitFor(t, 90*time.Second, fmt.Sprintf("node %d marked down and its VMs running elsewhere", victim.id), func() error {
		var nodes []struct {
			ID    uint64 `json:"id"`
			State string `json:"state"`
		}
		if err := cliJSON(t, &nodes, "nodes", "--server", alive0.api); err != nil {
			return err
		}
		for _, n := range nodes {
			if n.ID == victim.id && n.State != "down" {
				return fmt.Errorf("node %d is %s", n.ID, n.State)
			}
		}
		moved, err := vmStates(t, alive0.api)
		if err != nil {
			return err
		}
		if len(moved) != 6 {
			return fmt.Errorf("%d VMs assigned", len(moved))
		}
		for name, vm := range moved {
			if vm.node == victim.id || vm.phase != "running" {
				return fmt.Errorf("%s: node %d, %s", name, vm.node, vm.phase)
			}
		}
		return nil
	})

	// The node comes back: it stays down (an operator readies it), and its
	// agent stops the copies that now run elsewhere.
	c.restart(victim)
	testkit.WaitFor(t, 60*time.Second, "the returning node to stop its stale runners", func() error {
		for name, pid := range stale {
			if alive(pid) {
				return fmt.Errorf("%s (pid %d) still runs on node %d", name, pid, victim.id)
			}
		}
		return nil
	})
	if _, stderr, code := cli(t, "", "node", "ready", fmt.Sprint(victim.id), "--server", alive0.api); code != 0 {
		t.Fatalf("node ready: exit %d: %s", code, stderr)
	}
	waitAllRunning(t, c, 6)
}
