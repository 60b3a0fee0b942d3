package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// runStateFlake has web with autostart = false (tag: its runner's) and api,
// which runs.
func runStateFlake(webTag, apiTag string) string {
	return lightRunnerFlake("e2e", fmt.Sprintf(
		"        web = { runner = runner \"web\" %q; vcpu = 1; memMiB = 512; autostart = false; };\n"+
			"        api = { runner = runner \"api\" %q; vcpu = 1; memMiB = 512; };\n", webTag, apiTag))
}

// vmRun is what the test needs of one VM in `status --json`.
type vmRun struct {
	Name, Want, Stopped, Phase, Message, OutPath string
	Node                                         uint64
}

func vmRuns(t *testing.T, api string) (map[string]vmRun, error) {
	var s struct {
		VMs []vmRun `json:"vms"`
	}
	if err := cliJSON(t, &s, "status", "--server", api); err != nil {
		return nil, err
	}
	m := map[string]vmRun{}
	for _, vm := range s.VMs {
		m[vm.Name] = vm
	}
	return m, nil
}

// waitWeb waits until web is assigned, wanted and observed in phase, api
// runs (on another runner than notAPI, when set), and diff reports no
// drift: a VM stopped on purpose is not drift. It returns web and api.
func waitWeb(t *testing.T, n *node, phase, notAPI string) (vmRun, vmRun) {
	t.Helper()
	var web, api vmRun
	testkit.WaitFor(t, 60*time.Second, "web "+phase+", api running, no drift", func() error {
		vms, err := vmRuns(t, n.api)
		if err != nil {
			return err
		}
		web = vms["web"]
		if web.Node == 0 || web.Phase != phase || web.Want != map[string]string{"stopped": "stopped", "running": "running"}[phase] {
			return fmt.Errorf("web: %+v", web)
		}
		if api = vms["api"]; api.Phase != "running" || api.OutPath == notAPI {
			return fmt.Errorf("api: %+v", api)
		}
		if out, _, code := cli(t, "", "diff", "--server", n.api); code != 0 {
			return fmt.Errorf("diff: exit %d: %s", code, out)
		}
		return nil
	})
	return web, api
}

func vmCmd(t *testing.T, n *node, args ...string) string {
	t.Helper()
	out, stderr, code := cli(t, "", append(append([]string{"vm"}, args...), "--server", n.api)...)
	if code != 0 {
		t.Fatalf("blixard vm %s: exit %d: %s%s", strings.Join(args, " "), code, out, stderr)
	}
	return out
}

func TestNixGitRaftAutostartFalseAndVMStartStopRestart(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	first := r.push(runStateFlake("v1", "v1"), "web with autostart = false")
	c := startCluster(t, r.url(), []nodeSpec{{4, 4096, ""}})
	n := c.nodes[0]
	waitRevision(t, c, first)

	// 1. autostart = false: web is placed (it holds its resources) but kept
	// stopped, and says how to start it.
	web, _ := waitWeb(t, n, "stopped", "")
	if web.Stopped != "autostart" || !strings.Contains(web.Message, "blixard vm start web") {
		t.Errorf("web %+v: want kept stopped by autostart, with the command that starts it", web)
	}
	if pid := n.runnerPID("web"); pid != 0 {
		t.Errorf("web runs (pid %d) although autostart = false", pid)
	}

	// 2. vm start: it runs.
	if out := vmCmd(t, n, "start", "web"); !strings.Contains(out, "web: wanted running") {
		t.Errorf("vm start web said %q", out)
	}
	waitWeb(t, n, "running", "")
	pid := n.runnerPID("web")
	if pid == 0 {
		t.Fatal("web is running but has no runner")
	}

	// 3. vm restart: a new runner, once.
	vmCmd(t, n, "restart", "web")
	testkit.WaitFor(t, 60*time.Second, "web restarted", func() error {
		if p := n.runnerPID("web"); p == 0 || p == pid {
			return fmt.Errorf("web runner pid %d (was %d)", p, pid)
		}
		return nil
	})
	waitWeb(t, n, "running", "")
	restarted := n.runnerPID("web")

	// 4. vm stop: stopped, kept stopped on purpose (no drift).
	vmCmd(t, n, "stop", "web")
	web, api := waitWeb(t, n, "stopped", "")
	if web.Stopped != "operator" || alive(restarted) {
		t.Errorf("web %+v, runner %d alive %v: want it stopped by the operator", web, restarted, alive(restarted))
	}

	// 5. A new push keeps the operator's choice: web stays stopped while
	// api moves to its new runner.
	second := r.push(runStateFlake("v2", "v2"), "web and api v2")
	waitRevision(t, c, second)
	waitWeb(t, n, "stopped", api.OutPath)
	if pid := n.runnerPID("web"); pid != 0 {
		t.Errorf("web runs again (pid %d) after a new push", pid)
	}

	// 6. An unknown VM is an error naming it.
	if out, stderr, code := cli(t, "", "vm", "start", "ghost", "--server", n.api); code != 1 || !strings.Contains(stderr, `"ghost"`) {
		t.Errorf("vm start ghost: exit %d: %s%s", code, out, stderr)
	}
}
