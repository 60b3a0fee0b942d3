//go:build !ceph

package volumes

import (
	"context"
	"time"
)

// Built reports whether this binary has Ceph support (the `ceph` build tag).
const Built = false

// Conn is a Ceph client; without the `ceph` build tag none can be made.
type Conn struct{}

// Connect fails with ErrNotBuilt: this binary has no Ceph support.
func Connect(context.Context, Config) (*Conn, error) { return nil, ErrNotBuilt }

// Close does nothing.
func (c *Conn) Close() {}

// Reconnect fails with ErrNotBuilt.
func (c *Conn) Reconnect(context.Context) error { return ErrNotBuilt }

// Addrs fails with ErrNotBuilt.
func (c *Conn) Addrs() ([]string, error) { return nil, ErrNotBuilt }

// Ensure fails with ErrNotBuilt.
func (c *Conn) Ensure(context.Context, string, string, int) (Ensured, error) {
	return Ensured{}, ErrNotBuilt
}

// Exists fails with ErrNotBuilt.
func (c *Conn) Exists(context.Context, string, string) (bool, error) { return false, ErrNotBuilt }

// Size fails with ErrNotBuilt.
func (c *Conn) Size(context.Context, string, string) (uint64, error) { return 0, ErrNotBuilt }

// Owners fails with ErrNotBuilt.
func (c *Conn) Owners(context.Context, string, string) ([]Owner, error) { return nil, ErrNotBuilt }

// Watchers fails with ErrNotBuilt.
func (c *Conn) Watchers(context.Context, string, string) ([]string, error) { return nil, ErrNotBuilt }

// Lock fails with ErrNotBuilt.
func (c *Conn) Lock(context.Context, string, string) (*Held, error) { return nil, ErrNotBuilt }

// Blocklist fails with ErrNotBuilt.
func (c *Conn) Blocklist(context.Context, []string, time.Duration) error { return ErrNotBuilt }

// Unblocklist fails with ErrNotBuilt.
func (c *Conn) Unblocklist(context.Context, []string) error { return ErrNotBuilt }

// Blocklisted fails with ErrNotBuilt.
func (c *Conn) Blocklisted(context.Context) ([]string, error) { return nil, ErrNotBuilt }

// BreakLock fails with ErrNotBuilt.
func (c *Conn) BreakLock(context.Context, string, string) error { return ErrNotBuilt }

// Held is a locked image; without Ceph support none exists.
type Held struct{}

// ReadAt fails with ErrNotBuilt.
func (h *Held) ReadAt([]byte, int64) (int, error) { return 0, ErrNotBuilt }

// WriteAt fails with ErrNotBuilt.
func (h *Held) WriteAt([]byte, int64) (int, error) { return 0, ErrNotBuilt }

// Flush fails with ErrNotBuilt.
func (h *Held) Flush() error { return ErrNotBuilt }

// Size fails with ErrNotBuilt.
func (h *Held) Size() (uint64, error) { return 0, ErrNotBuilt }

// Grow fails with ErrNotBuilt.
func (h *Held) Grow(int) (bool, error) { return false, ErrNotBuilt }

// Release does nothing.
func (h *Held) Release() error { return nil }

// Errno returns 0: without Ceph support no error carries a Ceph code.
func Errno(error) int { return 0 }
