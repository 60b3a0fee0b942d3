//go:build ceph

package ceph

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/volumes"
)

// leaderFencer is node/adapters.go's fencer for the test's leader: it
// fences and lifts fences through the leader's own client. It fails the
// test when a fence is lifted before the fenced node reconnected: lifting
// the entry of a client that is still open would revive it.
type leaderFencer struct {
	t           *testing.T
	f           *volumes.Fencer
	reconnected *atomic.Bool
	lifted      atomic.Int32
}

func (l *leaderFencer) Fence(ctx context.Context, n *replicated.Node) ([]string, error) {
	return l.f.Fence(ctx, n.ID, n.CephAddrs)
}

func (l *leaderFencer) Unfence(ctx context.Context, n *replicated.Node, addrs []string) error {
	if !l.reconnected.Load() {
		l.t.Errorf("the leader lifted node %d's fence %v before the node reconnected", n.ID, addrs)
	}
	l.lifted.Add(1)
	return l.f.Unfence(ctx, n.ID, addrs)
}

// emptySource is a cluster repository with no commit: the test's leader
// only judges nodes.
type emptySource struct{}

func (emptySource) Fetch(context.Context) (reconciler.Fetched, error) {
	return reconciler.Fetched{}, nil
}

// heartbeats stands in for node 1's agent: while not paused it proposes a
// heartbeat every 100ms carrying the manager's client addresses, as
// nodeagent does. It stops when the test ends.
func heartbeats(t *testing.T, store *testkit.Store, id uint64, m *volumes.Manager, paused *atomic.Bool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if paused.Load() {
				continue
			}
			_, _ = store.Propose(ctx, replicated.Command{Type: replicated.CmdNodeHeartbeat, At: time.Now(),
				NodeHeartbeat: &replicated.NodeHeartbeat{ID: id, CephAddrs: m.ClientAddrs()}})
		}
	}()
}

// cephBlocklist is what `ceph osd blocklist ls` prints: one entry per line,
// "ADDR EXPIRY".
func cephBlocklist(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ceph", "-c", cluster.conf, "-k", filepath.Join(cluster.dir, "keyring"), "osd", "blocklist", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ceph osd blocklist ls: %v: %s", err, out)
	}
	var addrs []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "/") {
			addrs = append(addrs, f[0])
		}
	}
	return addrs
}

// TestCephFencedNodeRejoinsWithoutARestart: node 1 attaches a volume (a
// qemu-storage-daemon) and heartbeats; it goes silent and the leader (the
// real reconciler loop, fencing through a Ceph client of its own) fences
// its agent's client and its daemon and marks it down. Its manager then
// fails with ErrFenced. The operator makes it ready; the node wiring calls
// Reconnect, which stops the fenced daemon, replaces the client and breaks
// the fenced lock; the heartbeats report the new client and none of the
// fenced ones, so the leader lifts the blocklist entries (gone from `ceph
// osd blocklist ls`) and records it. The volume attaches again on node 1,
// with its data, and a new one attaches too: no blixard restart.
func TestCephFencedNodeRejoinsWithoutARestart(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	store := testkit.NewStore(nil)

	// Node 1 registers its client, attaches a volume and heartbeats.
	m1 := volumes.NewManager(cfg, nil, log.With("node", 1))
	t.Cleanup(func() { _ = m1.Close(context.Background()) })
	own, err := m1.Addrs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reg := testkit.Register(1)
	reg.RegisterNode.CephAddrs, reg.RegisterNode.Ceph = own, true
	if res, err := store.Propose(ctx, reg); err != nil || !res.OK() {
		t.Fatalf("register node 1: %+v %v", res, err)
	}
	dir := shortTempDir(t)
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 8}
	path := filepath.Join(dir, "db", "volumes", "data")
	if err := m1.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m1.Detach(context.Background(), path) })
	d1 := daemonOf(t, path)
	if out, err := qemuIO(t, path, "write -P 0x33 0 64k"); err != nil {
		t.Fatalf("node 1's write: %v\n%s", err, out)
	}
	var paused, reconnected atomic.Bool
	heartbeats(t, store, 1, m1, &paused)

	// The leader: the real loop, fencing through its own client.
	lm := volumes.NewManager(cfg, nil, log.With("node", "leader"))
	t.Cleanup(func() { _ = lm.Close(context.Background()) })
	lf := &leaderFencer{t: t, f: volumes.NewFencer(lm, time.Hour), reconnected: &reconnected}
	rec := reconciler.New(reconciler.Options{Store: store, Source: emptySource{}, Resync: 100 * time.Millisecond,
		NodeTimeout: 2 * time.Second, Fencer: lf, Unfencer: lf, Logger: log.With("component", "reconciler")})
	rctx, stop := context.WithCancel(ctx)
	recDone := make(chan error, 1)
	go func() { recDone <- rec.Start(rctx) }()
	t.Cleanup(func() { stop(); <-recDone })

	testkit.WaitFor(t, cephWait, "node 1's heartbeat reports its client and its daemon", testkit.Detail(func() (bool, string) {
		s, _ := store.Read(ctx)
		n := s.Nodes[1]
		return slices.Contains(n.ReportedCephAddrs, d1.Addr) && slices.Contains(n.ReportedCephAddrs, own[0]), fmt.Sprintf("%+v", n)
	}))

	// Node 1 goes silent: the leader fences it and marks it down.
	paused.Store(true)
	var down *replicated.Node
	testkit.WaitFor(t, cephWait, "node 1 fenced and marked down", testkit.Detail(func() (bool, string) {
		s, _ := store.Read(ctx)
		down = s.Nodes[1]
		return down.State == replicated.NodeDown, fmt.Sprintf("%+v", down)
	}))
	old := down.Fenced
	if !slices.Contains(old, d1.Addr) || !slices.Contains(old, own[0]) {
		t.Fatalf("fenced %v, want node 1's client %v and its daemon's %s", old, own, d1.Addr)
	}
	t.Cleanup(func() { _ = c.Unblocklist(context.Background(), old) })
	if bl := cephBlocklist(t); !containsAll(bl, old) {
		t.Fatalf("`ceph osd blocklist ls` = %v after the fence, want %v among them", bl, old)
	}
	if out, err := qemuIO(t, path, "write -P 0x66 0 4k"); err == nil {
		t.Fatalf("node 1's fenced daemon could still write:\n%s", out)
	}
	v2 := spec.VolumeRef{Name: "logs", Image: imageName(t), Pool: "rbd", SizeMiB: 4}
	path2 := filepath.Join(dir, "db", "volumes", "logs")
	if err := m1.Attach(ctx, v2, path2); !errors.Is(err, volumes.ErrFenced) {
		t.Fatalf("attach with the fenced client = %v, want ErrFenced", err)
	}

	// The operator makes node 1 ready (`blixard node ready 1`); its agent
	// heartbeats again and still reports its fenced clients, so the fence
	// stays; the node wiring sees the transition and reconnects.
	if res, err := store.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: time.Now(),
		SetNodeState: &replicated.SetNodeState{ID: 1, State: replicated.NodeReady}}); err != nil || !res.OK() {
		t.Fatalf("node ready: %+v %v", res, err)
	}
	paused.Store(false)
	t0 := time.Now()
	got, err := m1.Reconnect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reconnected.Store(true)
	t.Logf("Reconnect (stop the fenced daemon, new client, break its lock): %v", time.Since(t0).Round(time.Millisecond))
	if !containsAll(got.Fenced, []string{own[0], d1.Addr}) || !slices.Equal(got.Stopped, []string{path}) {
		t.Fatalf("Reconnect = %+v, want the fenced %v and %s, and %s stopped", got, own, d1.Addr, path)
	}
	if len(got.Addrs) == 0 || slices.ContainsFunc(got.Addrs, func(a string) bool { return slices.Contains(old, a) }) {
		t.Fatalf("new client addresses %v, want new ones (fenced: %v)", got.Addrs, old)
	}
	if now := m1.ClientAddrs(); !slices.Equal(now, got.Addrs) {
		t.Fatalf("ClientAddrs after Reconnect = %v, want only the new client %v", now, got.Addrs)
	}
	if d1.Alive() {
		t.Fatalf("the fenced volume daemon (pid %d) still runs", d1.PID)
	}
	if owners := ownerAddrs(t, c, v.Image); len(owners) != 0 {
		t.Fatalf("lock owners %v after Reconnect, want the fenced daemon's lock broken", owners)
	}

	// The leader lifts the fence once the new client is reported.
	testkit.WaitFor(t, cephWait, "the leader lifts node 1's fence", testkit.Detail(func() (bool, string) {
		s, _ := store.Read(ctx)
		n := s.Nodes[1]
		return n.Fenced == nil, fmt.Sprintf("%+v", n)
	}))
	t.Logf("node ready → fence lifted: %v", time.Since(t0).Round(time.Millisecond))
	if bl := cephBlocklist(t); slices.ContainsFunc(bl, func(a string) bool { return slices.Contains(old, a) }) {
		t.Fatalf("`ceph osd blocklist ls` = %v after the lift, want none of %v", bl, old)
	}
	s, _ := store.Read(ctx)
	if n := s.Nodes[1]; slices.ContainsFunc(n.CephAddrs, func(a string) bool { return slices.Contains(old, a) }) {
		t.Fatalf("node 1's addresses %v keep lifted ones %v", n.CephAddrs, old)
	}
	if evs := s.Events; len(evs) == 0 || evs[len(evs)-1].Kind != replicated.EventNodeUnfenced {
		t.Fatalf("last event %+v, want %s", evs[len(evs)-1], replicated.EventNodeUnfenced)
	}
	// Lifting again (a retry after an unknown outcome) is not an error.
	if err := volumes.NewFencer(lm, 0).Unfence(ctx, 1, old); err != nil {
		t.Fatalf("lifting a lifted fence again: %v", err)
	}

	// The agent's normal logic attaches again: the volume, with its data,
	// and a new one.
	if err := m1.Attach(ctx, v, path); err != nil {
		t.Fatalf("attach again after the rejoin: %v", err)
	}
	d2 := daemonOf(t, path)
	if got := ownerAddrs(t, c, v.Image); !slices.Equal(got, []string{d2.Addr}) || slices.Contains(old, d2.Addr) {
		t.Fatalf("lock owners %v, want the new daemon %s", got, d2.Addr)
	}
	if out, err := qemuIO(t, path, "read -P 0x33 0 64k", "write -P 0x44 0 64k"); err != nil {
		t.Fatalf("node 1 through its new daemon: %v\n%s", err, out)
	}
	if err := m1.Attach(ctx, v2, path2); err != nil {
		t.Fatalf("attach a new volume after the rejoin: %v", err)
	}
	t.Cleanup(func() { _ = m1.Detach(context.Background(), path2) })
	if n := lf.lifted.Load(); n != 1 {
		t.Fatalf("the leader lifted the fence %d times, want once (UnfenceNode records it)", n)
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// TestCephReconnectWithoutAFenceChangesNothing: the node wiring may call
// Reconnect whenever the node is not down but the replica still lists a
// fence for it; a manager none of whose clients is blocklisted keeps its
// client and its attachments.
func TestCephReconnectWithoutAFenceChangesNothing(t *testing.T) {
	cfg := requireCeph(t)
	ctx := context.Background()
	m := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	if got, err := m.Reconnect(ctx); err != nil || !reflect.DeepEqual(got, volumes.Reconnected{}) {
		t.Fatalf("Reconnect before connecting = %+v, %v; want nothing done", got, err)
	}
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 4}
	path := filepath.Join(shortTempDir(t), "data")
	if err := m.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(context.Background(), path) })
	d, before := daemonOf(t, path), m.ClientAddrs()
	got, err := m.Reconnect(ctx)
	if err != nil || !reflect.DeepEqual(got, volumes.Reconnected{}) {
		t.Fatalf("Reconnect of a client not fenced = %+v, %v; want nothing done", got, err)
	}
	if after := m.ClientAddrs(); !slices.Equal(after, before) || daemonOf(t, path) != d || !d.Alive() {
		t.Fatalf("after a Reconnect that found no fence: addresses %v (before %v), daemon %+v alive %v", after, before, daemonOf(t, path), d.Alive())
	}
}

// TestCephAFencedVolumeDaemonIsReplacedNotAdopted: an agent that starts
// on a node whose volume daemon was fenced (blixard restarted instead of
// being readied) must not adopt it: it runs and holds the lock, but its
// image stays dead. It is stopped and a new daemon serves the volume.
func TestCephAFencedVolumeDaemonIsReplacedNotAdopted(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 4}
	path := filepath.Join(shortTempDir(t), "data")
	m1 := volumes.NewManager(cfg, nil, nil)
	if err := m1.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, path, "write -P 0x55 0 64k"); err != nil {
		t.Fatalf("write: %v\n%s", err, out)
	}
	if err := m1.Close(ctx); err != nil { // the agent exits, the daemon stays
		t.Fatal(err)
	}
	d1 := daemonOf(t, path)
	if err := c.Blocklist(ctx, []string{d1.Addr}, time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Unblocklist(context.Background(), []string{d1.Addr}) })

	m2 := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m2.Close(context.Background()) })
	if err := m2.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m2.Detach(context.Background(), path) })
	d2 := daemonOf(t, path)
	if d2.PID == d1.PID || d1.Alive() {
		t.Fatalf("the fenced daemon %+v was adopted or left running (now %+v)", d1, d2)
	}
	if got := ownerAddrs(t, c, v.Image); !slices.Equal(got, []string{d2.Addr}) {
		t.Fatalf("lock owners %v, want the new daemon %s", got, d2.Addr)
	}
	if out, err := qemuIO(t, path, "read -P 0x55 0 64k"); err != nil {
		t.Fatalf("the new daemon does not serve the data: %v\n%s", err, out)
	}
}

// TestCephConnReconnectClosesWhatTheOldSessionHeld: Reconnect gives the
// handle a new client address; an image locked through the old session is
// closed with it (its lock released, its handle failing instead of
// touching a shut-down session).
func TestCephConnReconnectClosesWhatTheOldSessionHeld(t *testing.T) {
	c, other := connect(t), connect(t)
	ctx := context.Background()
	img := imageName(t)
	if _, err := c.Ensure(ctx, "rbd", img, 4); err != nil {
		t.Fatal(err)
	}
	h, err := c.Lock(ctx, "rbd", img)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := c.Addrs()
	if err := c.Reconnect(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := c.Addrs()
	if err != nil || slices.Equal(after, before) {
		t.Fatalf("addresses after Reconnect %v (%v), before %v: want new ones", after, err, before)
	}
	if _, err := h.WriteAt([]byte("x"), 0); err == nil || !strings.Contains(err.Error(), "closed with its client session") {
		t.Fatalf("write through the old session's lock = %v, want it closed", err)
	}
	if err := h.Release(); err != nil {
		t.Fatalf("releasing a handle closed with its session: %v", err)
	}
	if got := ownerAddrs(t, other, img); len(got) != 0 {
		t.Fatalf("lock owners %v after Reconnect, want the old session's lock released", got)
	}
	if _, err := c.Lock(ctx, "rbd", img); err != nil {
		t.Fatalf("locking through the new session: %v", err)
	}
}
