package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/tests/microvm"
)

// bootTimeout bounds boot to HTTP; software emulation (no KVM) boots in
// about 5s here.
const bootTimeout = 60 * time.Second

func TestQemuDemoVMBootsAnswersHTTPAndStopsCleanlyUnderTheAgent(t *testing.T) {
	microvm.Require(t)
	r := buildRunner(t, "web", "test-1")
	e := startAgent(t)
	console := nodeagent.LogPath(e.dir, "web")

	start := time.Now()
	e.state.assign("web", testNode, r)
	e.agent.Notify()
	body := microvm.WaitHTTP(t, r.port, bootTimeout, "console: "+console)
	t.Logf("assignment → HTTP answer: %s", time.Since(start).Round(time.Millisecond))
	if want := "hello from web, version test-1"; !strings.Contains(body, want) {
		t.Errorf("the guest answered %q, want it to contain %q", body, want)
	}
	if err := fileContains(console, "microvm[web]: READY name=web version=test-1"); err != nil {
		t.Errorf("console: %v", err)
	}
	e.waitPhase(t, "web", replicated.PhaseRunning, 10*time.Second)
	us, err := e.backend.Status("web")
	if err != nil || !us.Active || us.Booted != r.out {
		t.Fatalf("backend status of web = %+v, %v; want active on %s", us, err, r.out)
	}
	pid := us.PID
	// microvm-run execs qemu: the unit's process is qemu itself.
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmdline), "qemu-system-x86_64") {
		t.Errorf("the runner (pid %d) is not qemu: %q", pid, cmdline)
	}

	// Removing the VM from the plan makes the agent stop it: microvm-shutdown
	// presses the power button, the guest powers off, qemu exits.
	start = time.Now()
	e.state.unassign("web")
	e.agent.Notify()
	testkit.WaitFor(t, 40*time.Second, "web to stop", func() error {
		us, err := e.backend.Status("web")
		if err != nil {
			return err
		}
		if us.Active || us.Restarting {
			return fmt.Errorf("unit %+v", us)
		}
		if alive(pid) {
			return fmt.Errorf("qemu (pid %d) still runs", pid)
		}
		// The agent reports stopped (then forgets the VM) once Stop returned.
		if s, ok := e.status("web"); ok && s.Phase != replicated.PhaseStopped {
			return fmt.Errorf("agent reports %s (%s)", s.Phase, s.Message)
		}
		return nil
	})
	t.Logf("unassignment → qemu gone: %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{
		"microvm[web]: power button pressed; powering off",
		"reboot: Power down",
		fmt.Sprintf("microvm-shutdown: qemu (pid %d) exited", pid),
	} {
		if err := fileContains(console, want); err != nil {
			t.Errorf("the stop did not take the clean path: %v", err)
		}
	}
	us, err = e.backend.Status("web")
	if err != nil || us.Result != "exited with code 0" {
		t.Errorf("backend status after stop = %+v, %v; want result \"exited with code 0\"", us, err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "web", "qemu.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("qemu.pid left behind after a clean exit: %v", err)
	}
	if _, err := microvm.Get(context.Background(), r.port, "/", time.Second); err == nil {
		t.Errorf("port %d still answers after the stop", r.port)
	}
	if t.Failed() {
		b, _ := os.ReadFile(console)
		t.Logf("console log:\n%s", b)
	}
}

// The demo flake is a valid schema-v1 cluster, and editing one VM's version
// changes only that VM's runner (so only that VM restarts).
func TestQemuDemoFlakeIsValidAndVersionsAreIndependent(t *testing.T) {
	microvm.Require(t)
	ev := nixeval.New(nixeval.Options{Env: []string{"NIX_CONFIG=" + microvm.NixConfig}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := ev.Eval(ctx, gitsync.PathFlakeURL(demoDir), "", "")
	if err != nil {
		t.Fatalf("evaluating the demo flake: %v", err)
	}
	if len(res.Spec.VMs) != 2 {
		t.Fatalf("demo VMs = %v, want web and api", res.Spec.VMs)
	}
	for _, name := range []string{"web", "api"} {
		vm, ok := res.Spec.VMs[name]
		if !ok || vm.Runner.Out == "" || vm.Runner.Drv == "" || vm.MemMiB <= 0 || vm.VCPU <= 0 {
			t.Errorf("demo VM %s = %+v, want a runner, memory and vCPUs", name, vm)
		}
	}

	// A copy of the demo with api's version bumped.
	edited := t.TempDir()
	entries, err := os.ReadDir(demoDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if en.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(demoDir, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if en.Name() == "flake.nix" {
			const from = `name = "api"; port = 18081; version = "1";`
			if !strings.Contains(string(b), from) {
				t.Fatalf("the demo's flake.nix no longer has %q: update this test", from)
			}
			b = []byte(strings.Replace(string(b), from, `name = "api"; port = 18081; version = "2";`, 1))
		}
		if err := os.WriteFile(filepath.Join(edited, en.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res2, err := ev.Eval(ctx, gitsync.PathFlakeURL(edited), "", "")
	if err != nil {
		t.Fatalf("evaluating the edited demo flake: %v", err)
	}
	if a, b := res.Spec.VMs["web"].Runner, res2.Spec.VMs["web"].Runner; a != b {
		t.Errorf("editing api changed web's runner: %s → %s", a.Out, b.Out)
	}
	if a, b := res.Spec.VMs["api"].Runner, res2.Spec.VMs["api"].Runner; a == b {
		t.Errorf("editing api's version left its runner unchanged: %s", a.Out)
	}
}
