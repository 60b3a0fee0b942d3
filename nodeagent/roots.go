package nodeagent

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// rootBook lets a VM whose runner another VM of this node already rooted
// start without waiting for nix: `nix-store --add-root --indirect
// --realise` costs 20–30 ms even for a valid path, most of a function
// instance's cold start when its name is new on the node. The runner is
// valid and kept from the garbage collector by the other VM's registered
// root; the new VM's root is linked at once and registered with nix in the
// background (until then the other root keeps the runner).
//
// Every change of a root goes through its lock, so a registration that
// finishes late never points a root back at a runner its VM has left.
type rootBook struct {
	mu sync.Mutex
	// registered maps a runner to the roots this process registered for
	// it with nix (which may have moved on since: checked before use).
	registered map[string]map[string]bool // guarded by mu
	// held are the roots being changed (closed when released).
	held map[string]chan struct{} // guarded by mu
	// registering are the background registrations: the agent waits for
	// them when it stops, so none writes a root after it.
	registering sync.WaitGroup
}

func newRootBook() *rootBook {
	return &rootBook{registered: map[string]map[string]bool{}, held: map[string]chan struct{}{}}
}

// lock takes root's lock; the returned function releases it.
func (b *rootBook) lock(ctx context.Context, root string) (func(), error) {
	for {
		b.mu.Lock()
		ch, busy := b.held[root]
		if !busy {
			ch = make(chan struct{})
			b.held[root] = ch
			b.mu.Unlock()
			return func() {
				b.mu.Lock()
				delete(b.held, root)
				b.mu.Unlock()
				close(ch)
			}, nil
		}
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// rooted records that root, registered with nix, points at out.
func (b *rootBook) rooted(root, out string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.registered[out] == nil {
		b.registered[out] = map[string]bool{}
	}
	b.registered[out][root] = true
}

// keeper returns a registered root of this process that still points at
// out: root itself when it is one, else any ("" for none). Roots that
// moved on to another runner are forgotten for out.
func (b *rootBook) keeper(out, root string) string {
	b.mu.Lock()
	roots := slices.Sorted(maps.Keys(b.registered[out]))
	b.mu.Unlock()
	found := ""
	for _, r := range roots {
		if target, err := os.Readlink(r); err != nil || target != out {
			b.mu.Lock()
			delete(b.registered[out], r)
			b.mu.Unlock()
			continue
		}
		if r == root {
			return r
		}
		if found == "" {
			found = r
		}
	}
	return found
}

// linkKept points root at out without nix when a registered root of this
// process keeps out (see rootBook): nothing to do when root is that root
// (an instance started again with the runner it had), else root is linked
// and registered in the background. It reports whether out is kept.
func (r realiser) linkKept(ctx context.Context, root, out string, log *slog.Logger) bool {
	if r.roots == nil {
		return false
	}
	keeper := r.roots.keeper(out, root)
	if keeper == "" {
		return false
	}
	if _, err := os.Stat(out); err != nil {
		return false
	}
	if keeper == root {
		return true
	}
	unlock, err := r.roots.lock(ctx, root)
	if err != nil {
		return false
	}
	err = symlinkAtomic(out, root)
	unlock()
	if err != nil {
		log.Debug("cannot link the runner's root; rooting it with nix", "root", root, "out", out, "err", err)
		return false
	}
	r.roots.registering.Go(func() {
		// Bounded. A registration that fails leaves the runner kept by
		// the other root alone (logged); the VM's next runner is rooted
		// through nix as usual.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if err := r.registerIfLinked(ctx, root, out); err != nil {
			log.Warn("registering a runner's GC root with nix failed; another VM's root keeps the runner for now", "root", root, "out", out, "err", err)
		}
	})
	return true
}

// wait waits for the background registrations, at most for timeout; it
// reports whether they all ended.
func (b *rootBook) wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		b.registering.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// registerIfLinked registers root with nix if it still points at out.
func (r realiser) registerIfLinked(ctx context.Context, root, out string) error {
	unlock, err := r.roots.lock(ctx, root)
	if err != nil {
		return err
	}
	defer unlock()
	if target, err := os.Readlink(root); err != nil || target != out {
		return nil // its VM moved on to another runner: that realisation roots it
	}
	return r.addRootLocked(ctx, root, out)
}

// nixAutoRoots is where nix registers indirect GC roots (a link per root).
const nixAutoRoots = "/nix/var/nix/gcroots/auto"

// seed records the registered roots under dir (the state directory: the
// VMs' gcroot links) that an earlier agent process made, found through
// nix's auto roots in autoDir, so that a restarted agent's first instance
// of a runner another VM keeps needs no nix run either. Unreadable
// entries are skipped: the worst outcome is a realisation through nix.
func (b *rootBook) seed(autoDir, dir string) int {
	entries, err := os.ReadDir(autoDir)
	if err != nil {
		return 0
	}
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	n := 0
	for _, e := range entries {
		root, err := os.Readlink(filepath.Join(autoDir, e.Name()))
		if err != nil || !strings.HasPrefix(root, prefix) {
			continue
		}
		out, err := os.Readlink(root)
		if err != nil || !strings.HasPrefix(out, "/nix/store/") {
			continue
		}
		if _, err := os.Stat(out); err != nil {
			continue
		}
		b.rooted(root, out)
		n++
	}
	return n
}
