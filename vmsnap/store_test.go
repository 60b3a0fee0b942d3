package vmsnap

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// storeEnv is a store and a stand-in qemu binary (a file: the store only
// reads its size, time and content).
type storeEnv struct {
	store Store
	qemu  string
}

func newStoreEnv(t *testing.T) storeEnv {
	t.Helper()
	root := t.TempDir()
	e := storeEnv{store: Store{Dir: filepath.Join(root, "snapshots")}, qemu: filepath.Join(root, "qemu-system-x86_64")}
	if err := os.WriteFile(e.qemu, []byte("qemu 7.2 build 1"), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// fakeSave writes into a pending directory what Save writes.
func (e storeEnv) fakeSave(t *testing.T, runner string) string {
	t.Helper()
	pending, err := e.store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	state := []byte("QEVM device state")
	if err := os.WriteFile(filepath.Join(pending, StateFile), state, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pending, MemFile), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := statBinary(e.qemu, true)
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := hashFile(filepath.Join(pending, StateFile))
	m := Manifest{Format: Format, Key: Key(runner, e.qemu), RunnerOut: runner, Qemu: bin,
		RAM:          RAM{Backend: RAMBackend, Type: "memory-backend-file", Bytes: 1 << 20, Shared: true, File: MemFile},
		IgnoreShared: true, State: File{Bytes: int64(len(state)), SHA256: sum}}
	if err := writeManifest(pending, m); err != nil {
		t.Fatal(err)
	}
	return pending
}

func TestStorePublishesAtomicallyAndOpensOnlyTheRightSnapshot(t *testing.T) {
	const runnerA, runnerB = "/nix/store/aaaa-microvm-a", "/nix/store/bbbb-microvm-b"
	e := newStoreEnv(t)

	if _, err := e.store.Open(runnerA, e.qemu); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of an empty store: %v, want ErrNotFound", err)
	}
	pending := e.fakeSave(t, runnerA)
	// Pending is not published: nobody restores a half-made snapshot.
	if _, err := e.store.Open(runnerA, e.qemu); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open before Publish: %v, want ErrNotFound", err)
	}
	snap, err := e.store.Publish(pending)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(e.store.Dir, Key(runnerA, e.qemu)); snap.Dir != want {
		t.Errorf("published at %s, want %s", snap.Dir, want)
	}
	if _, err := os.Stat(pending); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pending directory still there after Publish: %v", err)
	}
	got, err := e.store.Open(runnerA, e.qemu)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != snap.Dir || got.MemPath() != filepath.Join(snap.Dir, MemFile) || got.StatePath() != filepath.Join(snap.Dir, StateFile) {
		t.Errorf("Open = %+v", got)
	}

	// A second snapshot of the same key loses: the first stays.
	second := e.fakeSave(t, runnerA)
	if _, err := e.store.Publish(second); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Publish: %v, want fs.ErrExist", err)
	}
	if err := e.store.Abort(second); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Open(runnerA, e.qemu); err != nil {
		t.Errorf("the first snapshot after a lost race: %v", err)
	}

	// Runner B never sees runner A's snapshot: its key differs, and a
	// directory mixed up under B's key is refused by its manifest.
	if _, err := e.store.Open(runnerB, e.qemu); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open of runner B: %v, want ErrNotFound", err)
	}
	if err := os.Rename(snap.Dir, filepath.Join(e.store.Dir, Key(runnerB, e.qemu))); err != nil {
		t.Fatal(err)
	}
	_, err = e.store.Open(runnerB, e.qemu)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "saved from runner "+runnerA) {
		t.Errorf("Open of runner B holding A's snapshot: %v, want ErrMismatch naming runner A", err)
	}
	if err := e.store.Remove(Key(runnerB, e.qemu)); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Remove(Key(runnerB, e.qemu)); err != nil {
		t.Errorf("removing a removed snapshot: %v", err)
	}
	entries, _ := os.ReadDir(e.store.Dir)
	if len(entries) != 0 {
		t.Errorf("store after Remove holds %v", entries)
	}
}

func TestStoreOpenRefusesAChangedQemuOrDamagedFiles(t *testing.T) {
	const runner = "/nix/store/aaaa-microvm-a"
	later := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, e storeEnv, snap Snapshot)
		want   error // nil: still accepted
	}{
		{name: "an untouched snapshot opens", damage: func(*testing.T, storeEnv, Snapshot) {}},
		{name: "the same qemu installed again (a new time) still opens", damage: func(t *testing.T, e storeEnv, _ Snapshot) {
			if err := os.Chtimes(e.qemu, later, later); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a qemu of another size is refused", want: ErrMismatch, damage: func(t *testing.T, e storeEnv, _ Snapshot) {
			if err := os.WriteFile(e.qemu, []byte("qemu 8.0 build 1, longer"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a qemu of the same size with other content is refused", want: ErrMismatch, damage: func(t *testing.T, e storeEnv, _ Snapshot) {
			if err := os.WriteFile(e.qemu, []byte("qemu 7.2 build 2"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(e.qemu, later, later); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a missing qemu is refused", want: ErrMismatch, damage: func(t *testing.T, e storeEnv, _ Snapshot) {
			os.Remove(e.qemu)
		}},
		{name: "a truncated state is corrupt", want: ErrCorrupt, damage: func(t *testing.T, _ storeEnv, s Snapshot) {
			if err := os.Truncate(s.StatePath(), 3); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a missing mem file is corrupt", want: ErrCorrupt, damage: func(t *testing.T, _ storeEnv, s Snapshot) {
			os.Remove(s.MemPath())
		}},
		{name: "a mem file of another size is corrupt", want: ErrCorrupt, damage: func(t *testing.T, _ storeEnv, s Snapshot) {
			if err := os.Truncate(s.MemPath(), 4096); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "an unreadable manifest is corrupt", want: ErrCorrupt, damage: func(t *testing.T, _ storeEnv, s Snapshot) {
			if err := os.WriteFile(filepath.Join(s.Dir, ManifestFile), []byte("{"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newStoreEnv(t)
			snap, err := e.store.Publish(e.fakeSave(t, runner))
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, e, snap)
			_, err = e.store.Open(runner, e.qemu)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Open: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestStorePublishRefusesWhatSaveDidNotFinish(t *testing.T) {
	e := newStoreEnv(t)
	pending, err := e.store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Publish(pending); err == nil || !strings.Contains(err.Error(), "did Save succeed") {
		t.Errorf("Publish without a manifest: %v", err)
	}
	other := t.TempDir()
	if _, err := e.store.Publish(other); err == nil || !strings.Contains(err.Error(), "not a pending snapshot") {
		t.Errorf("Publish of a directory outside the store: %v", err)
	}
	if err := e.store.Abort(other); err == nil {
		t.Errorf("Abort removed a directory outside the store")
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("Abort touched %s: %v", other, err)
	}
	if err := e.store.Abort(pending); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "../x", ".pending-1", "a/b"} {
		if err := e.store.Remove(bad); err == nil {
			t.Errorf("Remove(%q) accepted", bad)
		}
	}
}
