package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/blixard/blixard/spec"
)

// Volumes makes a VM's Ceph RBD volumes ready on this node;
// volumes.Manager satisfies it.
type Volumes interface {
	// Attach ensures v's image exists with at least its size, takes its
	// exclusive lock for this node and exposes it at path (see VolumePath).
	// It is idempotent: a path already attached to v's image is left alone.
	// An error (Ceph's, or another node holding the lock) means the VM must
	// not start; the agent reports it and tries again later.
	Attach(ctx context.Context, v spec.VolumeRef, path string) error
	// Detach unexposes path and releases the lock. It is called only after
	// the VM stopped; a path that is not attached is not an error.
	Detach(ctx context.Context, path string) error
}

// VolumePath is where volume vol of VM name is attached: the stable path the
// VM's runner opens (microvm.nix `microvm.volumes.*.image`, with
// autoCreate = false).
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
