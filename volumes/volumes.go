package volumes

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	// Attach is how volumes reach the VMs' runners (serve --volume-attach;
	// "" is AttachAuto).
	Attach AttachMode
}

// AttachMode says how a node exposes volumes to its VMs.
type AttachMode string

const (
	// AttachAuto is AttachKernel when the kernel has the rbd driver
	// (/sys/bus/rbd exists: load it at boot, NixOS boot.kernelModules =
	// [ "rbd" ]), AttachDaemon otherwise.
	AttachAuto AttachMode = "auto"
	// AttachKernel maps each image with the kernel RBD client (`rbd device
	// map --exclusive`) and links STATE/NAME/volumes/VOL to /dev/rbdN
	// ([KernelAttacher]): the production path, what microvm.nix's qemu
	// runner opens as a raw disk.
	AttachKernel AttachMode = "kernel"
	// AttachDaemon serves each image from a qemu-storage-daemon of its own
	// over NBD on the unix socket STATE/NAME/volumes/VOL ([DaemonAttacher]).
	AttachDaemon AttachMode = "daemon"
)

// Check reports whether m is a known mode; its error names the flag.
func (m AttachMode) Check() error {
	switch m {
	case "", AttachAuto, AttachKernel, AttachDaemon:
		return nil
	}
	return fmt.Errorf("--volume-attach %q: want auto, kernel or daemon", string(m))
}

// KernelRBD reports whether the kernel has its RBD driver loaded
// (/sys/bus/rbd exists), which AttachAuto uses.
func KernelRBD() bool {
	_, err := os.Stat("/sys/bus/rbd")
	return err == nil
}

// resolve returns the mode AttachAuto stands for on this host.
func (m AttachMode) resolve() AttachMode {
	switch m {
	case AttachKernel, AttachDaemon:
		return m
	}
	if KernelRBD() {
		return AttachKernel
	}
	return AttachDaemon
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

// Attacher exposes an image at a path for a VM's runner, with the image's
// exclusive lock held for this node while attached.
type Attacher interface {
	// Attach takes v's exclusive lock for this node and exposes the image
	// at path, or adopts what a previous agent left attached there for v.
	// conn is the agent's client (it checks and breaks locks); the image
	// exists and has its size ([Conn.Ensure] ran). An error means nothing
	// new is attached and this node took no lock.
	Attach(ctx context.Context, conn *Conn, v spec.VolumeRef, path string) (Attachment, error)
	// DetachPath detaches what a previous agent left attached at path (it
	// has no Attachment for it); nothing there is not an error.
	DetachPath(ctx context.Context, conn *Conn, path string) error
}

// Attachment is one attached volume.
type Attachment interface {
	// Detach removes the path and releases the lock. It is called after
	// the VM stopped; calling it twice is not an error.
	Detach(ctx context.Context) error
	// Addrs are the Ceph client addresses that write to the image for the
	// VM (the daemon's, the kernel client's): the node reports them in its
	// heartbeat, so that fencing the node fences them too.
	Addrs() []string
	// Leave forgets the attachment but keeps it: the agent exits, the VM
	// keeps its disk and the next agent adopts it.
	Leave()
}

// normAddrs turns a Ceph address as librados and the monitors print it
// ("v2:127.0.0.1:0/123", "[v2:127.0.0.1:0/123,v1:…]", "127.0.0.1:0/123")
// into the plain form the blocklist uses ("127.0.0.1:0/123").
func normAddrs(s string) []string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "[")
	s = strings.TrimSuffix(s, "]")
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		a = strings.TrimPrefix(a, "v2:")
		a = strings.TrimPrefix(a, "v1:")
		a = strings.TrimPrefix(a, "any:")
		if a != "" && !containsString(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
