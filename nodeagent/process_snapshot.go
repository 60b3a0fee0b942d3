package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// startThen starts unit name and runs then (a restore) under the unit's
// operation lock, with the runner's exit counted as a stop, not a crash:
// a qemu that exits on a failed load must not be restarted by the backend
// with the restore hook. When then fails the runner is killed and the unit
// ends stopped; the error is then's. With ahead (a runner started ahead
// for this unit, see pool.go) the unit adopts that runner instead of
// spawning one; an ahead runner that cannot be adopted is killed and one
// is spawned.
func (b *ProcessBackend) startThen(ctx context.Context, name string, ahead *aheadRunner, then func(context.Context) error) error {
	if ahead != nil {
		defer func() {
			if ahead != nil {
				_ = ahead.kill() // not adopted
			}
		}()
	}
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	running := u.h != nil
	u.stopping = !running
	b.mu.Unlock()
	if running {
		return nil // as Start: it runs already
	}
	defer func() {
		b.mu.Lock()
		u.stopping = false
		b.mu.Unlock()
	}()
	adopted := false
	if ahead != nil {
		// Adopted, or killed when it cannot be.
		err := b.adoptAheadLocked(u, ahead)
		ahead = nil
		if err != nil {
			b.log.Warn("starting a runner instead", "vm", name, "err", err)
		} else {
			adopted = true
		}
	}
	if !adopted {
		if err := b.startOpLocked(u); err != nil {
			return err
		}
	}
	err := then(ctx)
	if err == nil {
		return nil
	}
	b.mu.Lock()
	h, exited := u.h, u.exited
	if h != nil {
		_ = h.signal(syscall.SIGKILL, true)
	}
	b.mu.Unlock()
	if h != nil {
		select {
		case <-exited:
		case <-ctx.Done():
		}
	}
	b.clearStoppedLocked(u)
	return err
}

// stopBy stops unit name by running stop (a save that quits qemu) under
// the unit's operation lock and waits for the runner to exit: that exit is
// a stop, not a crash. When stop fails the runner runs on.
func (b *ProcessBackend) stopBy(ctx context.Context, name string, stop func(context.Context) error) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	b.mu.Lock()
	h, exited := u.h, u.exited
	if h == nil {
		b.mu.Unlock()
		return fmt.Errorf("stop %s: the runner does not run", name)
	}
	u.stopping = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		u.stopping = false
		b.mu.Unlock()
	}()
	if err := stop(ctx); err != nil {
		return err
	}
	select {
	case <-exited:
	case <-ctx.Done():
		return fmt.Errorf("stop %s: runner (pid %d) still running after the save quit qemu: %w", name, h.id.PID, ctx.Err())
	}
	b.clearStoppedLocked(u)
	return nil
}

// clearStoppedLocked records u stopped after its runner exited (as
// stopOpLocked does). u.op must be held.
func (b *ProcessBackend) clearStoppedLocked(u *procUnit) {
	b.mu.Lock()
	gone := u.h == nil
	if gone {
		u.booted = ""
		u.restarts, u.backoff = 0, 0
		u.since = b.o.Clock.Now()
	}
	b.mu.Unlock()
	if !gone {
		return
	}
	dir := filepath.Join(b.o.StateDir, u.name)
	for _, p := range []string{filepath.Join(dir, "booted"), filepath.Join(dir, "pid")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.log.Warn("cannot remove a stopped runner's record", "vm", u.name, "path", p, "err", err)
		}
	}
}
