//go:build ceph

package ceph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/volumes"
)

// TestCephAttachBreaksOnlyAFencedHoldersLock: the attach path of the node a
// VM moved to takes over the lock of a holder the leader blocklisted, and
// waits (LockedError) while the holder is not fenced.
func TestCephAttachBreaksOnlyAFencedHoldersLock(t *testing.T) {
	old, next := connect(t), connect(t)
	ctx := context.Background()
	img := imageName(t)
	if _, err := old.Ensure(ctx, "rbd", img, 4); err != nil {
		t.Fatal(err)
	}
	held, err := old.Lock(ctx, "rbd", img)
	if err != nil {
		t.Fatal(err)
	}
	ref := spec.VolumeRef{Name: "data", Image: img, Pool: "rbd", SizeMiB: 4}
	sock := filepath.Join(shortTempDir(t), "data")
	att := volumes.DaemonAttacher{Config: requireCeph(t)}

	// Not fenced: the new node must wait.
	var locked *volumes.LockedError
	if _, err := att.Attach(ctx, next, ref, sock); !errors.As(err, &locked) {
		t.Fatalf("Attach against a live holder = %v, want a *LockedError", err)
	}

	// Fenced (what the leader does before it marks the node down): the new
	// node breaks the stale lock and attaches.
	oldAddrs, err := old.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Blocklist(ctx, oldAddrs, time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Unblocklist(context.Background(), oldAddrs) })
	a, err := att.Attach(ctx, next, ref, sock)
	if err != nil {
		t.Fatalf("Attach after fencing the holder = %v", err)
	}
	defer a.Detach(ctx)
	if _, err := held.WriteAt([]byte("late"), 0); volumes.Errno(err) != -108 {
		t.Fatalf("the fenced holder's write = %v, want ESHUTDOWN (-108)", err)
	}
}

// TestCephNixAgentFencingCoversTheVolumeDaemons: the chain from a node's
// heartbeat to the leader's fence, with real agents. Node 1 runs db (a
// runner with an RBD volume; qemu-io through its socket stands in for the
// VM's writes): its heartbeats carry its volume daemon's Ceph address,
// which the replicated state adds to the addresses node 1 registered. Node
// 1's agent dies (blixard killed: its VM and daemon keep running, with the
// lock). The leader's fencer blocklists every address node 1 has: the
// daemon's writes fail from then on; db moves to node 2, whose agent breaks
// the fenced lock and whose daemon takes it; node 1's data is there and
// node 1's daemon still cannot write.
func TestCephNixAgentFencingCoversTheVolumeDaemons(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	r := makeRunner(t)
	clusterName := fmt.Sprintf("f%d-%d", os.Getpid(), seq.Add(1))
	img := clusterName + ".db.data"
	st := newTestState(clusterName)
	leader := testkit.NewStore(nil)
	n1 := newNode(t, 1, st, cfg, false, leader) // as under `blixard serve`
	n2 := newNode(t, 2, st, cfg, true, leader)
	for _, n := range []*node{n1, n2} {
		addrs, err := n.m.Addrs(ctx) // what node.Run registers
		if err != nil {
			t.Fatal(err)
		}
		reg := testkit.Register(n.id)
		reg.RegisterNode.CephAddrs = addrs
		if res, err := leader.Propose(ctx, reg); err != nil || !res.OK() {
			t.Fatalf("register node %d: %+v %v", n.id, res, err)
		}
	}
	registered, err := n1.m.Addrs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vols := map[string]spec.Volume{"data": {SizeMiB: 8, Pool: "rbd"}}

	st.assign("db", 1, r, vols)
	n1.waitPhase("db", replicated.PhaseRunning, nil)
	d1 := n1.holds(t, c, img, "db", "data")
	sock1 := nodeagent.VolumePath(n1.dir, "db", "data")
	if out, err := qemuIO(t, sock1, "write -P 0x11 0 64k"); err != nil {
		t.Fatalf("node 1's write: %v\n%s", err, out)
	}
	var node1 *replicated.Node
	testkit.WaitFor(t, cephWait, "node 1's heartbeat adds its daemon's address", testkit.Detail(func() (bool, string) {
		s, _ := leader.Read(ctx)
		node1 = s.Nodes[1]
		return node1 != nil && slices.Contains(node1.CephAddrs, d1.Addr), fmt.Sprintf("node 1 %+v", node1)
	}))
	if !slices.Contains(node1.CephAddrs, registered[0]) {
		t.Fatalf("node 1's addresses %v lost the registered %v", node1.CephAddrs, registered)
	}

	// Node 1 goes silent: its agent dies; its VM and daemon keep running.
	n1.stop()
	if !d1.Alive() {
		t.Fatal("node 1's volume daemon stopped with its agent")
	}

	// The leader fences node 1 with the addresses the replicated state
	// has for it (node/adapters.go's fencer does exactly this).
	lm := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = lm.Close(context.Background()) })
	t0 := time.Now()
	fenced, err := volumes.NewFencer(lm, time.Hour).Fence(ctx, 1, node1.CephAddrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fenced node 1's %d addresses (registered client and volume daemon) in %v", len(fenced), time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() { _ = c.Unblocklist(context.Background(), fenced) })
	if !slices.Contains(fenced, d1.Addr) {
		t.Fatalf("fenced %v, want the daemon's %s among them", fenced, d1.Addr)
	}
	if out, err := qemuIO(t, sock1, "write -P 0x66 0 4k"); err == nil {
		t.Fatalf("node 1's daemon could still write after the fence:\n%s", out)
	} else {
		t.Logf("node 1's daemon after the fence: %s", strings.TrimSpace(out))
	}

	// db moves to node 2: its agent breaks the fenced lock.
	t0 = time.Now()
	st.assign("db", 2, r, vols)
	n2.waitPhase("db", replicated.PhaseRunning, nil)
	t.Logf("reassignment → running on node 2, breaking the fenced lock: %v", time.Since(t0).Round(time.Millisecond))
	n2.holds(t, c, img, "db", "data")
	sock2 := nodeagent.VolumePath(n2.dir, "db", "data")
	if out, err := qemuIO(t, sock2, "read -P 0x11 0 64k", "write -P 0x22 0 64k"); err != nil {
		t.Fatalf("node 2 through its daemon: %v\n%s", err, out)
	}
	if out, err := qemuIO(t, sock1, "write -P 0x66 0 4k"); err == nil {
		t.Fatalf("node 1's fenced daemon wrote after node 2 took over:\n%s", out)
	}
	if out, err := qemuIO(t, sock2, "read -P 0x22 0 64k"); err != nil {
		t.Fatalf("node 2's data: %v\n%s", err, out)
	}
}
