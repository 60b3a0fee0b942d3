package volumes

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/blixard/blixard/spec"
)

// ErrNotBuilt is returned by every operation that needs Ceph in a binary
// built without the `ceph` build tag.
var ErrNotBuilt = errors.New("this blixard was built without Ceph support: rebuild with `go build -tags ceph,pacific` on a host with librados-dev and librbd-dev (scripts/setup-ceph.sh), or remove the Ceph settings and the VMs' volumes")

// Config says how to reach the Ceph cluster.
type Config struct {
	// ConfigFile is a ceph.conf (monitor addresses); "" reads the default
	// locations (/etc/ceph/ceph.conf, $CEPH_CONF).
	ConfigFile string
	// User is the cephx user without "client." (default "admin").
	User string
	// KeyringFile holds User's key; "" uses ceph.conf's keyring setting.
	KeyringFile string
	// Timeout bounds connecting and each monitor command (default 10s):
	// an unreachable monitor fails within it instead of librados' 300s.
	Timeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.User == "" {
		c.User = "admin"
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	return c
}

// MiB is the unit of spec sizes.
const MiB = 1 << 20

// Ensured says what [Conn.Ensure] did.
type Ensured struct {
	Created bool
	Grown   bool
	// Size is the image's size in bytes afterwards; it may exceed the
	// declared size (images are never shrunk).
	Size uint64
}

// Owner is a holder of an image's exclusive lock.
type Owner struct {
	// Client is the holder's Ceph entity, e.g. "client.4123".
	Client string `json:"client"`
	// Addr is its client address, the one to blocklist, e.g.
	// "127.0.0.1:0/3519012345".
	Addr string `json:"addr"`
}

// LockedError is returned when another client holds an image's lock.
type LockedError struct {
	Pool, Image string
	Owners      []Owner
}

func (e *LockedError) Error() string {
	who := make([]string, len(e.Owners))
	for i, o := range e.Owners {
		who[i] = o.Client + " at " + o.Addr
	}
	return fmt.Sprintf("RBD image %s/%s is locked by %s: another node runs this VM, or a fenced node has not released it yet (see `rbd lock ls %s/%s`)",
		e.Pool, e.Image, strings.Join(who, ", "), e.Pool, e.Image)
}

// NotFencedError is returned by [Conn.BreakLock] when the lock holder is
// not blocklisted: breaking its lock would let two clients write.
type NotFencedError struct {
	Pool, Image string
	Owner       Owner
}

func (e *NotFencedError) Error() string {
	return fmt.Sprintf("refusing to break the lock of RBD image %s/%s: its holder %s at %s is not blocklisted; fence it first (Conn.Blocklist, or `ceph osd blocklist add %s`)",
		e.Pool, e.Image, e.Owner.Client, e.Owner.Addr, e.Owner.Addr)
}

// Device is a block device as the NBD server needs it; [Held] is one.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Size() (uint64, error)
}

// Attacher exposes an image at a path for a VM's runner, holding its
// exclusive lock for this node while attached.
type Attacher interface {
	// Attach takes v's exclusive lock through conn (or the attacher's own
	// client) and exposes the image at path, replacing whatever is there.
	// The image exists and has its size ([Conn.Ensure] ran). An error
	// means nothing is attached and the lock is not held.
	Attach(ctx context.Context, conn *Conn, v spec.VolumeRef, path string) (Attachment, error)
}

// Attachment is one attached volume.
type Attachment interface {
	// Detach removes the path and releases the lock. It is called after
	// the VM stopped; calling it twice is not an error.
	Detach(ctx context.Context) error
}
