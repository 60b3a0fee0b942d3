//go:build ceph

package ceph

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/volumes"
)

func TestCephEnsureCreatesGrowsAndNeverShrinks(t *testing.T) {
	c := connect(t)
	ctx := context.Background()
	img := imageName(t)
	steps := []struct {
		sizeMiB  int
		want     volumes.Ensured
		wantSize uint64
	}{
		{8, volumes.Ensured{Created: true, Size: 8 * volumes.MiB}, 8 * volumes.MiB},
		{8, volumes.Ensured{Size: 8 * volumes.MiB}, 8 * volumes.MiB},
		{16, volumes.Ensured{Grown: true, Size: 16 * volumes.MiB}, 16 * volumes.MiB},
		{4, volumes.Ensured{Size: 16 * volumes.MiB}, 16 * volumes.MiB}, // never shrunk
	}
	for _, s := range steps {
		got, err := c.Ensure(ctx, "rbd", img, s.sizeMiB)
		if err != nil || got != s.want {
			t.Fatalf("Ensure(%d MiB) = %+v, %v; want %+v", s.sizeMiB, got, err, s.want)
		}
		if size, err := c.Size(ctx, "rbd", img); err != nil || size != s.wantSize {
			t.Fatalf("size after Ensure(%d MiB) = %d, %v; want %d", s.sizeMiB, size, err, s.wantSize)
		}
	}
}

func TestCephSecondClientCannotLockUntilFirstReleases(t *testing.T) {
	a, b := connect(t), connect(t)
	ctx := context.Background()
	img := imageName(t)
	if _, err := a.Ensure(ctx, "rbd", img, 4); err != nil {
		t.Fatal(err)
	}
	ha, err := a.Lock(ctx, "rbd", img)
	if err != nil {
		t.Fatal(err)
	}
	aAddrs, _ := a.Addrs()
	_, err = b.Lock(ctx, "rbd", img)
	var locked *volumes.LockedError
	if !errors.As(err, &locked) || len(locked.Owners) != 1 || !slices.Contains(aAddrs, locked.Owners[0].Addr) {
		t.Fatalf("second Lock = %v, want a *LockedError naming the first client %v", err, aAddrs)
	}
	// Breaking the lock of a holder that is not fenced is refused.
	var nf *volumes.NotFencedError
	if err := b.BreakLock(ctx, "rbd", img); !errors.As(err, &nf) {
		t.Fatalf("BreakLock of a live holder = %v, want *NotFencedError", err)
	}
	if _, err := ha.WriteAt([]byte("still mine"), 0); err != nil {
		t.Fatalf("holder cannot write after a refused break: %v", err)
	}
	if err := ha.Release(); err != nil {
		t.Fatal(err)
	}
	hb, err := b.Lock(ctx, "rbd", img)
	if err != nil {
		t.Fatalf("Lock after release = %v", err)
	}
	if err := hb.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestCephDaemonAttachServesTheLockedImage(t *testing.T) {
	cfg := requireCeph(t)
	ctx := context.Background()
	m := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	v := spec.VolumeRef{Name: "data", Image: imageName(t), Pool: "rbd", SizeMiB: 4}
	path := filepath.Join(shortTempDir(t), "vm", "volumes", "data")
	if err := m.Attach(ctx, v, path); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(ctx, v, path); err != nil { // idempotent
		t.Fatal(err)
	}
	if out, err := qemuIO(t, path, "write -P 0xab 0 64k", "read -P 0xab 0 64k"); err != nil {
		t.Fatalf("qemu-io through the NBD export: %v\n%s", err, out)
	}
	c := connect(t)
	owners, err := c.Owners(ctx, "rbd", v.Image)
	addrs := m.ClientAddrs()
	if err != nil || len(owners) != 1 || !slices.Contains(addrs, owners[0].Addr) {
		t.Fatalf("owners = %+v, %v; want one of the manager's clients %v", owners, err, addrs)
	}
	if err := m.Detach(ctx, path); err != nil {
		t.Fatal(err)
	}
	if owners, err := c.Owners(ctx, "rbd", v.Image); err != nil || len(owners) != 0 {
		t.Fatalf("owners after Detach = %+v, %v; want none", owners, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s still exists after Detach: %v", path, err)
	}
}

func TestCephFrozenHolderIsFencedAndItsLateWriteFails(t *testing.T) {
	cfg := requireCeph(t)
	ctx := context.Background()
	c := connect(t)
	img := imageName(t)
	if _, err := c.Ensure(ctx, "rbd", img, 4); err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, cfg, "rbd", img)
	if got := h.write(t, "written-by-the-old-holder"); got != "ok" {
		t.Fatalf("holder's first write: %s", got)
	}
	if err := h.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	// The new node fences the frozen one: blocklist, then break its lock.
	var nf *volumes.NotFencedError
	if err := c.BreakLock(ctx, "rbd", img); !errors.As(err, &nf) {
		t.Fatalf("BreakLock before the blocklist = %v, want *NotFencedError", err)
	}
	if err := c.Blocklist(ctx, h.addrs, time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Unblocklist(context.Background(), h.addrs) })
	bl, err := c.Blocklisted(ctx)
	if err != nil || !slices.Contains(bl, h.addrs[0]) {
		t.Fatalf("blocklist = %v, %v; want it to contain %v", bl, err, h.addrs)
	}
	if err := c.BreakLock(ctx, "rbd", img); err != nil {
		t.Fatal(err)
	}

	// The new holder attaches and writes through its NBD export.
	m := volumes.NewManager(cfg, nil, nil)
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	path := filepath.Join(shortTempDir(t), "volumes", "data")
	if err := m.Attach(ctx, spec.VolumeRef{Name: "data", Image: img, Pool: "rbd", SizeMiB: 4}, path); err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, path, "write -P 0x42 0 4k"); err != nil {
		t.Fatalf("new holder's write: %v\n%s", err, out)
	}

	// The frozen holder continues: its next write fails with ESHUTDOWN.
	if err := h.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	got := h.write(t, "late-write-of-the-fenced-holder")
	if !strings.HasPrefix(got, "err -108 ") {
		t.Fatalf("fenced holder's write after SIGCONT: %q, want err -108 (ESHUTDOWN)", got)
	}
	if out, err := qemuIO(t, path, "read -P 0x42 0 4k"); err != nil {
		t.Fatalf("the new holder's data is not intact: %v\n%s", err, out)
	}
	// Unblocklisting does not give the old client its lock back.
	if err := c.Unblocklist(ctx, h.addrs); err != nil {
		t.Fatal(err)
	}
	owners, err := c.Owners(ctx, "rbd", img)
	addrs := m.ClientAddrs()
	if err != nil || len(owners) != 1 || !slices.Contains(addrs, owners[0].Addr) {
		t.Fatalf("owners = %+v, %v; want only the new holder, one of %v", owners, err, addrs)
	}
	if err := m.Detach(ctx, path); err != nil {
		t.Fatal(err)
	}
}

func TestCephBlocklistRejectsBadAddress(t *testing.T) {
	c := connect(t)
	err := c.Blocklist(context.Background(), []string{"not-an-address"}, time.Minute)
	if err == nil {
		t.Fatal("Blocklist of a malformed address succeeded")
	}
}
