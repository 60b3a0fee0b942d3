//go:build ceph

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/volumes"
)

// TestCephNixGitRaftServeRestartKeepsTheVolumeDaemon: one `blixard serve`
// node with Ceph runs a VM with an RBD volume served by a qemu-storage-daemon
// (--volume-attach=daemon). Writes through the volume's socket (qemu-io, in
// place of the VM) go on while the node's blixard is stopped (SIGTERM) and
// started again: none fails; the new process adopts the daemon (same PID,
// same lock holder) and the VM's runner (same PID); the node's replicated
// Ceph addresses, which its new registration resets to its new client, list
// the daemon again from its heartbeat. Then the daemon, which is no child of
// the new blixard, is killed: its supervisor starts a new one that takes
// the lock, and the writes resume.
func TestCephNixGitRaftServeRestartKeepsTheVolumeDaemon(t *testing.T) {
	requireTools(t, "nix", "git", "ceph-mon", "ceph-osd", "ceph", "qemu-io", "qemu-storage-daemon")
	conf := startCeph(t)
	keyring := filepath.Join(filepath.Dir(conf), "keyring")
	t.Cleanup(func() {
		if out, err := exec.Command("../ceph/ceph.sh", "stop", filepath.Dir(conf)).CombinedOutput(); err != nil {
			t.Errorf("ceph.sh stop: %v: %s", err, out)
		}
	})
	ctx := context.Background()
	cc, err := volumes.Connect(ctx, volumes.Config{ConfigFile: conf, KeyringFile: keyring})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Close)

	r := newRepo(t)
	commit := r.push(volumeFlake(), "cache with a volume")
	var c *cluster
	// Registered before startCluster's cleanup, so it runs after the node
	// stopped (a running node would start a new daemon).
	t.Cleanup(func() {
		if c != nil {
			killVolumeDaemons(c.nodes[0].stateDir())
		}
	})
	c = startCluster(t, r.url(), []nodeSpec{{8, 8192, ""}},
		"--ceph-config-file", conf, "--ceph-keyring-file", keyring, "--volume-attach", "daemon")
	n := c.nodes[0]
	waitRevision(t, c, commit)
	waitAllRunning(t, c, 1)
	runner := n.runnerPID("cache")
	sock := filepath.Join(n.stateDir(), "cache", "volumes", "data")
	d1, err := volumes.ReadDaemonIdentity(sock)
	if err != nil {
		t.Fatal(err)
	}
	img := "e2e.cache.data"
	owner := func() []string {
		os, err := cc.Owners(ctx, "rbd", img)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range os {
			out = append(out, o.Addr)
		}
		return out
	}
	if got := owner(); !slices.Equal(got, []string{d1.Addr}) {
		t.Fatalf("lock owners %v, want the volume daemon %s", got, d1.Addr)
	}
	nodeAddrs := func() []string {
		var st struct {
			Nodes map[string]struct {
				CephAddrs []string `json:"cephAddrs"`
			} `json:"nodes"`
		}
		if err := cliJSONRaw(t, n.api, "/v1/state", &st); err != nil {
			return nil
		}
		return st.Nodes["1"].CephAddrs
	}
	testkit.WaitFor(t, 30*time.Second, "the heartbeat reports the daemon's address", testkit.Until(func() bool {
		return slices.Contains(nodeAddrs(), d1.Addr)
	}))
	registered := nodeAddrs()[0]

	w := startSocketWriter(t, sock)
	w.waitOK(t, time.Now(), 5)
	tStop := time.Now()
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
	w.waitOK(t, time.Now(), 5) // no blixard runs
	tStart := time.Now()
	c.restart(n)
	testkit.WaitFor(t, 60*time.Second, "the restarted node re-registered and reports the adopted daemon", testkit.Detail(func() (bool, string) {
		addrs := nodeAddrs()
		return len(addrs) > 0 && addrs[0] != registered && slices.Contains(addrs, d1.Addr), fmt.Sprintf("addresses %v", addrs)
	}))
	took := time.Since(tStart)
	waitAllRunning(t, c, 1)
	w.waitOK(t, time.Now(), 5)
	if d, err := volumes.ReadDaemonIdentity(sock); err != nil || d != d1 || !d.Alive() {
		t.Fatalf("after the restart the daemon is %+v (%v), want the adopted %+v", d, err, d1)
	}
	if got := owner(); !slices.Equal(got, []string{d1.Addr}) {
		t.Fatalf("lock owners after the restart %v, want the same daemon %s", got, d1.Addr)
	}
	if p := n.runnerPID("cache"); p != runner {
		t.Fatalf("runner pid %d after the restart, was %d", p, runner)
	}
	if log, _ := os.ReadFile(n.logPath); !strings.Contains(string(log), "volume daemon adopted") {
		t.Errorf("serve.log does not say the daemon was adopted")
	}
	ok, failed, first := w.summary(tStop)
	if failed > 0 {
		t.Fatalf("%d of %d writes through the volume failed across the restart; first: %v", failed, ok+failed, first)
	}
	t.Logf("serve restart: %d writes through the daemon from SIGTERM on, none failed; restarted process re-registered and reported the adopted daemon (pid %d, lock holder %s) after %v",
		ok, d1.PID, d1.Addr, took.Round(time.Millisecond))

	// The adopted daemon is no child of this blixard: its supervisor polls.
	tKill := time.Now()
	if err := syscall.Kill(d1.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var d2 volumes.DaemonIdentity
	testkit.WaitFor(t, 30*time.Second, "a new daemon holding the lock", testkit.Detail(func() (bool, string) {
		d, err := volumes.ReadDaemonIdentity(sock)
		d2 = d
		got := owner()
		return err == nil && d.PID != d1.PID && d.Alive() && slices.Equal(got, []string{d.Addr}), fmt.Sprintf("daemon %+v, owners %v", d, got)
	}))
	restarted := time.Since(tKill)
	w.waitOK(t, time.Now(), 5)
	ok, failed, first = w.summary(tKill)
	t.Logf("adopted daemon killed: new daemon (pid %d) holds the lock after %v; %d writes failed meanwhile (first: %v), %d succeeded",
		d2.PID, restarted.Round(time.Millisecond), failed, first, ok)
	testkit.WaitFor(t, 30*time.Second, "the heartbeat reports the new daemon", testkit.Until(func() bool {
		return slices.Contains(nodeAddrs(), d2.Addr)
	}))
}

// socketWriter writes through an NBD socket with qemu-io over and over,
// each round a new connection writing a pattern and reading it back.
type socketWriter struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	rounds []sockRound // guarded by mu
}

type sockRound struct {
	at  time.Time
	err error
}

func startSocketWriter(t *testing.T, sock string) *socketWriter {
	w := &socketWriter{stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			p := fmt.Sprintf("0x%02x", i%256)
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := exec.CommandContext(cctx, "qemu-io", "-f", "raw", "-c", "write -P "+p+" 0 4k", "-c", "read -P "+p+" 0 4k",
				"nbd+unix:///?socket="+sock).CombinedOutput()
			cancel()
			if err == nil && (strings.Contains(string(out), "failed") || strings.Contains(string(out), "Pattern verification")) {
				err = fmt.Errorf("qemu-io: %s", strings.TrimSpace(string(out)))
			} else if err != nil {
				err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
			}
			w.mu.Lock()
			w.rounds = append(w.rounds, sockRound{at: time.Now(), err: err})
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(w.stop)
		w.wg.Wait()
	})
	return w
}

func (w *socketWriter) summary(since time.Time) (ok, failed int, first error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.rounds {
		if !r.at.After(since) {
			continue
		}
		if r.err != nil {
			failed++
			if first == nil {
				first = r.err
			}
		} else {
			ok++
		}
	}
	return ok, failed, first
}

func (w *socketWriter) waitOK(t *testing.T, since time.Time, n int) {
	t.Helper()
	testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("%d good writes through the volume", n), testkit.Detail(func() (bool, string) {
		ok, failed, first := w.summary(since)
		return ok >= n, fmt.Sprintf("%d good, %d failed (first: %v)", ok, failed, first)
	}))
}
