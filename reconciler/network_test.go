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

// committedNetwork is the network of a plan of c as Apply commits it.
func committedNetwork(prev *replicated.Network, c *spec.Cluster) *replicated.Network {
	var names []string
	for _, in := range c.Instances() {
		names = append(names, in.Name)
	}
	n, _ := replicated.AllocateNetwork(prev, c.Name, c.NetworkCIDR(), names)
	return n
}

func TestComputeNetwork(t *testing.T) {
	web15 := func(cidr string) *spec.Cluster {
		return withCIDR(mkCluster(map[string]spec.VM{"web": withReplicas(mkVM("web", 1, 512), 15)}), cidr)
	}
	onSixteen := committedNetwork(nil, web15("10.100.0.0/16"))
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
			name: "instances beyond a /28 are unschedulable with the network's reason and hold no resources",
			in: Input{
				Desired: web15("10.0.0.0/28"),
				Nodes:   mkNodes(mkNode(1, replicated.NodeReady, 13, 13*512)),
			},
			wantPlaced:      13,
			wantUnaddressed: []string{"web-8", "web-9"},
			wantChanges:     true,
		},
		{
			name: "a CIDR change is a change, with a line for the network and one per readdressed instance",
			in: Input{
				Desired: withCIDR(mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 512), "b": mkVM("b", 1, 512)}), "10.200.0.0/24"),
				Nodes:   mkNodes(ready(1)),
				Current: mkCurrent(mkAssign("a", 1, "a", 1, 512, 2), mkAssign("b", 1, "b", 1, 512, 2)),
				Network: committedNetwork(nil, mkCluster(map[string]spec.VM{"a": mkVM("a", 1, 512), "b": mkVM("b", 1, 512)})),
			},
			wantPlaced: 2,
			wantLines: []string{
				"~ network 10.100.0.0/16 → 10.200.0.0/24 (gateway 10.100.0.1 → 10.200.0.1)",
				"~ address of a: 10.100.0.2 → 10.200.0.2 (not an instance address of network 10.200.0.0/24)",
				"~ address of b: 10.100.0.3 → 10.200.0.3 (not an instance address of network 10.200.0.0/24)",
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
			wantPlaced:      13,
			wantUnaddressed: []string{"web-8", "web-9"},
			wantChanges:     true,
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
			if want := committedNetwork(tt.in.Network, tt.in.Desired); !reflect.DeepEqual(p.Network, want) {
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
	prev := committedNetwork(nil, c)
	p := Compute(Input{Desired: withCIDR(c, "10.0.0.0/28"), Nodes: mkNodes(ready(1)), Network: prev})
	var released []string
	for _, l := range rendered(t, p) {
		if strings.HasPrefix(l, "- address of") {
			released = append(released, l)
		}
	}
	want := []string{
		"- address of web-8: " + prev.Identities["web-8"].Address.String() + " released (no free address in network 10.0.0.0/28)",
		"- address of web-9: " + prev.Identities["web-9"].Address.String() + " released (no free address in network 10.0.0.0/28)",
	}
	if !slices.Equal(released, want) {
		t.Fatalf("released lines =\n%s\nwant\n%s", strings.Join(released, "\n"), strings.Join(want, "\n"))
	}
	if s := p.Summary(); !strings.HasSuffix(s, ", network 10.100.0.0/16 → 10.0.0.0/28, 15 readdressed") {
		t.Fatalf("Summary() = %q, want the network change and 15 readdressed", s)
	}
}

// TestPlanAndApplyAgreeOnTheNetwork drives random histories through the
// real planner and the real Apply: VMs declared, removed and rescaled,
// network.cidr changed (to networks too small for the instances), nodes
// drained, cordoned, downed and readied. Every plan must commit (the
// planner and Apply agree on who gets an address), the committed network
// must be the plan's, every assigned instance must have an identity, an
// instance without one must be unschedulable for that reason, and an
// instance keeps its identity across moves and revisions, and its address
// while the network has it.
func TestPlanAndApplyAgreeOnTheNetwork(t *testing.T) {
	cidrs := []string{"10.100.0.0/16", "10.100.0.0/28", "10.100.0.0/27", "10.100.0.16/28", "10.200.0.0/24"}
	at := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	var moves, readdressed, unaddressed int // what the histories exercised
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
			for _, u := range p.Unschedulable {
				if _, ok := st.Identity(u.VM); !ok {
					unaddressed++
				}
			}
		}
	}
	if moves == 0 || readdressed == 0 || unaddressed == 0 {
		t.Fatalf("the histories exercised %d moves, %d readdressed and %d unaddressed instances; each must happen", moves, readdressed, unaddressed)
	}
	t.Logf("%d moves, %d readdressed, %d unaddressed instances", moves, readdressed, unaddressed)
}

func checkCommittedNetwork(t *testing.T, name string, before, st *replicated.State) {
	t.Helper()
	reason := replicated.NoAddressReason(st.Network.CIDR)
	seen := map[netip.Addr]string{}
	for vm, id := range st.Network.Identities {
		if other, dup := seen[id.Address]; dup {
			t.Fatalf("%s: %s and %s share %s", name, vm, other, id.Address)
		}
		seen[id.Address] = vm
		if !replicated.IsInstanceAddr(st.Network.CIDR, id.Address) {
			t.Fatalf("%s: %s has %s, not an instance address of %s", name, vm, id.Address, st.Network.CIDR)
		}
		if was, ok := before.Identity(vm); ok {
			if was.MAC != id.MAC || was.Tap != id.Tap || was.Hostname != id.Hostname {
				t.Fatalf("%s: %s's identity changed from %+v to %+v", name, vm, was, id)
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
	for vm := range st.Assignments {
		if _, ok := st.Identity(vm); !ok {
			t.Fatalf("%s: assigned %s has no identity", name, vm)
		}
	}
	for _, u := range st.Unschedulable {
		if _, ok := st.Identity(u.VM); ok == (u.Reason == reason) {
			t.Fatalf("%s: unschedulable %s (%s) has identity %t", name, u.VM, u.Reason, ok)
		}
	}
}

// mutateNetworkSpec returns a copy of c with VMs declared, removed or
// rescaled, or another network.cidr.
func mutateNetworkSpec(r *rand.Rand, c *spec.Cluster, cidrs []string) *spec.Cluster {
	out := *c
	out.VMs = maps.Clone(c.VMs)
	switch r.IntN(5) {
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
	}
	return &out
}
