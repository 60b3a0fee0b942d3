package vmsnap

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Format is the manifest format this package writes and reads.
const Format = 1

// Names of a snapshot's files in its directory.
const (
	ManifestFile = "manifest.json"
	StateFile    = "state" // qemu's migration stream: device state (and RAM without MemFile)
	MemFile      = "mem"   // the guest RAM (memory-backend-file) when it is not in StateFile
)

// Errors a caller tells apart with errors.Is. Each means: boot fresh. After
// ErrMismatch or ErrCorrupt also remove the snapshot (Store.Remove), so the
// next start does not try it again.
var (
	// ErrNotFound: no snapshot for this runner and qemu binary.
	ErrNotFound = errors.New("no snapshot")
	// ErrMismatch: the snapshot belongs to another runner or qemu binary,
	// or the qemu about to load it is not the one it was saved with.
	ErrMismatch = errors.New("snapshot does not match")
	// ErrCorrupt: the snapshot's files differ from what its manifest says.
	ErrCorrupt = errors.New("snapshot is corrupt")
)

// Manifest describes one snapshot; it is manifest.json in its directory.
type Manifest struct {
	Format int `json:"format"`
	// Key is Key(RunnerOut, Qemu.Path): the snapshot's directory name.
	Key string `json:"key"`
	// RunnerOut is the out path of the runner the saved VM ran.
	RunnerOut string `json:"runnerOut"`
	Qemu      Binary `json:"qemu"`
	// Args is qemu's command line at the save (for people: a restore runs
	// the same runner, whose arguments differ only by the snapshot hook's).
	Args []string `json:"args"`
	RAM  RAM      `json:"ram"`
	// IgnoreShared: the stream was saved with qemu's x-ignore-shared
	// capability (the RAM is in MemFile, not in StateFile); a restore must
	// set it too.
	IgnoreShared bool      `json:"ignoreShared"`
	State        File      `json:"state"`
	SavedAt      time.Time `json:"savedAt"`
	Guest        Guest     `json:"guest"`
	Migration    Migration `json:"migration"`
	// Identity is the identity protocol (IdentityProtocol) through which
	// the guest was frozen before the save, so that every restore can give
	// its copy its own identity; "" when it was not (a restored copy then
	// keeps the saved MAC, address and hostname).
	Identity string `json:"identity,omitempty"`
}

// Binary identifies a qemu binary.
type Binary struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// ModTime and Size are the cheap check at every Open; SHA256 decides when
	// only the time differs (the same package installed again).
	ModTime time.Time `json:"modTime"`
	SHA256  string    `json:"sha256"`
	// Version is what qemu announced on QMP.
	Version string `json:"version"`
}

// RAM is the guest's main memory at the save.
type RAM struct {
	// Backend is the id of the machine's memory backend ("mem" with the
	// snapshot hook; qemu's RAM block of the same name must exist at a
	// restore).
	Backend string `json:"backend"`
	Type    string `json:"type"` // memory-backend-file, -ram, -memfd
	Bytes   int64  `json:"bytes"`
	Shared  bool   `json:"shared"`
	// File is MemFile when the RAM is kept in the snapshot's mem file, ""
	// when it is in the state stream.
	File string `json:"file,omitempty"`
	// Why says why the RAM went where it went.
	Why string `json:"why"`
}

// File is one file of the snapshot, as saved.
type File struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Guest is what qemu said about the VM it ran.
type Guest struct {
	Name    string `json:"name,omitempty"`
	Machine string `json:"machine"`
	VCPUs   int    `json:"vcpus"`
	Accel   string `json:"accel"`  // kvm or tcg
	Status  string `json:"status"` // before the save: running or paused
}

// Migration is qemu's account of the save.
type Migration struct {
	TotalTimeMs      int64 `json:"totalTimeMs"`
	TransferredBytes int64 `json:"transferredBytes"`
}

// Key names the snapshot of a runner under a qemu binary: the first 128
// bits of SHA-256 over both paths, hex. qemuBinary is the binary's path
// with symbolic links resolved, as /proc/PID/exe of the running qemu shows
// it (Save records that one): filepath.EvalSymlinks of what the runner
// execs. A new runner (any change in the
// flake gives a new out path) or another qemu gets another key; the
// manifest's check catches what a key cannot (a qemu replaced in place).
func Key(runnerOutPath, qemuBinary string) string {
	h := sha256.New()
	h.Write([]byte(runnerOutPath))
	h.Write([]byte{0}) // ("a", "bc") and ("ab", "c") differ
	h.Write([]byte(qemuBinary))
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// check refuses a manifest that is not for this runner and qemu path, or
// that this package cannot read.
func (m Manifest) check(runnerOut, qemuBinary string) error {
	switch {
	case m.Format != Format:
		return fmt.Errorf("%w: manifest format %d, this blixard reads %d", ErrMismatch, m.Format, Format)
	case m.RunnerOut != runnerOut:
		return fmt.Errorf("%w: it was saved from runner %s, not %s", ErrMismatch, m.RunnerOut, runnerOut)
	case m.Qemu.Path != qemuBinary:
		return fmt.Errorf("%w: it was saved with qemu %s, not %s", ErrMismatch, m.Qemu.Path, qemuBinary)
	case m.Key != Key(runnerOut, qemuBinary):
		return fmt.Errorf("%w: its manifest says key %s, want %s", ErrMismatch, m.Key, Key(runnerOut, qemuBinary))
	case m.State.Bytes <= 0 || m.State.SHA256 == "":
		return fmt.Errorf("%w: the manifest records no state file", ErrCorrupt)
	case m.RAM.File != "" && m.RAM.File != MemFile:
		return fmt.Errorf("%w: the manifest names RAM file %q; only %q is used", ErrCorrupt, m.RAM.File, MemFile)
	case m.RAM.File != "" && !m.IgnoreShared:
		return fmt.Errorf("%w: the RAM is in %s but the stream was not saved with x-ignore-shared", ErrCorrupt, MemFile)
	}
	return nil
}

// binaryVerdict is what comparing a recorded binary with the file on disk
// by size and modification time decides.
type binaryVerdict int

const (
	binarySame     binaryVerdict = iota // size and time equal
	binaryOther                         // the size differs: another binary
	binaryHashDiff                      // same size, other time: the content decides
)

func compareBinary(recorded, now Binary) binaryVerdict {
	switch {
	case recorded.Size != now.Size:
		return binaryOther
	case recorded.ModTime.Equal(now.ModTime):
		return binarySame
	default:
		return binaryHashDiff
	}
}

// statBinary reads path's size and modification time (and its SHA-256 when
// withHash).
func statBinary(path string, withHash bool) (Binary, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Binary{}, fmt.Errorf("qemu binary: %w", err)
	}
	b := Binary{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UTC()}
	if withHash {
		if b.SHA256, err = hashFile(path); err != nil {
			return Binary{}, fmt.Errorf("qemu binary: %w", err)
		}
	}
	return b, nil
}

// sameQemu checks that the qemu binary on disk is the one m was saved with.
func sameQemu(m Manifest) error {
	now, err := statBinary(m.Qemu.Path, false)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	switch compareBinary(m.Qemu, now) {
	case binarySame:
		return nil
	case binaryOther:
		return fmt.Errorf("%w: qemu %s changed since the save (%d bytes, was %d): a new qemu cannot load an old one's state safely",
			ErrMismatch, m.Qemu.Path, now.Size, m.Qemu.Size)
	}
	sum, err := hashFile(m.Qemu.Path)
	if err != nil {
		return fmt.Errorf("%w: qemu binary: %w", ErrMismatch, err)
	}
	if sum != m.Qemu.SHA256 {
		return fmt.Errorf("%w: qemu %s changed since the save (sha256 %s, was %s)", ErrMismatch, m.Qemu.Path, sum, m.Qemu.SHA256)
	}
	return nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func readManifest(dir string) (Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return Manifest{}, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, filepath.Join(dir, ManifestFile), err)
	}
	return m, nil
}

// writeManifest writes dir/manifest.json atomically (a temporary file,
// synced, then renamed), so a reader sees the old one, the new one, or none.
func writeManifest(dir string, m Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
}

func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
