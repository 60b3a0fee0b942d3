// Package reconciler turns the tracked commit of the cluster repository into
// a committed plan. It runs only on the Raft leader.
//
// It has two halves:
//
//   - a pure core, [Compute], which takes the desired spec, the registered
//     nodes and the committed assignments and returns a [Plan]: the new
//     assignments plus what was added, removed, changed, moved and what could
//     not be placed, each with a reason. It reads no clock and does no I/O.
//   - a thin shell, [Reconciler], which on every pass (level-triggered: a new
//     commit, a new node, a changed capacity, or just the next tick) fetches
//     the ref, evaluates a new commit, computes the plan and proposes it as a
//     compare-and-set CommitPlan. A failed evaluation commits nothing; it is
//     recorded as the cluster's last error and the running revision stays.
//
// The reconciler must not touch hosts: agents act on the plan.
package reconciler
