package nixcache

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteNAR writes the NAR serialisation of the file tree at p (a store
// path's files, as they are on disk) to w: what `nix-store --dump` prints,
// byte for byte, so its SHA-256 is the path's NarHash when the files are
// intact. It is written here rather than by running nix-store so that a
// NAR of any size streams to the client as it is read, with no process per
// request and no bound on output (nixrun buffers a program's stdout).
//
// Symlinks are written as symlinks, never followed; a file is executable
// when its owner may execute it; directory entries go in byte order, as
// nix sorts them.
func WriteNAR(w io.Writer, p string) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	n := narWriter{w: bw}
	n.str("nix-archive-1")
	n.node(p)
	if n.err != nil {
		return n.err
	}
	return bw.Flush()
}

type narWriter struct {
	w   *bufio.Writer
	err error
	buf [8]byte
}

// str writes one NAR string: its length (64-bit little endian), its bytes,
// zeros up to a multiple of 8.
func (n *narWriter) str(s string) {
	n.header(uint64(len(s)))
	if n.err == nil {
		_, n.err = n.w.WriteString(s)
	}
	n.pad(uint64(len(s)))
}

func (n *narWriter) header(size uint64) {
	if n.err != nil {
		return
	}
	binary.LittleEndian.PutUint64(n.buf[:], size)
	_, n.err = n.w.Write(n.buf[:])
}

func (n *narWriter) pad(size uint64) {
	if n.err != nil || size%8 == 0 {
		return
	}
	var zero [8]byte
	_, n.err = n.w.Write(zero[:8-size%8])
}

func (n *narWriter) node(p string) {
	if n.err != nil {
		return
	}
	fi, err := os.Lstat(p)
	if err != nil {
		n.err = fmt.Errorf("NAR of %s: %w", p, err)
		return
	}
	n.str("(")
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		n.str("type")
		n.str("regular")
		if mode&0o100 != 0 {
			n.str("executable")
			n.str("")
		}
		n.str("contents")
		n.file(p, uint64(fi.Size()))
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			n.err = fmt.Errorf("NAR of %s: %w", p, err)
			return
		}
		n.str("type")
		n.str("symlink")
		n.str("target")
		n.str(target)
	case mode.IsDir():
		n.str("type")
		n.str("directory")
		entries, err := os.ReadDir(p) // sorted by name, byte order
		if err != nil {
			n.err = fmt.Errorf("NAR of %s: %w", p, err)
			return
		}
		for _, e := range entries {
			n.str("entry")
			n.str("(")
			n.str("name")
			n.str(e.Name())
			n.str("node")
			n.node(filepath.Join(p, e.Name()))
			n.str(")")
		}
	default:
		n.err = fmt.Errorf("NAR of %s: a %v cannot be in a store path", p, mode.Type())
		return
	}
	n.str(")")
}

// file writes a regular file's contents as a NAR string of size bytes (its
// size when it was stat'ed: a file that changed meanwhile is an error, not
// a NAR that lies about its length).
func (n *narWriter) file(p string, size uint64) {
	n.header(size)
	if n.err != nil {
		return
	}
	f, err := os.Open(p)
	if err != nil {
		n.err = fmt.Errorf("NAR of %s: %w", p, err)
		return
	}
	defer f.Close()
	copied, err := io.Copy(n.w, io.LimitReader(f, int64(size)))
	if err != nil {
		n.err = fmt.Errorf("NAR of %s: %w", p, err)
		return
	}
	if uint64(copied) != size {
		n.err = fmt.Errorf("NAR of %s: the file shrank from %d to %d bytes while it was read", p, size, copied)
		return
	}
	n.pad(size)
}
