//go:build ceph

package ceph

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/tests/microvm"
)

// Helpers of the tests that run the demo's real qemu microVM
// (examples/demo/microvm.nix) on an RBD volume.

// guestGet fetches path from the guest's HTTP server on 127.0.0.1:port and
// returns the body without its trailing newline.
func guestGet(port int, path string) (string, error) {
	body, err := microvm.Get(context.Background(), port, path, 5*time.Second)
	return strings.TrimSuffix(body, "\n"), err
}

// qemuPID waits for the pid qemu records in the VM's state directory (the
// agent may report the VM running before qemu wrote it).
func qemuPID(t testing.TB, stateDir, vm string) int {
	t.Helper()
	path := filepath.Join(stateDir, vm, "qemu.pid")
	var pid int
	testkit.WaitFor(t, cephWait, "qemu's pid file "+path, testkit.Detail(func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 1 && isQemu(pid), fmt.Sprintf("it holds %q", b)
	}))
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
