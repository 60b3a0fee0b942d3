package replicated

import (
	"maps"
	"slices"
	"time"

	"github.com/blixard/blixard/spec"
)

// NewState returns the empty state every replica starts from.
func NewState() *State {
	return &State{
		Nodes:       map[uint64]*Node{},
		Assignments: map[string]Assignment{},
		Observed:    map[string]VMStatus{},
	}
}

// Clone returns a deep copy of s: nothing in the copy aliases s. Nil and empty
// maps and slices are preserved as they are.
func (s *State) Clone() *State {
	if s == nil {
		return nil
	}
	c := *s
	if s.Nodes != nil {
		c.Nodes = make(map[uint64]*Node, len(s.Nodes))
		for id, n := range s.Nodes {
			c.Nodes[id] = n.clone()
		}
	}
	if s.Revision != nil {
		r := *s.Revision
		c.Revision = &r
	}
	c.History = slices.Clone(s.History)
	c.Desired = cloneCluster(s.Desired)
	if s.Assignments != nil {
		c.Assignments = make(map[string]Assignment, len(s.Assignments))
		for name, a := range s.Assignments {
			a.Volumes = slices.Clone(a.Volumes)
			a.Health = a.Health.Clone()
			c.Assignments[name] = a
		}
	}
	c.Observed = maps.Clone(s.Observed)
	c.Functions = maps.Clone(s.Functions)
	c.Unschedulable = slices.Clone(s.Unschedulable)
	c.Network = s.Network.clone()
	c.Conditions = slices.Clone(s.Conditions)
	c.Events = slices.Clone(s.Events)
	c.RunControls = maps.Clone(s.RunControls)
	c.Tokens = maps.Clone(s.Tokens)
	c.Rollouts = cloneRollouts(s.Rollouts)
	c.Suspended = s.Suspended.clone()
	return &c
}

func (n *Node) clone() *Node {
	if n == nil {
		return nil
	}
	c := *n
	c.Labels = maps.Clone(n.Labels)
	c.CephAddrs = slices.Clone(n.CephAddrs)
	c.ReportedCephAddrs = slices.Clone(n.ReportedCephAddrs)
	c.Fenced = slices.Clone(n.Fenced)
	c.Problems = maps.Clone(n.Problems)
	return &c
}

// cloneCluster deep-copies a spec, preserving nil and empty collections.
func cloneCluster(c *spec.Cluster) *spec.Cluster {
	if c == nil {
		return nil
	}
	out := *c
	if c.VMs != nil {
		out.VMs = make(map[string]spec.VM, len(c.VMs))
		for name, vm := range c.VMs {
			vm.Placement.Nodes = slices.Clone(vm.Placement.Nodes)
			vm.Placement.Labels = maps.Clone(vm.Placement.Labels)
			vm.Placement.AntiAffinity = slices.Clone(vm.Placement.AntiAffinity)
			vm.Placement.Prefer.Labels = maps.Clone(vm.Placement.Prefer.Labels)
			vm.Volumes = maps.Clone(vm.Volumes)
			vm.Instances = maps.Clone(vm.Instances)
			vm.Health = vm.Health.Clone()
			out.VMs[name] = vm
		}
	}
	if c.Functions != nil {
		out.Functions = make(map[string]spec.Function, len(c.Functions))
		for name, f := range c.Functions {
			out.Functions[name] = f.Clone()
		}
	}
	out.Ingress = maps.Clone(c.Ingress)
	return &out
}

// The canonical form of a value is the one its JSON encoding decodes back to:
// optional (omitempty) maps and slices are nil when empty, and times carry no
// monotonic reading and are in UTC. The state only ever holds canonical
// values, so a snapshot round trip gives a deeply equal state.

func canonicalCommand(cmd *Command) {
	switch {
	case cmd.RegisterNode != nil:
		cmd.RegisterNode.Labels = nilIfEmptyMap(cmd.RegisterNode.Labels)
		cmd.RegisterNode.CephAddrs = nilIfEmpty(cmd.RegisterNode.CephAddrs)
	case cmd.NodeHeartbeat != nil:
		cmd.NodeHeartbeat.Statuses = nilIfEmpty(cmd.NodeHeartbeat.Statuses)
		cmd.NodeHeartbeat.CephAddrs = nilIfEmpty(cmd.NodeHeartbeat.CephAddrs)
	case cmd.CommitPlan != nil:
		canonicalCluster(cmd.CommitPlan.Spec)
		cmd.CommitPlan.Unschedulable = nilIfEmpty(cmd.CommitPlan.Unschedulable)
		for i := range cmd.CommitPlan.Assignments {
			cmd.CommitPlan.Assignments[i].Volumes = nilIfEmpty(cmd.CommitPlan.Assignments[i].Volumes)
		}
	case cmd.SetNodeState != nil:
		cmd.SetNodeState.Fenced = nilIfEmpty(cmd.SetNodeState.Fenced)
	case cmd.UnfenceNode != nil:
		cmd.UnfenceNode.Addrs = nilIfEmpty(cmd.UnfenceNode.Addrs)
	}
}

// canonicalCluster rewrites c in place; call it on a copy the caller owns.
func canonicalCluster(c *spec.Cluster) {
	if c == nil {
		return
	}
	c.Functions = nilIfEmptyMap(c.Functions)
	c.Ingress = nilIfEmptyMap(c.Ingress)
	for name, vm := range c.VMs {
		vm.Placement.Nodes = nilIfEmpty(vm.Placement.Nodes)
		vm.Placement.Labels = nilIfEmptyMap(vm.Placement.Labels)
		vm.Placement.AntiAffinity = nilIfEmpty(vm.Placement.AntiAffinity)
		vm.Placement.Prefer.Labels = nilIfEmptyMap(vm.Placement.Prefer.Labels)
		vm.Volumes = nilIfEmptyMap(vm.Volumes)
		vm.Instances = nilIfEmptyMap(vm.Instances)
		c.VMs[name] = vm
	}
}

func canonicalTime(t time.Time) time.Time { return t.Round(0).UTC() }

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

func nilIfEmptyMap[K comparable, V any](m map[K]V) map[K]V {
	if len(m) == 0 {
		return nil
	}
	return m
}

// appendBounded appends v and drops the oldest elements beyond max.
func appendBounded[T any](s []T, v T, max int) []T {
	s = append(s, v)
	if over := len(s) - max; over > 0 {
		s = slices.Delete(s, 0, over)
	}
	return s
}
