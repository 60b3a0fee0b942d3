package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

func TestNixDevFollowsWorkingTreeEdits(t *testing.T) {
	requireTools(t, "nix")
	dir := t.TempDir() // not a git repository: dev evaluates the tree as it is
	flake := filepath.Join(dir, "flake.nix")
	if err := os.WriteFile(flake, []byte(clusterFlake(nil)), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &node{id: 1, api: freeAddr(t), dataDir: t.TempDir()}
	n.logPath = filepath.Join(n.dataDir, "dev.log")
	c := &cluster{t: t, nodes: []*node{n}}
	c.start(n, []string{"dev", dir, "--data-dir", n.dataDir, "--api-addr", n.api,
		"--capacity-vcpu", "64", "--capacity-mem-mib", "65536", "--debounce", "100ms", "--log-level", "debug"})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			c.stopAll()
		}
	})

	vms := waitAllRunning(t, c, 6)
	pids := c.pids(t, vms)

	// Edit one VM without any commit: exactly that VM restarts.
	if err := os.WriteFile(flake, []byte(clusterFlake(map[string]string{"db": "edited"})), 0o644); err != nil {
		t.Fatal(err)
	}
	var after map[string]vmState
	testkit.WaitFor(t, 60*time.Second, "db to run its edited runner", func() error {
		after = waitAllRunning(t, c, 6)
		if after["db"].outPath == vms["db"].outPath {
			return fmt.Errorf("db still on %s", after["db"].outPath)
		}
		return nil
	})
	pids2 := c.pids(t, after)
	for name, pid := range pids {
		if name == "db" {
			if pids2[name] == pid {
				t.Errorf("db was not restarted")
			}
		} else if pids2[name] != pid {
			t.Errorf("%s restarted although its runner did not change (pid %d → %d)", name, pid, pids2[name])
		}
	}

	// A VM no node can hold is listed as unschedulable, with the reason.
	huge := strings.Replace(clusterFlake(map[string]string{"db": "edited"}), "vms = {",
		"vms = {\n        huge = { runner = runner \"huge\" \"v1\"; vcpu = 1; memMiB = 999999; };", 1)
	if err := os.WriteFile(flake, []byte(huge), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 60*time.Second, "huge to be reported unschedulable", func() error {
		var st struct {
			Unschedulable []struct{ VM, Reason string } `json:"unschedulable"`
		}
		if err := cliJSON(t, &st, "status", "--server", n.api); err != nil {
			return err
		}
		if len(st.Unschedulable) != 1 || st.Unschedulable[0].VM != "huge" || !strings.Contains(st.Unschedulable[0].Reason, "memory") {
			return fmt.Errorf("unschedulable = %+v", st.Unschedulable)
		}
		return nil
	})
	if out, _, _ := cli(t, "", "status", "--server", n.api); !strings.Contains(out, "unschedulable") {
		t.Errorf("human status should list huge as unschedulable:\n%s", out)
	}

	// Ctrl-C stops every VM and leaves no process behind.
	if err := n.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.done:
		stopped = true
		if err != nil {
			t.Errorf("blixard dev exited with %v after SIGINT", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("blixard dev did not stop within 60s of SIGINT")
	}
	for name, pid := range pids2 {
		if alive(pid) {
			t.Errorf("%s (pid %d) still runs after blixard dev stopped", name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if t.Failed() {
		b, _ := os.ReadFile(n.logPath)
		t.Logf("dev log:\n%s", tail(b, 6000))
	}
}
