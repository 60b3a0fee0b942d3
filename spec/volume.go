package spec

import (
	"fmt"
	"strings"
)

// MaxImageName is the longest RBD image name Blixard derives: librbd's
// RBD_MAX_IMAGE_NAME_SIZE is 96 bytes including the terminating NUL.
const MaxImageName = 95

// ImageName derives the RBD image name of volume vol of VM instance vm (its
// expanded name: web-0 for a replica, else the declared name) in cluster:
// "CLUSTER.VM.VOL", or "VM.VOL" when the cluster has no name. Names never
// contain '.', so the parts stay unambiguous. It fails when a part is not a
// valid name or the result is longer than MaxImageName.
func ImageName(cluster, vm, vol string) (string, error) {
	parts := []string{vm, vol}
	if cluster != "" {
		parts = []string{cluster, vm, vol}
	}
	for _, p := range parts {
		if err := ValidName(p); err != nil {
			return "", err
		}
	}
	img := strings.Join(parts, ".")
	if len(img) > MaxImageName {
		return "", fmt.Errorf("RBD image name %q has %d characters, at most %d are allowed: shorten the cluster, VM or volume name", img, len(img), MaxImageName)
	}
	return img, nil
}

// VolumeRef is one volume of one VM instance, with its derived image.
type VolumeRef struct {
	Name    string `json:"name"`  // the volume's name in the flake
	Image   string `json:"image"` // RBD image name (ImageName)
	Pool    string `json:"pool"`
	SizeMiB int    `json:"sizeMiB"`
}

// VolumesOf lists the volumes of instance in, sorted by name, with their
// image names. Call it on a validated cluster: a volume whose image name is
// invalid gets an empty Image.
func (c *Cluster) VolumesOf(in Instance) []VolumeRef {
	if len(in.Volumes) == 0 {
		return nil
	}
	out := make([]VolumeRef, 0, len(in.Volumes))
	for _, name := range sortedKeys(in.Volumes) {
		v := in.Volumes[name]
		img, _ := ImageName(c.Name, in.Name, name)
		out = append(out, VolumeRef{Name: name, Image: img, Pool: v.Pool, SizeMiB: v.SizeMiB})
	}
	return out
}
