package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DefaultStateDir is microvm.nix's state directory.
const DefaultStateDir = "/var/lib/microvms"

// LogPath is where the process backend appends VM name's console (the
// runner's stdout and stderr): STATE/NAME/console.log.
func LogPath(stateDir, name string) string {
	return filepath.Join(stateDir, name, "console.log")
}

// consoleTailer is implemented by backends that keep their units' console
// output elsewhere than LogPath ([SystemdBackend]: the journal).
type consoleTailer interface {
	TailConsole(ctx context.Context, name string, follow bool, w io.Writer) error
}

// TailConsole copies VM name's console output on this node to w, from
// where backend b keeps it: the journal of microvm@NAME.service for a
// [SystemdBackend], STATE/NAME/console.log ([LogPath] under stateDir)
// otherwise. With follow it keeps copying what is added until ctx ends.
// When there is no output of the VM here it returns, before writing, an
// error wrapping fs.ErrNotExist.
func TailConsole(ctx context.Context, b Backend, stateDir, name string, follow bool, w io.Writer) error {
	if t, ok := b.(consoleTailer); ok {
		return t.TailConsole(ctx, name, follow, w)
	}
	return TailLog(ctx, LogPath(stateDir, name), follow, w)
}

// TailConsole copies the journal of VM name's unit (journalctl -u
// microvm@NAME.service -o cat, through SystemdOptions.Root when set) to w;
// with follow it keeps copying new entries (journalctl -f) until ctx ends,
// then returns nil. A unit without journal entries is an error wrapping
// fs.ErrNotExist. It needs journalctl, not Run.
func (b *SystemdBackend) TailConsole(ctx context.Context, name string, follow bool, w io.Writer) error {
	if err := b.checkName(name); err != nil {
		return err
	}
	unit := b.unit(name)
	args := func(more ...string) []string {
		a := []string{"--no-pager", "--quiet", "--output=cat", "--unit=" + unit}
		if b.o.Root != "" {
			a = append(a, "--root="+b.o.Root)
		}
		return append(a, more...)
	}
	// journalctl says "-- No entries --" (or, quiet, nothing) for a unit
	// that never logged: answer "no log" before writing anything.
	var last bytes.Buffer
	if err := b.journalctl(ctx, args("--lines=1"), &last); err != nil {
		return err
	}
	if last.Len() == 0 {
		return fmt.Errorf("no journal entries of %s: the VM has not started on this node (check `blixard status` for its node): %w",
			unit, fs.ErrNotExist)
	}
	all := args("--lines=all") // -f alone would start at the last 10 lines
	if follow {
		all = append(all, "--follow")
	}
	err := b.journalctl(ctx, all, w)
	if ctx.Err() != nil {
		return nil // the reader went away, or the follow ended
	}
	return err
}

// journalctl runs journalctl with args, its stdout to w.
func (b *SystemdBackend) journalctl(ctx context.Context, args []string, w io.Writer) error {
	path, err := exec.LookPath("journalctl")
	if err != nil {
		return fmt.Errorf("nodeagent: reading the journal: %w (install systemd's journalctl; the units' output is in the journal)", err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	// Wait returns even when w blocks: journalctl is killed with ctx, and
	// its output is then abandoned after WaitDelay.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return fmt.Errorf("nodeagent: journalctl %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return nil
}

// TailLog copies the log at path to w. With follow it then keeps copying
// what is appended (starting over if the file is truncated or replaced)
// until ctx ends, and returns nil; without follow it returns at the end of
// the file.
func TailLog(ctx context.Context, path string, follow bool, w io.Writer) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no console log at %s: the VM has not started on this node (check `blixard status` for its node): %w", path, err)
	}
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	var off int64
	copyNew := func() error {
		n, err := io.Copy(w, f)
		off += n
		return err
	}
	if err := copyNew(); err != nil {
		return err
	}
	if !follow {
		return nil
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		fi, err := os.Stat(path)
		if err != nil {
			continue // being replaced
		}
		cur, err := f.Stat()
		if err != nil {
			return err
		}
		switch {
		case !os.SameFile(fi, cur): // replaced: read the new file from its start
			nf, err := os.Open(path)
			if err != nil {
				continue
			}
			f.Close()
			f, off = nf, 0
		case fi.Size() < off: // truncated
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			off = 0
		case fi.Size() == off:
			continue
		}
		if err := copyNew(); err != nil {
			return err
		}
	}
}

// capRunningLogs rotates the console logs of the running units that grew
// over the cap.
func (b *ProcessBackend) capRunningLogs() {
	b.mu.Lock()
	var names []string
	for name, u := range b.units {
		if u.h != nil {
			names = append(names, name)
		}
	}
	b.mu.Unlock()
	for _, name := range names {
		b.capLog(name)
	}
}

// capLog rotates VM name's console log when it is over the cap. A failure
// is logged, not returned: the runner keeps running with a larger log.
func (b *ProcessBackend) capLog(name string) {
	if b.o.MaxLogBytes < 0 {
		return
	}
	path := LogPath(b.o.StateDir, name)
	rotated, err := rotateLog(path, b.o.MaxLogBytes)
	switch {
	case err != nil:
		b.log.Warn("cannot rotate the console log; it keeps growing", "vm", name, "log", path, "err", err)
	case rotated:
		b.log.Debug("console log rotated", "vm", name, "log", path, "old", path+".1")
	}
}

// rotateLog caps the log at path at about limit bytes: when it is larger,
// its last limit bytes are copied to path.1 (replacing the previous old
// log) and it is truncated to zero length. It reports whether it rotated; a
// missing file is not an error.
//
// Why copy and truncate rather than rename: the runner writes the file
// itself, through the descriptor it inherited (opened with O_APPEND), so
// that it never depends on the agent staying alive — no pipe, no copier
// process. A renamed file would keep receiving its output. With O_APPEND
// the runner's next write after the truncation lands at the new end, offset
// 0, and readers that follow the file ([TailLog]) see it shrink and start
// over. The cost (logrotate's copytruncate has the same): what the runner
// writes between the end of the copy and the truncation is lost, and the
// cap is soft — the file grows past limit by what is written between two
// checks, and without bound while no agent runs (the next agent rotates it
// when it adopts the runner).
func rotateLog(path string, limit int64) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if fi.Size() <= limit {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".1-*")
	if err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := f.Seek(fi.Size()-limit, io.SeekStart); err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	// Copy to the end, whatever the runner appended meanwhile, then cut.
	if _, err := io.Copy(tmp, f); err != nil {
		return false, fmt.Errorf("rotate %s: copy to %s: %w", path, tmp.Name(), err)
	}
	if err := f.Truncate(0); err != nil {
		return false, fmt.Errorf("rotate %s: truncate: %w", path, err)
	}
	if err := tmp.Chmod(0o640); err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	keep = true
	if err := os.Rename(tmp.Name(), path+".1"); err != nil {
		os.Remove(tmp.Name())
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	return true, nil
}
