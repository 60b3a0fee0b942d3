package reconciler

import (
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// The planner carries a function's snapshot flag on its instances'
// assignments (the agent never reads the desired spec), and only on them;
// the flag is not part of SameWorkload, so turning it on changes no
// running instance.
func TestComputeCarriesFunctionSnapshot(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		f := testFunction(0, 3)
		f.Snapshot = snapshot
		desired := &spec.Cluster{Name: "test", Functions: map[string]spec.Function{"hello": f}, VMs: map[string]spec.VM{
			"db": {Runner: spec.Runner{Out: "/nix/store/db"}, VCPU: 1, MemMiB: 256, Replicas: 1, Autostart: true}}}
		nodes := map[uint64]*replicated.Node{1: {ID: 1, Capacity: replicated.Resources{VCPU: 4, MemMiB: 4096}, State: replicated.NodeReady}}
		p := Compute(Input{Desired: desired, Nodes: nodes, Functions: map[string]replicated.FunctionState{"hello": {Want: 1, ScaledAt: time.Unix(1, 0)}}})
		seen := 0
		for _, a := range p.Assignments {
			want := snapshot && a.Function == "hello"
			if a.Snapshot != want {
				t.Errorf("snapshot=%v: %s has Snapshot %v, want %v", snapshot, a.VM, a.Snapshot, want)
			}
			seen++
		}
		if seen != 2 {
			t.Fatalf("snapshot=%v: %d assignments, want db and fn-hello-0", snapshot, seen)
		}
	}
	a := replicated.Assignment{VM: "fn-hello-0", OutPath: "/nix/store/fn"}
	b := a
	b.Snapshot = true
	if !a.SameWorkload(b) {
		t.Error("Snapshot is part of SameWorkload: toggling it would restart running instances")
	}
}
