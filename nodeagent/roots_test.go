package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// TestLinkKeptRootsWithoutWaitingForNix: a second VM of a runner another
// VM's registered root keeps gets its root linked without waiting for nix
// (nix-store is held back here and the realisation still returns), and
// registered with nix in the background; a root that moved on meanwhile
// is not pointed back.
func TestLinkKeptRootsWithoutWaitingForNix(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "runner")
	if err := os.WriteFile(src, []byte(fmt.Sprintf("runner %d\n", time.Now().UnixNano())), 0o644); err != nil {
		t.Fatal(err)
	}
	added, err := exec.Command("nix-store", "--add", src).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	out := strings.TrimSpace(string(added))
	realStore, err := exec.LookPath("nix-store")
	if err != nil {
		t.Fatal(err)
	}
	realNix, err := exec.LookPath("nix")
	if err != nil {
		t.Fatal(err)
	}
	// nix-store next to a nix that is the real one: it logs its calls and
	// waits while the file hold exists.
	bin, calls, hold := filepath.Join(dir, "bin"), filepath.Join(dir, "calls"), filepath.Join(dir, "hold")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(realNix, filepath.Join(bin, "nix")); err != nil {
		t.Fatal(err)
	}
	wrapper := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nwhile [ -e %s ]; do sleep 0.05; done\nexec %s \"$@\"\n", calls, hold, realStore)
	if err := os.WriteFile(filepath.Join(bin, "nix-store"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	callCount := func() int {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "\n")
	}
	r := realiser{nix: filepath.Join(bin, "nix"), builds: &flight{calls: map[string]*flightCall{}}, roots: newRootBook(), log: slog.Default()}
	root := func(vm string) string {
		if err := os.MkdirAll(filepath.Join(dir, vm), 0o755); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, vm, "gcroot")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	noBuild := func(string) { t.Error("a valid runner was built") }

	// The first VM: rooted by nix.
	a := root("a")
	if err := r.realise(ctx, a, "", out, "", "a", noBuild); err != nil {
		t.Fatal(err)
	}
	if n := callCount(); n != 1 {
		t.Fatalf("%d nix-store calls for the first VM, want 1", n)
	}
	// Started again with the same runner: its own root keeps it, no nix
	// run now or in the background.
	if err := r.realise(ctx, a, "", out, "", "a", noBuild); err != nil {
		t.Fatal(err)
	}
	if !r.roots.wait(30 * time.Second) {
		t.Fatal("background registrations still run after 30s")
	}
	if n := callCount(); n != 1 {
		t.Fatalf("%d nix-store calls after the first VM's second realisation, want still 1", n)
	}

	// The second: linked while nix-store is held back.
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b := root("b")
	if err := r.realise(ctx, b, "", out, "", "b", noBuild); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(b); err != nil || target != out {
		t.Fatalf("b's root points at %q (%v), want %s", target, err, out)
	}
	testkit.WaitFor(t, 10*time.Second, "b's background registration to call nix-store", func() error {
		if callCount() < 2 {
			return fmt.Errorf("%d calls", callCount())
		}
		return nil
	})
	// A stopping agent waits for the registration (Agent.shutdown), so
	// no root is written after it.
	if r.roots.wait(100 * time.Millisecond) {
		t.Fatal("the background registrations ended while nix-store was held back")
	}
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	if !r.roots.wait(30 * time.Second) {
		t.Fatal("b's background registration did not end within 30s of nix-store going on")
	}
	if !registeredRoot(b) {
		t.Fatalf("b's registration ended without a link to %s in /nix/var/nix/gcroots/auto", b)
	}
	testkit.WaitFor(t, 30*time.Second, "b's root registered with nix", func() error {
		if !registeredRoot(b) {
			return fmt.Errorf("no link to %s in /nix/var/nix/gcroots/auto", b)
		}
		return nil
	})

	// A root that points elsewhere by the time its registration runs is
	// left alone.
	c := root("c")
	if err := os.Symlink(src, c); err != nil {
		t.Fatal(err)
	}
	before := callCount()
	if err := r.registerIfLinked(ctx, c, out); err != nil {
		t.Fatal(err)
	}
	if target, _ := os.Readlink(c); target != src || callCount() != before {
		t.Errorf("c's root: %q after %d more nix-store calls; want it left at %s, no call", target, callCount()-before, src)
	}

	// A restarted agent finds the roots an earlier one registered.
	seeded := newRootBook()
	if n := seeded.seed(nixAutoRoots, dir); n < 2 {
		t.Errorf("seeded %d roots from %s, want a's and b's", n, nixAutoRoots)
	}
	if k := seeded.keeper(out, ""); k != a && k != b {
		t.Errorf("after seeding, the keeper of %s is %q, want %s or %s", out, k, a, b)
	}
	if n := newRootBook().seed(nixAutoRoots, filepath.Join(dir, "elsewhere")); n != 0 {
		t.Errorf("seeded %d roots from outside the state directory", n)
	}

	// Without another root of the runner, nix roots it.
	other := realiser{nix: filepath.Join(bin, "nix"), builds: &flight{calls: map[string]*flightCall{}}, roots: newRootBook(), log: slog.Default()}
	before = callCount()
	if err := other.realise(ctx, root("d"), "", out, "", "d", noBuild); err != nil || callCount() != before+1 {
		t.Errorf("a fresh realiser: %v after %d nix-store calls, want 1", err, callCount()-before)
	}
}

// registeredRoot reports whether nix's auto roots link to root.
func registeredRoot(root string) bool {
	entries, _ := os.ReadDir("/nix/var/nix/gcroots/auto")
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/nix/var/nix/gcroots/auto", e.Name())); err == nil && target == root {
			return true
		}
	}
	return false
}
