// Package spec holds the typed desired state of a cluster: the schema-v1 value
// a cluster flake's `blixard` output evaluates to.
//
// It is plain data with pure helpers (validation, replica expansion). It must
// not run nix, touch git or know about Raft: nixeval produces these values,
// the reconciler and the replicated state consume them.
package spec

import "net/netip"

// SchemaVersion is the version of the flake schema this package decodes.
const SchemaVersion = 1

// Cluster is the evaluated `blixard` output of a cluster flake.
type Cluster struct {
	// Name is used in RBD image names; may be empty.
	Name      string              `json:"cluster"`
	VMs       map[string]VM       `json:"vms"`
	Functions map[string]Function `json:"functions,omitempty"`
	// Network is the cluster's virtual network; its zero value means the
	// default CIDR (read it with [Cluster.NetworkCIDR]).
	Network Network `json:"network,omitzero"`
	// Ingress routes traffic from outside the cluster to VMs, by entry name.
	Ingress map[string]Ingress `json:"ingress,omitempty"`
}

// Network is the `network` attribute of a cluster flake.
type Network struct {
	// CIDR is the IPv4 network instances get their addresses from: its
	// first host address is the gateway (every node's bridge), the others
	// go to instances. The zero Prefix means DefaultCIDR.
	CIDR netip.Prefix `json:"cidr"`
}

// Ingress protocols.
const (
	// IngressHTTP entries are routed by host and path by every node's
	// HTTP reverse proxy.
	IngressHTTP = "http"
	// IngressTCP entries are passed through from ListenPort on every node.
	IngressTCP = "tcp"
)

// Ingress is one `ingress.NAME` entry: traffic for Host and Path (HTTP),
// or arriving at ListenPort (TCP), goes to Port on the running instances
// of the VM To.
type Ingress struct {
	Host string `json:"host"`
	Path string `json:"path"`
	// To is a declared VM name (every replica of it receives traffic).
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	// ListenPort is the port every node listens on for a TCP entry; 0 (the
	// flake's null) for HTTP entries.
	ListenPort int `json:"listenPort,omitempty"`
}

// Runner identifies a VM's runner derivation: a microvm.nix
// `declaredRunner` or any derivation with bin/microvm-run.
type Runner struct {
	Drv string `json:"drv"` // store path of the .drv
	Out string `json:"out"` // store path of the realised output
}

// VM is one declared VM, before replica expansion.
type VM struct {
	// Runner is what every instance runs unless its Instances entry names
	// a runner of its own. It is the zero Runner (absent from the flake)
	// only when every instance has its own.
	Runner    Runner            `json:"runner,omitzero"`
	VCPU      int               `json:"vcpu"`
	MemMiB    int               `json:"memMiB"`
	Replicas  int               `json:"replicas"`
	Placement Placement         `json:"placement"`
	Volumes   map[string]Volume `json:"volumes,omitempty"`
	Autostart bool              `json:"autostart"`
	// Instances sets instances apart, by instance name (exactly the names
	// replica expansion gives: web-0 … web-(replicas-1), or the VM's own
	// name when replicas = 1). Nil means every instance runs Runner with
	// an identity derived from its name, as before instances existed.
	Instances map[string]InstanceEntry `json:"instances,omitempty"`
	// Health is how the node agent judges a running instance (see
	// HealthCheck); nil: healthy as soon as it runs.
	Health *HealthCheck `json:"health,omitempty"`
	// Update is how a revision that changes the VM's runner or resources
	// reaches its instances (see Update); the zero Update (no block):
	// every instance at once.
	Update Update `json:"update,omitzero"`
}

// InstanceEntry is one `instances.NAME` entry of a VM. lib.mkCluster
// writes one per replica of a microvm.nix nixosConfiguration: a runner of
// its own whose guest NIC has MAC on the host's tap interface Tap, and
// whose guest is called Hostname. Those are baked into the runner, so
// the cluster must hand out exactly them (replicated.AllocateNetwork uses
// a declared part as it is and derives the others).
type InstanceEntry struct {
	// Runner is the instance's own runner; the zero Runner means the VM's.
	Runner Runner `json:"runner,omitzero"`
	// MAC is the guest NIC's address in lower-case colon form, "" to
	// derive it: locally administered unicast, and not 0a:b1:… (the
	// prefix of the nodes' bridges).
	MAC string `json:"mac,omitempty"`
	// Tap is the host's tap interface name, "" to derive it: a Linux
	// interface name of at most MaxTapName characters.
	Tap string `json:"tap,omitempty"`
	// Hostname is the guest's host name, "" to derive it: a DNS label.
	Hostname string `json:"hostname,omitempty"`
}

// Placement constrains where a VM may run.
type Placement struct {
	// Nodes lists the node ids allowed to run the VM; empty means any.
	Nodes []uint64 `json:"nodes,omitempty"`
	// Labels a node must carry (all of them, with equal values).
	Labels map[string]string `json:"labels,omitempty"`
	// AntiAffinity names VMs (declared names) this VM avoids sharing a node with.
	AntiAffinity []string `json:"antiAffinity,omitempty"`
	// SpreadBy is a node label key (ValidLabelKey): replicas spread over
	// its values (zones; nodes without the label count as one more) before
	// they spread over nodes. "" spreads over nodes only. Spreading is a
	// preference, not a rule: replicas share a zone or a node when no
	// other has room (AntiAffinity with itself forbids sharing a node).
	SpreadBy string `json:"spreadBy,omitempty"`
	// Prefer are soft wishes (see Preference).
	Prefer Preference `json:"prefer,omitzero"`
}

// Volume is a Ceph RBD volume of a VM.
type Volume struct {
	SizeMiB int    `json:"sizeMiB"`
	Pool    string `json:"pool"`
}

// Function and FunctionHTTP (functions.NAME) are in function.go.

// Instance is one schedulable VM after replica expansion: `web` with
// replicas = 3 becomes web-0, web-1 and web-2.
type Instance struct {
	Name     string `json:"name"`     // expanded name; unit, directory and image name
	Declared string `json:"declared"` // the name in the flake
	// Own is the VM's Instances entry of this instance, nil without one
	// (a pointer: most instances have none, and plans expand thousands).
	// When it names a runner, the embedded VM's Runner already is that
	// runner.
	Own *InstanceEntry `json:"own,omitempty"`
	VM
}

// OwnRunner reports whether the instance runs a runner of its own (the
// flake's vms.DECLARED.instances.NAME.runner) rather than the VM's.
func (in *Instance) OwnRunner() bool { return in.Own != nil && in.Own.Runner != (Runner{}) }
