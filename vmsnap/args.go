package vmsnap

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// RAMBackend is the id of the memory backend the snapshot hook gives the
// guest RAM. qemu names the RAM block after it, and a stream loads only
// into a qemu with a RAM block of the same name: save and restore use the
// same id.
const RAMBackend = "mem"

// SaveArgs are the qemu arguments for a VM whose snapshot will be saved
// into the pending directory whose mem file is memPath: its RAM of memMiB
// in that file, shared (share=on), so qemu's RAM writes land in the file
// and Save can leave the RAM out of the stream (x-ignore-shared).
//
// Every argument is one word without spaces, commas inside values or shell
// globbing characters: microvm.nix's extraArgsScript output is split into
// words and globbed by the runner's shell, and qemu reads a comma as the
// next option.
func SaveArgs(memPath string, memMiB int) ([]string, error) {
	return memArgs(memPath, int64(memMiB)<<20, true)
}

// RestoreArgs are the qemu arguments that make a runner wait for snap's
// state instead of booting: `-incoming defer` (Restore sends the stream
// after it has set the capabilities), and, when the RAM is in the mem file,
// that file mapped copy-on-write (share=off): the guest's writes stay
// private, the file stays unchanged for the next restore, and several VMs
// can restore from it at once. The qemu must run the same runner as at the
// save (Store.Open checked which one the snapshot is of).
func RestoreArgs(snap Snapshot) ([]string, error) {
	args := []string{"-incoming", "defer"}
	if snap.MemPath() == "" {
		return args, nil
	}
	mem, err := memArgs(snap.MemPath(), snap.Manifest.RAM.Bytes, false)
	if err != nil {
		return nil, err
	}
	return append(mem, args...), nil
}

func memArgs(memPath string, bytes int64, share bool) ([]string, error) {
	if err := checkWord(memPath); err != nil {
		return nil, fmt.Errorf("RAM file: %w", err)
	}
	if !filepath.IsAbs(memPath) {
		return nil, fmt.Errorf("RAM file %q: not an absolute path (qemu runs in the VM's state directory)", memPath)
	}
	if bytes <= 0 || bytes%(1<<20) != 0 {
		return nil, fmt.Errorf("RAM size %d bytes: want a positive number of MiB", bytes)
	}
	onOff := "off"
	if share {
		onOff = "on"
	}
	return []string{
		"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s", RAMBackend, bytes>>20, memPath, onOff),
		"-machine", "memory-backend=" + RAMBackend,
	}, nil
}

// checkWord refuses a path that would not stay one qemu option value and
// one shell word: only letters, digits and . _ / + @ - are allowed.
func checkWord(s string) error {
	if s == "" {
		return errors.New("empty path")
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("._/+@-", r):
		default:
			return fmt.Errorf("%q has %q: the path must stay one word for the runner's shell and one value for qemu (letters, digits and . _ / + @ - only)", s, r)
		}
	}
	return nil
}

// HookFile is the file in a VM's state directory (the runner's working
// directory) that tells a runner of the demo's contract
// (examples/demo/build-runner.sh) to keep its RAM in a file for a save, or
// to wait for a restore. Without it the runner boots as always.
const HookFile = "snapshot.env"

// Mode is what a Hook asks of the runner.
type Mode string

const (
	ModeSave    Mode = "save"    // RAM in the pending snapshot's mem file, share=on
	ModeRestore Mode = "restore" // -incoming defer; RAM from the snapshot's mem file, share=off
)

// Hook is the content of HookFile.
type Hook struct {
	Mode Mode
	// Mem is the RAM file: PENDING/mem for a save, the snapshot's mem file
	// for a restore ("" when the snapshot keeps the RAM in its stream).
	Mem string
}

// SaveHook is the hook of a run to be saved into pending (Store.Begin).
func SaveHook(pending string) Hook {
	return Hook{Mode: ModeSave, Mem: filepath.Join(pending, MemFile)}
}

// RestoreHook is the hook of a run that restores snap.
func RestoreHook(snap Snapshot) Hook {
	return Hook{Mode: ModeRestore, Mem: snap.MemPath()}
}

// Render is the hook as KEY=VALUE lines (sh `.` reads them):
// BLIXARD_SNAPSHOT (save|restore) and BLIXARD_SNAPSHOT_MEM.
func (h Hook) Render() ([]byte, error) {
	switch h.Mode {
	case ModeSave, ModeRestore:
	default:
		return nil, fmt.Errorf("snapshot hook: mode %q, want %q or %q", h.Mode, ModeSave, ModeRestore)
	}
	if h.Mem != "" || h.Mode == ModeSave {
		// The same checks as the arguments it becomes.
		if _, err := memArgs(h.Mem, 1<<20, h.Mode == ModeSave); err != nil {
			return nil, fmt.Errorf("snapshot hook: %w", err)
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "BLIXARD_SNAPSHOT=%s\n", h.Mode)
	fmt.Fprintf(&b, "BLIXARD_SNAPSHOT_MEM=%s\n", h.Mem)
	return b.Bytes(), nil
}

// WriteHook writes the hook into stateDir atomically (0644).
func WriteHook(stateDir string, h Hook) error {
	b, err := h.Render()
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(stateDir, HookFile), b, 0o644)
}

// RemoveHook removes the hook from stateDir: the next start boots. A
// missing hook is not an error.
func RemoveHook(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, HookFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the snapshot hook: %w", err)
	}
	return nil
}
