//go:build ceph

package ceph

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

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
	sock := filepath.Join(t.TempDir(), "data")

	// Not fenced: the new node must wait.
	var locked *volumes.LockedError
	if _, err := (volumes.NBDAttacher{}).Attach(ctx, next, ref, sock); !errors.As(err, &locked) {
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
	att, err := (volumes.NBDAttacher{}).Attach(ctx, next, ref, sock)
	if err != nil {
		t.Fatalf("Attach after fencing the holder = %v", err)
	}
	defer att.Detach(ctx)
	if _, err := held.WriteAt([]byte("late"), 0); volumes.Errno(err) != -108 {
		t.Fatalf("the fenced holder's write = %v, want ESHUTDOWN (-108)", err)
	}
}
