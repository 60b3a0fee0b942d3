package reconciler

import (
	"reflect"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func withVolume(v spec.VM, name string, sizeMiB int) spec.VM {
	vols := map[string]spec.Volume{}
	for k, x := range v.Volumes {
		vols[k] = x
	}
	vols[name] = spec.Volume{SizeMiB: sizeMiB, Pool: "rbd"}
	v.Volumes = vols
	return v
}

func TestPlanVolumes(t *testing.T) {
	nodes := mkNodes(withCeph(mkNode(1, replicated.NodeReady, 8, 8192)))
	tests := []struct {
		name     string
		previous map[string]spec.VM // nil: no committed spec
		desired  map[string]spec.VM
		want     []VolumeChange
		nodes    map[uint64]*replicated.Node // nil: node 1, with Ceph
	}{
		{"first plan creates every volume", nil,
			map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 1024)},
			[]VolumeChange{{VM: "db", Volume: "data", Image: "test.db.data", Pool: "rbd", SizeMiB: 1024}}, nil},
		{"a larger size grows the volume", map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 1024)},
			map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 2048)},
			[]VolumeChange{{VM: "db", Volume: "data", Image: "test.db.data", Pool: "rbd", SizeMiB: 2048, OldSizeMiB: 1024}}, nil},
		{"an unchanged volume is not listed", map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 1024)},
			map[string]spec.VM{"db": withVolume(mkVM("db-2", 1, 512), "data", 1024)}, nil, nil},
		{"replicas get one image each", nil,
			map[string]spec.VM{"web": withReplicas(withVolume(mkVM("web", 1, 512), "data", 64), 2)},
			[]VolumeChange{
				{VM: "web-0", Volume: "data", Image: "test.web-0.data", Pool: "rbd", SizeMiB: 64},
				{VM: "web-1", Volume: "data", Image: "test.web-1.data", Pool: "rbd", SizeMiB: 64},
			}, nil},
		{"an unschedulable VM's volume is not created", nil,
			map[string]spec.VM{"big": withVolume(mkVM("big", 1, 99999), "data", 64)}, nil, nil},
		{"a VM unschedulable for want of Ceph creates no volume", nil,
			map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 1024)}, nil,
			mkNodes(mkNode(1, replicated.NodeReady, 8, 8192))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Desired: mkCluster(tt.desired), Nodes: nodes}
			if tt.nodes != nil {
				in.Nodes = tt.nodes
			}
			if tt.previous != nil {
				in.Previous = mkCluster(tt.previous)
			}
			p := Compute(in)
			if !reflect.DeepEqual(p.Volumes, tt.want) {
				t.Fatalf("Volumes = %+v\nwant %+v", p.Volumes, tt.want)
			}
			if len(tt.want) > 0 && !p.HasChanges() {
				t.Errorf("HasChanges = false with volume changes")
			}
		})
	}
}

func TestCheckVolumes(t *testing.T) {
	old := mkCluster(map[string]spec.VM{"db": withVolume(withVolume(mkVM("db", 1, 512), "data", 1024), "logs", 64)})
	tests := []struct {
		name    string
		desired *spec.Cluster
		want    string // "" means accepted
	}{
		{"same sizes are accepted", old, ""},
		{"growing is accepted", mkCluster(map[string]spec.VM{"db": withVolume(withVolume(mkVM("db", 1, 512), "data", 2048), "logs", 64)}), ""},
		{"a removed VM is accepted (its image stays)", mkCluster(map[string]spec.VM{}), ""},
		{"a shrink is refused naming the volume", mkCluster(map[string]spec.VM{"db": withVolume(withVolume(mkVM("db", 1, 512), "data", 512), "logs", 64)}),
			"vms.db.volumes.data: sizeMiB 512 is smaller than the committed 1024 (RBD image rbd/test.db.data)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckVolumes(old, tt.desired)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("CheckVolumes = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("CheckVolumes = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
