// Package sim is a deterministic simulation of Blixard's control logic: the
// pure parts, run against a simulated network, clock, disk and process
// table, every choice drawn from one seed. It finds the rare interleavings
// the real-process tests (tests/e2e) cannot reach; it cannot replace them.
//
// Run it with
//
//	go test ./tests/sim                            # 1,000 seeds, each twice, and the scenarios
//	go test ./tests/sim -run TestSim -seed N -v    # one seed, with its whole trace
//	go test ./tests/sim -run TestSimSeeds -seeds 100000 -first 1 -timeout 1h
//
// A failing seed prints the violation, the command that reruns it and the
// last 400 lines of its trace. Flags: -strict-one-copy=false only measures
// double runs instead of failing on them (see One copy below);
// -enforce-known=false lists the known, reported issues instead of failing.
//
// # What runs for real
//
// replicated.State.Apply on every node's replica (each command round-trips
// through EncodeCommand/DecodeCommand first, as on the wire);
// reconciler.ObserveHeartbeats, StaleNodes, PlanSpec, Compute,
// Plan.HasChanges, HoldBack, MayRoll, NextRolloutStep, ComputeDrift, EvalDue
// and RetryWait;
// nodeagent.Decide, FenceReason and MarkedDownReason.
// Around them, the simulator rewrites, step for step, the parts that are
// unexported or do I/O: the leader loop (reconciler loop.go/pass.go/rollout.go/
// result.go: fetch, liveness, FetchFailed, evaluation, plan with the parent
// compare-and-set and HoldBack, the rollout steps (step 8), waits and
// backoff, the retry wait of failed fetches, with copies of waitAfter and
// joinErrors), the agent (observe with observeVMs' rules, the records, the
// executor with its kills, the lease — started from the node's last
// committed heartbeat in its replica, renewed by a committed heartbeat to
// its send time, a pass at its expiry, starts held after a fence until a
// heartbeat saying so committed — and the pipelined heartbeat reporter: a
// heartbeat every period and after changes without waiting for the earlier
// ones, numbered by epoch and sequence, at most ⌈lease/period⌉ unanswered,
// each given up after the lease, the first at once, with its debounce
// and forgetting), the ProcessBackend's units (adoption, crash restarts
// with backoff, Kill) and raftstore's Propose retries (a retried CommitPlan
// confirmed with IsCurrentPlan). A change to those parts must be mirrored
// here.
//
// # The model
//
// Time is virtual (ms); one event queue ordered by (time, sequence); one
// PCG stream seeded by the seed. A run: 3–5 nodes boot and register, the
// first spec is pushed, faults are injected for 40–90 s, then everything
// heals, the final good spec is pushed and an operator readies every node;
// the run ends once the cluster has converged and stayed so for 5 s.
//
//   - Raft: one ordered log. An entry commits when the leader reaches a
//     majority of nodes whose process runs and is not frozen. A leader that
//     loses its majority steps down; a frozen leader keeps its term while no
//     one else can win (PreVote) and leads on when it thaws; elections take
//     1–2 s and the winner catches up at once. Every node applies committed
//     entries when they reach it (milliseconds, seconds on a slow node,
//     after a heal when cut off), so local reads are stale. Proposals are
//     lost (retried after the 3 s attempt timeout) or commit with their
//     answer lost (retried: applied twice), and wait for a leader until
//     their deadline (the lease for heartbeats, 10 s for operator
//     commands), which ends an attempt in flight too: an answer after it
//     is an outcome unknown to the proposer. A
//     proposer gets its answer once its own replica has applied the entry
//     (SyncPropose returns the local state machine's result).
//   - A node: its blixard process (replica, agent and reconciler loop,
//     which start only once RegisterNode committed), its runners, its disk
//     (STATE/NAME/current and the nix store survive everything; the agent's
//     records and statuses die with the process).
//   - Timings: the node timeout is 10 s; the agent's heartbeat period and
//     lease follow from it by production's default rule (node.Config):
//     heartbeat = min(2s, nodeTimeout/10) = 1 s, lease = nodeTimeout -
//     max(nodeTimeout/4, 1s) = 7.5 s. A fenced agent's kills (SIGKILL and
//     the runner's exit, milliseconds) take no virtual time. A frozen or
//     dead blixard cannot fence: its runners run on until it runs again.
//   - Faults: partitions (one node, the leader, a minority, or a split with
//     no majority); blixard crashes (runners keep running and are adopted);
//     hosts losing power (runners die); SIGSTOP of blixard (runners keep
//     running, nothing else happens until SIGCONT); slow links and replicas;
//     30% message loss; runner crashes (OOM); pushes (new runners, some that
//     do not build or crash at start, replicas, new and removed VMs,
//     resources, autostart, a VM too large for any node, a flake that does
//     not evaluate, no change; 40% of VMs roll their updates in waves, some
//     with a canary and auto-revert, so bad runners fail or revert
//     rollouts and faults expire their deadlines); drains and cordons; `blixard vm
//     stop|start|restart`; temporarily failing evaluations; an unreachable
//     repository; transient build and start failures; hung shutdowns (40 s).
//
// Not modelled: volumes, Ceph locks and blocklists (no node has Ceph); a
// start that races the fence (a cancelled operation never acts here; the
// agent kills such a runner on its next pass); commit
// signatures; force-pushes; webhooks and RequestSync (pushes are found by
// the 5 s poll); membership changes; snapshots; the systemd backend (the
// ProcessBackend's semantics are used: crashed runners are restarted only
// while the agent runs); clock skew between nodes (every node reads the
// one virtual clock); disk failures; a Raft log whose uncommitted entries
// survive a leader change (they are dropped).
//
// # Invariants
//
//   - History: after every applied CommitPlan, the node's history is the
//     committed revisions in commit order (the newest MaxRevisionHistory);
//     at the end every replica holds the same state as the leader's.
//   - One copy (StrictOneCopy, on by default): a VM running on two nodes
//     at once is a violation, with one exception the model cannot avoid:
//     the copies on nodes whose blixard cannot fence — frozen (SIGSTOP) or
//     not running, or whose agent has made no pass since it froze, stopped
//     or started — may run beside one other copy. Such a node's runners
//     keep running while the leader, after the node timeout, places them
//     elsewhere; its first pass when it runs again kills them (the lease
//     counts from its last committed heartbeat). The bound is therefore
//     the freeze, or the outage of blixard, minus the node timeout: the
//     longest seen in 1,000 seeds is reported ("longest double run
//     allowed"; about 17 s). Everything else must hold one copy: a node
//     cut off from the quorum fences itself (its lease, 7.5 s, runs out
//     before the leader's 10 s node timeout; one marked down stays fenced
//     until it is readied), and a VM moved between nodes starts on the new
//     one only once the old one reported it stopped or was marked down
//     (nodeagent.Decide). Without
//     StrictOneCopy, double runs are measured and split into excused,
//     "isolated" (a node that could not learn or act on the plan) and
//     "handoff". Always enforced: a healthy agent stops a runner its own
//     replica no longer assigns to it within 5 s (stop in flight aside).
//     Fencing a node that could reach the quorum is the safe side, at a
//     price (its VMs stop for nothing). The summary counts the seeds in
//     which "a node connected to the leader fenced itself" (at that
//     moment its agent had made a pass, the leader could commit and
//     reached it, its replica was not slow), those in which it "killed
//     runners", and those "connected to the leader all lease long" (not
//     one moment of the lease cut off, frozen, slow or without a leader
//     that could commit: lost messages and elections only). With pipelined
//     heartbeats, 42, 16 and 0 of the 1,000 default seeds; with one
//     heartbeat at a time they were 337, 152 and 150.
//   - Convergence: after heal, within the bound (node timeout + 2 s for the
//     operator + 2 s election + 5 s poll + 12 s evaluation + 45 s for a
//     build that failed just before heal to be retried and built (or a
//     40 s hung stop, or a 30 s restart backoff) + two heartbeat periods +
//     5 s; 83 s with the 10 s node timeout): the leader's revision is the head
//     commit, every node is ready, every assigned instance runs its
//     committed runner on its node (kept-stopped ones run nowhere), nothing
//     else runs anywhere, every `vm restart` was carried out after it was
//     asked for, nothing is unschedulable, no rollout is in progress and
//     every rollout to the head commit succeeded (the final push gives
//     every rolling VM a new runner; the bound adds three waves of a build,
//     a start, two heartbeats and minHealthySeconds), and ComputeDrift is
//     empty.
//   - Placement: every committed plan keeps each node within its capacity,
//     anti-affinity and placement labels and nodes.
//   - Decide's contract: at most one background action per VM, last, and
//     none while the VM has an operation in flight.
//   - Liveness (enforced; -enforce-known=false only lists violations): the
//     leader judges a node silent only after NodeTimeout in which the
//     cluster could commit since the node's last heartbeat or the term began
//     (reconciler.DiscountBlindness); and a SetNodeState{down} never applies
//     after a heartbeat of that node that the judgement did not see
//     (SetNodeState.HeartbeatSeq). Both were found by this simulator.
//   - Determinism: every seed runs twice with the same trace hash.
//
// Invariants about the log are checked on every apply, those about runners
// on every runner start, stop or crash, and the rest every 250 ms of
// virtual time and at the end.
package sim
