// Package scale measures the control plane at scale (issue 16, part 3): a
// real three-node Raft cluster of `blixard serve` processes (control-plane
// only, so their CPU and RSS are measurable through /proc) and N simulated
// agent-only nodes in the test process — each a real nodeagent.Agent
// talking to the servers through agentlink (GET /v1/agent/view, POST
// /v1/agent/propose), with an in-memory backend whose VMs start and stop
// at once and no nix realisation (nodeagent.Options.Realise) — and a flake
// of M = 10 × N light VMs sharing one runner, evaluated by the leader with
// real nix. Each simulated node's --servers list starts at another
// server (one server's API caps its connections at 1,024, fewer than
// 1,000 nodes' long polls and heartbeats). It measures push → every
// instance reported running (when the committed state holds them all, as
// the first of the heartbeats' results and a follower's /v1/status saw
// it), placements per second end to end, the leader's CPU and
// RSS at steady state, Raft entries and bytes per second from heartbeats,
// and the size of the leader's Raft snapshot.
//
// N = 100 (TestScale100, ~40 s) runs in the normal suite, not with
// -short. N = 300 and 1,000 (TestScaleLarge, BLIXARD_SCALE_NODES=300,1000)
// build only with `-tags scale` and run only with BLIXARD_SCALE=1, as they
// take minutes and load the whole machine. BLIXARD_SCALE_NODE_TIMEOUT sets
// the servers' --node-timeout (default 30s). The results and commands are
// in docs/benchmarks.md.
package scale
