package replicated

import (
	"time"

	"github.com/blixard/blixard/spec"
)

// CommandVersion is the version of the command encoding written by this build.
const CommandVersion = 1

// Bounds of the replicated history so the state (and its snapshots) stay small.
const (
	MaxRevisionHistory = 100
	MaxEvents          = 200
)

// NodeState is the scheduling state of a node.
type NodeState string

const (
	NodeReady    NodeState = "ready"
	NodeCordoned NodeState = "cordoned" // keeps its VMs, gets no new ones
	NodeDraining NodeState = "draining" // its VMs are moved away
	NodeDown     NodeState = "down"     // marked down by the leader (later issue: fencing)
)

// Resources is a vCPU / memory amount.
type Resources struct {
	VCPU   int `json:"vcpu"`
	MemMiB int `json:"memMiB"`
}

// Node is a registered cluster member.
type Node struct {
	ID       uint64            `json:"id"`
	RaftAddr string            `json:"raftAddr"`
	APIAddr  string            `json:"apiAddr"`
	Capacity Resources         `json:"capacity"`
	Labels   map[string]string `json:"labels,omitempty"`
	State    NodeState         `json:"state"`
	// CephAddrs are the node's Ceph client addresses, for fencing.
	CephAddrs []string `json:"cephAddrs,omitempty"`
	// Fenced are the addresses the leader blocklisted when it marked the node
	// down; cleared when the node is made ready again.
	Fenced []string `json:"fenced,omitempty"`
	// RegisteredAt and LastHeartbeatAt come from the commands (the proposer's clock).
	RegisteredAt    time.Time `json:"registeredAt"`
	LastHeartbeatAt time.Time `json:"lastHeartbeatAt"`
	// LastHeartbeatSeq counts heartbeats applied for this node; the leader judges
	// liveness by whether it advances, never by comparing clocks.
	LastHeartbeatSeq uint64 `json:"lastHeartbeatSeq"`
}

// Revision is one committed plan.
type Revision struct {
	// ID is the Raft index of the CommitPlan entry that made it.
	ID     uint64 `json:"id"`
	Parent uint64 `json:"parent"`
	Commit string `json:"commit"`
	Ref    string `json:"ref"`
	// EvalHash is the sha256 of the evaluated spec JSON.
	EvalHash    string    `json:"evalHash"`
	CommittedAt time.Time `json:"committedAt"`
	// Summary is a one-line human description ("+2 ~1 -0 moved 0 unschedulable 1").
	Summary string `json:"summary"`
}

// Assignment places one VM instance on one node.
type Assignment struct {
	VM      string `json:"vm"`
	Node    uint64 `json:"node"`
	Drv     string `json:"drv"`
	OutPath string `json:"outPath"`
	VCPU    int    `json:"vcpu"`
	MemMiB  int    `json:"memMiB"`
	// Generation is the Raft index of the CommitPlan that last changed this
	// assignment (its node or its runner); unchanged assignments keep theirs.
	Generation uint64 `json:"generation"`
}

// Phase is a VM's observed lifecycle phase, reported by its node's agent.
type Phase string

const (
	PhasePending  Phase = "pending"
	PhaseBuilding Phase = "building"
	PhaseStarting Phase = "starting"
	PhaseRunning  Phase = "running"
	PhaseStopping Phase = "stopping"
	PhaseStopped  Phase = "stopped"
	PhaseFailed   Phase = "failed"
)

// VMStatus is what an agent observed about a VM.
type VMStatus struct {
	VM         string    `json:"vm"`
	Node       uint64    `json:"node"`
	Phase      Phase     `json:"phase"`
	BootedOut  string    `json:"bootedOut,omitempty"`
	Message    string    `json:"message,omitempty"`
	Generation uint64    `json:"generation"` // the assignment generation the agent acted on
	ObservedAt time.Time `json:"observedAt"`
}

// EvalError is the last failed evaluation (or invalid spec) of the tracked ref.
type EvalError struct {
	Commit  string    `json:"commit"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
	// Retryable: the failure may go away on retry (an evaluation timeout);
	// the leader evaluates the commit again later instead of skipping it.
	Retryable bool `json:"retryable,omitempty"`
}

// Event is one entry of the bounded event log.
type Event struct {
	Index   uint64    `json:"index"` // Raft index that produced it
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// State is the whole replicated state. Maps marshal with sorted keys, so its
// JSON encoding is deterministic.
type State struct {
	// Applied is the Raft index of the last applied entry.
	Applied     uint64                `json:"applied"`
	Nodes       map[uint64]*Node      `json:"nodes"`
	Revision    *Revision             `json:"revision"` // nil before the first plan
	History     []Revision            `json:"history"`  // oldest first, bounded
	Desired     *spec.Cluster         `json:"desired"`
	Assignments map[string]Assignment `json:"assignments"`
	Observed    map[string]VMStatus   `json:"observed"`
	LastError   *EvalError            `json:"lastError"`
	Events      []Event               `json:"events"` // oldest first, bounded
}

// CommandType names a command.
type CommandType string

const (
	CmdRegisterNode    CommandType = "RegisterNode"
	CmdNodeHeartbeat   CommandType = "NodeHeartbeat"
	CmdCommitPlan      CommandType = "CommitPlan"
	CmdRecordEvalError CommandType = "RecordEvalError"
	CmdSetNodeState    CommandType = "SetNodeState"
)

// Command is the self-describing, versioned envelope of every proposal.
// Exactly the field matching Type is set.
type Command struct {
	V    int         `json:"v"`
	Type CommandType `json:"type"`
	// At is the proposer's clock; Update never reads a clock itself.
	At time.Time `json:"at"`

	RegisterNode    *RegisterNode    `json:"registerNode,omitempty"`
	NodeHeartbeat   *NodeHeartbeat   `json:"nodeHeartbeat,omitempty"`
	CommitPlan      *CommitPlan      `json:"commitPlan,omitempty"`
	RecordEvalError *RecordEvalError `json:"recordEvalError,omitempty"`
	SetNodeState    *SetNodeState    `json:"setNodeState,omitempty"`
}

// RegisterNode adds a node or updates its addresses, capacity and labels.
type RegisterNode struct {
	ID        uint64            `json:"id"`
	RaftAddr  string            `json:"raftAddr"`
	APIAddr   string            `json:"apiAddr"`
	Capacity  Resources         `json:"capacity"`
	Labels    map[string]string `json:"labels,omitempty"`
	CephAddrs []string          `json:"cephAddrs,omitempty"`
}

// NodeHeartbeat says a node is alive and carries its agent's observations, batched.
type NodeHeartbeat struct {
	ID       uint64     `json:"id"`
	Statuses []VMStatus `json:"statuses,omitempty"`
}

// CommitPlan replaces the assignments with a new plan. It is a compare-and-set:
// refused unless Parent equals the current revision's ID (0 when none).
type CommitPlan struct {
	Parent      uint64        `json:"parent"`
	Commit      string        `json:"commit"`
	Ref         string        `json:"ref"`
	EvalHash    string        `json:"evalHash"`
	Summary     string        `json:"summary"`
	Spec        *spec.Cluster `json:"spec"`
	Assignments []Assignment  `json:"assignments"` // Generation is filled in by Update
}

// RecordEvalError records a failed evaluation; the current revision is kept.
type RecordEvalError struct {
	Commit    string `json:"commit"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable,omitempty"`
}

// SetNodeState cordons, drains or readies a node, or — proposed by the
// leader when the node stopped heartbeating — marks it down, after fencing
// its Ceph client addresses (Fenced).
type SetNodeState struct {
	ID     uint64    `json:"id"`
	State  NodeState `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Fenced []string  `json:"fenced,omitempty"`
}
