package volumes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/blixard/blixard/spec"
)

// NBDAttacher exposes a volume as an NBD export on a unix socket at the
// volume's path, served from this process through the node's Ceph client,
// which holds the image's exclusive lock while attached. A qemu runner
// opens it with
//
//	-drive if=virtio,format=raw,driver=nbd,server.type=unix,server.path=STATE/NAME/volumes/VOL
//
// (or file=nbd+unix:///?socket=PATH). Because the VM's I/O uses the node's
// own client, blocklisting the node's registered addresses fences the VM:
// its next write fails with ESHUTDOWN.
//
// Limits: the attachment lives in the agent's process, so an agent restart
// disconnects the VMs' disks (qemu's nbd `reconnect-delay` can ride it out,
// but the restarted agent finds its previous client's lock until the
// cluster breaks it); unix socket paths are limited to 107 bytes; a size
// grown while attached ([Manager.Attach] grows the image in place) is seen
// by the VM only after it reconnects.
type NBDAttacher struct {
	Logger *slog.Logger // nil: discard
}

// Attach takes the lock through conn and serves the image at path.
func (n NBDAttacher) Attach(ctx context.Context, conn *Conn, v spec.VolumeRef, path string) (Attachment, error) {
	if len(path) > 107 {
		return nil, fmt.Errorf("volume socket path %s has %d bytes, unix sockets allow 107: use a shorter --state-dir", path, len(path))
	}
	held, err := lockBreakingFenced(ctx, conn, v)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		_ = held.Release()
		return nil, fmt.Errorf("volume directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = held.Release()
		return nil, fmt.Errorf("replace %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		_ = held.Release()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	log := n.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := serveNBD(ln, held, log.With("volume", v.Pool+"/"+v.Image))
	return &nbdAttachment{srv: srv, held: held, path: path}, nil
}

type nbdAttachment struct {
	srv  *nbdServer
	held *Held
	path string
	once sync.Once
	err  error
}

// Grow grows the attached image through the lock holder; the VM sees the
// new size after it reconnects (its next start).
func (a *nbdAttachment) Grow(_ context.Context, sizeMiB int) (bool, error) {
	return a.held.Grow(sizeMiB)
}

func (a *nbdAttachment) Detach(context.Context) error {
	a.once.Do(func() {
		_ = a.srv.Close() // removes the socket file too
		_ = os.Remove(a.path)
		a.err = a.held.Release()
	})
	return a.err
}

// KernelAttacher maps a volume with the kernel RBD client, `rbd device map
// --exclusive`, and points path at the mapped device (a symlink to
// /dev/rbdN). With --exclusive the kernel client takes the image's
// exclusive lock itself and never hands it over until `rbd device unmap`;
// it ignores the Conn it is given (its own client holds the lock, and that
// client's address is what fencing must blocklist).
//
// This is the production path on hosts with the rbd kernel module. It
// cannot run on the machines Blixard is tested on (their kernels have no
// rbd or nbd driver), so it is small and untested; use NBDAttacher there.
// A size grown while mapped applies at the next map.
type KernelAttacher struct {
	Config Config
	// Rbd is the rbd binary (default "rbd").
	Rbd string
}

func (k KernelAttacher) rbd(ctx context.Context, args ...string) (string, error) {
	bin := k.Rbd
	if bin == "" {
		bin = "rbd"
	}
	cfg := k.Config.withDefaults()
	pre := []string{"--id", cfg.User}
	if cfg.ConfigFile != "" {
		pre = append(pre, "-c", cfg.ConfigFile)
	}
	if cfg.KeyringFile != "" {
		pre = append(pre, "--keyring", cfg.KeyringFile)
	}
	cmd := exec.CommandContext(ctx, bin, append(pre, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// Attach maps the image exclusively and links path to its device.
func (k KernelAttacher) Attach(ctx context.Context, _ *Conn, v spec.VolumeRef, path string) (Attachment, error) {
	dev, err := k.rbd(ctx, "device", "map", "--exclusive", v.Pool+"/"+v.Image)
	if err != nil {
		return nil, err
	}
	if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		tmp := path + ".tmp"
		_ = os.Remove(tmp)
		if err = os.Symlink(dev, tmp); err == nil {
			err = os.Rename(tmp, path)
		}
	}
	if err != nil {
		_, _ = k.rbd(context.WithoutCancel(ctx), "device", "unmap", dev)
		return nil, fmt.Errorf("link %s → %s: %w", path, dev, err)
	}
	return &kernelAttachment{k: k, dev: dev, path: path}, nil
}

type kernelAttachment struct {
	k         KernelAttacher
	dev, path string
}

func (a *kernelAttachment) Detach(ctx context.Context) error {
	if _, err := os.Stat(a.dev); errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(a.path)
		return nil
	}
	if _, err := a.k.rbd(ctx, "device", "unmap", a.dev); err != nil {
		return err
	}
	return os.Remove(a.path)
}

// lockBreakingFenced takes the image's exclusive lock. A lock held by clients
// that are all blocklisted (a node the leader fenced before moving its VMs)
// is broken and taken; a lock held by a live client is left alone and
// reported as a *LockedError.
func lockBreakingFenced(ctx context.Context, conn *Conn, v spec.VolumeRef) (*Held, error) {
	held, err := conn.Lock(ctx, v.Pool, v.Image)
	var locked *LockedError
	if !errors.As(err, &locked) {
		return held, err
	}
	if berr := conn.BreakLock(ctx, v.Pool, v.Image); berr != nil {
		var notFenced *NotFencedError
		if errors.As(berr, &notFenced) {
			return nil, err // held by a client that is not fenced: wait for it
		}
		return nil, fmt.Errorf("%w; breaking the fenced holder's lock failed: %w", err, berr)
	}
	return conn.Lock(ctx, v.Pool, v.Image)
}
