package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// DefaultStateDir is microvm.nix's state directory.
const DefaultStateDir = "/var/lib/microvms"

// LogPath is where the process backend appends VM name's console (the
// runner's stdout and stderr): STATE/NAME/console.log.
func LogPath(stateDir, name string) string {
	return filepath.Join(stateDir, name, "console.log")
}

// TailLog copies the log at path to w. With follow it then keeps copying
// what is appended (starting over if the file is truncated or replaced)
// until ctx ends, and returns nil; without follow it returns at the end of
// the file.
func TailLog(ctx context.Context, path string, follow bool, w io.Writer) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no console log at %s: the VM has not started on this node (check `blixard status` for its node)", path)
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
