//go:build ceph

package ceph

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/tests/microvm"
)

// A real qemu microVM (the demo's runner, software emulation) writes a
// marker to its RBD-backed disk, is moved to another node and reads the
// marker back there. The disk is the image each node's agent locks and
// serves over NBD at STATE/db/volumes/data; qemu reads it as a virtio-blk
// disk, and the guest's HTTP server writes and reads the marker
// (/cgi-bin/write?data=MARKER, /cgi-bin/read?data).
func TestCephQemuMicroVMWritesAMarkerIsMovedAndReadsItBack(t *testing.T) {
	cfg := requireCeph(t)
	microvm.Require(t)
	c := connect(t)
	reaper := newQemuReaper(t) // registered first: checks after the agents stopped
	// Both nodes run the same runner on this machine, one after the other,
	// so they forward the same port.
	port := microvm.FreePort(t)
	built := microvm.Build(t, microvm.Options{Name: "db", Port: port, Volumes: []string{"data"}})
	r := spec.Runner{Drv: built.Drv, Out: built.Out}
	clusterName := fmt.Sprintf("q%d-%d", os.Getpid(), seq.Add(1))
	img := clusterName + ".db.data"
	st := newTestState(clusterName)
	n1, n2 := startNode(t, 1, st, cfg), startNode(t, 2, st, cfg)
	vols := map[string]spec.Volume{"data": {SizeMiB: 16, Pool: "rbd"}}
	defer func() {
		if t.Failed() {
			t.Logf("node 1's console:\n%s\nnode 2's console:\n%s", n1.console("db"), n2.console("db"))
		}
	}()

	// On node 1 the image is created and locked, then qemu boots on it.
	t0 := time.Now()
	st.assign("db", 1, r, vols)
	n1.waitPhase("db", replicated.PhaseRunning, nil)
	reaper.add(qemuPID(t, n1.dir, "db"))
	var first string
	testkit.WaitFor(t, cephWait, "the guest on node 1 to read its volume over HTTP", testkit.Detail(func() (bool, string) {
		b, err := guestGet(port, "/cgi-bin/read?data")
		first = b
		return err == nil, fmt.Sprint(err)
	}))
	t.Logf("assignment → guest on node 1 reads its new volume: %v", time.Since(t0).Round(time.Millisecond))
	if first != "" {
		t.Fatalf("a new volume reads %q, want nothing (zeros)", first)
	}
	daemon1 := n1.holds(t, c, img, "db", "data")
	pid1 := qemuPID(t, n1.dir, "db")

	marker := fmt.Sprintf("blixard-marker-%d-%d", os.Getpid(), time.Now().UnixNano())
	tWrite := time.Now()
	if b, err := guestGet(port, "/cgi-bin/write?data="+marker); err != nil || b != "wrote "+marker+" to data" {
		t.Fatalf("writing the marker on node 1: %q, %v", b, err)
	}
	writeTook := time.Since(tWrite)
	if b, err := guestGet(port, "/cgi-bin/read?data"); err != nil || b != marker {
		t.Fatalf("node 1's guest reads %q (%v) after writing %q", b, err, marker)
	}

	// The move. In the cluster a pushed commit changes the plan and the
	// committed assignment moves db to node 2; the agents only ever see the
	// replicated state, so in this package-level test changing that state
	// stands in for the push. Node 1 powers the guest off (QMP
	// system_powerdown) and only then releases the lock; node 2, retrying,
	// takes it and boots the same runner on the same image.
	tMove := time.Now()
	st.assign("db", 2, r, vols)
	n2.waitPhase("db", replicated.PhaseRunning, nil)
	moveTook := time.Since(tMove)
	pid2 := qemuPID(t, n2.dir, "db")
	reaper.add(pid2)
	if isQemu(pid1) {
		t.Fatalf("node 2 started db while node 1's qemu (pid %d) still runs", pid1)
	}
	for _, want := range []string{"microvm[db]: power button pressed; powering off",
		fmt.Sprintf("microvm-shutdown: qemu (pid %d) exited", pid1)} {
		if s := n1.console("db"); !strings.Contains(s, want) {
			t.Errorf("node 1 did not stop the guest cleanly: its console has no %q", want)
		}
	}
	n2.holds(t, c, img, "db", "data")
	if daemon1.Alive() {
		t.Errorf("node 1's volume daemon (pid %d) still runs after the move", daemon1.PID)
	}

	var got string
	testkit.WaitFor(t, cephWait, "the guest on node 2 to read its volume over HTTP", testkit.Detail(func() (bool, string) {
		b, err := guestGet(port, "/cgi-bin/read?data")
		got = b
		return err == nil, fmt.Sprint(err)
	}))
	total := time.Since(tWrite)
	if got != marker {
		t.Fatalf("after the move the guest reads %q, want the marker %q written on node 1", got, marker)
	}
	if s := n2.console("db"); !strings.Contains(s, "microvm[db]: volume data is /dev/vda (16777216 bytes)") {
		t.Errorf("node 2's console does not show the volume's disk:\n%s", s)
	}
	t.Logf("write → move → read-back: %v (write %v; reassignment → running on node 2 (clean stop, lock hand-over, attach, start) %v; start → marker read %v)",
		total.Round(time.Millisecond), writeTook.Round(time.Millisecond), moveTook.Round(time.Millisecond),
		(total - writeTook - moveTook).Round(time.Millisecond))

	// Removed from the flake: node 2 powers the guest off and releases the
	// lock; the image and its data stay.
	st.unassign("db")
	testkit.WaitFor(t, cephWait, "db stopped on node 2 and its lock released", testkit.Detail(func() (bool, string) {
		owners := ownerAddrs(t, c, img)
		return len(owners) == 0 && !isQemu(pid2), fmt.Sprintf("owners %v, qemu (pid %d) runs: %v", owners, pid2, isQemu(pid2))
	}))
	if ok, err := c.Exists(context.Background(), "rbd", img); err != nil || !ok {
		t.Fatalf("image %s after removal from the flake: exists %v, %v; want it kept", img, ok, err)
	}
	// The marker is in the RBD image itself, as the guest wrote it.
	h, err := c.Lock(context.Background(), "rbd", img)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := h.Release(); err != nil {
			t.Error(err)
		}
	}()
	buf := make([]byte, len(marker)+2)
	if _, err := h.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if want := marker + "\n\x00"; string(buf) != want {
		t.Errorf("the image starts with %q, want %q", buf, want)
	}
}
