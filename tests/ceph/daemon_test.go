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
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/volumes"
)

// daemonOf reads the identity of the daemon serving path.
func daemonOf(t testing.TB, path string) volumes.DaemonIdentity {
	t.Helper()
	id, err := volumes.ReadDaemonIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestCephDaemonOutlivesItsManagerAndIsAdopted: the volume daemon is not
// the agent's: closing the manager (the agent exits) leaves it serving with
// the lock; a new manager adopts it without disturbing it (same process,
// same lock holder); a recorded daemon that died is replaced at once (its
// stale lock broken); Detach stops it and releases the lock.
func TestCephDaemonOutlivesItsManagerAndIsAdopted(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 8}
	vmDir := filepath.Join(shortTempDir(t), "vm")
	path := filepath.Join(vmDir, "volumes", "data")
	// Like microvm.nix's VM directories (microvm:kvm): the runner, which
	// runs as that user, must be able to connect to the socket.
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(vmDir, 4242, 4343); err != nil {
		t.Fatal(err)
	}

	m1 := volumes.NewManager(cfg, nil, nil)
	if err := m1.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	d1 := daemonOf(t, path)
	if st, err := os.Lstat(path); err != nil || st.Sys().(*syscall.Stat_t).Uid != 4242 || st.Sys().(*syscall.Stat_t).Gid != 4343 {
		t.Fatalf("socket %s: %v, %v; want it owned by the VM directory's 4242:4343", path, st, err)
	}
	if got := ownerAddrs(t, c, v.Image); !slices.Equal(got, []string{d1.Addr}) {
		t.Fatalf("lock owners %v right after Attach (before any VM wrote), want the daemon %s", got, d1.Addr)
	}
	if !slices.Contains(m1.ClientAddrs(), d1.Addr) {
		t.Fatalf("ClientAddrs %v lacks the daemon's %s", m1.ClientAddrs(), d1.Addr)
	}
	if out, err := qemuIO(t, path, "write -P 0x61 0 64k"); err != nil {
		t.Fatalf("write through the daemon: %v\n%s", err, out)
	}

	// The agent exits: the daemon keeps serving, with the lock.
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !d1.Alive() {
		t.Fatal("closing the manager stopped the volume daemon")
	}
	if out, err := qemuIO(t, path, "read -P 0x61 0 64k", "write -P 0x62 64k 64k"); err != nil {
		t.Fatalf("the daemon does not serve without its manager: %v\n%s", err, out)
	}

	// A new agent adopts it.
	m2 := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m2.Close(context.Background()) })
	t0 := time.Now()
	if err := m2.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	t.Logf("adopting a running volume daemon: %v", time.Since(t0).Round(time.Millisecond))
	if d := daemonOf(t, path); d != d1 || !d.Alive() {
		t.Fatalf("after adoption the daemon is %+v, want the same %+v", d, d1)
	}
	if got := ownerAddrs(t, c, v.Image); !slices.Equal(got, []string{d1.Addr}) {
		t.Fatalf("lock owners after adoption %v, want %s", got, d1.Addr)
	}
	if !slices.Contains(m2.ClientAddrs(), d1.Addr) {
		t.Fatalf("the adopting manager's ClientAddrs %v lack the daemon's %s", m2.ClientAddrs(), d1.Addr)
	}

	// While no agent runs, the daemon dies (SIGKILL: its lock stays
	// behind). The next agent replaces it at once instead of waiting ~30s
	// for librbd to find the holder dead.
	if err := m2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(d1.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, cephWait, "the killed daemon gone", testkit.Until(func() bool { return !d1.Alive() }))
	m3 := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m3.Close(context.Background()) })
	t0 = time.Now()
	if err := m3.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	t.Logf("replacing a dead volume daemon that left its lock: %v", time.Since(t0).Round(time.Millisecond))
	d3 := daemonOf(t, path)
	if d3.PID == d1.PID || !d3.Alive() {
		t.Fatalf("the dead daemon was not replaced: %+v", d3)
	}
	if got := ownerAddrs(t, c, v.Image); !slices.Equal(got, []string{d3.Addr}) {
		t.Fatalf("lock owners %v, want the new daemon %s", got, d3.Addr)
	}
	if out, err := qemuIO(t, path, "read -P 0x61 0 64k", "read -P 0x62 64k 64k"); err != nil {
		t.Fatalf("data written through the old daemon: %v\n%s", err, out)
	}

	// Detach stops the daemon and releases the lock.
	if err := m3.Detach(ctx, path); err != nil {
		t.Fatal(err)
	}
	if d3.Alive() {
		t.Fatal("the daemon runs after Detach")
	}
	if got := ownerAddrs(t, c, v.Image); len(got) != 0 {
		t.Fatalf("lock owners after Detach %v, want none", got)
	}
	for _, p := range []string{path, path + ".daemon"} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Detach: %v", p, err)
		}
	}
}

// TestCephKilledDaemonIsRestartedAndRetakesTheLock: while a volume is
// attached, a daemon that dies is replaced by a new one that takes the lock
// at once (the dead client's address is blocklisted and its lock broken);
// the data stays; the manager reports the new daemon's address.
func TestCephKilledDaemonIsRestartedAndRetakesTheLock(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 8}
	path := filepath.Join(shortTempDir(t), "vm", "volumes", "data")
	m := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	if err := m.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(context.Background(), path) })
	d1 := daemonOf(t, path)
	if out, err := qemuIO(t, path, "write -P 0x71 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	t0 := time.Now()
	if err := syscall.Kill(d1.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var d2 volumes.DaemonIdentity
	testkit.WaitFor(t, cephWait, "a new daemon holding the lock", testkit.Detail(func() (bool, string) {
		d, err := volumes.ReadDaemonIdentity(path)
		if err != nil || d.PID == d1.PID || !d.Alive() {
			return false, fmt.Sprintf("daemon %+v, %v", d, err)
		}
		// The identity is recorded just before the socket is published:
		// wait for the published socket too.
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil || st.Ino != d.SocketIno {
			return false, fmt.Sprintf("socket at %s not yet the new daemon's (inode %d, want %d): %v", path, st.Ino, d.SocketIno, err)
		}
		got := ownerAddrs(t, c, v.Image)
		d2 = d
		return slices.Equal(got, []string{d.Addr}), fmt.Sprintf("owners %v, daemon %s", got, d.Addr)
	}))
	t.Logf("killed volume daemon → new daemon holding the lock and serving: %v", time.Since(t0).Round(time.Millisecond))
	if out, err := qemuIO(t, path, "read -P 0x71 0 64k", "write -P 0x72 64k 4k"); err != nil {
		t.Fatalf("through the new daemon: %v\n%s", err, out)
	}
	if addrs := m.ClientAddrs(); !slices.Contains(addrs, d2.Addr) || slices.Contains(addrs, d1.Addr) {
		t.Errorf("ClientAddrs %v, want the new daemon's %s and not the dead one's %s", addrs, d2.Addr, d1.Addr)
	}
	bl, err := c.Blocklisted(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(bl, d1.Addr) {
		t.Errorf("the dead daemon's address %s is not blocklisted (blocklist %v)", d1.Addr, bl)
	}
	t.Cleanup(func() { _ = c.Unblocklist(context.Background(), []string{d1.Addr}) })
}

// TestCephDaemonAttachWaitsForAnotherNodesDaemon: a second node's attach
// finds the first node's daemon holding the lock (taken at attach time,
// before any VM wrote) and waits; after the first detaches, the second
// node's daemon takes the lock and sees the data.
func TestCephDaemonAttachWaitsForAnotherNodesDaemon(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 8}
	dir := shortTempDir(t)
	p1, p2 := filepath.Join(dir, "n1", "data"), filepath.Join(dir, "n2", "data")
	m1, m2 := volumes.NewManager(cfg, nil, nil), volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m1.Close(context.Background()); _ = m2.Close(context.Background()) })
	if err := m1.Attach(ctx, v, p1); err != nil {
		t.Fatal(err)
	}
	var locked *volumes.LockedError
	if err := m2.Attach(ctx, v, p2); !errors.As(err, &locked) {
		t.Fatalf("second node's Attach = %v, want a *LockedError", err)
	}
	if _, err := os.Lstat(p2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused attach left %s: %v", p2, err)
	}
	if out, err := qemuIO(t, p1, "write -P 0x33 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := m1.Detach(ctx, p1); err != nil {
		t.Fatal(err)
	}
	if err := m2.Attach(ctx, v, p2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m2.Detach(context.Background(), p2) })
	if got, d := ownerAddrs(t, c, v.Image), daemonOf(t, p2); !slices.Equal(got, []string{d.Addr}) {
		t.Fatalf("lock owners %v, want node 2's daemon %s", got, d.Addr)
	}
	if out, err := qemuIO(t, p2, "read -P 0x33 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestCephDaemonStartFailuresSayWhatToDo: a missing qemu-storage-daemon or
// a qemu without its rbd driver fails the attach with a message that says
// what to install; nothing is left at the path and no lock is taken.
func TestCephDaemonStartFailuresSayWhatToDo(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 4}
	if _, err := c.Ensure(ctx, v.Pool, v.Image, v.SizeMiB); err != nil {
		t.Fatal(err)
	}
	dir := shortTempDir(t)
	noRBD := filepath.Join(dir, "qemu-storage-daemon")
	// What Debian's qemu-storage-daemon says without qemu-block-extra.
	script := "#!/bin/sh\necho \"qemu-storage-daemon: --blockdev driver=rbd,node-name=disk: Unknown driver 'rbd'\" >&2\nexit 1\n"
	if err := os.WriteFile(noRBD, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, bin string
		want      []string
	}{
		{"no qemu-storage-daemon", filepath.Join(dir, "missing"), []string{"qemu-system-common", "qemu-block-extra", "--volume-attach=kernel"}},
		{"no rbd driver", noRBD, []string{"Unknown driver 'rbd'", "install Debian's qemu-block-extra"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"), "data")
			_, err := (volumes.DaemonAttacher{Config: cfg, Bin: tt.bin}).Attach(ctx, c, v, path)
			if err == nil {
				t.Fatal("Attach succeeded")
			}
			t.Logf("%v", err)
			for _, w := range append(tt.want, v.Pool+"/"+v.Image) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q", w)
				}
			}
			for _, p := range []string{path, path + ".new", path + ".daemon"} {
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a failed attach left %s: %v", p, err)
				}
			}
			if got := ownerAddrs(t, c, v.Image); len(got) != 0 {
				t.Errorf("a failed attach left the lock with %v", got)
			}
		})
	}
}

// TestCephDetachOfALeftDaemonStopsIt: a new manager that never attached a
// path (its agent restarted after the VM moved away) can still detach it:
// the daemon the previous agent left there is stopped and the lock released.
func TestCephDetachOfALeftDaemonStopsIt(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	ctx := context.Background()
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 4}
	path := filepath.Join(shortTempDir(t), "vm", "volumes", "data")
	m1 := volumes.NewManager(cfg, nil, nil)
	if err := m1.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	d := daemonOf(t, path)
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m2 := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m2.Close(context.Background()) })
	if err := m2.Detach(ctx, path); err != nil {
		t.Fatal(err)
	}
	if d.Alive() {
		t.Fatal("the left daemon still runs")
	}
	if got := ownerAddrs(t, c, v.Image); len(got) != 0 {
		t.Fatalf("lock owners %v, want none", got)
	}
	if err := m2.Detach(ctx, path); err != nil { // nothing left: not an error
		t.Fatal(err)
	}
}
