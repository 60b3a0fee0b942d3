package replicated

import (
	"slices"
	"time"

	"github.com/blixard/blixard/spec"
)

// CommandVersion is the version of the command encoding written by this build
// for every command that needs nothing newer: a version 1 reader decodes it.
const CommandVersion = 1

// HeartbeatDeltaVersion is the version of a NodeHeartbeat that carries
// [NodeHeartbeat.Unchanged] (a liveness-only heartbeat). Only it is written
// with this version, so a build that knows only version 1 refuses just
// those, with a message saying to upgrade, and decodes everything else.
const HeartbeatDeltaVersion = 2

// MaxCommandVersion is the newest command version this build decodes.
const MaxCommandVersion = HeartbeatDeltaVersion

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
	// CephAddrs are the node's Ceph client addresses, for fencing: the ones
	// it registered, and those its heartbeats reported since (the clients
	// of its volumes), until it registers again or the leader lifts their
	// fence (UnfenceNode).
	CephAddrs []string `json:"cephAddrs,omitempty"`
	// ReportedCephAddrs are the Ceph client addresses of the node's last
	// report (its newest heartbeat, else its registration): the clients that
	// write for it now. Unlike CephAddrs they are replaced, not added to,
	// so they say when a fenced client is gone.
	ReportedCephAddrs []string `json:"reportedCephAddrs,omitempty"`
	// Ceph: the node is configured for Ceph (serve --ceph-config-file …),
	// so it can attach RBD volumes; placement puts instances with volumes
	// only on such nodes.
	Ceph bool `json:"ceph,omitempty"`
	// CacheURL is the node's binary cache (serve --cache-addr), which
	// serves the closures of the assigned runners its store has; CacheKey
	// is the public key its narinfos are signed with ("NAME:BASE64"). The
	// other nodes' agents substitute from it and trust that key. "" when
	// the node serves no cache.
	CacheURL string `json:"cacheURL,omitempty"`
	CacheKey string `json:"cacheKey,omitempty"`
	// GatewayAddr is where the node's function gateway listens for the
	// other nodes (host:port of its --ingress-addr): they pass it the
	// requests for the node's function instances, so that one gateway
	// counts every request an instance has. "" when the node serves no
	// gateway (or was registered by a build without the field): requests
	// then go straight to its instances.
	GatewayAddr string `json:"gatewayAddr,omitempty"`
	// Fenced are the addresses the leader blocklisted when it marked the
	// node down. They stay when the node is made ready again, until the
	// leader has lifted their blocklist entries (UnfenceNode): once the
	// node no longer reports any of them and reports a new one.
	Fenced []string `json:"fenced,omitempty"`
	// RegisteredAt and LastHeartbeatAt come from the commands (the proposer's clock).
	RegisteredAt    time.Time `json:"registeredAt"`
	LastHeartbeatAt time.Time `json:"lastHeartbeatAt"`
	// LastHeartbeatSeq counts heartbeats applied for this node; the leader judges
	// liveness by whether it advances, never by comparing clocks.
	LastHeartbeatSeq uint64 `json:"lastHeartbeatSeq"`
	// ReportEpoch and ReportSeq are the order ([NodeHeartbeat.Epoch],
	// [NodeHeartbeat.Seq]) of the newest ordered heartbeat applied for this
	// node: the one whose statuses Observed holds, whose ReportedCephAddrs
	// and LastHeartbeatAt the node has. Zero until an ordered one applied.
	ReportEpoch uint64 `json:"reportEpoch,omitempty"`
	ReportSeq   uint64 `json:"reportSeq,omitempty"`
	// StatusSeq is the Seq (of ReportEpoch) of the full report whose
	// statuses Observed holds for this node: ReportSeq, or an older one
	// when the reports since were liveness-only ([NodeHeartbeat.Unchanged]).
	// 0 until an ordered full report applied.
	StatusSeq uint64 `json:"statusSeq,omitempty"`
	// Problems are what the node's own parts cannot fix and say so
	// ([SetNodeProblem]), by part ("network": this host's network refuses
	// the overlay, …); none while all is well. `blixard status` shows them.
	Problems map[string]NodeProblem `json:"problems,omitempty"`
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
	// Rewrote is the commit a force-push replaced on the tracked ref before
	// this revision's commit was fetched ("" when history was not rewritten).
	Rewrote string `json:"rewrote,omitempty"`
	// Signer is who signed Commit, as the leader verified it against the
	// trust files (`serve --trust`): the trusted name and key, such as
	// "alice@example.org (SSH key SHA256:…)". "" when no trust files are
	// configured, so commits are deployed unverified.
	Signer string `json:"signer,omitempty"`
}

// Assignment places one VM instance on one node. It carries everything the
// node's agent needs to run the instance, so agents never read the desired
// spec.
type Assignment struct {
	VM string `json:"vm"` // instance name: unit, directory and image name
	// Declared is the VM's name in the flake (web for the replica web-1);
	// agents that build the runner from the flake build it by this name.
	Declared string `json:"declared"`
	Node     uint64 `json:"node"`
	Drv      string `json:"drv"`
	OutPath  string `json:"outPath"`
	VCPU     int    `json:"vcpu"`
	MemMiB   int    `json:"memMiB"`
	// Volumes are the instance's RBD volumes, sorted by name.
	Volumes []spec.VolumeRef `json:"volumes,omitempty"`
	// Generation is the Raft index of the CommitPlan that last changed this
	// assignment (see [Assignment.SameWorkload]); unchanged ones keep theirs.
	Generation uint64 `json:"generation"`
	// Stopped says the instance is placed (it holds its node's resources)
	// but kept stopped, and why; "" means it runs. Apply derives it from
	// the flake's autostart and the operator's choice with [KeptStopped],
	// when a plan commits and on [SetVMRunState]; a plan's value is ignored.
	Stopped StopReason `json:"stopped,omitempty"`
	// Restart is the Raft index of the instance's last `blixard vm
	// restart` (0: none). The agent restarts a running instance once for
	// each new value, and reports the value it carried out
	// ([VMStatus.Restart]). Set by Apply, like Stopped.
	Restart uint64 `json:"restart,omitempty"`

	// OwnRunner says the runner is the instance's own, the flake's
	// vms.DECLARED.instances.VM.runner (spec.Instance.OwnRunner), not the
	// VM's vms.DECLARED.runner: an agent building it from the flake builds
	// that attribute.
	OwnRunner bool `json:"ownRunner,omitempty"`

	// Commit is the commit whose spec this workload (runner, resources,
	// volumes) comes from: the revision's, unless a rolling update
	// (see rollout.go) keeps the instance on an older one. An agent
	// building the runner from the flake builds it at this commit. Apply
	// fills in the plan's commit when a plan leaves it empty. Not part of
	// [Assignment.SameWorkload]: the same runner of another commit is the
	// same workload.
	Commit string `json:"commit,omitempty"`

	// Health is the VM's health check (spec.VM.Health), which the agent
	// probes the running instance with; nil: healthy once it runs. Not
	// part of [Assignment.SameWorkload]: changing only the check must not
	// restart the instance.
	Health *spec.HealthCheck `json:"health,omitempty"`

	// Function is the function (functions.NAME) this instance belongs to
	// ("" for a VM's instance): the planner makes Want of them
	// ([FunctionState]) and every node's gateway routes to them.
	Function string `json:"function,omitempty"`
	// Snapshot: the instance's function has snapshot = true, so the agent
	// saves a memory snapshot of its runner's first ready instance and
	// restores later cold starts from it (nodeagent/snapshot.go). Not part
	// of [Assignment.SameWorkload]: turning it on or off changes how the
	// next cold start happens, not the instance that runs.
	Snapshot bool `json:"snapshot,omitempty"`
}

// SameWorkload reports whether a and b run the same instance the same way:
// same runner, resources and volumes (the node and generation aside). It is
// the one rule for "this assignment changed": the planner lists an instance
// as changed, and Apply gives it a new generation, exactly when it is false.
func (a Assignment) SameWorkload(b Assignment) bool {
	return a.Declared == b.Declared && a.Drv == b.Drv && a.OutPath == b.OutPath &&
		a.VCPU == b.VCPU && a.MemMiB == b.MemMiB && slices.Equal(a.Volumes, b.Volumes)
}

// RunState is whether an operator wants an instance running or stopped
// (`blixard vm start|stop`); "" is no choice: the flake's autostart decides.
type RunState string

const (
	RunStateRunning RunState = "running"
	RunStateStopped RunState = "stopped"
)

// StopReason says why a placed instance is kept stopped ("" when it runs).
type StopReason string

const (
	// StoppedByAutostart: the flake says autostart = false and no
	// `blixard vm start` was given since.
	StoppedByAutostart StopReason = "autostart"
	// StoppedByOperator: `blixard vm stop`.
	StoppedByOperator StopReason = "operator"
)

// Why says in words why an instance is kept stopped ("" when it runs).
func (r StopReason) Why() string {
	switch r {
	case "":
		return ""
	case StoppedByAutostart:
		return "autostart = false in the flake"
	case StoppedByOperator:
		return "stopped with `blixard vm stop`"
	}
	return string(r)
}

// KeptStopped is the one run-state rule: whether an instance of a VM
// declared with autostart, for which the operator chose want, is kept
// stopped, and why. The operator's choice wins over the flake, so a new
// revision (even one that flips autostart) never undoes a `blixard vm
// start` or `stop`; without a choice, autostart = false keeps it stopped.
func KeptStopped(autostart bool, want RunState) StopReason {
	switch want {
	case RunStateRunning:
		return ""
	case RunStateStopped:
		return StoppedByOperator
	}
	if !autostart {
		return StoppedByAutostart
	}
	return ""
}

// RunControl is what the operator asked of one instance. It is kept while
// the instance is desired (assigned or unschedulable) and forgotten with it.
type RunControl struct {
	// Want is the chosen run state; "" follows the flake's autostart.
	Want RunState `json:"want,omitempty"`
	// Restart is the Raft index of the last restart asked for (0: none).
	Restart uint64 `json:"restart,omitempty"`
	// At is when it last changed (the proposer's clock).
	At time.Time `json:"at"`
}

// Unschedulable is a desired instance that no node can take, and why.
type Unschedulable struct {
	VM       string `json:"vm"`
	Declared string `json:"declared,omitempty"`
	// Reason names what to change: a node to add or ready, a label, a
	// placement.nodes id, or the resources asked for.
	Reason string `json:"reason"`
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
	VM         string `json:"vm"`
	Node       uint64 `json:"node"`
	Phase      Phase  `json:"phase"`
	BootedOut  string `json:"bootedOut,omitempty"`
	Message    string `json:"message,omitempty"`
	Generation uint64 `json:"generation"` // the assignment generation the agent acted on
	// Restart is the last [Assignment.Restart] the agent carried out (a
	// start counts): a restarted agent reads it back, so it neither
	// repeats a restart nor misses one asked for while it was down.
	Restart    uint64    `json:"restart,omitempty"`
	ObservedAt time.Time `json:"observedAt"`
	// Health is what the agent's probes say of the running instance
	// (see [HealthState]); "" while it is not running or not judged yet.
	Health HealthState `json:"health,omitempty"`
	// HealthSince is since when Health holds, on the agent's clock: for an
	// instance without a health check, when it started running (the
	// rollout waits minHealthySeconds from it).
	HealthSince time.Time `json:"healthSince,omitzero"`
	// HealthError is the last failed probe's error while the instance is
	// not healthy ("" once it is).
	HealthError string `json:"healthError,omitempty"`
}

// HealthState is an instance's health as its node's agent judges it.
type HealthState string

const (
	// Healthy: the instance runs and its health check passed
	// healthyAfter times in a row (without a check: it runs).
	Healthy HealthState = "healthy"
	// Unhealthy: its health check failed unhealthyAfter times in a row.
	Unhealthy HealthState = "unhealthy"
)

// ConditionType names a condition of the cluster's source. Conditions have
// negative polarity: one exists only while it is true.
type ConditionType string

const (
	// FetchFailed: the leader cannot fetch the tracked ref (repository
	// unreachable, branch deleted); the cluster keeps its revision.
	FetchFailed ConditionType = "FetchFailed"
	// EvalFailed: the newest fetched commit does not evaluate to a valid
	// spec (nix error, invalid spec, volume shrink); it is not deployed.
	EvalFailed ConditionType = "EvalFailed"
	// SignatureRefused: the newest fetched commit is not signed by a key
	// of the trust files (unsigned, an unknown key, a bad signature), so it
	// was not evaluated and is not deployed; the message names the signer
	// and why. It is final for that commit.
	SignatureRefused ConditionType = "SignatureRefused"
)

// Condition is a fact about the cluster's source that every node shows the
// same way, and that survives leader changes.
type Condition struct {
	Type ConditionType `json:"type"`
	// Commit is the commit it concerns (EvalFailed: the commit that failed;
	// SignatureRefused: the commit refused; FetchFailed: the last commit
	// fetched before, if any).
	Commit  string `json:"commit,omitempty"`
	Message string `json:"message"`
	// Retryable: the failure may go away on retry (a timeout, an
	// unreachable flake input); the leader tries the commit again later.
	Retryable bool `json:"retryable,omitempty"`
	// Since is when the condition became true (for this commit); At when
	// it was last recorded. Both come from the proposer's clock.
	Since time.Time `json:"since"`
	At    time.Time `json:"at"`
}

// Event is one entry of the bounded event log.
type Event struct {
	Index   uint64    `json:"index"` // Raft index that produced it
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	// Actor is who asked for the change through the API ([Command.Actor]),
	// also named at the end of Message; "" for the cluster's own changes.
	Actor string `json:"actor,omitempty"`
	// About names what the event concerns, for programs (notifications,
	// `blixard events --json`); events recorded by older builds have none
	// and name it in Message only.
	About
}

// About is what an [Event] concerns; each field only when it applies.
type About struct {
	// Node: the node registered, changing state, unfenced or added to the
	// shard, or the node a function instance failed on.
	Node uint64 `json:"node,omitempty"`
	// State: NodeStateChanged's new state.
	State string `json:"state,omitempty"`
	// VM: the VM or instance (run state, rollouts: the declared VM; a
	// function's failed instance).
	VM string `json:"vm,omitempty"`
	// Function: FunctionScaled's and FunctionStartFailed's function.
	Function string `json:"function,omitempty"`
	// Commit: PlanCommitted's, HistoryRewritten's, a condition's, a
	// rollout's target commit.
	Commit string `json:"commit,omitempty"`
	// Revision: PlanCommitted's and HistoryRewritten's revision.
	Revision uint64 `json:"revision,omitempty"`
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
	// Unschedulable are the desired instances the current revision's plan
	// could not place, with the planner's reasons, sorted by VM.
	Unschedulable []Unschedulable `json:"unschedulable"`
	// Network is the committed cluster network: the CIDR, its gateway,
	// the identity (address, MAC, tap, hostname) of every desired instance
	// that has one and the nodes' own addresses. Apply allocates it when a
	// plan commits
	// ([AllocateNetwork]); nil before the first plan.
	Network *Network `json:"network,omitempty"`
	// Conditions are the source's failures that are true now, sorted by type.
	Conditions []Condition `json:"conditions"`
	Events     []Event     `json:"events"` // oldest first, bounded
	// RunControls are the operators' choices by instance name (see
	// [SetVMRunState]); nil when there are none.
	RunControls map[string]RunControl `json:"runControls,omitempty"`
	// SyncRequests counts the applied [RequestSync] commands: a node that
	// received a push webhook or `POST /v1/sync` but does not lead asks the
	// leader to fetch by making it move. The leader fetches when it reads a
	// value it has not fetched after; the value itself means nothing else.
	SyncRequests uint64 `json:"syncRequests,omitempty"`
	// PlanInputs counts the applied commands that may change what the
	// planner computes (see [AffectsPlanning]): every command but
	// heartbeats and the ones that touch neither nodes, assignments,
	// the spec, the network nor functions. The leader re-plans the running
	// revision only when it moved (and at a slow periodic pass), not on
	// every pass.
	PlanInputs uint64 `json:"planInputs,omitempty"`
	// Tokens are the API's bearer tokens by name ([CreateToken]); nil when
	// there are none. Only their hashes are kept.
	Tokens map[string]Token `json:"tokens,omitempty"`
	// Rollouts are the rolling updates by declared VM (see rollout.go):
	// the running one, or the last one; nil when there are none.
	Rollouts map[string]Rollout `json:"rollouts,omitempty"`
	// Suspended is set while the cluster does not follow its tracked ref
	// (`blixard suspend`, `rollback`); nil while it follows.
	Suspended *Suspension `json:"suspended,omitempty"`
	// Functions are the functions' committed scale by name (function.go);
	// nil when none has scaled or reported activity.
	Functions map[string]FunctionState `json:"functions,omitempty"`
}

// Token is an API bearer token, for automation that holds no client
// certificate (`blixard token create`). The secret itself is never
// replicated: it is shown once to whoever created the token.
type Token struct {
	Name string `json:"name"`
	// Role is read, operate or admin, as in a user certificate.
	Role string `json:"role"`
	// Hash is the hex SHA-256 of the secret; the API compares it in
	// constant time. Empty in the API's answers.
	Hash string `json:"hash,omitempty"`
	// CreatedAt is the proposer's clock; CreatedBy the [Command.Actor].
	CreatedAt time.Time `json:"createdAt"`
	CreatedBy string    `json:"createdBy,omitempty"`
}

// CommandType names a command.
type CommandType string

const (
	CmdRegisterNode   CommandType = "RegisterNode"
	CmdNodeHeartbeat  CommandType = "NodeHeartbeat"
	CmdCommitPlan     CommandType = "CommitPlan"
	CmdSetCondition   CommandType = "SetCondition"
	CmdClearCondition CommandType = "ClearCondition"
	CmdSetNodeState   CommandType = "SetNodeState"
	CmdSetVMRunState  CommandType = "SetVMRunState"
	CmdRequestSync    CommandType = "RequestSync"
	CmdCreateToken    CommandType = "CreateToken"
	CmdRevokeToken    CommandType = "RevokeToken"
	CmdRecordMember   CommandType = "RecordMember"
	CmdUnfenceNode    CommandType = "UnfenceNode"
	CmdRolloutStep    CommandType = "RolloutStep"
	CmdSetFollowing   CommandType = "SetFollowing"
	CmdRecordPending  CommandType = "RecordPending"
	// Functions (function.go).
	CmdScaleFunction    CommandType = "ScaleFunction"
	CmdFunctionActivity CommandType = "FunctionActivity"
	CmdSetNodeProblem   CommandType = "SetNodeProblem"
)

// Command is the self-describing, versioned envelope of every proposal.
// Exactly the field matching Type is set.
type Command struct {
	V    int         `json:"v"`
	Type CommandType `json:"type"`
	// At is the proposer's clock; Update never reads a clock itself.
	At time.Time `json:"at"`
	// Actor is who asked for the command through the API: a certificate's
	// user ("alice") or node ("node-2"), "token NAME", or "anonymous" on
	// an API without authentication (--insecure); "" for the cluster's own
	// proposals. Apply names it in the events the command records.
	Actor string `json:"actor,omitempty"`

	RegisterNode   *RegisterNode   `json:"registerNode,omitempty"`
	NodeHeartbeat  *NodeHeartbeat  `json:"nodeHeartbeat,omitempty"`
	CommitPlan     *CommitPlan     `json:"commitPlan,omitempty"`
	SetCondition   *SetCondition   `json:"setCondition,omitempty"`
	ClearCondition *ClearCondition `json:"clearCondition,omitempty"`
	SetNodeState   *SetNodeState   `json:"setNodeState,omitempty"`
	SetVMRunState  *SetVMRunState  `json:"setVMRunState,omitempty"`
	RequestSync    *RequestSync    `json:"requestSync,omitempty"`
	CreateToken    *CreateToken    `json:"createToken,omitempty"`
	RevokeToken    *RevokeToken    `json:"revokeToken,omitempty"`
	RecordMember   *RecordMember   `json:"recordMember,omitempty"`
	UnfenceNode    *UnfenceNode    `json:"unfenceNode,omitempty"`
	RolloutStep    *RolloutStep    `json:"rolloutStep,omitempty"`
	SetFollowing   *SetFollowing   `json:"setFollowing,omitempty"`
	RecordPending  *RecordPending  `json:"recordPending,omitempty"`
	// Functions (function.go).
	ScaleFunction    *ScaleFunction    `json:"scaleFunction,omitempty"`
	FunctionActivity *FunctionActivity `json:"functionActivity,omitempty"`
	SetNodeProblem   *SetNodeProblem   `json:"setNodeProblem,omitempty"`
}

// SetNodeProblem records (Message set) or clears (Message "") a problem of
// node ID's part Part, proposed by that node when the part's state of
// affairs changes (not at every retry).
type SetNodeProblem struct {
	ID      uint64 `json:"id"`
	Part    string `json:"part"`
	Message string `json:"message,omitempty"`
}

// NodeProblem is one part's problem on a node.
type NodeProblem struct {
	Message string `json:"message"`
	// Since is when it was first recorded with this message (the
	// proposer's clock).
	Since time.Time `json:"since"`
}

// RegisterNode adds a node or updates its addresses, capacity and labels.
type RegisterNode struct {
	ID        uint64            `json:"id"`
	RaftAddr  string            `json:"raftAddr"`
	APIAddr   string            `json:"apiAddr"`
	Capacity  Resources         `json:"capacity"`
	Labels    map[string]string `json:"labels,omitempty"`
	CephAddrs []string          `json:"cephAddrs,omitempty"`
	// Ceph: the node is configured for Ceph ([Node.Ceph]), even when Ceph
	// was unreachable at registration and CephAddrs is empty.
	Ceph bool `json:"ceph,omitempty"`
	// CacheURL and CacheKey: the node's binary cache ([Node.CacheURL]).
	CacheURL string `json:"cacheURL,omitempty"`
	CacheKey string `json:"cacheKey,omitempty"`
	// GatewayAddr: the node's function gateway ([Node.GatewayAddr]).
	GatewayAddr string `json:"gatewayAddr,omitempty"`
}

// NodeHeartbeat says a node is alive and carries its agent's observations, batched.
//
// An agent has several heartbeats in flight at once (one lost proposal must
// not hold back the next), so they can commit out of order. Epoch and Seq
// order them: Apply counts every heartbeat for liveness and Ceph fencing,
// but keeps the statuses of one only when it is newer than the node's last
// applied report (see [State.Apply]), so an older snapshot never overwrites
// a newer one.
type NodeHeartbeat struct {
	ID uint64 `json:"id"`
	// Epoch identifies the agent process that sent it: random, fixed for
	// the process's life, never 0. A heartbeat of another epoch than the
	// node's last report is newer (a restarted agent knows nothing of its
	// predecessor's numbers). 0: unordered (a sender that predates the
	// field): its statuses are always kept, as before.
	Epoch uint64 `json:"epoch,omitempty"`
	// Seq numbers the heartbeats of one epoch, from 1, in the order they
	// were sent (so in the order of their snapshots).
	Seq uint64 `json:"seq,omitempty"`
	// Unchanged, when set, makes the heartbeat liveness-only: the node's
	// statuses are those of its heartbeat Seq=Unchanged of this epoch, so
	// it carries none. Apply keeps the stored statuses for it only when
	// they are that report's ([Node.StatusSeq]); otherwise (that report was
	// lost, or has not committed yet) it counts the heartbeat for liveness
	// only and its result's StatusSeq tells the agent to send its statuses
	// in full. So a lost or reordered proposal never leaves stale
	// statuses. A heartbeat with Unchanged is encoded as version
	// [HeartbeatDeltaVersion].
	Unchanged uint64     `json:"unchanged,omitempty"`
	Statuses  []VMStatus `json:"statuses,omitempty"`
	// CephAddrs are the Ceph client addresses that write for the node's
	// VMs besides the one it registered (its volumes' qemu-storage-daemons
	// and kernel mappings); Apply adds them to Node.CephAddrs, so that
	// fencing the node blocklists them too.
	CephAddrs []string `json:"cephAddrs,omitempty"`
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
	// Unschedulable are the desired instances the planner could not place.
	Unschedulable []Unschedulable `json:"unschedulable,omitempty"`
	// Rewrote is the commit a force-push replaced on the tracked ref before
	// Commit was fetched; it becomes [Revision.Rewrote].
	Rewrote string `json:"rewrote,omitempty"`
	// Signer is who signed Commit, as the leader verified it; it becomes
	// [Revision.Signer].
	Signer string `json:"signer,omitempty"`
}

// SetCondition makes a condition true (or updates its message); the current
// revision is kept.
type SetCondition struct {
	Type      ConditionType `json:"type"`
	Commit    string        `json:"commit,omitempty"`
	Message   string        `json:"message"`
	Retryable bool          `json:"retryable,omitempty"`
}

// ClearCondition makes a condition false (removes it); clearing a condition
// that is not true is a no-op.
type ClearCondition struct {
	Type ConditionType `json:"type"`
}

// SetNodeState cordons, drains or readies a node, or — proposed by the
// leader when the node stopped heartbeating — marks it down, after fencing
// its Ceph client addresses (Fenced).
type SetNodeState struct {
	ID     uint64    `json:"id"`
	State  NodeState `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Fenced []string  `json:"fenced,omitempty"`
	// HeartbeatSeq, when set with State down, is the heartbeat sequence the
	// leader judged silent: the command is refused as stale if the node's
	// sequence moved since (a heartbeat committed after the judgement, or a
	// retried proposal applied after the node came back).
	HeartbeatSeq uint64 `json:"heartbeatSeq,omitempty"`
}

// SetVMRunState records an operator's choice for a VM: keep it running
// (`blixard vm start`), keep it stopped (`blixard vm stop`), or restart it
// once (`blixard vm restart`). The choice outlives new revisions while the
// VM is declared; Apply turns it into [Assignment.Stopped] and
// [Assignment.Restart], which the VM's agent acts on.
type SetVMRunState struct {
	// VM is an instance name (web-1) or a declared name (web: every
	// replica) of the current revision.
	VM string `json:"vm"`
	// Want is running or stopped; "" leaves the choice as it is.
	Want RunState `json:"want,omitempty"`
	// Restart restarts the instances once; each must be wanted running.
	Restart bool `json:"restart,omitempty"`
}

// RequestSync asks the leader to fetch the tracked ref now rather than at
// its next poll: Apply increments [State.SyncRequests]. Followers propose
// it for the pushes they are told about (webhooks, `POST /v1/sync`), since
// only the leader fetches. It carries nothing: the leader re-reads the ref
// at the remote, so no payload could say anything it would trust.
type RequestSync struct{}

// CreateToken adds an API bearer token. The proposer (the API node)
// generated the secret and sends only its hash; a name already taken is
// refused (revoke it first).
type CreateToken struct {
	Name string `json:"name"`
	Role string `json:"role"`
	Hash string `json:"hash"`
}

// RevokeToken removes an API bearer token: from the moment a node applied
// it, that node refuses the token.
type RevokeToken struct {
	Name string `json:"name"`
}

// RecordMember records in the event log that a replica was added to the
// Raft shard (`blixard node add`), which Dragonboat's membership change
// itself does not: it changes nothing else.
type RecordMember struct {
	ID        uint64 `json:"id"`
	RaftAddr  string `json:"raftAddr"`
	NonVoting bool   `json:"nonVoting,omitempty"`
}

// UnfenceNode records that the leader lifted the blocklist entries of
// addresses it had fenced for a node (Node.Fenced): the node was made
// ready again and its clients with those addresses are gone (it reports a
// new client and none of them). Apply drops Addrs from the node's Fenced
// and CephAddrs, so no leader lifts them again or fences them again. It is
// refused as stale while the node is down: a fence taken since must stay.
type UnfenceNode struct {
	ID    uint64   `json:"id"`
	Addrs []string `json:"addrs"`
}
