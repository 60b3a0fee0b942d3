package reconciler

import (
	"reflect"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestWaves(t *testing.T) {
	for _, tc := range []struct {
		n, maxUnavailable, canary, want int
	}{
		{n: 1, maxUnavailable: 1, want: 1},
		{n: 4, maxUnavailable: 1, want: 4},
		{n: 10, maxUnavailable: 3, want: 4},
		{n: 4, maxUnavailable: 1, canary: 1, want: 4},
		{n: 10, maxUnavailable: 3, canary: 1, want: 4},
		{n: 2, maxUnavailable: 1, canary: 3, want: 1},
		{n: 0, maxUnavailable: 2, want: 0},
	} {
		got := waveCount(tc.n, spec.Update{MaxUnavailable: tc.maxUnavailable, Canary: tc.canary})
		if got != tc.want {
			t.Errorf("waveCount(%d, maxUnavailable %d, canary %d) = %d, want %d", tc.n, tc.maxUnavailable, tc.canary, got, tc.want)
		}
	}
}

// TestRolloutsPreview: a plan lists, per VM with an update block, exactly
// the instances HoldBack would hold (committed, same declared VM, workload
// changed), and Render shows the waves.
func TestRolloutsPreview(t *testing.T) {
	assign := func(vm, declared string, node uint64, out string) replicated.Assignment {
		return replicated.Assignment{VM: vm, Declared: declared, Node: node, OutPath: "/nix/store/" + out, Drv: "/nix/store/" + out + ".drv", VCPU: 1, MemMiB: 256}
	}
	rolling := spec.Update{MaxUnavailable: 2, Canary: 1, MinHealthySeconds: 10, ProgressDeadline: 300e9}
	web := spec.VM{Update: rolling}
	desired := &spec.Cluster{VMs: map[string]spec.VM{"web": web, "db": {}, "api": {Update: rolling}}}
	current := map[string]replicated.Assignment{
		"web-0": assign("web-0", "web", 1, "web-v1"),
		"web-1": assign("web-1", "web", 2, "web-v1"),
		"web-2": assign("web-2", "web", 1, "web-v1"),
		"web-3": assign("web-3", "web", 2, "web-v1"),
		"db":    assign("db", "db", 1, "db-v1"),
		"api":   assign("api", "api", 1, "api-v1"),
	}
	p := Plan{Assignments: []replicated.Assignment{
		assign("web-0", "web", 1, "web-v2"),
		assign("web-1", "web", 3, "web-v2"), // moved and changed: rolls
		assign("web-2", "web", 1, "web-v2"),
		assign("web-3", "web", 2, "web-v2"),
		assign("web-4", "web", 1, "web-v2"), // new: starts at once
		assign("db", "db", 1, "db-v2"),      // no update block: at once
		assign("api", "api", 2, "api-v1"),   // moved, same workload: no rollout
	}}
	got := Rollouts(p, current, desired)
	want := []RolloutPreview{{VM: "web", Instances: []string{"web-0", "web-1", "web-2", "web-3"}, Waves: 3, Update: rolling}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Rollouts = %+v\nwant %+v", got, want)
	}
	if held := HoldBack(p, current, desired, "c1"); len(held.Assignments) != len(p.Assignments) {
		t.Fatal("HoldBack changed the number of assignments")
	} else {
		var heldVMs []string
		for i, a := range held.Assignments {
			if a.OutPath != p.Assignments[i].OutPath {
				heldVMs = append(heldVMs, a.VM)
			}
		}
		if !reflect.DeepEqual(heldVMs, want[0].Instances) {
			t.Fatalf("HoldBack holds %q, Rollouts lists %q: one rule must decide both", heldVMs, want[0].Instances)
		}
	}
	p.Rollouts = got
	var b strings.Builder
	if err := p.Render(&b, false); err != nil {
		t.Fatal(err)
	}
	line := "⟳ web: 4 instances roll out in 3 waves (waves of 2 after a canary of 1, healthy for 10s within 5m0s)"
	if !strings.Contains(b.String(), line+"\n") {
		t.Fatalf("Render:\n%s\nlacks %q", b.String(), line)
	}
	if Rollouts(p, current, nil) != nil {
		t.Fatal("Rollouts without a desired spec is not empty")
	}
}
