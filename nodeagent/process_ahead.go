package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/blixard/blixard/vmsnap"
)

// PoolDir is where runners started ahead of their instance's start wait
// (STATE/.pool/NAME, see [aheadRunner]): a name no VM instance can have, so
// the backends' adoption of STATE/NAME/pid passes over it.
const PoolDir = ".pool"

// aheadFiles are what a runner started ahead makes in its working
// directory and others look for in the instance's: the QMP socket (the
// agent's restore, microvm-shutdown), the identity channel's socket and
// qemu's pid file (microvm-shutdown). An adoption moves them there.
var aheadFiles = []string{"qmp.sock", "identity.sock", "qemu.pid"}

// aheadRunner is a runner started before its instance was placed on this
// node (the restore pool's, see pool.go): STATE/.pool/NAME/current's
// bin/microvm-run with STATE/.pool/NAME as its working directory (its own
// network.env and snapshot.env there) and its console appended to the
// instance's console log. It is no unit: Status and List do not show it
// and its exit is no crash. [ProcessBackend.startThen] adopts it as the
// unit's runner; until then the backend only reaps it. Its pid file is
// STATE/.pool/NAME/pid, which Run's adoption kills (a runner started
// ahead that no agent knows is of no use).
type aheadRunner struct {
	name, dir, out string
	h              *procHandle
	cmd            *exec.Cmd
	exited         chan struct{} // closed once it exited and was reaped
	stopWatch      context.CancelFunc
	watchDone      chan struct{} // closed when the watcher returned

	// restored: the restore pool restored the snapshot into it (the guest
	// waits frozen for its identity). Set before the pool hands it out.
	restored bool

	mu       sync.Mutex
	released bool // the watcher was stopped (adoption, kill)
	// ident is the identity channel the pool warmed the guest up on, kept
	// open for the identity (nil: none; see setIdent, takeIdent).
	ident  *vmsnap.IdentityConn
	result string
}

// spawnAhead starts dir/current/bin/microvm-run for instance name in dir
// (the caller wrote current and the files the runner reads there).
func (b *ProcessBackend) spawnAhead(ctx context.Context, name, dir string) (*aheadRunner, error) {
	if err := b.waitReady(ctx); err != nil {
		return nil, err
	}
	b.mu.Lock()
	runCtx := b.runCtx
	b.mu.Unlock()
	if runCtx.Err() != nil {
		return nil, ErrBackendStopped
	}
	out, err := readLink(filepath.Join(dir, "current"))
	if err != nil || out == "" {
		return nil, fmt.Errorf("start %s ahead: %s: no runner linked (%v)", name, filepath.Join(dir, "current"), err)
	}
	// The console log is the instance's.
	if err := os.MkdirAll(filepath.Join(b.o.StateDir, name), 0o755); err != nil {
		return nil, fmt.Errorf("start %s ahead: %w", name, err)
	}
	h, cmd, err := b.execRunner(name, dir, out, "", "pid")
	if err != nil {
		return nil, fmt.Errorf("start %s ahead: %w", name, err)
	}
	wctx, cancel := context.WithCancel(runCtx)
	r := &aheadRunner{name: name, dir: dir, out: out, h: h, cmd: cmd, exited: make(chan struct{}), stopWatch: cancel, watchDone: make(chan struct{})}
	b.watchers.Add(1)
	go b.watchAhead(wctx, r)
	return r, nil
}

// watchAhead reaps r when it exits before it was adopted or killed.
func (b *ProcessBackend) watchAhead(ctx context.Context, r *aheadRunner) {
	defer b.watchers.Done()
	defer close(r.watchDone)
	if err := r.h.wait(ctx); err != nil {
		return // released: the adopter or killer owns r now
	}
	_ = r.cmd.Wait()
	r.mu.Lock()
	r.result = r.cmd.ProcessState.String()
	r.mu.Unlock()
	r.h.close()
	_ = os.Remove(filepath.Join(r.dir, "pid"))
	close(r.exited)
}

// release stops r's watcher; it reports false when r had exited first.
func (r *aheadRunner) release() bool {
	r.mu.Lock()
	if r.released {
		r.mu.Unlock()
		return false
	}
	r.released = true
	r.mu.Unlock()
	r.stopWatch()
	<-r.watchDone
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// alive reports whether r still runs, unadopted and unkilled.
func (r *aheadRunner) alive() bool {
	r.mu.Lock()
	released := r.released
	r.mu.Unlock()
	select {
	case <-r.exited:
		return false
	default:
		return !released
	}
}

// exitResult says how r ended ("" while it runs).
func (r *aheadRunner) exitResult() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.result
}

// kill ends r (its whole process group: the runner is qemu by then, or
// the shell that is about to exec it) and removes its directory.
func (r *aheadRunner) kill() error {
	if !r.release() {
		r.h.close()
		return r.removeDir()
	}
	return r.killReleased()
}

// killReleased is kill after release returned true.
func (r *aheadRunner) killReleased() error {
	r.closeIdent()
	err := r.h.signal(syscall.SIGKILL, true)
	if err == nil {
		_ = r.cmd.Wait()
	}
	r.h.close()
	if err != nil {
		return fmt.Errorf("killing %s's runner started ahead (pid %d): %w", r.name, r.h.id.PID, err)
	}
	return r.removeDir()
}

// closeIdent closes the identity channel the pool kept open, if any.
func (r *aheadRunner) closeIdent() {
	r.mu.Lock()
	c := r.ident
	r.ident = nil
	r.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// setIdent keeps c open for the identity; a runner killed meanwhile has
// no use for it.
func (r *aheadRunner) setIdent(c *vmsnap.IdentityConn) {
	if c == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		_ = c.Close()
		return
	}
	r.ident = c
}

// takeIdent hands over the identity channel the pool kept open (nil: none).
func (r *aheadRunner) takeIdent() *vmsnap.IdentityConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.ident
	r.ident = nil
	return c
}

func (r *aheadRunner) removeDir() error {
	r.closeIdent()
	if err := os.RemoveAll(r.dir); err != nil {
		return fmt.Errorf("removing %s: %w", r.dir, err)
	}
	return nil
}

// adoptAheadLocked makes r unit u's runner: its files move to the
// instance's directory, the unit's records are written as for a spawn and
// a watcher takes over. On an error r is killed and nothing of it is left.
// u.op must be held, and no runner of u runs.
func (b *ProcessBackend) adoptAheadLocked(u *procUnit, r *aheadRunner) error {
	if !r.release() {
		r.h.close()
		_ = r.removeDir()
		return fmt.Errorf("the runner of %s started ahead has exited (%s); see %s", u.name, r.exitResult(), LogPath(b.o.StateDir, u.name))
	}
	fail := func(err error) error {
		_ = r.killReleased()
		return fmt.Errorf("adopting the runner of %s started ahead: %w", u.name, err)
	}
	dir := filepath.Join(b.o.StateDir, u.name)
	for _, f := range aheadFiles {
		err := os.Rename(filepath.Join(r.dir, f), filepath.Join(dir, f))
		if err != nil && !(errors.Is(err, os.ErrNotExist) && f != "qmp.sock") {
			return fail(fmt.Errorf("moving its %s: %w", f, err))
		}
	}
	if err := symlinkAtomic(r.out, filepath.Join(dir, "booted")); err != nil {
		return fail(fmt.Errorf("record booted: %w", err))
	}
	if err := writePidFile(filepath.Join(dir, "pid"), r.h.id); err != nil {
		return fail(fmt.Errorf("record pid: %w", err))
	}
	// The instance's pid file names it now: the pool's record and
	// directory go (an empty directory may be a process's working
	// directory; qemu needs its own no more).
	_ = os.RemoveAll(r.dir)
	h, err := openProc(r.h.id)
	if err != nil {
		return fail(err)
	}
	r.h.close()
	now := b.o.Clock.Now()
	b.mu.Lock()
	u.h, u.cmd, u.exited, u.booted = h, r.cmd, make(chan struct{}), r.out
	u.restarting, u.startedAt, u.since = false, now, now
	exited := u.exited
	b.watchers.Add(1)
	b.mu.Unlock()
	go b.watch(u, h, r.cmd, exited)
	b.log.Debug("runner started ahead adopted", "vm", u.name, "pid", h.id.PID, "out", r.out)
	return nil
}

// killAheadLeftovers kills the runners started ahead that STATE/.pool/*/pid
// names (an agent that stopped without killing them: nobody adopts them)
// except those adopted (an agent that stopped between writing an
// instance's pid file and removing the pool's), and removes STATE/.pool.
func (b *ProcessBackend) killAheadLeftovers(adopted map[procIdentity]bool) {
	pool := filepath.Join(b.o.StateDir, PoolDir)
	entries, err := os.ReadDir(pool)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		b.log.Warn("cannot list the runners started ahead", "dir", pool, "err", err)
		return
	}
	for _, e := range entries {
		id, err := readPidFile(filepath.Join(pool, e.Name(), "pid"))
		if err != nil || adopted[id] {
			continue
		}
		h, err := openProc(id)
		if err != nil {
			continue
		}
		if err := h.signal(syscall.SIGKILL, true); err != nil {
			b.log.Warn("cannot kill a runner started ahead by an earlier agent", "vm", e.Name(), "pid", id.PID, "err", err)
		} else {
			b.log.Info("killed a runner started ahead by an earlier agent", "vm", e.Name(), "pid", id.PID)
		}
		h.close()
	}
	if err := os.RemoveAll(pool); err != nil {
		b.log.Warn("cannot remove the runners started ahead", "dir", pool, "err", err)
	}
}

// runs reports whether unit name's runner is process pid.
func (b *ProcessBackend) runs(name string, pid int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.units[name]
	return u != nil && u.h != nil && u.h.id.PID == pid
}
