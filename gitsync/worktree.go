package gitsync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WorktreePrefix starts every commit token of a [Worktree].
const WorktreePrefix = "worktree-"

// Worktree follows a working tree as it is on disk, uncommitted and
// untracked files included, in place of a remote branch (`blixard dev`).
// Its "commit" is a token made of a hash of the tree, so any edit is a new
// revision: `worktree-` and 16 hex digits of the SHA-256 of every file's
// relative name, mode and content. Ignored: .git and .direnv (directories
// or files) and nix's `result*` symlinks. Evaluate it as a path: flake
// reference of [Worktree.Dir].
//
// Its methods are safe for concurrent use.
type Worktree struct {
	dir    string       // absolute
	logger *slog.Logger // non-nil

	mu   sync.Mutex
	last string // guarded by mu; the last token Fetch returned

	// watching, when set (by tests), is called once Watch watches the tree.
	watching func()
}

// NewWorktree returns a Worktree of dir. It touches neither the disk nor
// starts anything; a missing dir fails at the first Fetch or Watch.
func NewWorktree(dir string, logger *slog.Logger) (*Worktree, error) {
	if dir == "" {
		return nil, errors.New("gitsync: no working tree directory: pass the directory of the cluster flake")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("gitsync: working tree %q: %w", dir, err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Worktree{dir: abs, logger: logger.With("worktree", abs)}, nil
}

// Dir returns the absolute path of the working tree.
func (w *Worktree) Dir() string { return w.dir }

// FlakeURL is the flake reference of the working tree as it is on disk,
// uncommitted and untracked edits included (see [PathFlakeURL]).
func (w *Worktree) FlakeURL() string { return PathFlakeURL(w.dir) }

// Fetch hashes the tree as it is now and returns its token as the Commit
// of an [Update] (Previous is the token of the previous Fetch; Rewritten is
// never set). An unreadable file fails it, naming the file.
func (w *Worktree) Fetch(ctx context.Context) (Update, error) {
	token, err := w.hash(ctx)
	if err != nil {
		return Update{}, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	u := Update{Commit: token, Previous: w.last, Changed: token != w.last}
	w.last = token
	return u, nil
}

// ignored reports whether the entry named name is left out of the tree.
func ignored(name string, mode fs.FileMode) bool {
	if name == ".git" || name == ".direnv" {
		return true
	}
	return strings.HasPrefix(name, "result") && mode&fs.ModeSymlink != 0
}

// hash is the tree's token; see [Worktree].
func (w *Worktree) hash(ctx context.Context) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(w.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p != w.dir && ignored(d.Name(), d.Type()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(w.dir, p)
		fmt.Fprintf(h, "%s\x00%o\x00", rel, info.Mode())
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "%d\x00", info.Size())
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("gitsync: reading the working tree %s: %w", w.dir, err)
	}
	return WorktreePrefix + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Watch calls changed once the tree has been quiet for debounce after any
// change under it (a burst of writes is one call), until ctx ends; then it
// returns nil. Directories created later are watched too; changes under
// .git and .direnv are not changes. changed runs on Watch's goroutine and
// should not block (a reconciler's Trigger). An error means the tree
// cannot be watched (too many directories for the inotify limit, the
// directory is gone); callers then fall back to polling with Fetch.
func (w *Worktree) Watch(ctx context.Context, debounce time.Duration, changed func()) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("gitsync: watching %s: %w", w.dir, err)
	}
	defer fw.Close()
	add := func(root string) error {
		return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			if p != w.dir && ignored(d.Name(), d.Type()) {
				return filepath.SkipDir
			}
			return fw.Add(p)
		})
	}
	if err := add(w.dir); err != nil {
		return fmt.Errorf("gitsync: watching %s: %w", w.dir, err)
	}
	if w.watching != nil {
		w.watching()
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return fmt.Errorf("gitsync: the watcher of %s closed", w.dir)
			}
			if w.ignoredPath(ev.Name) {
				continue
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					if err := add(ev.Name); err != nil {
						w.logger.Warn("cannot watch a new directory; its changes are picked up at the next poll", "dir", ev.Name, "err", err)
					}
				}
			}
			w.logger.Debug("file changed", "path", ev.Name, "op", ev.Op.String())
			timer.Reset(debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return fmt.Errorf("gitsync: the watcher of %s closed", w.dir)
			}
			w.logger.Warn("file watcher error", "err", err)
		case <-timer.C:
			changed()
		}
	}
}

// ignoredPath reports whether p lies in an ignored directory (or is one).
func (w *Worktree) ignoredPath(p string) bool {
	rel, err := filepath.Rel(w.dir, p)
	if err != nil {
		return false
	}
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == ".git" || part == ".direnv" {
			return true
		}
	}
	return false
}
