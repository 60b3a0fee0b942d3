//go:build ceph

package ceph

import (
	"context"
	"path/filepath"
	"testing"

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
