package reconciler

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func withCIDR(c *spec.Cluster, cidr string) *spec.Cluster {
	c.Network.CIDR = netip.MustParsePrefix(cidr)
	return c
}

// committedNetwork is the network of a plan of c on nodes as Apply
// commits it.
func committedNetwork(prev *replicated.Network, c *spec.Cluster, nodes ...uint64) *replicated.Network {
	var names []string
	for _, in := range c.Instances() {
		names = append(names, in.Name)
	}
	declared, err := replicated.DeclaredIdentities(c)
	if err != nil {
		panic(err)
	}
	n, _ := replicated.AllocateNetwork(prev, replicated.NetworkRequest{Cluster: c.Name, CIDR: c.NetworkCIDR(), Instances: names,
		Declared: declared, Nodes: nodes})
	return n
}

func nodeIDs(nodes map[uint64]*replicated.Node) []uint64 { return slices.Sorted(maps.Keys(nodes)) }

func TestComputeNetwork(t *testing.T) {
	web15 := func(cidr string) *spec.Cluster {
		return withCIDR(mkCluster(map[string]spec.VM{"web": withReplicas(mkVM("web", 1, 512), 15)}), cidr)
	}
	onSixteen := committedNetwork(nil, web15("10.100.0.0/16"), 1)
	var all []replicated.Assignment
	for _, in := range web15("10.100.0.0/16").Instances() {
		all = append(all, mkAssign(in.Name, 1, "web", 1, 512, 2))
	}
	tests := []struct {
		name            string
		in              Input
		wantPlaced      int
		wantUnaddressed []string
		wantLines       []string // rendered lines, without the summary
		wantChanges     bool
	}{
		{
			name: "instances beyond a /28 less the node's address are unschedulable with the network's reason and hold no resources",
			in: Input{
				Desired: web15("10.0.0.0/28"),
				Nodes:   mkNodes(mkNode(1, replicated.NodeReady, 13, 13*512)),
			},
			wantPlaced:      12,
			wantUnaddressed: []string{"web-7", "web-8", "web-9"},
			wantChanges:     true,
		},
		{
			name: "a CIDR change is a change, with a line for the network, one per readdressed instance and one per node",
			in: Input{
				Desired: withCIDR(mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 512), "b": mkVM("b", 1, 512)}), "10.200.0.0/24"),
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 512, 2), mkAssign("b", 1, "b", 1, 512, 2)),
				Network: committedNetwork(nil, mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 512), "b": mkVM("b", 1, 512)}), 1),
			},
			wantPlaced: 2,
			wantLines: []string{
				"~ network 10.100.0.0/16 → 10.200.0.0/24 (gateway 10.100.0.1 → 10.200.0.1)",
				"~ address of a: 10.100.0.2 → 10.200.0.2 (not an instance address of network 10.200.0.0/24)",
				"~ address of b: 10.100.0.3 → 10.200.0.3 (not an instance address of network 10.200.0.0/24)",
				"~ address of node 1: 10.100.255.254 → 10.200.0.254",
			},
			wantChanges: true,
		},
		{
			name: "running instances that lose their address when the network shrinks are removed",
			in: Input{
				Desired: web15("10.100.0.0/28"),
				Nodes:   mkNodes(mkNode(1, replicated.NodeReady, 16, 16*1024)),
				Current: mkCurrent(all...),
				Network: onSixteen,
			},
			// The 13 running instances keep every address of the /28 they
			// have: the node is left without one.
			wantPlaced:      13,
			wantUnaddressed: []string{"web-8", "web-9"},
			wantChanges:     true,
		},
		{
			name: "a node registered since the last plan makes a re-plan a change that gives it the next address down",
			in: Input{
				Desired: web15("10.100.0.0/16"),
				Nodes:   mkNodes(mkNode(1, replicated.NodeReady, 16, 16*1024), ready(2)),
				Current: mkCurrent(all...),
				Network: onSixteen,
			},
			wantPlaced:  15,
			wantLines:   []string{"+ address of node 2: 10.100.255.253"},
			wantChanges: true,
		},
		{
			name: "a re-plan of a committed network changes nothing",
			in: Input{
				Desired: web15("10.100.0.0/16"),
				Nodes:   mkNodes(mkNode(1, replicated.NodeReady, 16, 16*1024)),
				Current: mkCurrent(all...),
				Network: onSixteen,
			},
			wantPlaced: 15,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Compute(tt.in)
			checkInvariants(t, tt.in, p)
			if len(p.Assignments) != tt.wantPlaced {
				t.Errorf("%d placed, want %d", len(p.Assignments), tt.wantPlaced)
			}
			var unaddressed []string
			for _, u := range p.Unschedulable {
				if strings.HasPrefix(u.Reason, "network "+tt.in.Desired.NetworkCIDR().String()+" has no free address") {
					unaddressed = append(unaddressed, u.VM)
				}
			}
			if !slices.Equal(unaddressed, tt.wantUnaddressed) {
				t.Errorf("unschedulable for want of an address: %v, want %v (all: %+v)", unaddressed, tt.wantUnaddressed, p.Unschedulable)
			}
			for _, c := range p.Removed {
				if _, ok := slices.BinarySearch(tt.wantUnaddressed, c.VM); !ok || !strings.HasPrefix(c.Reason, "network ") {
					t.Errorf("removed %s (%s): only unaddressed instances are removed here, with the network's reason", c.VM, c.Reason)
				}
			}
			if want := committedNetwork(tt.in.Network, tt.in.Desired, nodeIDs(tt.in.Nodes)...); !reflect.DeepEqual(p.Network, want) {
				t.Errorf("plan network differs from what Apply commits:\n%+v\n%+v", p.Network, want)
			}
			if tt.wantLines != nil {
				var net []string
				for _, l := range rendered(t, p) {
					if strings.Contains(l, "network") || strings.Contains(l, "address") {
						net = append(net, l)
					}
				}
				if !slices.Equal(net, tt.wantLines) {
					t.Errorf("network lines =\n%s\nwant\n%s", strings.Join(net, "\n"), strings.Join(tt.wantLines, "\n"))
				}
			}
			if p.HasChanges() != tt.wantChanges {
				t.Errorf("HasChanges() = %t, want %t (%s)", p.HasChanges(), tt.wantChanges, p.Summary())
			}
		})
	}
}

func TestComputeRendersReleasedAddresses(t *testing.T) {
	c := mkCluster(map[string]spec.VM{"web": withReplicas(mkVM("web", 1, 512), 15)})
	prev := committedNetwork(nil, c, 1)
	p := Compute(Input{Desired: withCIDR(c, "10.0.0.0/28"), Nodes: mkNodes(ready(1)), Network: prev})
	var released []string
	for _, l := range rendered(t, p) {
		if strings.HasPrefix(l, "- address of") {
			released = append(released, l)
		}
	}
	var want []string
	for _, vm := range []string{"web-7", "web-8", "web-9"} {
		want = append(want, "- address of "+vm+": "+prev.Identities[vm].Address.String()+" released (no free address in network 10.0.0.0/28)")
	}
	if !slices.Equal(released, want) {
		t.Fatalf("released lines =\n%s\nwant\n%s", strings.Join(released, "\n"), strings.Join(want, "\n"))
	}
	if s := p.Summary(); !strings.HasSuffix(s, ", network 10.100.0.0/16 → 10.0.0.0/28, 15 readdressed, 1 node address") {
		t.Fatalf("Summary() = %q, want the network change, 15 readdressed and the node's address", s)
	}
}

// TestPlanAndApplyAgreeOnTheNetwork drives random histories through the
// real planner and the real Apply: VMs declared, removed and rescaled,
// given instances entries (runners of their own and identities declared
// as lib.mkCluster does, some clashing), network.cidr changed (to networks
// too small for the instances), nodes joining, drained, cordoned, downed
// and readied. Every plan must commit (the planner and Apply agree on who
// gets an identity), the committed network must be the plan's, every
// assigned instance must have an identity and every node an address while
// one is free, an instance without one must be unschedulable for that
// reason, and an instance keeps its identity across moves and revisions
// (but for what it declares anew), and its address while the network has
// it.
func TestPlanAndApplyAgreeOnTheNetwork(t *testing.T) {
	cidrs := []string{"10.100.0.0/16", "10.100.0.0/28", "10.100.0.0/27", "10.100.0.16/28", "10.200.0.0/24"}
	at := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	var moves, readdressed, unaddressed, reidentified, clashes, nodeAddrs, ownRunners int // what the histories exercised
	for seed := range uint64(60) {
		r := rand.New(rand.NewPCG(seed, 0xadd7))
		st := replicated.NewState()
		index := uint64(0)
		apply := func(cmd replicated.Command) replicated.Result {
			index++
			cmd.V, cmd.At = replicated.CommandVersion, at
			return st.Apply(index, cmd)
		}
		for id := range uint64(4) {
			apply(replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{
				ID: id + 1, Capacity: replicated.Resources{VCPU: 16, MemMiB: 16 * 1024}}})
		}
		desired := &spec.Cluster{Name: "prop", VMs: map[string]spec.VM{}}
		for step := range 14 {
			name := fmt.Sprintf("seed=%d/step=%d", seed, step)
			desired = mutateNetworkSpec(r, desired, cidrs)
			if id := uint64(1 + r.IntN(4)); r.IntN(3) == 0 {
				states := []replicated.NodeState{replicated.NodeReady, replicated.NodeDraining, replicated.NodeCordoned, replicated.NodeDown}
				apply(replicated.Command{Type: replicated.CmdSetNodeState, SetNodeState: &replicated.SetNodeState{ID: id, State: states[r.IntN(len(states))]}})
			}
			if r.IntN(6) == 0 { // a node joins (or registers again)
				apply(replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{
					ID: uint64(5 + r.IntN(3)), Capacity: replicated.Resources{VCPU: 4, MemMiB: 4 * 1024}}})
			}
			before := st.Clone()
			var parent uint64
			if before.Revision != nil {
				parent = before.Revision.ID
			}
			p := Compute(Input{Desired: desired, Nodes: st.Nodes, Current: st.Assignments, Previous: st.Desired, Network: st.Network})
			res := apply(replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{
				Parent: parent, Commit: fmt.Sprintf("c%d", step), Spec: desired,
				Assignments: p.Assignments, Unschedulable: p.Unschedulable, Summary: p.Summary()}})
			if !res.OK() {
				t.Fatalf("%s: the plan was refused: %s %s", name, res.Code, res.Message)
			}
			if !reflect.DeepEqual(st.Network, p.Network) {
				t.Fatalf("%s: committed network differs from the plan's:\n%+v\n%+v", name, st.Network, p.Network)
			}
			checkCommittedNetwork(t, name, before, st)
			moves += len(p.Moved)
			readdressed += len(p.Readdressed)
			reidentified += len(p.Reidentified)
			nodeAddrs += len(p.NodeAddrs)
			for _, u := range p.Unschedulable {
				if _, ok := st.Identity(u.VM); !ok {
					if u.Reason == replicated.NoAddressReason(st.Network.CIDR) {
						unaddressed++
					} else {
						clashes++
					}
				}
			}
			for _, a := range p.Assignments {
				if a.OwnRunner {
					ownRunners++
				}
			}
		}
	}
	if moves == 0 || readdressed == 0 || unaddressed == 0 || reidentified == 0 || clashes == 0 || nodeAddrs == 0 || ownRunners == 0 {
		t.Fatalf("the histories exercised %d moves, %d readdressed, %d unaddressed, %d reidentified, %d clashing instances, %d node address changes and %d own runners; each must happen",
			moves, readdressed, unaddressed, reidentified, clashes, nodeAddrs, ownRunners)
	}
	t.Logf("%d moves, %d readdressed, %d unaddressed, %d reidentified, %d clashing instances, %d node address changes, %d own runners",
		moves, readdressed, unaddressed, reidentified, clashes, nodeAddrs, ownRunners)
}

func checkCommittedNetwork(t *testing.T, name string, before, st *replicated.State) {
	t.Helper()
	reason := replicated.NoAddressReason(st.Network.CIDR)
	declared, err := replicated.DeclaredIdentities(st.Desired)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]string{}
	for vm, id := range st.Network.Identities {
		if other, dup := seen[id.Address]; dup {
			t.Fatalf("%s: %s and %s share %s", name, vm, other, id.Address)
		}
		seen[id.Address] = vm
		if !replicated.IsInstanceAddr(st.Network.CIDR, id.Address) {
			t.Fatalf("%s: %s has %s, not an instance address of %s", name, vm, id.Address, st.Network.CIDR)
		}
		d := declared[vm]
		if (d.MAC != replicated.MAC{}) && d.MAC != id.MAC || d.Tap != "" && d.Tap != id.Tap || d.Hostname != "" && d.Hostname != id.Hostname {
			t.Fatalf("%s: %s has %+v, not what it declares, %+v", name, vm, id, d)
		}
		if was, ok := before.Identity(vm); ok {
			if (was.MAC != id.MAC && d.MAC != id.MAC) || (was.Tap != id.Tap && d.Tap != id.Tap) || (was.Hostname != id.Hostname && d.Hostname != id.Hostname) {
				t.Fatalf("%s: %s's identity changed from %+v to %+v (declared %+v)", name, vm, was, id, d)
			}
			if replicated.IsInstanceAddr(st.Network.CIDR, was.Address) && was.Address != id.Address {
				t.Fatalf("%s: %s moved from %s to %s (node %d → %d)", name, vm, was.Address, id.Address,
					before.Assignments[vm].Node, st.Assignments[vm].Node)
			}
		}
		if before.Network != nil {
			for other, held := range before.Network.Identities {
				if held.Address == id.Address && other != vm {
					t.Fatalf("%s: %s got %s, which %s held until this plan", name, vm, id.Address, other)
				}
			}
		}
	}
	free := replicated.InstanceAddrs(st.Network.CIDR) - len(st.Network.Identities) - len(st.Network.NodeAddrs)
	for id := range st.Nodes {
		a, ok := st.NodeAddr(id)
		if !ok {
			if free > 0 && before.Network == nil {
				t.Fatalf("%s: node %d has no address, %d are free", name, id, free)
			}
			continue
		}
		if other, dup := seen[a]; dup {
			t.Fatalf("%s: node %d's address %s is also %s's", name, id, a, other)
		}
		seen[a] = fmt.Sprintf("node %d", id)
		if was, ok := before.NodeAddr(id); ok && replicated.IsInstanceAddr(st.Network.CIDR, was) && was != a {
			t.Fatalf("%s: node %d moved from %s to %s", name, id, was, a)
		}
	}
	for vm := range st.Assignments {
		if _, ok := st.Identity(vm); !ok {
			t.Fatalf("%s: assigned %s has no identity", name, vm)
		}
	}
	for _, u := range st.Unschedulable {
		_, ok := st.Identity(u.VM)
		clash := strings.HasPrefix(u.Reason, "its declared ")
		if ok == (u.Reason == reason || clash) {
			t.Fatalf("%s: unschedulable %s (%s) has identity %t", name, u.VM, u.Reason, ok)
		}
	}
}

// mutateNetworkSpec returns a copy of c with VMs declared, removed or
// rescaled, given instances entries (or losing them), or another
// network.cidr.
func mutateNetworkSpec(r *rand.Rand, c *spec.Cluster, cidrs []string) *spec.Cluster {
	out := *c
	out.VMs = maps.Clone(c.VMs)
	switch r.IntN(6) {
	case 0:
		out.Network.CIDR = netip.MustParsePrefix(cidrs[r.IntN(len(cidrs))])
	case 1, 2:
		for range 1 + r.IntN(4) {
			out.VMs[fmt.Sprintf("vm%d", r.IntN(12))] = withReplicas(mkVM("vm", 1, 512), 1+r.IntN(6))
		}
	case 3:
		for _, name := range slices.Sorted(maps.Keys(out.VMs)) {
			if r.IntN(3) == 0 {
				delete(out.VMs, name)
			}
		}
	case 4:
		for _, name := range slices.Sorted(maps.Keys(out.VMs)) {
			if r.IntN(2) == 0 {
				out.VMs[name] = withReplicas(out.VMs[name], 1+r.IntN(6))
			}
		}
	case 5:
		for _, name := range slices.Sorted(maps.Keys(out.VMs)) {
			if r.IntN(2) == 0 {
				out.VMs[name] = withEntries(r, out.Name, name, out.VMs[name])
			}
		}
	}
	for name, vm := range out.VMs { // rescaled VMs' entries must match their instances
		if vm.Instances != nil && len(vm.Instances) != max(vm.Replicas, 1) {
			out.VMs[name] = withEntries(r, out.Name, name, vm)
		}
	}
	return &out
}

// withEntries gives vm an instances entry per instance, as lib.mkCluster
// writes them (a runner of its own and the identity derived at attempt
// 0), or none; one in four declares a MAC that instance vm0 or vm0-0
// derives (a clash when that one holds it).
func withEntries(r *rand.Rand, cluster, name string, vm spec.VM) spec.VM {
	vm.Instances = nil
	if r.IntN(4) == 0 {
		return vm
	}
	vm.Instances = map[string]spec.InstanceEntry{}
	for _, inst := range spec.InstanceNames(name, vm.Replicas) {
		mac := replicated.DeriveMAC(cluster, inst, 0)
		if r.IntN(4) == 0 {
			mac = replicated.DeriveMAC(cluster, []string{"vm0", "vm0-0"}[r.IntN(2)], 0)
		}
		vm.Instances[inst] = spec.InstanceEntry{
			Runner: spec.Runner{Drv: "/nix/store/" + inst + "-own.drv", Out: "/nix/store/" + inst + "-own"},
			MAC:    mac.String(), Tap: replicated.DeriveTap(cluster, inst, 0), Hostname: replicated.DeriveHostname(cluster, inst, 0),
		}
	}
	return vm
}

// TestComputeInstanceEntries checks what VM.Instances changes in a plan:
// each instance runs its own runner, a declared identity is used as it is,
// and one another instance holds makes the newer one unschedulable.
func TestComputeInstanceEntries(t *testing.T) {
	own := func(inst, ver string) spec.Runner {
		return spec.Runner{Drv: "/nix/store/" + inst + "-" + ver + ".drv", Out: "/nix/store/" + inst + "-" + ver}
	}
	web := func(ver1 string, edit func(map[string]spec.InstanceEntry)) *spec.Cluster {
		vm := withReplicas(mkVM("web", 1, 512), 2)
		vm.Runner = spec.Runner{} // every instance has its own
		vm.Instances = map[string]spec.InstanceEntry{
			"web-0": {Runner: own("web-0", "v1"), MAC: "02:00:00:00:00:10", Tap: "bxweb0", Hostname: "web-0"},
			"web-1": {Runner: own("web-1", ver1), MAC: "02:00:00:00:00:11", Tap: "bxweb1", Hostname: "web-1"},
		}
		if edit != nil {
			edit(vm.Instances)
		}
		return mkCluster(map[string]spec.VM{"web": vm, "db": mkVM("db", 1, 512)})
	}
	nodes := mkNodes(ready(1), ready(2))
	first := Compute(Input{Desired: web("v1", nil), Nodes: nodes})
	checkInvariants(t, Input{Desired: web("v1", nil), Nodes: nodes}, first)
	for _, a := range first.Assignments {
		if a.Declared == "web" && (!a.OwnRunner || a.OutPath != "/nix/store/"+a.VM+"-v1") {
			t.Fatalf("%s runs %s (own %t), want its own runner", a.VM, a.OutPath, a.OwnRunner)
		}
		if a.VM == "db" && a.OwnRunner {
			t.Fatal("db has no instances entry but is marked as running a runner of its own")
		}
	}
	if id := first.Network.Identities["web-1"]; id.MAC.String() != "02:00:00:00:00:11" || id.Tap != "bxweb1" || id.Hostname != "web-1" {
		t.Fatalf("web-1's identity = %+v, want the declared one", id)
	}
	current := map[string]replicated.Assignment{}
	for _, a := range first.Assignments {
		a.Generation = 2
		current[a.VM] = a
	}

	t.Run("a new runner of one instance changes that instance only", func(t *testing.T) {
		in := Input{Desired: web("v2", nil), Nodes: nodes, Current: current, Network: first.Network}
		p := Compute(in)
		checkInvariants(t, in, p)
		if len(p.Changed) != 1 || p.Changed[0].VM != "web-1" || p.Changed[0].OutPath != "/nix/store/web-1-v2" {
			t.Fatalf("changed = %+v, want web-1 on its new runner only", p.Changed)
		}
	})
	t.Run("a declared MAC another instance holds makes the newer instance unschedulable and removes it", func(t *testing.T) {
		in := Input{Desired: web("v1", func(e map[string]spec.InstanceEntry) {
			w := e["web-1"]
			w.MAC = "02:00:00:00:00:10"
			e["web-1"] = w
		}), Nodes: nodes, Current: current, Network: first.Network}
		p := Compute(in)
		checkInvariants(t, in, p)
		want := "its declared MAC 02:00:00:00:00:10 is instance web-0's"
		if len(p.Unschedulable) != 1 || p.Unschedulable[0].VM != "web-1" || !strings.HasPrefix(p.Unschedulable[0].Reason, want) {
			t.Fatalf("unschedulable = %+v, want web-1: %s…", p.Unschedulable, want)
		}
		if len(p.Removed) != 1 || p.Removed[0].VM != "web-1" || !strings.HasPrefix(p.Removed[0].Reason, want) {
			t.Fatalf("removed = %+v, want web-1 with the reason", p.Removed)
		}
	})
	t.Run("a newly declared tap is an identity change, rendered", func(t *testing.T) {
		in := Input{Desired: web("v1", func(e map[string]spec.InstanceEntry) {
			w := e["web-0"]
			w.Tap = "vm-web0"
			e["web-0"] = w
		}), Nodes: nodes, Current: current, Network: first.Network}
		p := Compute(in)
		checkInvariants(t, in, p)
		if !p.HasChanges() || len(p.Reidentified) != 1 {
			t.Fatalf("reidentified = %+v, HasChanges %t", p.Reidentified, p.HasChanges())
		}
		if got := rendered(t, p); !slices.Contains(got, "~ identity of web-0: tap bxweb0 → vm-web0 (declared in the flake)") {
			t.Fatalf("rendered:\n%s", strings.Join(got, "\n"))
		}
	})
}
