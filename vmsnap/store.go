package vmsnap

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Store keeps snapshots under Dir, one directory per key:
//
//	Dir/KEY/manifest.json   what was saved, from which runner and qemu
//	Dir/KEY/state           qemu's migration stream
//	Dir/KEY/mem             the guest RAM (when the manifest names it)
//	Dir/.pending-*          snapshots being made (Begin), not yet published
//	Dir/.removed-*          snapshots being removed
//
// A published snapshot never changes: restores map its mem file
// copy-on-write (share=off) and only read its state. A snapshot appears
// whole or not at all: it is made in a pending directory on the same
// filesystem and renamed into place (Publish).
type Store struct {
	Dir string
}

// Snapshot is a published snapshot a restore may use.
type Snapshot struct {
	Dir      string
	Manifest Manifest
}

// StatePath is the snapshot's migration stream.
func (s Snapshot) StatePath() string { return filepath.Join(s.Dir, StateFile) }

// MemPath is the snapshot's RAM file, "" when the RAM is in the stream.
func (s Snapshot) MemPath() string {
	if s.Manifest.RAM.File == "" {
		return ""
	}
	return filepath.Join(s.Dir, s.Manifest.RAM.File)
}

const (
	pendingPrefix = ".pending-"
	removedPrefix = ".removed-"
)

// Begin makes a pending directory for a new snapshot. Start the VM to save
// with its RAM in PENDING/mem (SaveArgs or SaveHook), then Save into it,
// then Publish it, or Abort it on any failure.
//
// When qemu runs as another user (microvm.nix's units run it as microvm),
// give that user the directory (os.Chown), as the agent does with
// STATE/NAME: qemu creates the mem file in it. Restoring qemus need write
// permission on that file too, although share=off never writes it: qemu
// 7.2 opens a memory-backend-file read-write (readonly=on would also make
// the guest's RAM read-only; qemu 8.2 splits that into readonly and rom).
func (s Store) Begin() (string, error) {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return "", fmt.Errorf("snapshot store: %w", err)
	}
	dir, err := os.MkdirTemp(s.Dir, pendingPrefix)
	if err != nil {
		return "", fmt.Errorf("snapshot store: %w", err)
	}
	// MkdirTemp makes 0700; restoring qemus of another user must reach the
	// files once the directory is published.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("snapshot store: %w", err)
	}
	return dir, nil
}

// Abort removes a pending directory (also after a failed Publish).
func (s Store) Abort(pending string) error {
	if !s.isPending(pending) {
		return fmt.Errorf("snapshot store: %s is not a pending snapshot of %s", pending, s.Dir)
	}
	return os.RemoveAll(pending)
}

func (s Store) isPending(dir string) bool {
	return filepath.Dir(filepath.Clean(dir)) == filepath.Clean(s.Dir) &&
		strings.HasPrefix(filepath.Base(dir), pendingPrefix)
}

// Publish makes the snapshot saved in pending (Save wrote its manifest)
// available under its key: it checks the files against the manifest,
// flushes them to disk (a snapshot that survives a crash of the host must
// be whole: the mem file has no checksum a restore could afford to verify)
// and renames the directory into place. When the key already has a
// snapshot, Publish fails with fs.ErrExist and leaves both as they are.
func (s Store) Publish(pending string) (Snapshot, error) {
	if !s.isPending(pending) {
		return Snapshot{}, fmt.Errorf("snapshot store: %s is not a pending snapshot of %s (use Store.Begin)", pending, s.Dir)
	}
	m, err := readManifest(pending)
	if err != nil {
		return Snapshot{}, fmt.Errorf("publishing snapshot %s: %w (did Save succeed?)", pending, err)
	}
	if err := m.check(m.RunnerOut, m.Qemu.Path); err != nil {
		return Snapshot{}, fmt.Errorf("publishing snapshot %s: %w", pending, err)
	}
	snap := Snapshot{Dir: pending, Manifest: m}
	if err := checkFiles(snap); err != nil {
		return Snapshot{}, fmt.Errorf("publishing snapshot %s: %w", pending, err)
	}
	names := []string{StateFile, ManifestFile}
	if m.RAM.File != "" {
		names = append(names, m.RAM.File)
	}
	for _, n := range append(names, ".") {
		if err := syncPath(filepath.Join(pending, n)); err != nil {
			return Snapshot{}, fmt.Errorf("publishing snapshot %s: %w", pending, err)
		}
	}
	final := filepath.Join(s.Dir, m.Key)
	// rename(2) replaces an empty directory but not a full one: the key's
	// first snapshot stays, and the caller learns it lost the race.
	if _, err := os.Stat(final); err == nil {
		return Snapshot{}, fmt.Errorf("publishing snapshot %s: %s: %w", pending, final, fs.ErrExist)
	}
	if err := os.Rename(pending, final); err != nil {
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, fs.ErrExist) {
			return Snapshot{}, fmt.Errorf("publishing snapshot %s: %s: %w", pending, final, fs.ErrExist)
		}
		return Snapshot{}, fmt.Errorf("publishing snapshot %s: %w", pending, err)
	}
	if err := syncPath(s.Dir); err != nil {
		return Snapshot{}, fmt.Errorf("publishing snapshot %s: %w", final, err)
	}
	snap.Dir = final
	return snap, nil
}

// Open finds the snapshot of runnerOut under qemuBinary and checks it:
// ErrNotFound when there is none; ErrMismatch when its manifest names
// another runner or qemu, or the qemu binary changed since the save (by
// size, or by content when only the time differs); ErrCorrupt when its
// files are missing or of the wrong size. The state's checksum is checked
// by Restore, which reads it anyway.
func (s Store) Open(runnerOut, qemuBinary string) (Snapshot, error) {
	key := Key(runnerOut, qemuBinary)
	dir := filepath.Join(s.Dir, key)
	m, err := readManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Snapshot{}, fmt.Errorf("snapshot %s of runner %s with qemu %s: %w", dir, runnerOut, qemuBinary, ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	if err := m.check(runnerOut, qemuBinary); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	if err := sameQemu(m); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	snap := Snapshot{Dir: dir, Manifest: m}
	if err := checkFiles(snap); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	return snap, nil
}

// Remove unpublishes the snapshot under key at once (a rename) and then
// deletes its files. Restored VMs that map its mem file keep their
// mapping. Removing a key without a snapshot is not an error.
func (s Store) Remove(key string) error {
	if key == "" || strings.ContainsAny(key, `/\`) || strings.HasPrefix(key, ".") {
		return fmt.Errorf("snapshot store: %q is not a snapshot key", key)
	}
	dir := filepath.Join(s.Dir, key)
	gone, err := os.MkdirTemp(s.Dir, removedPrefix)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("snapshot store: %w", err)
	}
	// Rename onto the fresh empty directory: atomic, and rename(2) replaces
	// an empty directory (os.Rename refuses any directory as the target).
	if err := syscall.Rename(dir, gone); err != nil {
		os.Remove(gone)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("removing snapshot %s: %w", dir, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("removing snapshot %s (unpublished, its files are in %s): %w", dir, gone, err)
	}
	return nil
}

// checkFiles checks that the snapshot's files exist with the sizes its
// manifest records.
func checkFiles(snap Snapshot) error {
	m := snap.Manifest
	fi, err := os.Stat(snap.StatePath())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if fi.Size() != m.State.Bytes {
		return fmt.Errorf("%w: %s has %d bytes, the manifest says %d", ErrCorrupt, snap.StatePath(), fi.Size(), m.State.Bytes)
	}
	if p := snap.MemPath(); p != "" {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if fi.Size() != m.RAM.Bytes {
			return fmt.Errorf("%w: %s has %d bytes, the guest RAM was %d", ErrCorrupt, p, fi.Size(), m.RAM.Bytes)
		}
	}
	return nil
}

// syncPath flushes a file or directory to disk.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return nil
}
