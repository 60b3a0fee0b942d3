package spec

import (
	"strings"
	"testing"
)

func TestImageName(t *testing.T) {
	n30, n31 := strings.Repeat("c", 30), strings.Repeat("v", 31)
	tests := []struct {
		name              string
		cluster, vm, vol  string
		want, wantErrPart string
	}{
		{"cluster, VM and volume are joined with dots", "prod", "web", "data", "prod.web.data", ""},
		{"no cluster name leaves it out", "", "web-0", "data", "web-0.data", ""},
		{"95 characters pass", n30, strings.Repeat("w", 32), n31, n30 + "." + strings.Repeat("w", 32) + "." + n31, ""},
		{"96 characters are refused with the limit", n30, strings.Repeat("w", 33), n31, "", "at most 95 are allowed"},
		{"a dot in a part is refused", "prod", "web.x", "data", "", "invalid name"},
		{"an empty volume name is refused", "prod", "web", "", "", "it is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ImageName(tt.cluster, tt.vm, tt.vol)
			if tt.wantErrPart != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrPart) {
					t.Fatalf("ImageName = %q, %v; want an error containing %q", got, err, tt.wantErrPart)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ImageName = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestValidateRefusesTooLongImageNames(t *testing.T) {
	c := cluster(func(c *Cluster) {
		c.Name = strings.Repeat("c", 40)
		editVM(c, "web", func(vm *VM) {
			vm.Replicas = 10 // web-9: the longest instance name counts
			vm.Volumes = map[string]Volume{strings.Repeat("v", 49): {SizeMiB: 1, Pool: "rbd"}}
		})
	})
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "vms.web.volumes."+strings.Repeat("v", 49)+": RBD image name") {
		t.Fatalf("Validate = %v, want the too-long image name reported at the volume", err)
	}
	c.VMs["web"] = func() VM { vm := c.VMs["web"]; vm.Replicas = 1; return vm }()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate with a 94-character image name = %v, want nil", err)
	}
}

func TestVolumesOfUsesInstanceNames(t *testing.T) {
	c := cluster(func(c *Cluster) {
		editVM(c, "web", func(vm *VM) {
			vm.Replicas = 2
			vm.Volumes = map[string]Volume{"logs": {SizeMiB: 5, Pool: "fast"}, "data": {SizeMiB: 10, Pool: "rbd"}}
		})
	})
	var got []VolumeRef
	for _, in := range c.Instances() {
		if in.Name == "web-1" {
			got = c.VolumesOf(in)
		}
	}
	want := []VolumeRef{{"data", "prod.web-1.data", "rbd", 10}, {"logs", "prod.web-1.logs", "fast", 5}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("VolumesOf(web-1) = %+v, want %+v", got, want)
	}
}
