package gitsync

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// newTree makes a working tree with a flake.nix and a module in a
// subdirectory, and returns its Worktree.
func newTree(t *testing.T) *Worktree {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "flake.nix"), "{ outputs = { self }: { }; }\n")
	writeFile(t, filepath.Join(dir, "vms", "web.nix"), "{ }\n")
	w, err := NewWorktree(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fetchToken(t *testing.T, w *Worktree) string {
	t.Helper()
	u, err := w.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u.Commit, WorktreePrefix) || len(u.Commit) != len(WorktreePrefix)+16 {
		t.Fatalf("token %q is not %s and 16 hex digits", u.Commit, WorktreePrefix)
	}
	return u.Commit
}

func TestWorktreeFetchHashesWhatNixSees(t *testing.T) {
	tests := []struct {
		name    string
		change  func(t *testing.T, dir string)
		changes bool
	}{
		{"an edit of a tracked file is a new token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "flake.nix"), "{ outputs = { self }: { x = 1; }; }\n")
		}, true},
		{"an edit in a subdirectory is a new token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "vms", "web.nix"), "{ vcpu = 2; }\n")
		}, true},
		{"a new untracked file is a new token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "notes.txt"), "x")
		}, true},
		{"a mode change is a new token", func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "flake.nix"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a renamed file is a new token", func(t *testing.T, dir string) {
			if err := os.Rename(filepath.Join(dir, "vms", "web.nix"), filepath.Join(dir, "vms", "api.nix")); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"rewriting the same content keeps the token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "flake.nix"), "{ outputs = { self }: { }; }\n")
		}, false},
		{"changes under .git keep the token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ".git", "HEAD"), "ref: refs/heads/main\n")
			writeFile(t, filepath.Join(dir, ".git", "objects", "ab", "cdef"), "blob")
		}, false},
		{"a .git file (a git worktree) keeps the token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "vms", ".git"), "gitdir: /elsewhere\n")
		}, false},
		{"changes under .direnv keep the token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ".direnv", "env"), "x")
		}, false},
		{"nix build result symlinks keep the token", func(t *testing.T, dir string) {
			for _, name := range []string{"result", "result-runner"} {
				if err := os.Symlink("/nix/store/00000000000000000000000000000000-x", filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
		}, false},
		{"a regular file named result is a new token", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "result"), "not a symlink")
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newTree(t)
			before := fetchToken(t, w)
			tt.change(t, w.Dir())
			u, err := w.Fetch(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := u.Commit != before; got != tt.changes {
				t.Fatalf("token %s → %s: changed = %v, want %v", before, u.Commit, got, tt.changes)
			}
			if u.Previous != before || u.Changed != tt.changes {
				t.Fatalf("update %+v: want Previous %s and Changed %v", u, before, tt.changes)
			}
		})
	}
}

func TestWorktreeFetchOfAMissingDirectoryNamesIt(t *testing.T) {
	w, err := NewWorktree(filepath.Join(t.TempDir(), "gone"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("Fetch of a missing tree: %v, want an error naming it", err)
	}
}

// watch runs w.Watch on its own goroutine and returns the channel its
// changed callback signals, once the tree is watched.
func watch(t *testing.T, w *Worktree, debounce time.Duration) (<-chan struct{}, *atomic.Int32) {
	t.Helper()
	ready := make(chan struct{})
	w.watching = func() { close(ready) }
	fired := make(chan struct{}, 16)
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- w.Watch(ctx, debounce, func() { calls.Add(1); fired <- struct{}{} })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch returned before watching: %v", err)
	}
	return fired, &calls
}

func waitFired(t *testing.T, fired <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatalf("changed was not called after %s", what)
	}
}

func TestWorktreeWatchFiresOnceForABurst(t *testing.T) {
	w := newTree(t)
	const debounce = 200 * time.Millisecond
	fired, calls := watch(t, w, debounce)
	for i := range 20 {
		writeFile(t, filepath.Join(w.Dir(), "flake.nix"), strings.Repeat("#", i)+"{ }\n")
	}
	waitFired(t, fired, "a burst of 20 writes")
	// A second call would come one debounce after a later event; there is
	// none, so none comes.
	select {
	case <-fired:
		t.Fatalf("changed called %d times for one burst", calls.Load())
	case <-time.After(5 * debounce):
	}
}

func TestWorktreeWatchIgnoresGitAndDirenv(t *testing.T) {
	w := newTree(t)
	const debounce = 50 * time.Millisecond
	fired, calls := watch(t, w, debounce)
	writeFile(t, filepath.Join(w.Dir(), ".git", "index"), "x")
	writeFile(t, filepath.Join(w.Dir(), ".git", "objects", "ab", "cd"), "x")
	writeFile(t, filepath.Join(w.Dir(), ".direnv", "env"), "x")
	select {
	case <-fired:
		t.Fatalf("changed called %d times for writes under .git and .direnv", calls.Load())
	case <-time.After(10 * debounce):
	}
}

func TestWorktreeWatchSeesNewSubdirectories(t *testing.T) {
	w := newTree(t)
	fired, calls := watch(t, w, 100*time.Millisecond)

	writeFile(t, filepath.Join(w.Dir(), "vms", "web.nix"), "{ vcpu = 4; }\n")
	waitFired(t, fired, "an edit in a subdirectory that existed")

	// A new directory is a change, and a file written in it later is one too.
	if err := os.Mkdir(filepath.Join(w.Dir(), "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitFired(t, fired, "creating a directory")
	writeFile(t, filepath.Join(w.Dir(), "modules", "db.nix"), "{ }\n")
	waitFired(t, fired, "a write in the new directory")
	if n := calls.Load(); n != 3 {
		t.Fatalf("changed called %d times, want 3 (one per step)", n)
	}
}

func TestWorktreeWatchOfAMissingDirectoryFails(t *testing.T) {
	w, err := NewWorktree(filepath.Join(t.TempDir(), "gone"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Watch(context.Background(), time.Millisecond, func() {}); err == nil {
		t.Fatal("Watch of a missing directory succeeded")
	}
}
