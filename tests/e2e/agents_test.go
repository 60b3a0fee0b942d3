package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// vmState is what the test needs of one VM in `status --json`.
type vmState struct {
	node    uint64
	outPath string
	phase   string
	message string
}

func vmStates(t *testing.T, api string) (map[string]vmState, error) {
	var s struct {
		VMs []struct {
			Name, OutPath, Phase, Message string
			Node                          uint64
		} `json:"vms"`
	}
	if err := cliJSON(t, &s, "status", "--server", api); err != nil {
		return nil, err
	}
	m := map[string]vmState{}
	for _, vm := range s.VMs {
		m[vm.Name] = vmState{vm.Node, vm.OutPath, vm.Phase, vm.Message}
	}
	return m, nil
}

// waitAllRunning waits until status lists exactly want VMs, all running,
// and `blixard diff` reports no drift (exit 0).
func waitAllRunning(t *testing.T, c *cluster, want int) map[string]vmState {
	t.Helper()
	var vms map[string]vmState
	testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("%d VMs running", want), func() error {
		var err error
		if vms, err = vmStates(t, c.nodes[0].api); err != nil {
			return err
		}
		if len(vms) != want {
			return fmt.Errorf("%d VMs, want %d", len(vms), want)
		}
		for name, vm := range vms {
			if vm.phase != "running" {
				return fmt.Errorf("%s is %s %s", name, vm.phase, vm.message)
			}
		}
		if out, _, code := cli(t, "", "diff", "--server", c.nodes[0].api); code != 0 {
			return fmt.Errorf("diff: exit %d: %s", code, out)
		}
		return nil
	})
	return vms
}

// pids maps each VM to the PID of its runner on its assigned node.
func (c *cluster) pids(t *testing.T, vms map[string]vmState) map[string]int {
	t.Helper()
	out := map[string]int{}
	for name, vm := range vms {
		pid := c.nodes[vm.node-1].runnerPID(name)
		if pid == 0 {
			t.Fatalf("%s: no live runner recorded on node %d", name, vm.node)
		}
		out[name] = pid
	}
	return out
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestNixGitRaftAgentsConvergePlan(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	first := r.push(clusterFlake(nil), "six VMs")
	c := startCluster(t, r.url(), []nodeSpec{{6, 4096, ""}, {6, 4096, ""}, {6, 4096, ""}},
		"--restart-backoff", "2s")
	waitRevision(t, c, first)

	// 1. Every VM of the plan runs on its assigned node.
	vms := waitAllRunning(t, c, 6)
	pids := c.pids(t, vms)

	// 2. A change to one VM restarts only that VM, on its new closure.
	second := r.push(clusterFlake(map[string]string{"cache": "v2"}), "cache v2")
	waitRevision(t, c, second)
	vms2 := waitAllRunning(t, c, 6)
	testkit.WaitFor(t, 30*time.Second, "cache restarted on its new runner", func() error {
		vms2 = waitAllRunning(t, c, 6)
		if vms2["cache"].outPath == vms["cache"].outPath {
			return fmt.Errorf("cache still has %s", vms2["cache"].outPath)
		}
		return nil
	})
	pids2 := c.pids(t, vms2)
	for name, pid := range pids {
		if name == "cache" {
			if pids2[name] == pid || alive(pid) {
				t.Errorf("cache was not restarted (pid %d → %d)", pid, pids2[name])
			}
		} else if pids2[name] != pid {
			t.Errorf("%s restarted although unchanged (pid %d → %d)", name, pid, pids2[name])
		}
	}

	// 3. A VM removed from the flake is stopped; its state dir stays.
	third := r.push(clusterFlake(map[string]string{"cache": "v2"}, "db"), "remove db")
	waitRevision(t, c, third)
	waitAllRunning(t, c, 5)
	testkit.WaitFor(t, 30*time.Second, "db's runner to end", func() error {
		if alive(pids2["db"]) {
			return fmt.Errorf("db runner %d still alive", pids2["db"])
		}
		return nil
	})

	// 4. A runner killed with SIGKILL is restarted; diff shows drift until then.
	victim := pids2["web-0"]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "diff to report web-0's drift", func() error {
		out, _, code := cli(t, "", "diff", "--server", c.nodes[1].api)
		if code != 2 || !strings.Contains(out, "web-0") {
			return fmt.Errorf("diff: exit %d: %s", code, out)
		}
		return nil
	})
	vms4 := waitAllRunning(t, c, 5)
	if pid := c.nodes[vms4["web-0"].node-1].runnerPID("web-0"); pid == 0 || pid == victim {
		t.Errorf("web-0 not restarted: pid %d (killed %d)", pid, victim)
	}

	// 5. An agent killed and started again adopts its VMs: same PIDs.
	before := c.pids(t, vms4)
	n := c.nodes[0]
	n.kill9()
	c.restart(n)
	var hb0 uint64
	testkit.WaitFor(t, 60*time.Second, "node 1 to report again after its restart", func() error {
		var nodes []struct {
			ID         uint64 `json:"id"`
			Heartbeats uint64 `json:"heartbeats"`
		}
		if err := cliJSON(t, &nodes, "nodes", "--server", n.api); err != nil {
			return err
		}
		for _, nd := range nodes {
			if nd.ID == n.id {
				if hb0 == 0 {
					hb0 = nd.Heartbeats
				}
				if nd.Heartbeats < hb0+2 {
					return fmt.Errorf("heartbeats %d", nd.Heartbeats)
				}
			}
		}
		return nil
	})
	after := c.pids(t, waitAllRunning(t, c, 5))
	for name, pid := range before {
		if after[name] != pid {
			t.Errorf("%s restarted across an agent restart (pid %d → %d)", name, pid, after[name])
		}
	}

	// 6. Draining a node moves its VMs to the others and stops them there.
	onNode2 := map[string]int{}
	for name, vm := range waitAllRunning(t, c, 5) {
		if vm.node == 2 {
			onNode2[name] = c.nodes[1].runnerPID(name)
		}
	}
	if len(onNode2) == 0 {
		t.Fatalf("node 2 runs no VM; the drain step needs one")
	}
	if out, stderr, code := cli(t, "", "node", "drain", "2", "--server", c.nodes[0].api); code != 0 {
		t.Fatalf("node drain 2: exit %d: %s%s", code, out, stderr)
	}
	testkit.WaitFor(t, 60*time.Second, "node 2's VMs to run elsewhere", func() error {
		vms := waitAllRunning(t, c, 5)
		for name := range onNode2 {
			if vms[name].node == 2 {
				return fmt.Errorf("%s still on node 2", name)
			}
		}
		return nil
	})
	testkit.WaitFor(t, 30*time.Second, "node 2's runners to stop", func() error {
		for name, pid := range onNode2 {
			if alive(pid) {
				return fmt.Errorf("%s (pid %d) still runs on the drained node", name, pid)
			}
		}
		return nil
	})
	if _, stderr, code := cli(t, "", "node", "ready", "2", "--server", c.nodes[2].api); code != 0 {
		t.Fatalf("node ready 2: exit %d: %s", code, stderr)
	}
	if _, stderr, code := cli(t, "", "node", "drain", "9", "--server", c.nodes[0].api); code != 1 || !strings.Contains(stderr, "not registered") {
		t.Errorf("draining an unknown node: exit %d, stderr %q; want 1 and a message", code, stderr)
	}
	after = c.pids(t, waitAllRunning(t, c, 5))

	// 7. A runner whose build fails: that VM is failed with the build error,
	// its previous version keeps running, the others are untouched.
	fourth := r.push(clusterFlake(map[string]string{"cache": "v2", "worker": "FAIL"}, "db"), "broken worker build")
	waitRevision(t, c, fourth)
	testkit.WaitFor(t, 60*time.Second, "worker-0 and worker-1 failed with the build error", func() error {
		vms, err := vmStates(t, c.nodes[2].api)
		if err != nil {
			return err
		}
		for _, w := range []string{"worker-0", "worker-1"} {
			if vms[w].phase != "failed" || !strings.Contains(vms[w].message, "exploded") {
				return fmt.Errorf("%s: %s %q", w, vms[w].phase, vms[w].message)
			}
		}
		for name, vm := range vms {
			if !strings.HasPrefix(name, "worker") && vm.phase != "running" {
				return fmt.Errorf("%s is %s", name, vm.phase)
			}
		}
		return nil
	})
	for name, pid := range after {
		if !alive(pid) {
			t.Errorf("%s (pid %d) stopped after another VM's build failed", name, pid)
		}
	}
	out, _, code := cli(t, "", "diff", "--server", c.nodes[0].api)
	if code != 2 || !strings.Contains(out, "worker-0") {
		t.Errorf("diff should report the failed workers (exit %d):\n%s", code, out)
	}
}
