package systemd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/nodeagent"
)

const (
	setupNix     = "run scripts/setup.sh (as root) to install nix"
	setupMicrovm = "run scripts/setup-microvm.sh (as root) to install qemu, socat, busybox-static, cpio and the cloud kernel"
)

// TestSystemdQemuDemoVMRunsAsUnitInContainer runs the demo's real qemu
// microVM (examples/demo/microvm.nix, built on the host with the real nix) as
// microvm@NAME.service under the container's systemd, driven by the
// SystemdBackend over the container's bus: it answers HTTP on the host's
// loopback (the container shares the host's network), and Stop powers it
// off through its microvm-shutdown (qemu exits by itself with code 0).
// Then the harness is torn down, twice, leaving nothing.
func TestSystemdQemuDemoVMRunsAsUnitInContainer(t *testing.T) {
	for _, p := range []string{"nix-instantiate", "nix-store"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found on PATH: %s", p, setupNix)
		}
	}
	kernel := os.Getenv("BLIXARD_KERNEL_DIR")
	if kernel == "" {
		kernel = "/var/cache/blixard/kernel"
	}
	for _, f := range []string{"/usr/bin/qemu-system-x86_64", "/usr/bin/socat", filepath.Join(kernel, "vmlinuz")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s: %v: %s", f, err, setupMicrovm)
		}
	}
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
	port := freePort(t)
	out := buildDemoRunner(t, vm, port, kernel)
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
	body := waitHTTP(t, port, 90*time.Second)
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
	if _, err := get(port); err == nil {
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

// buildDemoRunner builds the demo's runner for vm with the real nix.
func buildDemoRunner(t *testing.T, vm string, port int, kernel string) string {
	t.Helper()
	demo, err := filepath.Abs("../../examples/demo/microvm.nix")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(demo); err != nil {
		t.Fatalf("the demo: %v", err)
	}
	expr := fmt.Sprintf(`(import %s).runner { name = %q; port = %d; version = "systemd"; kernelDir = %q; }`, demo, vm, port, kernel)
	nixCfg := "experimental-features = nix-command flakes\nsandbox = false\nsubstituters ="
	if v := os.Getenv("NIX_CONFIG"); v != "" {
		nixCfg = v + "\n" + nixCfg
	}
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "NIX_CONFIG="+nixCfg)
		b, err := cmd.Output()
		if err != nil {
			stderr := ""
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("%s: %v\n%s\n(if a host tool or the kernel is missing: %s)", strings.Join(args, " "), err, stderr, setupMicrovm)
		}
		return strings.TrimSpace(string(b))
	}
	drv := run("nix-instantiate", "-E", expr)
	return run("nix-store", "--realise", drv)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func get(port int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %s: %q", resp.Status, b)
	}
	return string(b), nil
}

// waitHTTP polls the guest until it answers.
func waitHTTP(t testing.TB, port int, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		body, err := get(port)
		if err == nil {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not answer on 127.0.0.1:%d within %s: %v (journalctl -u microvm@sdqemu inside the container)", port, timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}
