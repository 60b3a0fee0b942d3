package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/blixard/blixard/spec"
)

// Volumes makes a VM's Ceph RBD volumes ready on this node;
// volumes.Manager satisfies it.
type Volumes interface {
	// Attach ensures v's image exists with at least its size, takes its
	// exclusive lock for this node and exposes it at path (see VolumePath).
	// It is idempotent: a path already attached to v's image is left alone,
	// also when a previous agent attached it (a restarted agent's first
	// Attach adopts the attachment without disturbing the running VM).
	// An error (Ceph's, or another node holding the lock) means the VM must
	// not start; the agent reports it and tries again later.
	Attach(ctx context.Context, v spec.VolumeRef, path string) error
	// Detach unexposes path and releases the lock. It is called only after
	// the VM stopped; a path that is not attached is not an error.
	Detach(ctx context.Context, path string) error
	// ClientAddrs are the Ceph client addresses that write for this node's
	// VMs now (its own client's, its volume daemons' and kernel mappings').
	// The heartbeat carries them, so that fencing the node blocklists them
	// all. It must not block.
	ClientAddrs() []string
}

// VolumePath is where volume vol of VM name is attached: the stable path the
// VM's runner opens (microvm.nix `microvm.volumes.*.image`, with
// autoCreate = false): a link to the mapped /dev/rbdN, or a unix socket
// served over NBD (see the volumes package).
func VolumePath(stateDir, name, vol string) string {
	return filepath.Join(stateDir, name, "volumes", vol)
}

// attachVolumes attaches every volume of VM name, in order.
func (a *Agent) attachVolumes(ctx context.Context, name string, vols []spec.VolumeRef) error {
	if a.o.Volumes == nil {
		return errors.New("the VM has volumes but this node has no Ceph settings: start blixard serve with --ceph-config-file (and --ceph-user, --ceph-keyring-file), built with -tags ceph,pacific")
	}
	for _, v := range vols {
		if err := a.o.Volumes.Attach(ctx, v, VolumePath(a.o.StateDir, name, v.Name)); err != nil {
			return fmt.Errorf("volume %s (RBD image %s/%s): %w", v.Name, v.Pool, v.Image, err)
		}
	}
	return nil
}

// detachVolumes detaches the given volumes of VM name, releasing their
// locks; it tries every volume and returns the errors joined.
func (a *Agent) detachVolumes(ctx context.Context, name string, vols []spec.VolumeRef) error {
	if a.o.Volumes == nil {
		return nil
	}
	var errs []error
	for _, v := range vols {
		if err := a.o.Volumes.Detach(ctx, VolumePath(a.o.StateDir, name, v.Name)); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// recordLeftAttachments records, as attached, the volumes a previous agent
// left exposed under STATE/NAME/volumes: they outlive the agent (a kernel
// mapping, a volume daemon). Without this a restarted agent would know
// nothing of them: a VM moved away while the agent was down would be
// stopped but its volume never detached, so its lock would stay and the
// node now running the VM would wait forever. Only the names are known
// here; for a VM still assigned, Decide then sees attachments that differ
// from the assignment's and attaches, which adopts what runs.
func (a *Agent) recordLeftAttachments() {
	if a.o.Volumes == nil {
		return
	}
	dirs, err := filepath.Glob(filepath.Join(a.o.StateDir, "*", "volumes"))
	if err != nil {
		return
	}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		var left []spec.VolumeRef
		for _, e := range entries {
			// VOL is the exposed path (a socket or a link to a device);
			// VOL.daemon, VOL.log, … are the attacher's own files.
			if strings.Contains(e.Name(), ".") || e.Type()&(fs.ModeSocket|fs.ModeSymlink) == 0 {
				continue
			}
			left = append(left, spec.VolumeRef{Name: e.Name()})
		}
		if len(left) == 0 {
			continue
		}
		name := filepath.Base(filepath.Dir(dir))
		a.log.Info("volumes left attached by a previous agent", "vm", name, "volumes", len(left))
		a.rec.vm(name).attached = left // ReadDir sorts by name, as Assignment.Volumes is
	}
}

// cephAddrs are the Ceph client addresses the heartbeat reports (none
// without Ceph settings).
func (a *Agent) cephAddrs() []string {
	if a.o.Volumes == nil {
		return nil
	}
	return a.o.Volumes.ClientAddrs()
}
