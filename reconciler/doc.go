// Package reconciler turns the tracked commit of the cluster repository into
// a committed plan. Its one job: make the replicated revision and
// assignments match the newest good commit of the tracked ref and the
// registered nodes. It acts only on the Raft leader.
//
// It has two halves:
//
//   - a pure core, [Compute], which takes the desired spec, the registered
//     nodes and the committed assignments and returns a [Plan]: the new
//     assignments plus what was added, removed, changed, moved and what could
//     not be placed, each with a reason. It reads no clock and does no I/O.
//     [PlanCommit] and [PlanSpec] (evaluate → [CheckVolumes] → Compute) are
//     the one evaluation path, shared with `blixard plan`.
//   - a thin shell, [Reconciler]. [Reconciler.Start] is the one loop owner:
//     it runs passes, turns each pass's [Result] and error into a wait
//     (see Result for the contract), and owns the one goroutine that
//     evaluates a newly fetched commit.
//
// One pass (level-triggered: it re-reads everything and never asks what
// event woke it; time is Options.Now, read once):
//
//  1. Read the replicated state linearizably.
//  2. Fetch the tracked ref when the poll interval passed (after a failed
//     fetch: the retry wait, Resync then doubling up to Poll), a trigger asked
//     for it (webhook, `POST /v1/sync`, a node state change), this replica
//     just became leader, or the state's SyncRequests differs from the
//     value read before this term's last fetch (another node was told of a
//     push; a new leader takes the value it reads as seen, since it fetches
//     at once anyway). The fetch comes after the read, so a request applied
//     during it makes the next pass fetch again.
//  3. Liveness: fence and mark down every node whose heartbeat stood still
//     for NodeTimeout (a new leader first gives every node a full timeout);
//     when any was marked, read the state again. Then lift the fences of
//     the nodes that are back ([NodesToUnfence]: not down, and reporting
//     new Ceph clients and none of the fenced ones) through the Unfencer,
//     and record each with UnfenceNode.
//  4. FetchFailed: after a failed fetch, propose SetCondition{FetchFailed}
//     with the last known commit unless that message is already recorded;
//     after a good one, ClearCondition{FetchFailed} when it is set.
//  5. Evaluation: a fetched commit that is not the running revision is
//     evaluated on the loop's goroutine, at most one at a time; a newer
//     fetched commit or the loss of leadership cancels it, and a cancelled
//     evaluation is no verdict. Meanwhile passes go on with the committed
//     desired spec. Whether a failed commit is evaluated again is decided
//     from the replicated EvalFailed condition and the clock alone: never
//     after a permanent failure; after a temporary one, once it has waited
//     as long as it has been failing (from Resync up to Poll; at once for
//     a new leader), so every leader decides the same way. A commit recorded
//     as SignatureRefused is never evaluated.
//  6. Trust (only with a Verifier, that is with trust files): the commit
//     about to be evaluated must verify first, so nix never runs on an
//     untrusted commit. A refusal (unsigned, an unknown key, a bad
//     signature) is proposed as SignatureRefused with the commit, the
//     signer and why; it is final for that commit, for every leader, and
//     the running revision stays. A check that could not run (the commit
//     unreadable) is a transient error. A SignatureRefused of a commit the
//     tracked ref no longer points at is cleared. The verified signer
//     travels with the evaluation into the CommitPlan (Revision.Signer); a
//     re-plan of the running revision keeps its signer.
//  7. Plan: a finished evaluation is planned against the state just read
//     (PlanSpec) and committed as a compare-and-set CommitPlan (recording a
//     force-push as Rewrote), or its failure is proposed as
//     SetCondition{EvalFailed}, retryable when the error's Temporary()
//     says so. Otherwise the running revision is re-planned and committed
//     only when the plan changes assignments (new node, capacity, drain).
//     A stale parent means another plan won; the next pass re-reads.
//     While following is suspended (`blixard suspend`) the target commit is
//     the running one (a rollback's commit after `blixard rollback`), and
//     the newest fetched, unapplied commit is recorded once as pending
//     (RecordPending). Every plan holds back the workloads of instances
//     whose VM has an update block ([HoldBack]): their new versions come
//     only through rollout steps.
//  8. Rollouts: when a rollout may run, re-read the state and propose each
//     VM's next step ([NextRolloutStep], pure: a wave, healthy, unhealthy,
//     succeed, fail or revert), compare-and-set on the rollout's step; a
//     committed step requeues a pass at once, otherwise the pass waits until
//     the wave's wait or deadline ends. A new leader continues from the last
//     committed step.
//  9. Return: a transient error (unknown outcome, failed read or fencing)
//     is retried with backoff; a refusal is terminal and not proposed again
//     unchanged; RequeueAfter names the next poll or retry.
//
// On a follower no pass runs and nothing is fetched. A trigger there (the
// webhook handler and `POST /v1/sync` reach whichever node the sender
// chose) becomes a RequestSync proposal, which the loop makes itself and
// waits for: at most one in flight per node and at most one per Resync, so
// a burst of webhooks makes one; a trigger during a proposal is kept for the
// next. The leader notices the count at its next pass (within Resync).
//
// The reconciler must not touch hosts (agents act on the plan), run
// programs, or know git, nix or Raft beyond the Store, Source, Evaluator,
// Verifier, Fencer and Unfencer interfaces it declares. A pass must not
// sleep, wait for an evaluation or trigger itself. It evaluates only
// commits its Source fetched and records EvalFailed only from its own
// evaluations: a commit a user merely asked about (`blixard plan
// --commit`) is never recorded, so a preview cannot mark a commit as bad
// before it is pushed ([VerifyFirst] keeps previews from evaluating
// untrusted commits).
package reconciler
