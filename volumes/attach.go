package volumes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/blixard/blixard/spec"
)

// KernelAttacher maps a volume with the kernel RBD client, `rbd device map
// --exclusive`, and points path (STATE/NAME/volumes/VOL) at the mapped
// device with a symlink to /dev/rbdN. That is the contract with the VM's
// runner: microvm.nix's qemu runner opens `microvm.volumes.*.image` (set by
// lib.volumeModule to that path) as a raw disk, and qemu follows the link to
// the block device. The device is given the owner and group of the VM's
// state directory STATE/NAME (microvm.nix makes it microvm:kvm, the user its
// runner runs as), so the runner can open it.
//
// With --exclusive the kernel client takes the image's exclusive lock when
// it maps it and never hands it over until `rbd device unmap`. Its client
// address (/sys/bus/rbd/devices/N/client_addr) is reported with the node's
// heartbeat, so fencing the node blocklists it too. The mapping belongs to
// the kernel: it outlives the agent, and after a restart Attach adopts a link
// that points at a device mapped for the same image.
//
// This is the production path on hosts with the rbd kernel module. The
// machines Blixard is tested on have none, so its tests run a stand-in rbd
// program. A size grown while mapped applies at the next map.
type KernelAttacher struct {
	Config Config
	// Rbd is the rbd binary (default "rbd").
	Rbd string
	// Sysfs is where the kernel lists mapped images (default
	// /sys/bus/rbd/devices).
	Sysfs  string
	Logger *slog.Logger // nil: discard
}

func (k KernelAttacher) withDefaults() KernelAttacher {
	k.Config = k.Config.withDefaults()
	if k.Rbd == "" {
		k.Rbd = "rbd"
	}
	if k.Sysfs == "" {
		k.Sysfs = "/sys/bus/rbd/devices"
	}
	if k.Logger == nil {
		k.Logger = slog.New(slog.DiscardHandler)
	}
	return k
}

// rbdArgs is the rbd command line for args, with the node's Ceph settings.
func (k KernelAttacher) rbdArgs(args ...string) []string {
	pre := []string{"--id", k.Config.User}
	if k.Config.ConfigFile != "" {
		pre = append(pre, "-c", k.Config.ConfigFile)
	}
	if k.Config.KeyringFile != "" {
		pre = append(pre, "--keyring", k.Config.KeyringFile)
	}
	return append(pre, args...)
}

func (k KernelAttacher) rbd(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, k.Rbd, k.rbdArgs(args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("`%s %s`: %w: %s", k.Rbd, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// Attach maps the image exclusively and links path to its device, or adopts
// the mapping a previous agent left at path.
func (k KernelAttacher) Attach(ctx context.Context, conn *Conn, v spec.VolumeRef, path string) (Attachment, error) {
	k = k.withDefaults()
	log := k.Logger.With("image", v.Pool+"/"+v.Image, "path", path)
	if dev, ok := k.mappedAt(path, v); ok {
		a := k.attachment(dev, path)
		log.Info("kernel mapping adopted", "device", dev, "addrs", a.addrs)
		return a, nil
	}
	// The kernel refuses to map a locked image; a holder that the leader
	// fenced is broken first. (Tests without Ceph pass no conn.)
	if conn != nil {
		if err := clearLock(ctx, conn, v, ""); err != nil {
			return nil, err
		}
	}
	dev, err := k.rbd(ctx, "device", "map", "--exclusive", v.Pool+"/"+v.Image)
	if err != nil {
		return nil, fmt.Errorf("map RBD image %s/%s with the kernel client: %w (is the rbd kernel module loaded? `modprobe rbd`; without it use --volume-attach=daemon)",
			v.Pool, v.Image, err)
	}
	undo := func(err error) (Attachment, error) {
		if _, uerr := k.rbd(context.WithoutCancel(ctx), "device", "unmap", dev); uerr != nil {
			err = fmt.Errorf("%w; unmapping it again failed too: %w", err, uerr)
		}
		return nil, err
	}
	if !strings.HasPrefix(filepath.Base(dev), "rbd") {
		return undo(fmt.Errorf("map RBD image %s/%s: rbd printed %q, not a /dev/rbdN device", v.Pool, v.Image, dev))
	}
	vmDir := filepath.Dir(filepath.Dir(path))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return undo(fmt.Errorf("volume directory: %w", err))
	}
	if err := giveToVM(dev, vmDir); err != nil {
		return undo(fmt.Errorf("give %s (RBD image %s/%s) the owner of %s: %w", dev, v.Pool, v.Image, vmDir, err))
	}
	if err := symlinkAtomic(dev, path); err != nil {
		return undo(fmt.Errorf("link %s → %s: %w", path, dev, err))
	}
	a := k.attachment(dev, path)
	log.Info("mapped with the kernel client", "device", dev, "addrs", a.addrs)
	return a, nil
}

// mappedAt returns the device path links to when the kernel maps v there.
func (k KernelAttacher) mappedAt(path string, v spec.VolumeRef) (string, bool) {
	dev, err := os.Readlink(path)
	if err != nil {
		return "", false
	}
	dir := k.sysfsDir(dev)
	pool, err1 := os.ReadFile(filepath.Join(dir, "pool"))
	name, err2 := os.ReadFile(filepath.Join(dir, "name"))
	if err1 != nil || err2 != nil || strings.TrimSpace(string(pool)) != v.Pool || strings.TrimSpace(string(name)) != v.Image {
		return "", false
	}
	if _, err := os.Stat(dev); err != nil {
		return "", false
	}
	return dev, true
}

// sysfsDir is the kernel's directory of the mapping /dev/rbdN.
func (k KernelAttacher) sysfsDir(dev string) string {
	return filepath.Join(k.Sysfs, strings.TrimPrefix(filepath.Base(dev), "rbd"))
}

// giveToVM gives path (a mapped device, a volume daemon's socket) the
// owner and group of the VM's directory dir, STATE/NAME: microvm.nix makes
// it microvm:kvm, the user its runner runs as.
func giveToVM(path, dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner information")
	}
	return os.Chown(path, int(sys.Uid), int(sys.Gid))
}

// DetachPath unmaps the device a previous agent linked at path.
func (k KernelAttacher) DetachPath(ctx context.Context, _ *Conn, path string) error {
	k = k.withDefaults()
	dev, err := os.Readlink(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return (&kernelAttachment{k: k, dev: dev, path: path}).Detach(ctx) // unmap ignores the address
}

type kernelAttachment struct {
	k         KernelAttacher
	dev, path string
	addrs     []string // the kernel client's, read once
}

// attachment is the mapping of dev at path, with the kernel client's
// address read from sysfs.
func (k KernelAttacher) attachment(dev, path string) *kernelAttachment {
	a := &kernelAttachment{k: k, dev: dev, path: path}
	b, err := os.ReadFile(filepath.Join(k.sysfsDir(dev), "client_addr"))
	if err != nil {
		k.Logger.Warn("cannot read the kernel client's address: fencing this node will not cover the mapping (a new node then waits for its lock instead of breaking it)",
			"device", dev, "err", err)
		return a
	}
	a.addrs = normAddrs(string(b))
	return a
}

// Addrs is the kernel client's address.
func (a *kernelAttachment) Addrs() []string { return a.addrs }

// Leave keeps the mapping: it belongs to the kernel.
func (a *kernelAttachment) Leave() {}

// Detach unmaps the device (releasing the lock) and removes the link.
func (a *kernelAttachment) Detach(ctx context.Context) error {
	if _, err := os.Stat(a.dev); errors.Is(err, os.ErrNotExist) {
		return removeIfExists(a.path)
	}
	if _, err := a.k.rbd(ctx, "device", "unmap", a.dev); err != nil {
		return fmt.Errorf("unmap %s: %w (the VM must have stopped: is the device still open?)", a.dev, err)
	}
	return removeIfExists(a.path)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// symlinkAtomic points link at target: a new symlink link.tmp renamed over link.
func symlinkAtomic(target, link string) error {
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
