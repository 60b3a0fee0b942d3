// Package spec holds the typed desired state of a cluster: the schema-v1 value
// a cluster flake's `blixard` output evaluates to.
//
// It is plain data with pure helpers (validation, replica expansion). It must
// not run nix, touch git or know about Raft: nixeval produces these values,
// the reconciler and the replicated state consume them.
package spec

// SchemaVersion is the version of the flake schema this package decodes.
const SchemaVersion = 1

// Cluster is the evaluated `blixard` output of a cluster flake.
type Cluster struct {
	// Name is used in RBD image names; may be empty.
	Name      string              `json:"cluster"`
	VMs       map[string]VM       `json:"vms"`
	Functions map[string]Function `json:"functions,omitempty"`
}

// Runner identifies a VM's runner derivation: a microvm.nix
// `declaredRunner` or any derivation with bin/microvm-run.
type Runner struct {
	Drv string `json:"drv"` // store path of the .drv
	Out string `json:"out"` // store path of the realised output
}

// VM is one declared VM, before replica expansion.
type VM struct {
	Runner    Runner            `json:"runner"`
	VCPU      int               `json:"vcpu"`
	MemMiB    int               `json:"memMiB"`
	Replicas  int               `json:"replicas"`
	Placement Placement         `json:"placement"`
	Volumes   map[string]Volume `json:"volumes,omitempty"`
	Autostart bool              `json:"autostart"`
}

// Placement constrains where a VM may run.
type Placement struct {
	// Nodes lists the node ids allowed to run the VM; empty means any.
	Nodes []uint64 `json:"nodes,omitempty"`
	// Labels a node must carry (all of them, with equal values).
	Labels map[string]string `json:"labels,omitempty"`
	// AntiAffinity names VMs (declared names) this VM avoids sharing a node with.
	AntiAffinity []string `json:"antiAffinity,omitempty"`
}

// Volume is a Ceph RBD volume of a VM.
type Volume struct {
	SizeMiB int    `json:"sizeMiB"`
	Pool    string `json:"pool"`
}

// Function is a scale-to-zero function; decoded and validated, not yet scheduled.
type Function struct {
	Runner       Runner       `json:"runner"`
	MemMiB       int          `json:"memMiB"`
	HTTP         FunctionHTTP `json:"http"`
	MinInstances int          `json:"minInstances"`
	MaxInstances int          `json:"maxInstances"`
}

// FunctionHTTP is how a function is reached.
type FunctionHTTP struct {
	Path string `json:"path"`
}

// Instance is one schedulable VM after replica expansion: `web` with
// replicas = 3 becomes web-0, web-1 and web-2.
type Instance struct {
	Name     string `json:"name"`     // expanded name; unit, directory and image name
	Declared string `json:"declared"` // the name in the flake
	VM
}
