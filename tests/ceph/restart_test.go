//go:build ceph

package ceph

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/tests/microvm"
)

// guestWriter makes the guest write to its volume over and over: each round
// writes a new marker (/cgi-bin/write: dd with fsync on the disk) and reads
// it back from the disk (/cgi-bin/read), with no pause between rounds.
type guestWriter struct {
	port int
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	rounds []round // guarded by mu
}

type round struct {
	at     time.Time // when it ended
	marker string
	took   time.Duration
	err    error
}

func startGuestWriter(t *testing.T, port int) *guestWriter {
	w := &guestWriter{port: port, stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for i := 1; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			marker := fmt.Sprintf("round-%d-%d", os.Getpid(), i)
			t0 := time.Now()
			b, err := guestGet(w.port, "/cgi-bin/write?data="+marker)
			if err == nil && b != "wrote "+marker+" to data" {
				err = fmt.Errorf("write answered %q", b)
			}
			if err == nil {
				if b, err = guestGet(w.port, "/cgi-bin/read?data"); err == nil && b != marker {
					err = fmt.Errorf("read back %q after writing %q", b, marker)
				}
			}
			w.mu.Lock()
			w.rounds = append(w.rounds, round{at: time.Now(), marker: marker, took: time.Since(t0), err: err})
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.halt)
	return w
}

func (w *guestWriter) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

// since returns the rounds that ended after t0.
func (w *guestWriter) since(t0 time.Time) []round {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []round
	for _, r := range w.rounds {
		if r.at.After(t0) {
			out = append(out, r)
		}
	}
	return out
}

// waitOK waits until n rounds that ended after t0 succeeded.
func (w *guestWriter) waitOK(t *testing.T, t0 time.Time, n int, what string) {
	t.Helper()
	testkit.WaitFor(t, cephWait, fmt.Sprintf("%d good write rounds %s", n, what), testkit.Detail(func() (bool, string) {
		ok, last := 0, ""
		for _, r := range w.since(t0) {
			if r.err == nil {
				ok++
			} else {
				last = r.err.Error()
			}
		}
		return ok >= n, fmt.Sprintf("%d good, last error %q", ok, last)
	}))
}

func summarize(rs []round) (ok, failed int, maxTook time.Duration, firstErr error) {
	for _, r := range rs {
		if r.err != nil {
			failed++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		ok++
		maxTook = max(maxTook, r.took)
	}
	return ok, failed, maxTook, firstErr
}

// TestCephQemuMicroVMKeepsWritingWhileItsAgentRestarts: a real qemu microVM
// writes to its RBD volume over and over (a marker per round, fsynced to the
// disk and read back) while its node's agent is stopped and started again
// on the same state directory, as `blixard serve` is restarted or upgraded:
// the VM never stops, no write fails before, during or after, the new agent
// adopts the volume daemon (same process) and the lock stays with it. Then
// the daemon is killed: a new one takes the lock and the guest's writes
// resume; the writes issued while no daemon served fail (EIO in the guest)
// and are measured. At the end the last marker is in the image.
func TestCephQemuMicroVMKeepsWritingWhileItsAgentRestarts(t *testing.T) {
	cfg := requireCeph(t)
	microvm.Require(t)
	c := connect(t)
	reaper := newQemuReaper(t) // registered first: checks after the agent stopped
	port := microvm.FreePort(t)
	built := microvm.Build(t, microvm.Options{Name: "db", Port: port, Volumes: []string{"data"}})
	r := spec.Runner{Drv: built.Drv, Out: built.Out}
	clusterName := fmt.Sprintf("r%d-%d", os.Getpid(), seq.Add(1))
	img := clusterName + ".db.data"
	st := newTestState(clusterName)
	// As under `blixard serve`: stopping the agent leaves the VMs running.
	n := newNode(t, 1, st, cfg, false, nil)
	defer func() {
		if t.Failed() {
			t.Logf("console:\n%s", n.console("db"))
		}
	}()
	st.assign("db", 1, r, map[string]spec.Volume{"data": {SizeMiB: 16, Pool: "rbd"}})
	n.waitPhase("db", replicated.PhaseRunning, nil)
	qpid := qemuPID(t, n.dir, "db")
	reaper.add(qpid)
	daemon := n.holds(t, c, img, "db", "data")
	path := nodeagent.VolumePath(n.dir, "db", "data")

	testkit.WaitFor(t, cephWait, "the guest to read its volume over HTTP", func() error {
		_, err := guestGet(port, "/cgi-bin/read?data")
		return err
	})
	w := startGuestWriter(t, port)
	tBefore := time.Now()
	w.waitOK(t, tBefore, 5, "before the restart")

	// The agent stops (without stopping its VMs) and its volumes manager
	// closes: the guest keeps writing through the daemon.
	tStop := time.Now()
	n.stop()
	w.waitOK(t, tStop, 5, "while no agent runs")
	if !daemon.Alive() || !isQemu(qpid) {
		t.Fatalf("without its agent: daemon alive %v, qemu alive %v", daemon.Alive(), isQemu(qpid))
	}

	// A new agent on the same state directory adopts the VM and its
	// volume daemon.
	tStart := time.Now()
	n.start()
	n.waitPhase("db", replicated.PhaseRunning, nil)
	testkit.WaitFor(t, cephWait, "the new agent's volumes manager adopts the daemon", testkit.Until(func() bool {
		return n.m.Attachment(path) != nil
	}))
	adoptTook := time.Since(tStart)
	w.waitOK(t, time.Now(), 5, "after the restart")

	if got := n.daemon(t, "db", "data"); got != daemon || !got.Alive() {
		t.Fatalf("after the restart the volume daemon is %+v, want the adopted %+v", got, daemon)
	}
	n.holds(t, c, img, "db", "data") // same owner address as before
	if p := qemuPID(t, n.dir, "db"); p != qpid {
		t.Fatalf("qemu is pid %d after the restart, was %d: the VM was restarted", p, qpid)
	}
	ok, failed, maxTook, firstErr := summarize(w.since(tBefore))
	if failed > 0 {
		t.Fatalf("%d of %d write rounds failed across the agent restart; first: %v", failed, ok+failed, firstErr)
	}
	t.Logf("agent restart: %d write rounds before, %d while stopped, %d after, none failed, slowest %v; agent down %v; new agent → VM running with the daemon adopted %v (same qemu pid %d, same daemon pid %d holding the lock as %s)",
		len(w.since(tBefore))-len(w.since(tStop)), len(w.since(tStop))-len(w.since(tStart)), len(w.since(tStart)),
		maxTook.Round(time.Millisecond), tStart.Sub(tStop).Round(time.Millisecond), adoptTook.Round(time.Millisecond),
		qpid, daemon.PID, daemon.Addr)

	// The daemon dies while the VM runs: the agent's supervisor starts a
	// new one, which takes the lock; qemu's NBD client reconnects on the
	// guest's next request.
	tKill := time.Now()
	if err := killPID(daemon.PID); err != nil {
		t.Fatal(err)
	}
	var next struct {
		pid  int
		addr string
	}
	testkit.WaitFor(t, cephWait, "a new volume daemon holding the lock", testkit.Detail(func() (bool, string) {
		d := n.daemon(t, "db", "data")
		owners := ownerAddrs(t, c, img)
		next.pid, next.addr = d.PID, d.Addr
		return d.PID != daemon.PID && d.Alive() && slices.Equal(owners, []string{d.Addr}), fmt.Sprintf("daemon %+v, owners %v", d, owners)
	}))
	restartTook := time.Since(tKill)
	w.waitOK(t, time.Now(), 5, "after the daemon was replaced")
	w.halt()
	if p := qemuPID(t, n.dir, "db"); p != qpid {
		t.Fatalf("qemu is pid %d after the daemon restart, was %d", p, qpid)
	}
	if !slices.Contains(n.rec.reported(), next.addr) {
		t.Errorf("the heartbeat reports %v, not the new daemon's address %s", n.rec.reported(), next.addr)
	}
	rs := w.since(tKill)
	ok, failed, _, firstErr = summarize(rs)
	recovered := time.Duration(0)
	for _, r := range rs {
		if r.err == nil {
			recovered = r.at.Sub(tKill)
			break
		}
	}
	ioErrors := strings.Count(n.console("db"), "I/O error")
	t.Logf("daemon killed: new daemon (pid %d → %d) holds the lock after %v; first good write round %v after the kill; %d rounds failed meanwhile (first: %v), then %d good; the guest console has %d I/O error lines",
		daemon.PID, next.pid, restartTook.Round(time.Millisecond), recovered.Round(time.Millisecond), failed, firstErr, ok, ioErrors)

	// The last marker is on the disk, after the VM stopped and the lock
	// was released.
	w.mu.Lock()
	last := ""
	for _, r := range w.rounds {
		if r.err == nil {
			last = r.marker
		}
	}
	w.mu.Unlock()
	st.unassign("db")
	testkit.WaitFor(t, cephWait, "db stopped and its lock released", testkit.Detail(func() (bool, string) {
		owners := ownerAddrs(t, c, img)
		return len(owners) == 0 && !isQemu(qpid), fmt.Sprintf("owners %v, qemu runs: %v", owners, isQemu(qpid))
	}))
	h, err := c.Lock(context.Background(), "rbd", img)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := h.Release(); err != nil {
			t.Error(err)
		}
	}()
	buf := make([]byte, len(last)+2)
	if _, err := h.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if want := last + "\n\x00"; string(buf) != want {
		t.Errorf("the image starts with %q, want the last marker written %q", buf, want)
	}
}

// killPID kills pid with SIGKILL.
func killPID(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
