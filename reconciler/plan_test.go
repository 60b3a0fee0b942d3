package reconciler

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Test helpers shared by the plan, place, render and bench tests.

func mkNode(id uint64, st replicated.NodeState, vcpu, mem int, labels ...string) *replicated.Node {
	n := &replicated.Node{ID: id, State: st, Capacity: replicated.Resources{VCPU: vcpu, MemMiB: mem}}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[k] = v
	}
	return n
}

func mkNodes(ns ...*replicated.Node) map[uint64]*replicated.Node {
	m := make(map[uint64]*replicated.Node, len(ns))
	for _, n := range ns {
		m[n.ID] = n
	}
	return m
}

func ready(id uint64) *replicated.Node { return mkNode(id, replicated.NodeReady, 8, 8192) }

// withCeph gives n Ceph, which instances with volumes need.
func withCeph(n *replicated.Node) *replicated.Node { n.Ceph = true; return n }

func mkVM(out string, vcpu, mem int) spec.VM {
	return spec.VM{Runner: spec.Runner{Drv: "/nix/store/" + out + ".drv", Out: "/nix/store/" + out},
		VCPU: vcpu, MemMiB: mem, Replicas: 1, Autostart: true}
}

func withPlacement(v spec.VM, p spec.Placement) spec.VM { v.Placement = p; return v }

func withReplicas(v spec.VM, n int) spec.VM { v.Replicas = n; return v }

func mkCluster(vms map[string]spec.VM) *spec.Cluster { return &spec.Cluster{Name: "test", VMs: vms} }

// mkAssign assigns instance vm (its declared name is vm without a replica
// suffix: web-1 → web).
func mkAssign(vm string, node uint64, out string, vcpu, mem int, gen uint64) replicated.Assignment {
	declared := vm
	if i := strings.LastIndexByte(vm, '-'); i > 0 {
		if _, err := strconv.Atoi(vm[i+1:]); err == nil {
			declared = vm[:i]
		}
	}
	return replicated.Assignment{VM: vm, Declared: declared, Node: node, Drv: "/nix/store/" + out + ".drv", OutPath: "/nix/store/" + out,
		VCPU: vcpu, MemMiB: mem, Generation: gen}
}

func mkCurrent(as ...replicated.Assignment) map[string]replicated.Assignment {
	m := make(map[string]replicated.Assignment, len(as))
	for _, a := range as {
		m[a.VM] = a
	}
	return m
}

// rendered returns the plan's render lines without colour and summary.
func rendered(t *testing.T, p Plan) []string {
	t.Helper()
	var b strings.Builder
	if err := p.Render(&b, false); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if l == "" || l == "No changes." || l == p.Summary() {
			continue
		}
		out = append(out, l)
	}
	return out
}

func placements(p Plan) map[string]uint64 {
	m := map[string]uint64{}
	for _, a := range p.Assignments {
		m[a.VM] = a.Node
	}
	return m
}

func TestCompute(t *testing.T) {
	const (
		draining = replicated.NodeDraining
		cordoned = replicated.NodeCordoned
		down     = replicated.NodeDown
		isReady  = replicated.NodeReady
	)
	tests := []struct {
		name        string
		in          Input
		wantNodes   map[string]uint64 // VM → node of every assignment
		wantLines   []string          // Render output without the summary
		wantChanges bool
	}{
		{
			name:      "empty input → no changes",
			in:        Input{},
			wantNodes: map[string]uint64{},
		},
		{
			name: "new VMs are bin-packed, largest first: the most allocated node that fits, then the lowest id",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": mkVM("a", 1, 1024), "b": mkVM("b", 1, 3072), "c": mkVM("c", 1, 2048),
				}),
				Nodes: mkNodes(mkNode(1, isReady, 4, 4096), mkNode(2, isReady, 4, 4096)),
			},
			wantNodes: map[string]uint64{"a": 1, "b": 1, "c": 2},
			wantLines: []string{
				"+ a → node 1 (/nix/store/a, 1 vCPU, 1024 MiB) [binpack: 50% used]",
				"+ b → node 1 (/nix/store/b, 1 vCPU, 3072 MiB) [binpack: 0% used]",
				"+ c → node 2 (/nix/store/c, 1 vCPU, 2048 MiB) [binpack: 0% used]",
			},
			wantChanges: true,
		},
		{
			name: "unchanged input → no changes",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024), "b": mkVM("b", 1, 1024)}),
				Nodes:   mkNodes(ready(1), ready(2)),
				Current: mkCurrent(mkAssign("a", 2, "a", 1, 1024, 7), mkAssign("b", 1, "b", 1, 1024, 9)),
			},
			wantNodes: map[string]uint64{"a": 2, "b": 1},
		},
		{
			name: "runner change on same node → Changed",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": mkVM("db-new", 1, 1024)}),
				Nodes:   mkNodes(ready(1), ready(2)),
				Current: mkCurrent(mkAssign("db", 2, "db-old", 1, 1024, 3)),
			},
			wantNodes:   map[string]uint64{"db": 2},
			wantLines:   []string{"~ db on node 2: /nix/store/db-old → /nix/store/db-new"},
			wantChanges: true,
		},
		{
			name: "resources that shrink or grow within the node's room → Changed in place",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 512), "b": mkVM("b", 4, 4096)}),
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("a", 1, "a", 2, 1024, 1), mkAssign("b", 1, "b", 2, 2048, 1)),
			},
			wantNodes: map[string]uint64{"a": 1, "b": 1},
			wantLines: []string{
				"~ a on node 1: 2 → 1 vCPU, 1024 → 512 MiB",
				"~ b on node 1: 2 → 4 vCPU, 2048 → 4096 MiB",
			},
			wantChanges: true,
		},
		{
			name: "grown VM that no longer fits moves to node 2, the unchanged one stays",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 5120), "b": mkVM("b", 1, 4096)}),
				Nodes:   mkNodes(ready(1), ready(2)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 4096, 1), mkAssign("b", 1, "b", 1, 4096, 1)),
			},
			wantNodes: map[string]uint64{"a": 2, "b": 1},
			wantLines: []string{
				"→ a moved node 1 → node 2 (no longer fits on node 1: needs 5120 MiB memory and 1 vCPU, 4096 MiB and 7 vCPU free) [binpack: 0% used]; 4096 → 5120 MiB",
			},
			wantChanges: true,
		},
		{
			name: "draining node moves its VMs, to the most allocated node that fits",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"cache": mkVM("cache", 1, 1024), "web": mkVM("web", 1, 1024)}),
				Nodes:   mkNodes(ready(1), mkNode(2, draining, 8, 8192), ready(3)),
				Current: mkCurrent(mkAssign("cache", 2, "cache", 1, 1024, 1), mkAssign("web", 3, "web", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"cache": 3, "web": 3},
			wantLines:   []string{"→ cache moved node 2 → node 3 (node 2 is draining) [binpack: 12% used]"},
			wantChanges: true,
		},
		{
			name: "down node moves its VMs, with their new runner",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"cache": mkVM("cache-2", 1, 1024)}),
				Nodes:   mkNodes(mkNode(1, down, 8, 8192), ready(2)),
				Current: mkCurrent(mkAssign("cache", 1, "cache-1", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"cache": 2},
			wantLines:   []string{"→ cache moved node 1 → node 2 (node 1 is down) [binpack: 0% used]; /nix/store/cache-1 → /nix/store/cache-2"},
			wantChanges: true,
		},
		{
			name: "VM on an unregistered node moves",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024)}),
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("a", 4, "a", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"a": 1},
			wantLines:   []string{"→ a moved node 4 → node 1 (node 4 is no longer registered) [binpack: 0% used]"},
			wantChanges: true,
		},
		{
			name: "cordoned node keeps VM but gets no new ones",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024), "b": mkVM("b", 1, 1024)}),
				Nodes:   mkNodes(mkNode(1, cordoned, 8, 8192), ready(2)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"a": 1, "b": 2},
			wantLines:   []string{"+ b → node 2 (/nix/store/b, 1 vCPU, 1024 MiB) [binpack: 0% used]"},
			wantChanges: true,
		},
		{
			name: "grown VM on a cordoned node that no longer fits moves to a ready node",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 9000)}),
				Nodes:   mkNodes(mkNode(1, cordoned, 8, 8192), mkNode(2, isReady, 8, 16384)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1)),
			},
			wantNodes: map[string]uint64{"a": 2},
			wantLines: []string{
				"→ a moved node 1 → node 2 (no longer fits on node 1: needs 9000 MiB memory and 1 vCPU, 8192 MiB and 8 vCPU free) [binpack: 0% used]; 1024 → 9000 MiB",
			},
			wantChanges: true,
		},
		{
			name: "labels constrain placement",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"eu": withPlacement(mkVM("eu", 1, 1024), spec.Placement{Labels: map[string]string{"zone": "eu", "disk": "ssd"}}),
				}),
				Nodes: mkNodes(mkNode(1, isReady, 8, 8192, "zone=eu"), mkNode(2, isReady, 8, 8192, "zone=us", "disk=ssd"),
					mkNode(3, isReady, 8, 8192, "zone=eu", "disk=ssd")),
			},
			wantNodes:   map[string]uint64{"eu": 3},
			wantLines:   []string{"+ eu → node 3 (/nix/store/eu, 1 vCPU, 1024 MiB) [binpack: 0% used]"},
			wantChanges: true,
		},
		{
			name: "VM on a node that lacks a newly required label moves",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"eu": withPlacement(mkVM("eu", 1, 1024), spec.Placement{Labels: map[string]string{"zone": "eu"}}),
				}),
				Nodes:   mkNodes(ready(1), mkNode(2, isReady, 8, 8192, "zone=eu")),
				Current: mkCurrent(mkAssign("eu", 1, "eu", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"eu": 2},
			wantLines:   []string{"→ eu moved node 1 → node 2 (node 1 does not carry labels zone=eu) [binpack: 0% used]"},
			wantChanges: true,
		},
		{
			name: "placement.nodes restricts placement and moves a VM off an unlisted node",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": withPlacement(mkVM("a", 1, 1024), spec.Placement{Nodes: []uint64{3, 2}}),
					"b": withPlacement(mkVM("b", 1, 1024), spec.Placement{Nodes: []uint64{3}}),
				}),
				Nodes:   mkNodes(ready(1), ready(2), ready(3)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1)),
			},
			wantNodes: map[string]uint64{"a": 2, "b": 3},
			wantLines: []string{
				"+ b → node 3 (/nix/store/b, 1 vCPU, 1024 MiB) [binpack: 0% used]",
				"→ a moved node 1 → node 2 (node 1 is not in placement.nodes [2 3]) [binpack: 0% used]",
			},
			wantChanges: true,
		},
		{
			name: "placement.nodes unknown ids → unschedulable with reason",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": withPlacement(mkVM("a", 1, 1024), spec.Placement{Nodes: []uint64{9, 7}}),
				}),
				Nodes: mkNodes(ready(1)),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{"! a: unschedulable: placement.nodes [7 9] are not registered"},
		},
		{
			name: "placement.nodes partly unknown and not ready → unschedulable naming both",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": withPlacement(mkVM("a", 1, 1024), spec.Placement{Nodes: []uint64{1, 2, 9}}),
				}),
				Nodes: mkNodes(mkNode(1, cordoned, 8, 8192), mkNode(2, down, 8, 8192), ready(3)),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{
				"! a: unschedulable: no node in placement.nodes [1 2] is ready (node 1 is cordoned, node 2 is down); placement.nodes [9] is not registered",
			},
		},
		{
			name: "no node carrying the labels → unschedulable with reason",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": withPlacement(mkVM("a", 1, 1024), spec.Placement{Labels: map[string]string{"zone": "eu"}}),
				}),
				Nodes: mkNodes(ready(1), mkNode(2, cordoned, 8, 8192, "zone=eu")),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{"! a: unschedulable: no ready node carries labels zone=eu"},
		},
		{
			name: "all nodes cordoned, draining or down → unschedulable, no eligible nodes",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024)}),
				Nodes:   mkNodes(mkNode(1, cordoned, 8, 8192), mkNode(2, draining, 8, 8192), mkNode(3, down, 8, 8192)),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{"! a: unschedulable: no eligible nodes: all 3 nodes are cordoned, draining or down"},
		},
		{
			name:      "no registered nodes → unschedulable",
			in:        Input{Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024)})},
			wantNodes: map[string]uint64{},
			wantLines: []string{"! a: unschedulable: no nodes are registered"},
		},
		{
			name: "too big for any free room → unschedulable naming the largest free node",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"big": mkVM("big", 2, 4096), "small": mkVM("small", 1, 6144)}),
				Nodes:   mkNodes(ready(1), mkNode(2, isReady, 4, 3072)),
			},
			wantNodes: map[string]uint64{"small": 1},
			wantLines: []string{
				"+ small → node 1 (/nix/store/small, 1 vCPU, 6144 MiB) [binpack: 0% used]",
				"! big: unschedulable: needs 4096 MiB memory and 2 vCPU; largest free on an eligible node: 3072 MiB memory and 4 vCPU (node 2)",
			},
			wantChanges: true,
		},
		{
			name: "unschedulable VM that had an assignment is removed and listed unschedulable",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024)}),
				Nodes:   mkNodes(mkNode(1, draining, 8, 8192), mkNode(2, cordoned, 8, 8192)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1)),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{
				"- a (was on node 1): node 1 is draining",
				"! a: unschedulable: no eligible nodes: all 2 nodes are cordoned, draining or down",
			},
			wantChanges: true,
		},
		{
			name: "VM no longer declared is removed",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024)}),
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1), mkAssign("old-vm", 1, "old", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"a": 1},
			wantLines:   []string{"- old-vm (was on node 1): no longer declared"},
			wantChanges: true,
		},
		{
			name: "nil desired removes every assignment",
			in: Input{
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("b", 1, "b", 1, 1024, 1), mkAssign("a", 1, "a", 1, 1024, 1)),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{
				"- a (was on node 1): no longer declared",
				"- b (was on node 1): no longer declared",
			},
			wantChanges: true,
		},
		{
			name: "replicas expand and anti-affinity with itself spreads them; the extra one is unschedulable",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"web": withReplicas(withPlacement(mkVM("web", 1, 1024), spec.Placement{AntiAffinity: []string{"web"}}), 3),
				}),
				Nodes: mkNodes(ready(1), ready(2)),
			},
			wantNodes: map[string]uint64{"web-0": 1, "web-1": 2},
			wantLines: []string{
				"+ web-0 → node 1 (/nix/store/web, 1 vCPU, 1024 MiB) [spread: 0 of web here; binpack: 0% used]",
				"+ web-1 → node 2 (/nix/store/web, 1 vCPU, 1024 MiB) [spread: 0 of web here; binpack: 0% used]",
				"! web-2: unschedulable: every eligible node already runs a VM it has anti-affinity with (web)",
			},
			wantChanges: true,
		},
		{
			name: "anti-affinity is symmetric: the VM listed avoids the one listing it",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"app": withPlacement(mkVM("app", 1, 1024), spec.Placement{AntiAffinity: []string{"db", "not-declared"}}),
					"db":  mkVM("db", 1, 2048),
				}),
				Nodes: mkNodes(ready(1), ready(2)),
				// db is placed first (larger); app must avoid it.
			},
			wantNodes: map[string]uint64{"app": 2, "db": 1},
			wantLines: []string{
				"+ app → node 2 (/nix/store/app, 1 vCPU, 1024 MiB) [binpack: 0% used]",
				"+ db → node 1 (/nix/store/db, 1 vCPU, 2048 MiB) [binpack: 0% used]",
			},
			wantChanges: true,
		},
		{
			name: "new anti-affinity between kept VMs moves the later name",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"a": mkVM("a", 1, 1024),
					"b": withPlacement(mkVM("b", 1, 1024), spec.Placement{AntiAffinity: []string{"a"}}),
				}),
				Nodes:   mkNodes(ready(1), ready(2)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1), mkAssign("b", 1, "b", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"a": 1, "b": 2},
			wantLines:   []string{"→ b moved node 1 → node 2 (anti-affinity with a, which already runs on node 1) [binpack: 0% used]"},
			wantChanges: true,
		},
		{
			name: "replicas sharing a node move apart when they gain anti-affinity with themselves",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{
					"web": withReplicas(withPlacement(mkVM("web", 1, 1024), spec.Placement{AntiAffinity: []string{"web"}}), 2),
				}),
				Nodes:   mkNodes(ready(1), ready(2)),
				Current: mkCurrent(mkAssign("web-0", 1, "web", 1, 1024, 1), mkAssign("web-1", 1, "web", 1, 1024, 1)),
			},
			wantNodes:   map[string]uint64{"web-0": 1, "web-1": 2},
			wantLines:   []string{"→ web-1 moved node 1 → node 2 (anti-affinity with web, which already runs on node 1) [spread: 0 of web here; binpack: 0% used]"},
			wantChanges: true,
		},
		{
			name: "a VM with volumes on a cluster without Ceph is unschedulable, saying what to configure",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": withVolume(mkVM("db", 1, 1024), "data", 64), "web": mkVM("web", 1, 1024)}),
				Nodes:   mkNodes(ready(1), ready(2)),
			},
			wantNodes: map[string]uint64{"web": 1},
			wantLines: []string{
				"+ web → node 1 (/nix/store/web, 1 vCPU, 1024 MiB) [binpack: 0% used]",
				"! db: unschedulable: needs Ceph for volume data: no ready node has Ceph configured (start nodes with `blixard serve --ceph-config-file …`, or remove the VM's volumes)",
			},
			wantChanges: true,
		},
		{
			name: "a VM with volumes goes to the node with Ceph, skipping lower ids without it",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": withVolume(mkVM("db", 1, 1024), "data", 64)}),
				Nodes:   mkNodes(ready(1), withCeph(ready(2))),
			},
			wantNodes: map[string]uint64{"db": 2},
			wantLines: []string{
				"+ db → node 2 (/nix/store/db, 1 vCPU, 1024 MiB) [binpack: 0% used]",
				"+ volume db/data: RBD image rbd/test.db.data, 64 MiB (created unless it exists)",
			},
			wantChanges: true,
		},
		{
			name: "a VM with volumes leaves a node without Ceph for one with it",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": withVolume(mkVM("db", 1, 1024), "data", 64)}),
				Nodes:   mkNodes(ready(1), withCeph(ready(2))),
				Current: mkCurrent(mkAssign("db", 1, "db", 1, 1024, 3)),
			},
			wantNodes: map[string]uint64{"db": 2},
			wantLines: []string{
				"→ db moved node 1 → node 2 (node 1 has no Ceph configured, which the VM's volumes need) [binpack: 0% used]",
				"+ volume db/data: RBD image rbd/test.db.data, 64 MiB (created unless it exists)",
			},
			wantChanges: true,
		},
		{
			name: "Ceph only on nodes the placement rules out names the rules in the reason",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": withPlacement(withVolume(mkVM("db", 1, 1024), "data", 64),
					spec.Placement{Nodes: []uint64{2, 1}, Labels: map[string]string{"disk": "ssd"}})}),
				Nodes: mkNodes(mkNode(1, isReady, 8, 8192, "disk=ssd"), withCeph(ready(2)), withCeph(mkNode(3, isReady, 8, 8192, "disk=ssd"))),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{
				"! db: unschedulable: needs Ceph for volume data: no ready node in placement.nodes [1 2] carrying labels disk=ssd has Ceph configured (start nodes with `blixard serve --ceph-config-file …`, or remove the VM's volumes)",
			},
		},
		{
			name: "placement that no ready node satisfies keeps its own reason, Ceph or not",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"db": withPlacement(withVolume(mkVM("db", 1, 1024), "data", 64),
					spec.Placement{Labels: map[string]string{"zone": "x"}})}),
				Nodes: mkNodes(withCeph(ready(1))),
			},
			wantNodes: map[string]uint64{},
			wantLines: []string{"! db: unschedulable: no ready node carries labels zone=x"},
		},
		{
			name: "unschedulable alone is not a change",
			in: Input{
				Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024), "huge": mkVM("huge", 1, 1<<20)}),
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 1024, 1)),
			},
			wantNodes: map[string]uint64{"a": 1},
			wantLines: []string{
				"! huge: unschedulable: needs 1048576 MiB memory and 1 vCPU; largest free on an eligible node: 7168 MiB memory and 7 vCPU (node 1)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Compute(tt.in)
			if got := placements(p); !reflect.DeepEqual(got, tt.wantNodes) {
				t.Errorf("placements = %v, want %v", got, tt.wantNodes)
			}
			if got := rendered(t, p); !reflect.DeepEqual(got, tt.wantLines) {
				t.Errorf("render =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.wantLines, "\n"))
			}
			if got := p.HasChanges(); got != tt.wantChanges {
				t.Errorf("HasChanges() = %v, want %v", got, tt.wantChanges)
			}
			checkInvariants(t, tt.in, p)
		})
	}
}

func TestComputeGenerations(t *testing.T) {
	in := Input{
		Desired: mkCluster(map[string]spec.VM{
			"same": mkVM("same", 1, 1024), "runner": mkVM("runner-2", 1, 1024),
			"moved": mkVM("moved", 1, 1024), "new": mkVM("new", 1, 1024),
		}),
		Nodes: mkNodes(ready(1), mkNode(2, replicated.NodeDraining, 8, 8192)),
		Current: mkCurrent(mkAssign("same", 1, "same", 1, 1024, 5), mkAssign("runner", 1, "runner-1", 1, 1024, 6),
			mkAssign("moved", 2, "moved", 1, 1024, 7)),
	}
	p := Compute(in)
	got := map[string]uint64{}
	for _, a := range p.Assignments {
		got[a.VM] = a.Generation
	}
	want := map[string]uint64{"same": 5, "runner": 0, "moved": 0, "new": 0}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("generations = %v, want %v: unchanged assignments keep theirs, every other is 0", got, want)
	}
}

func TestComputeDoesNotModifyInput(t *testing.T) {
	in := Input{
		Desired: mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 1024), "b": mkVM("b", 2, 2048)}),
		Nodes:   mkNodes(ready(1), mkNode(2, replicated.NodeDraining, 8, 8192)),
		Current: mkCurrent(mkAssign("a", 2, "a", 1, 1024, 3), mkAssign("gone", 1, "gone", 1, 1024, 4)),
	}
	before := deepCopyInput(in)
	Compute(in)
	if !reflect.DeepEqual(in, before) {
		t.Fatal("Compute modified its input")
	}
}

func TestPlanSummary(t *testing.T) {
	p := Plan{Added: make([]Change, 2), Changed: make([]Change, 1), Removed: make([]Change, 1),
		Unschedulable: make([]replicated.Unschedulable, 1)}
	if got, want := p.Summary(), "2 added, 1 changed, 0 moved, 1 removed, 1 unschedulable"; got != want {
		t.Fatalf("Summary() = %q, want %q", got, want)
	}
}
