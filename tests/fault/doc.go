// Package fault is a fault harness for real `blixard serve` processes: each
// node runs in its own network namespace, faults come from a schedule drawn
// from one seed, and invariants are checked while the faults happen and
// after they heal. It needs root (namespaces), iproute2, nix and git.
//
// Run it with
//
//	go test ./tests/fault                                            # unit tests and TestFaultShortFixedSeeds (~2¼ min)
//	go test -tags chaos ./tests/fault -run '^TestFault$' -seed N -duration 10m -timeout 30m -v
//	scripts/chaos.sh --seed N --duration 10m                         # the same, with a random seed by default
//
// A failing run prints its seed, the commands that rerun it, a summary and
// where its logs and records are kept.
//
// # The network
//
// One namespace per node (10.77.X.N/24 on eth0, X picked per run, 0 unless
// taken) and a hub namespace that routes between them: a veth per node,
// proxy ARP and permanent neighbour entries, so each node sees one /24. The
// test process reaches the nodes from the root namespace at 10.77.X.254
// through one more veth into the hub. A partition is a policy rule in the
// hub, `ip rule add from A to B blackhole`: packets from A to B are dropped
// silently (one-way; both directions for a cut), while the test process
// still reaches every node. Nothing else is needed (no nftables). See
// [Net].
//
// # Faults
//
// kill9 (SIGKILL of blixard; its runners keep running), node-kill (SIGKILL
// of every process of the node, runners included), freeze (SIGSTOP of
// every process of the node, SIGCONT later), partition-minority (a follower
// cut from the others), partition-leader (the leader cut from the others),
// partition-majority (two nodes cut from each other; both still reach the
// third, so each keeps a majority), partition-oneway (packets from one node
// to another dropped), leader-change (SIGSTOP of the leader's blixard for
// less than --node-timeout: Blixard has no leader-transfer API, so this
// forces the election a transfer would do), restart-new-binary (SIGTERM,
// then a start of the other binary: a second build, or -blixard-b). Pushes
// run on their own seeded timeline: new runner versions, and once a flake
// that does not evaluate followed by a fixed one. Every node that was down
// is readied again by an operator loop (`blixard node ready`).
//
// # Invariants
//
//   - One copy: every runner appends `start` and (trapped) `stop` records
//     with its node, instance, PID, CLOCK_BOOTTIME and out path to a file
//     per node; the harness records the runners it kills and those that
//     vanished. Two intervals of one instance that intersect are an
//     overlap. Without Ceph a node that is cut off keeps its VMs until it
//     heals (docs/architecture.md, Failure detection), so an overlap is
//     allowed when it starts after one of its two nodes was cut off
//     (killed agent, frozen, partitioned, restarting) and ends at most
//     -overlap-grace (default node-timeout + 10 s) after that fault
//     healed; -strict allows none.
//   - Linearizable reads: a client per node reads GET /v1/status (a
//     linearizable read) in a loop; reads and pushes, with invoke and
//     return times, are checked with porcupine against a register whose
//     revision only moves forward, whose revision id names one commit, and
//     which holds only pushed commits (and never the broken one).
//   - History: GET /v1/history on every node lists revisions in order, each
//     the parent of the next, holds every revision a read saw before it,
//     and every node's history is a prefix of another's.
//   - Convergence: after the last heal, within -converge (60 s), every node
//     is ready and at the last good commit, and every assigned instance
//     runs exactly once, on its node, with the committed runner (from the
//     records, not from Blixard's own status).
//   - Recovery: within 60 s of each heal every blixard answers a
//     linearizable read and all name one leader; a graceful restart
//     (restart-new-binary) stops none of the node's runners; no blixard
//     exits on its own.
//
// Not covered: Ceph (no volumes; the "one read-write attachment" invariant
// and the OSD stop/start fault need tests/ceph's cluster), TLS, the
// systemd backend, membership changes.
package fault
