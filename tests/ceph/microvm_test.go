//go:build ceph

package ceph

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/spec"
)

// Helpers of the tests that run the demo's real qemu microVM
// (examples/demo/microvm.nix) on an RBD volume.

const setupMicrovm = "run scripts/setup-microvm.sh (as root) to install qemu, socat, busybox-static, cpio and the cloud kernel"

// demoMicrovm is the demo's runner library, relative to this package.
const demoMicrovm = "../../examples/demo/microvm.nix"

// kernelDir is where scripts/setup-microvm.sh unpacks the guest kernel.
func kernelDir() string {
	if d := os.Getenv("BLIXARD_KERNEL_DIR"); d != "" {
		return d
	}
	return "/var/cache/blixard/kernel"
}

// requireMicrovm fails the test (never skips) when something the demo's
// runners need is missing; they run with PATH=/usr/bin:/bin.
func requireMicrovm(t testing.TB) {
	t.Helper()
	for _, f := range []string{"/usr/bin/qemu-system-x86_64", "/usr/bin/socat", "/usr/bin/cpio", "/bin/busybox",
		filepath.Join(kernelDir(), "vmlinuz"), filepath.Join(kernelDir(), "modules", "kernel")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s: %v: %s", f, err, setupMicrovm)
		}
	}
}

// buildMicrovm builds the demo's runner for VM name with the given volumes,
// forwarding the guest's HTTP server to 127.0.0.1:port.
func buildMicrovm(t testing.TB, name string, port int, vols []string) spec.Runner {
	t.Helper()
	names := make([]string, len(vols))
	for i, v := range vols {
		names[i] = strconv.Quote(v)
	}
	expr := fmt.Sprintf(`(import %s).runner { name = %q; port = %d; kernelDir = %q; volumes = [ %s ]; }`,
		demoMicrovm, name, port, kernelDir(), strings.Join(names, " "))
	drv := nix(t, "nix-instantiate", "-E", expr)
	out := nix(t, "nix-store", "--realise", drv)
	return spec.Runner{Drv: drv, Out: out}
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

// guestGet fetches path from the guest's HTTP server on 127.0.0.1:port and
// returns the body without its trailing newline.
func guestGet(port int, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return "", err
	}
	s := strings.TrimSuffix(body.String(), "\n")
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET %s: HTTP %s: %q", path, resp.Status, s)
	}
	return s, nil
}

// qemuPID waits for the pid qemu records in the VM's state directory (the
// agent may report the VM running before qemu wrote it).
func qemuPID(t testing.TB, stateDir, vm string) int {
	t.Helper()
	path := filepath.Join(stateDir, vm, "qemu.pid")
	var pid int
	waitFor(t, "qemu's pid file "+path, func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 1 && isQemu(pid), fmt.Sprintf("it holds %q", b)
	})
	return pid
}

// isQemu reports whether pid is a live (not zombie) qemu process.
func isQemu(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("qemu-system")) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// qemuReaper kills, when the test ends, every qemu it was told about that
// still runs (a failed test's leftovers; a passing test stops them).
type qemuReaper struct{ pids []int }

func newQemuReaper(t testing.TB) *qemuReaper {
	r := &qemuReaper{}
	t.Cleanup(func() {
		for _, pid := range r.pids {
			if isQemu(pid) {
				t.Errorf("qemu (pid %d) still ran at the end of the test: killed", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return r
}

func (r *qemuReaper) add(pid int) { r.pids = append(r.pids, pid) }
