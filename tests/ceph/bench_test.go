//go:build ceph

package ceph

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/volumes"
)

// benchAttach measures Manager.Attach (ensure, start a volume daemon, take
// the lock through it, publish its NBD socket) of a new image (create) or
// of an existing one; Detach is not timed.
func benchAttach(b *testing.B, existing bool) {
	cfg := requireCeph(b)
	ctx := context.Background()
	m := volumes.NewManager(cfg, nil, nil)
	b.Cleanup(func() { _ = m.Close(context.Background()) })
	if _, err := m.Conn(ctx); err != nil { // connecting is not what is measured
		b.Fatal(err)
	}
	dir := shortTempDir(b)
	existingImg := imageName(b)
	for i := 0; b.Loop(); i++ {
		v := spec.VolumeRef{Name: "data", Image: existingImg, Pool: "rbd", SizeMiB: 64}
		if !existing {
			v.Image = imageName(b)
		}
		path := filepath.Join(dir, "vol")
		if err := m.Attach(ctx, v, path); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.Detach(ctx, path); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func BenchmarkCephAttachNewImage(b *testing.B)      { benchAttach(b, false) }
func BenchmarkCephAttachExistingImage(b *testing.B) { benchAttach(b, true) }

// BenchmarkCephLockHandover measures one hand-over between two clients:
// the holder releases, the other takes the lock.
func BenchmarkCephLockHandover(b *testing.B) {
	ctx := context.Background()
	conns := [2]*volumes.Conn{connect(b), connect(b)}
	img := imageName(b)
	if _, err := conns[0].Ensure(ctx, "rbd", img, 4); err != nil {
		b.Fatal(err)
	}
	h, err := conns[0].Lock(ctx, "rbd", img)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		if err := h.Release(); err != nil {
			b.Fatal(err)
		}
		if h, err = conns[(i+1)%2].Lock(ctx, "rbd", img); err != nil {
			b.Fatal(err)
		}
	}
	_ = h.Release()
}

// BenchmarkCephRejoin measures a fenced node's way back without a
// restart, on a node with one attached volume: Manager.Reconnect (read the
// blocklist, stop the fenced volume daemon, a new client, break its lock)
// and the leader's Fencer.Unfence of the old addresses. Fencing the node
// and attaching the volume again are not timed.
func BenchmarkCephRejoin(b *testing.B) {
	cfg := requireCeph(b)
	ctx := context.Background()
	m := volumes.NewManager(cfg, nil, nil)
	b.Cleanup(func() { _ = m.Close(context.Background()) })
	lm := volumes.NewManager(cfg, nil, nil)
	b.Cleanup(func() { _ = lm.Close(context.Background()) })
	f := volumes.NewFencer(lm, time.Hour)
	if _, err := lm.Conn(ctx); err != nil { // connecting is not what is measured
		b.Fatal(err)
	}
	v := spec.VolumeRef{Name: "data", Image: imageName(b), Pool: "rbd", SizeMiB: 8}
	path := filepath.Join(shortTempDir(b), "vol")
	for b.Loop() {
		b.StopTimer()
		if err := m.Attach(ctx, v, path); err != nil {
			b.Fatal(err)
		}
		fenced, err := f.Fence(ctx, 1, m.ClientAddrs())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := m.Reconnect(ctx)
		if err != nil || len(res.Stopped) != 1 {
			b.Fatalf("Reconnect = %+v, %v", res, err)
		}
		if err := f.Unfence(ctx, 1, fenced); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = m.Detach(ctx, path)
}
