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
// last 400 lines of its trace. Flags: -strict-one-copy makes any VM running
// on two nodes at once a violation; -enforce-known makes the known,
// reported issues fail instead of being listed.
//
// # What runs for real
//
// replicated.State.Apply on every node's replica (each command round-trips
// through EncodeCommand/DecodeCommand first, as on the wire);
// reconciler.ObserveHeartbeats, StaleNodes, PlanSpec, Compute,
// Plan.HasChanges and ComputeDrift; nodeagent.Decide. Around them, the
// simulator rewrites, step for step, the parts that are unexported or do
// I/O: the leader loop (reconciler loop.go/pass.go/result.go: fetch,
// liveness, FetchFailed, evaluation, plan with the parent compare-and-set,
// waits and backoff, with copies of evalDue, waitAfter and joinErrors), the
// agent (observe with observeVMs' rules, the records, the executor, the
// heartbeat reporter with its debounce and forgetting), the
// ProcessBackend's units (adoption, crash restarts with backoff) and
// raftstore's Propose retries (a retried CommitPlan confirmed with
// IsCurrentPlan). A change to those parts must be mirrored here.
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
//     their deadline (10 s for heartbeats and operator commands).
//   - A node: its blixard process (replica, agent and reconciler loop,
//     which start only once RegisterNode committed), its runners, its disk
//     (STATE/NAME/current and the nix store survive everything; the agent's
//     records and statuses die with the process).
//   - Faults: partitions (one node, the leader, a minority, or a split with
//     no majority); blixard crashes (runners keep running and are adopted);
//     hosts losing power (runners die); SIGSTOP of blixard (runners keep
//     running, nothing else happens until SIGCONT); slow links and replicas;
//     30% message loss; runner crashes (OOM); pushes (new runners, some that
//     do not build or crash at start, replicas, new and removed VMs,
//     resources, autostart, a VM too large for any node, a flake that does
//     not evaluate, no change); drains and cordons; `blixard vm
//     stop|start|restart`; temporarily failing evaluations; an unreachable
//     repository; transient build and start failures; hung shutdowns (40 s).
//
// Not modelled: volumes, Ceph locks and fencing (no node has Ceph); commit
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
//   - One copy: the longest double run is measured and reported, split
//     into "isolated" (a node that could not learn or act on the plan —
//     cut off, frozen, down, replicating slowly — keeps running what was
//     placed elsewhere: the documented window without self-fencing, issue
//     12 item 1) and "handoff" (a move between healthy nodes starts the new
//     copy before the old one has stopped; up to a hung shutdown of 40 s).
//     With StrictOneCopy any double run is a violation; today both kinds
//     happen. Always enforced: a healthy agent stops a runner its own
//     replica no longer assigns to it within 5 s (stop in flight aside).
//   - Convergence: after heal, within the bound (node timeout + 2 s for the
//     operator + 2 s election + 5 s poll + 12 s evaluation + 45 s for a
//     build that failed just before heal to be retried and built (or a
//     40 s hung stop, or a 30 s restart backoff) + 4 s of heartbeats + 5 s;
//     85 s with the 10 s node timeout): the leader's revision is the head
//     commit, every node is ready, every assigned instance runs its
//     committed runner on its node (kept-stopped ones run nowhere), nothing
//     else runs anywhere, every `vm restart` was carried out after it was
//     asked for, nothing is unschedulable, and ComputeDrift is empty.
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
