package reconciler

// Placement rules of Compute. A plan is data: Compute reads no clock, does no
// I/O and returns the same Plan for the same Input (everything is sorted).
//
//  1. Expand the desired VMs into instances (spec.Cluster.Instances: web with
//     replicas = 3 is web-0, web-1, web-2). A committed assignment whose VM is
//     no longer declared is Removed.
//  2. Keep what may stay. An assigned instance stays on its node when the node
//     is still registered and ready or cordoned, is in placement.nodes (when
//     that list is non-empty), carries every placement.labels entry, has
//     Ceph configured (replicated.Node.Ceph) when the instance declares
//     volumes, runs no VM the instance has anti-affinity with, and still has room for it after
//     the instances kept before it. Kept instances are checked in a fixed
//     order: those whose resources did not grow first, then the grown ones,
//     each group by name; so a grown VM that no longer fits is the one that
//     moves. A kept instance whose runner or resources changed is Changed.
//  3. Place the rest one by one, by memory (largest first), then vCPU, then
//     name. A node may take an instance when it is ready (cordoned,
//     draining and down nodes get no new VMs), satisfies placement.nodes and
//     placement.labels, has Ceph when the instance declares volumes (their
//     data lives in RBD images), has no anti-affinity conflict, and has the
//     free memory and vCPU (capacity minus everything kept or placed on it
//     so far). Of those, the instance goes to the best by score.go's
//     order: fewest instances of the same declared VM in the node's
//     placement.spreadBy value, then on the node (replicas spread over
//     zones, then nodes); then most placement.prefer.labels matched; then
//     the most allocated node (bin-packing); then the lowest id. Kept
//     instances count for spreading and allocation, and nothing is moved
//     to spread better: an instance moves only when rule 2 makes it. An
//     instance that had another node is Moved, with the reason it left;
//     Added and Moved say why they went where they went
//     (Change.Placement).
//  0. Before anything is kept or placed, the desired instances get their
//     network identities and the registered nodes their own addresses
//     (replicated.AllocateNetwork, the rule Apply applies when the plan
//     commits: an instance keeps its address while it is an instance
//     address of network.cidr, nodes get the highest free addresses, new
//     instances the lowest; an instance's declared MAC, tap and hostname,
//     spec.InstanceEntry, are used as they are). An instance the network
//     has no free address for is Unschedulable with
//     replicated.NoAddressReason, one whose declared identity another
//     instance holds with that reason; either holds no resources, and
//     one that had an assignment is Removed. An instance whose VM gives
//     it a runner of its own (spec.Instance.OwnRunner) is assigned that
//     runner.
//  4. An instance no node can take is Unschedulable, with a reason a user can
//     act on (for volumes on a cluster without Ceph: "needs Ceph for volume
//     data: no ready node has Ceph configured …"). If it had an assignment,
//     that assignment is Removed too (with the reason it could not stay): a
//     VM never keeps running where the rules say it may not, even when it
//     has nowhere else to go. Plan.Volumes lists only placed instances'
//     volumes, so an unschedulable instance creates no image.
//
// An instance kept stopped (autostart = false, `blixard vm stop`) is placed
// like any other and holds its resources: starting it needs no new plan.
// Whether it runs is not the planner's business: replicated.Apply derives
// it (replicated.KeptStopped).
//
// Anti-affinity is between declared names and symmetric: when a lists b,
// no instance of a shares a node with an instance of b. A name listing itself
// spreads its own replicas over distinct nodes.
//
// Resources are counted against the new assignments only: a VM that moves
// away frees its old node's resources in the plan at once, even though its
// old instance stops only when the agent acts on the plan.

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Input is everything a plan depends on.
type Input struct {
	// Desired is the desired spec; nil means nothing is desired.
	Desired *spec.Cluster
	// Nodes are the registered nodes by id.
	Nodes map[uint64]*replicated.Node
	// Current are the committed assignments by VM name.
	Current map[string]replicated.Assignment
	// Previous is the committed desired spec (replicated.State.Desired), the
	// baseline of Plan.Volumes; nil means no volume exists yet. Call
	// CheckVolumes(Previous, Desired) before committing: Compute does not
	// refuse a shrink, it just does not list it.
	Previous *spec.Cluster
	// Network is the committed network (replicated.State.Network): the
	// identities instances keep. Nil means none are committed yet.
	Network *replicated.Network
	// Functions are the functions' committed scale
	// (replicated.State.Functions): how many instances of each function
	// of Desired to place (function.go).
	Functions map[string]replicated.FunctionState
	// Observed are the instances' reported statuses
	// (replicated.State.Observed): a removed instance its node still runs
	// keeps its address from the others (replicated.RetiringAddrs).
	Observed map[string]replicated.VMStatus
}

// Plan is the outcome of Compute: the complete new assignment set and what
// differs from the current one. It performs nothing; the caller proposes
// Assignments in a CommitPlan.
type Plan struct {
	// Assignments is the complete new assignment set, sorted by VM. An
	// assignment identical to the current one (same node, runner and
	// resources) keeps its Generation; every other has Generation 0 and
	// replicated fills it in when the plan commits.
	Assignments []replicated.Assignment `json:"assignments"`
	// Added are instances placed that had no assignment.
	Added []Change `json:"added,omitempty"`
	// Removed are assignments dropped: the VM is no longer declared, or it
	// could not stay and is Unschedulable. Reason says which.
	Removed []Change `json:"removed,omitempty"`
	// Changed are instances kept on their node whose workload changed
	// (replicated.Assignment.SameWorkload: runner, resources or volumes).
	Changed []Change `json:"changed,omitempty"`
	// Moved are instances placed on another node than before; Reason says
	// why they left. Their runner or resources may have changed as well.
	Moved []Change `json:"moved,omitempty"`
	// Unschedulable are desired instances no node can take.
	Unschedulable []replicated.Unschedulable `json:"unschedulable,omitempty"`
	// Rollouts are the rollouts committing the plan starts (filled by
	// PlanSpec, for previews: see [Rollouts]); Changed and Moved list their
	// instances' eventual change.
	Rollouts []RolloutPreview `json:"rollouts,omitempty"`
	// Volumes are the RBD volumes of placed instances that are new in the
	// desired spec (the agent creates their image unless it exists) or
	// larger than in Input.Previous (the agent grows the image), sorted by
	// VM, then volume.
	Volumes []VolumeChange `json:"volumes,omitempty"`
	// Network is the network the plan commits: Desired's CIDR and the
	// identity of every desired instance that has an address. Apply
	// computes the same when the plan commits. Nil without a desired spec.
	Network *replicated.Network `json:"network,omitempty"`
	// OldCIDR is the committed network's CIDR when the plan changes it
	// (every node's bridge gets the new gateway); the zero Prefix otherwise.
	OldCIDR netip.Prefix `json:"oldCidr,omitzero"`
	// Readdressed are the instances that keep their identity but not their
	// address: it is no instance address of the new CIDR. New is the zero
	// Addr for one the network has no free address for (Unschedulable).
	Readdressed []AddressChange `json:"readdressed,omitempty"`
	// Reidentified are the instances that had an identity and get another
	// MAC, tap or hostname: their flake now declares one
	// (spec.InstanceEntry), sorted by VM.
	Reidentified []IdentityChange `json:"reidentified,omitempty"`
	// NodeAddrs are the nodes whose own overlay address
	// (replicated.Network.NodeAddrs) the plan gives or changes, sorted by
	// node: a node registered since the last plan gets one with this plan.
	NodeAddrs []NodeAddrChange `json:"nodeAddrs,omitempty"`
}

// IdentityChange is an instance's identity before and after a plan.
type IdentityChange struct {
	VM  string              `json:"vm"`
	Old replicated.Identity `json:"old"`
	New replicated.Identity `json:"new"`
}

// NodeAddrChange is a registered node's own overlay address before and
// after a plan. Old is the zero Addr for a node that had none; New is the
// zero Addr when the network has no free address left for it.
type NodeAddrChange struct {
	Node uint64     `json:"node"`
	Old  netip.Addr `json:"old,omitzero"`
	New  netip.Addr `json:"new,omitzero"`
}

// AddressChange is an instance's address before and after a plan.
type AddressChange struct {
	VM  string     `json:"vm"`
	Old netip.Addr `json:"old"`
	New netip.Addr `json:"new,omitzero"`
}

// VolumeChange is one volume a plan creates or grows.
type VolumeChange struct {
	VM     string `json:"vm"`     // instance name
	Volume string `json:"volume"` // name in the flake
	Image  string `json:"image"`  // RBD image (spec.ImageName)
	Pool   string `json:"pool"`
	// SizeMiB is the desired size; OldSizeMiB the committed one, 0 for a
	// volume the committed spec does not have (created).
	SizeMiB    int `json:"sizeMiB"`
	OldSizeMiB int `json:"oldSizeMiB,omitempty"`
}

// Change is one instance's difference between the current and the new
// assignments. Old fields are zero for Added; new fields are zero for Removed.
type Change struct {
	VM         string `json:"vm"`
	Node       uint64 `json:"node,omitempty"`
	OldNode    uint64 `json:"oldNode,omitempty"`
	OutPath    string `json:"outPath,omitempty"`
	OldOutPath string `json:"oldOutPath,omitempty"`
	Drv        string `json:"drv,omitempty"`
	OldDrv     string `json:"oldDrv,omitempty"`
	VCPU       int    `json:"vcpu,omitempty"`
	OldVCPU    int    `json:"oldVcpu,omitempty"`
	MemMiB     int    `json:"memMiB,omitempty"`
	OldMemMiB  int    `json:"oldMemMiB,omitempty"`
	// Reason says why the instance left its node (Moved, Removed), e.g.
	// "node 3 is draining" or "no longer declared".
	Reason string `json:"reason,omitempty"`
	// Placement says why the instance is on Node: for Added and Moved the
	// scores that chose it (rule 3), e.g. "spread: 0 of web here, 0 in
	// zone=b; binpack: 40% used"; for Changed "kept on node 2".
	Placement string `json:"placement,omitempty"`
}

// ReasonNotDeclared is the Reason of a Removed change whose VM is no longer
// in the desired spec.
const ReasonNotDeclared = "no longer declared"

// HasChanges reports whether committing the plan would change the
// assignments. Unschedulable instances alone are not a change; one that loses
// its assignment is, through Removed.
func (p Plan) HasChanges() bool {
	return len(p.Added)+len(p.Removed)+len(p.Changed)+len(p.Moved)+len(p.Volumes)+len(p.Readdressed)+
		len(p.Reidentified)+len(p.NodeAddrs) > 0 || p.OldCIDR.IsValid()
}

// Summary is a one-line description of the plan, e.g.
// "2 added, 1 changed, 0 moved, 1 removed, 1 unschedulable".
func (p Plan) Summary() string {
	s := fmt.Sprintf("%d added, %d changed, %d moved, %d removed, %d unschedulable",
		len(p.Added), len(p.Changed), len(p.Moved), len(p.Removed), len(p.Unschedulable))
	if len(p.Volumes) > 0 {
		created := 0
		for _, v := range p.Volumes {
			if v.OldSizeMiB == 0 {
				created++
			}
		}
		s += fmt.Sprintf(", %d volumes created, %d grown", created, len(p.Volumes)-created)
	}
	if p.OldCIDR.IsValid() && p.Network != nil {
		s += fmt.Sprintf(", network %s → %s", p.OldCIDR, p.Network.CIDR)
	}
	if len(p.Readdressed) > 0 {
		s += fmt.Sprintf(", %d readdressed", len(p.Readdressed))
	}
	if len(p.Reidentified) > 0 {
		s += fmt.Sprintf(", %d reidentified", len(p.Reidentified))
	}
	if len(p.NodeAddrs) > 0 {
		s += fmt.Sprintf(", %d node %s", len(p.NodeAddrs), plural(len(p.NodeAddrs), "address", "addresses"))
	}
	return s
}

// Compute returns the plan that takes the current assignments to the desired
// spec on the given nodes, following the placement rules at the top of this
// file. It is pure and deterministic; it does not modify its input.
func Compute(in Input) Plan { return compute(in, smallClass) }

// compute is Compute with classes of at most small eligible nodes scanned
// whole rather than searched in bin-packing order (score.go); tests
// compare the two.
func compute(in Input, small int) Plan {
	s := newScheduler(in)
	s.score.small = small
	network, unaddressed := s.allocateNetwork()
	s.keep()
	s.place()
	p := s.plan()
	p.Volumes = volumeChanges(in.Previous, in.Desired, p.Assignments)
	p.Network = network
	p.OldCIDR, p.Readdressed, p.Reidentified = networkChanges(in.Network, network, unaddressed)
	p.NodeAddrs = nodeAddrChanges(in.Network, network, in.Nodes)
	return p
}

// allocateNetwork gives the desired instances their identities and the
// registered nodes their addresses (rule 0), and marks the instances
// without an identity unschedulable, so that keep and place pass them
// over. It returns the network and those instances' names, sorted.
//
// The declared identities come from the desired spec, which PlanSpec has
// validated; one that is malformed (a hand-built spec) is ignored here,
// and Apply refuses the plan with the entry's path.
func (s *scheduler) allocateNetwork() (*replicated.Network, []string) {
	if s.in.Desired == nil {
		return nil, nil
	}
	names := make([]string, len(s.insts))
	for i := range s.insts {
		names[i] = s.insts[i].spec.Name
	}
	declared, _ := replicated.DeclaredIdentities(s.in.Desired)
	cidr := s.in.Desired.NetworkCIDR()
	// Removed instances their nodes may still run keep their addresses
	// from the others, as Apply computes them.
	retiring := replicated.RetiringAddrs(s.in.Network, names, s.in.Current, s.in.Observed, s.in.Nodes)
	network, refused := replicated.AllocateNetwork(s.in.Network, replicated.NetworkRequest{
		Cluster: s.in.Desired.Name, CIDR: cidr, Instances: names, Declared: declared, Nodes: s.ids,
		Reserved: slices.Collect(maps.Values(retiring)),
	})
	if len(retiring) > 0 {
		network.Retiring = retiring
	}
	unaddressed := make([]string, 0, len(refused))
	for _, u := range refused {
		unaddressed = append(unaddressed, u.VM)
		i, ok := slices.BinarySearchFunc(s.insts, u.VM, func(it instance, name string) int {
			return strings.Compare(it.spec.Name, name)
		})
		if !ok {
			continue
		}
		it := &s.insts[i]
		it.why = u.Reason
		if it.has {
			it.leave = it.why
		}
	}
	return network, unaddressed
}

// networkChanges lists what a plan's network changes in the committed one
// (nil: nothing committed, so nothing changes): the CIDR, when it differs;
// the instances that had an address and get another one or, being
// unaddressed, none; and those that keep an identity with another MAC, tap
// or hostname; each sorted by VM. Instances no longer declared are not
// listed: their identity goes with them.
func networkChanges(old, network *replicated.Network, unaddressed []string) (netip.Prefix, []AddressChange, []IdentityChange) {
	if old == nil || network == nil {
		return netip.Prefix{}, nil, nil
	}
	var cidr netip.Prefix
	if old.CIDR != network.CIDR {
		cidr = old.CIDR
	}
	var out []AddressChange
	var reidentified []IdentityChange
	for vm, was := range old.Identities {
		now, ok := network.Identities[vm]
		if ok && (now.MAC != was.MAC || now.Tap != was.Tap || now.Hostname != was.Hostname) {
			reidentified = append(reidentified, IdentityChange{VM: vm, Old: was, New: now})
		}
		if ok && now.Address == was.Address {
			continue
		}
		if _, lost := slices.BinarySearch(unaddressed, vm); ok || lost {
			out = append(out, AddressChange{VM: vm, Old: was.Address, New: now.Address})
		}
	}
	slices.SortFunc(out, func(a, b AddressChange) int { return strings.Compare(a.VM, b.VM) })
	slices.SortFunc(reidentified, func(a, b IdentityChange) int { return strings.Compare(a.VM, b.VM) })
	return cidr, out, reidentified
}

// nodeAddrChanges lists the registered nodes whose own address differs
// between the committed network and the plan's, by node; like
// networkChanges, nothing when no network is committed yet. Nodes no
// longer registered are not listed: their address goes with them.
func nodeAddrChanges(old, network *replicated.Network, nodes map[uint64]*replicated.Node) []NodeAddrChange {
	if old == nil || network == nil {
		return nil
	}
	var out []NodeAddrChange
	for id, n := range nodes {
		if n == nil {
			continue
		}
		was := old.NodeAddrs[id]
		if now := network.NodeAddrs[id]; now != was {
			out = append(out, NodeAddrChange{Node: id, Old: was, New: now})
		}
	}
	slices.SortFunc(out, func(a, b NodeAddrChange) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// volumeChanges lists the volumes of the assigned instances of desired that
// previous lacks or has smaller (compared by pool and image).
func volumeChanges(previous, desired *spec.Cluster, assigned []replicated.Assignment) []VolumeChange {
	if desired == nil || len(assigned) == 0 {
		return nil
	}
	old := volumeSizes(previous)
	isAssigned := make(map[string]bool, len(assigned))
	for _, a := range assigned {
		isAssigned[a.VM] = true
	}
	var out []VolumeChange
	for _, in := range desired.Instances() {
		if len(in.Volumes) == 0 || !isAssigned[in.Name] {
			continue
		}
		for _, v := range desired.VolumesOf(in) {
			was := old[v.Pool+"/"+v.Image]
			if v.SizeMiB > was.SizeMiB {
				out = append(out, VolumeChange{VM: in.Name, Volume: v.Name, Image: v.Image, Pool: v.Pool,
					SizeMiB: v.SizeMiB, OldSizeMiB: was.SizeMiB})
			}
		}
	}
	return out // Instances and VolumesOf are sorted
}

// volumeSizes maps "POOL/IMAGE" to the volume of c (nil: none).
func volumeSizes(c *spec.Cluster) map[string]spec.VolumeRef {
	m := map[string]spec.VolumeRef{}
	if c == nil {
		return m
	}
	for _, in := range c.Instances() {
		for _, v := range c.VolumesOf(in) {
			m[v.Pool+"/"+v.Image] = v
		}
	}
	return m
}

// CheckVolumes refuses a desired spec that shrinks a volume of the
// committed one: RBD images are never shrunk (that destroys data at the
// end of the disk). The error names every such volume and what to do. A
// volume whose pool or name changed is a new image, not a shrink; the old
// image is kept. Nil specs have no volumes.
func CheckVolumes(previous, desired *spec.Cluster) error {
	if previous == nil || desired == nil {
		return nil
	}
	old := volumeSizes(previous)
	var problems []string
	for _, in := range desired.Instances() {
		for _, v := range desired.VolumesOf(in) {
			was, ok := old[v.Pool+"/"+v.Image]
			if ok && v.SizeMiB < was.SizeMiB {
				problems = append(problems, fmt.Sprintf(
					"vms.%s.volumes.%s: sizeMiB %d is smaller than the committed %d (RBD image %s/%s); volumes are never shrunk: set sizeMiB to %d or more, or give the volume a new name for a new image",
					in.Declared, v.Name, v.SizeMiB, was.SizeMiB, v.Pool, v.Image, was.SizeMiB))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	problems = dedupe(problems) // replicas of one VM report the same line
	return fmt.Errorf("volume shrink refused:\n%s", strings.Join(problems, "\n"))
}

func dedupe(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// changeOf describes an instance going from old to a (either may be absent).
func changeOf(vm string, old *replicated.Assignment, a *replicated.Assignment, reason string) Change {
	c := Change{VM: vm, Reason: reason}
	if old != nil {
		c.OldNode, c.OldOutPath, c.OldDrv, c.OldVCPU, c.OldMemMiB = old.Node, old.OutPath, old.Drv, old.VCPU, old.MemMiB
	}
	if a != nil {
		c.Node, c.OutPath, c.Drv, c.VCPU, c.MemMiB = a.Node, a.OutPath, a.Drv, a.VCPU, a.MemMiB
	}
	return c
}
