package node_test

import (
	"fmt"
	"net/http"
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

// The snapshot lab: the network lab's three `blixard serve --network`
// nodes (nodes 1 and 2 run instances, node 3 has no vCPUs) with two
// functions served by the demo's real qemu guest (testdata/fnsnap):
// snap (snapshot = true) and plain (the same guest under another name,
// snapshot = false).

func snapLabFiles(t *testing.T) map[string][]byte {
	t.Helper()
	files := map[string][]byte{"settings.nix": fmt.Appendf(nil, "{ kernelDir = %s; }\n", strconv.Quote(microvm.KernelDir()))}
	read := func(name, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	read("flake.nix", filepath.Join("testdata", "fnsnap", "flake.nix"))
	for _, f := range []string{"microvm.nix", "build-runner.sh", "guest-init.sh"} {
		read(f, filepath.Join(microvm.DemoDir(), f))
	}
	return files
}

// nodeLog is node i's log so far.
func (l *lab) nodeLog(i int) string {
	b, _ := os.ReadFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)))
	return string(b)
}

// fnNode is the node running fn's one instance (0: none).
func (l *lab) fnNode(at int, fn string) (int, error) {
	v, err := l.functions(at)
	if err != nil {
		return 0, err
	}
	f := fnView(v, fn)
	if len(f.Instances) != 1 {
		return 0, fmt.Errorf("%s has instances %+v, want one", fn, f.Instances)
	}
	return int(f.Instances[0].Node), nil
}

// crash kills node i as a dead host would lose it: SIGKILL to its serve,
// and to the qemu of every instance it ran (their pid files).
func (l *lab) crash(i int) {
	l.t.Helper()
	l.mu.Lock()
	cmd, done := l.cmds[i], l.done[i]
	delete(l.cmds, i)
	l.mu.Unlock()
	if cmd == nil {
		l.t.Fatalf("node %d does not run", i)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	m, _ := filepath.Glob(filepath.Join(l.dir(i, "state"), "*", "qemu.pid"))
	for _, f := range m {
		b, _ := os.ReadFile(f)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmdline), "qemu-system") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TestFunctionsSnapshotColdStartsAndNodeLoss runs snapshot cold starts
// for real: the first request to snap boots its guest, which the agent
// saves once healthy and restores (the request is answered by the restored
// guest); after scale to zero the next request restores from the
// snapshot (timed against plain's full boot of the same guest, both
// through the gateway, logged); then the node running snap's only
// instance dies and the next request, through another node's gateway, is
// served by a new instance on the other node.
func TestFunctionsSnapshotColdStartsAndNodeLoss(t *testing.T) {
	microvm.Require(t)
	l := newLab(t, labConfig{
		files: snapLabFiles(t),
		vcpu: func(i int) int {
			if i == 3 {
				return 0
			}
			return 2
		},
		// The runners' builds read host files (qemu, the kernel): no sandbox.
		env: []string{"NIX_CONFIG=" + strings.TrimPrefix(os.Getenv("NIX_CONFIG")+"\n", "\n") + microvm.NixConfig},
	})
	commit := run(t, l.work, "git", "rev-parse", "HEAD")
	for i := 1; i <= 3; i++ {
		l.start(i)
	}
	l.waitRevision(1, commit, 5*time.Minute)

	// Requests go to node 1's gateway: an instance is placed on the
	// requesting node when it fits, so every cold start of this part is on
	// node 1, where the snapshot is.
	get := func(at int, fn, what string, timeout time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		code, body, err := l.fnGet(at, fn+".lab.test", "/", timeout)
		took := time.Since(start)
		if err != nil || code != http.StatusOK || !strings.HasPrefix(body, "hello from "+fn+", version 1") {
			t.Fatalf("%s: %d %q %v; want 200 and the guest's answer", what, code, body, err)
		}
		t.Logf("%s: 200 after %s", what, took.Round(time.Millisecond))
		return took
	}
	idle := func(fn string) {
		t.Helper()
		testkit.WaitFor(t, 90*time.Second, fn+" scaled to zero, no runner left", func() error {
			v, err := l.functions(1)
			if err != nil {
				return err
			}
			if f := fnView(v, fn); f.Want != 0 || len(f.Instances) != 0 {
				return fmt.Errorf("want %d, instances %+v", f.Want, f.Instances)
			}
			if ps := l.fnRunners(fn); len(ps) > 0 {
				return fmt.Errorf("processes left: %v", ps)
			}
			return nil
		})
	}
	restores := func(i int) int { return strings.Count(l.nodeLog(i), `msg="restored from snapshot"`) }
	saves := func(i int) int { return strings.Count(l.nodeLog(i), `msg="saved snapshot"`) }

	// plain's first cold start builds its runner: warm it, so the timed
	// cold start below is a boot only.
	get(1, "plain", "plain: first request (build and boot)", 5*time.Minute)
	idle("plain")
	boot := get(1, "plain", "plain: cold start (full boot)", 2*time.Minute)
	idle("plain")

	first := get(1, "snap", "snap: first request (build, boot, save, restore)", 5*time.Minute)
	if n, err := l.fnNode(1, "snap"); err != nil || n != 1 {
		t.Fatalf("snap runs on node %d (%v); want node 1, the requesting node", n, err)
	}
	if saves(1) != 1 || restores(1) != 1 {
		t.Fatalf("node 1 logged %d saves and %d restores after the first request; want 1 and 1", saves(1), restores(1))
	}
	snaps, _ := filepath.Glob(filepath.Join(l.dir(1, "state"), ".snapshots", "*", "manifest.json"))
	if len(snaps) != 1 {
		t.Fatalf("node 1's snapshot store holds %v; want one snapshot", snaps)
	}
	idle("snap")

	// Cold start again: from the snapshot, no kernel boot on the console.
	console := filepath.Join(l.dir(1, "state"), "fn-snap-0", "console.log")
	before, _ := os.ReadFile(console)
	restored := get(1, "snap", "snap: cold start (restore)", 2*time.Minute)
	if saves(1) != 1 || restores(1) != 2 {
		t.Fatalf("node 1 logged %d saves and %d restores; want 1 and 2 (the second cold start restores)", saves(1), restores(1))
	}
	after, _ := os.ReadFile(console)
	if len(after) < len(before) {
		before = nil // rotated
	}
	if added := string(after[len(before):]); strings.Contains(added, "Linux version") || !strings.Contains(added, "snapshot restore") {
		t.Errorf("the restored cold start's console shows a boot, or no restore:\n%s", added)
	}
	t.Logf("cold start to first byte through the gateway: full boot (plain) %s, snapshot restore (snap) %s: %.1f× faster; first snap request (boot+save+restore) %s",
		boot.Round(time.Millisecond), restored.Round(time.Millisecond), float64(boot)/float64(restored), first.Round(time.Millisecond))

	// Node 1, running snap's only instance, dies with its guest. The next
	// request, through node 2's gateway, is served by a new instance on
	// node 2 once the leader has judged node 1 down (--node-timeout):
	// until then the gateway may answer 504 (its queue timeout), and the
	// client asks again.
	l.crash(1)
	killed := time.Now()
	var code int
	var body string
	attempts := 0
	testkit.WaitFor(t, 5*time.Minute, "a request through node 2 served by a new instance", func() error {
		attempts++
		var err error
		code, body, err = l.fnGet(2, "snap.lab.test", "/", 2*time.Minute)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	if !strings.HasPrefix(body, "hello from snap, version 1") {
		t.Fatalf("after node 1 died: %d %q", code, body)
	}
	n, err := l.fnNode(2, "snap")
	if err != nil || n != 2 {
		t.Fatalf("after node 1 died snap runs on node %d (%v); want node 2", n, err)
	}
	t.Logf("node 1 killed: a request through node 2 answered 200 after %s (%d attempts; node timeout 30s); node 2 saved %d and restored %d snapshots",
		time.Since(killed).Round(time.Millisecond), attempts, saves(2), restores(2))
}
