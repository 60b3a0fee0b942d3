package systemd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/tests/microvm"
)

// TestSystemdQemuDemoVMRunsAsUnitInContainer runs the demo's real qemu
// microVM (examples/demo/microvm.nix, built on the host with the real nix) as
// microvm@NAME.service under the container's systemd, driven by the
// SystemdBackend over the container's bus: it answers HTTP on the host's
// loopback (the container shares the host's network), and Stop powers it
// off through its microvm-shutdown (qemu exits by itself with code 0).
// Then the harness is torn down, twice, leaving nothing.
func TestSystemdQemuDemoVMRunsAsUnitInContainer(t *testing.T) {
	microvm.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop(context.Background())
		}
	})

	const vm = "sdqemu"
	port := microvm.FreePort(t)
	out := microvm.Build(t, microvm.Options{Name: vm, Port: port, Version: "systemd"}).Out
	dir := filepath.Join(c.StateDir, vm)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out, filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}

	b, err := nodeagent.NewSystemdBackend(ctx, nodeagent.SystemdOptions{StateDir: c.StateDir, BusAddress: c.Bus})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- b.Run(bctx) }()
	var stopBackend sync.Once
	endBackend := func() {
		stopBackend.Do(func() {
			bcancel()
			if err := <-runDone; err != nil {
				t.Errorf("backend Run: %v", err)
			}
		})
	}
	defer endBackend()

	if err := b.Start(ctx, vm); err != nil {
		t.Fatalf("Start: %v", err)
	}
	body := microvm.WaitHTTP(t, port, 90*time.Second, "journalctl -u microvm@sdqemu inside the container")
	if want := "hello from " + vm; !strings.Contains(body, want) {
		t.Errorf("guest answered %q, want %q", body, want)
	}
	s, err := b.Status(vm)
	if err != nil || !s.Active || s.Booted != out || s.PID == 0 {
		t.Errorf("Status = %+v, %v; want active, booted %s", s, err, out)
	}

	if err := b.Stop(ctx, vm); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	s, err = b.Status(vm)
	if err != nil || s.Active || s.Restarting {
		t.Errorf("after Stop: %+v, %v; want inactive", s, err)
	}
	// A clean power-off: the guest saw the power button, qemu exited by itself
	// (systemd had nothing to kill) and the unit ended successfully.
	journal, err := c.Journal(ctx, "microvm@"+vm+".service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"power button pressed; powering off", "microvm-shutdown: qemu", "exited", "Deactivated successfully"} {
		if !strings.Contains(journal, want) {
			t.Errorf("journal of the unit has no %q:\n%s", want, journal)
		}
	}
	for _, bad := range []string{"SIGKILL", "Failed with result", "timed out"} {
		if strings.Contains(journal, bad) {
			t.Errorf("journal of the unit has %q:\n%s", bad, journal)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "booted")); err == nil {
		t.Errorf("booted still exists after Stop")
	}
	if _, err := microvm.Get(context.Background(), port, "/", time.Second); err == nil {
		t.Errorf("the guest still answers after Stop")
	}

	endBackend()
	stopped = true
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("a second stop: %v", err)
	}
}
