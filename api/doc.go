// Package api is a Blixard node's HTTP JSON API: the [Server] every node
// runs, the typed [Client] the CLI uses, and the text renderings of its
// answers the CLI prints ([WriteStatus], [WriteNodes], [WriteHistory],
// [WriteDrift]).
//
// Its one job is to translate HTTP to the node's parts and back: routing
// (405 with Allow for a known path and another method, 404 for anything
// else), strict request decoding (1 MiB, unknown fields refused), JSON
// answers, and errors as `{"error": "…"}` that say what failed and where to
// look. Reads come from the replicated state (linearizable through Raft, or
// the local replica for metrics and logs); writes are proposals. Status is
// built from the replicated state alone — the source's conditions
// (FetchFailed, EvalFailed) and the committed planner outcome — so every
// node answers the same. VM start, stop and restart are SetVMRunState
// proposals; the VMs' agents act on the committed choice.
//
// The server depends only on the small interfaces it declares ([Replica],
// [Reconciler], [ConsoleLogs]) and on a [reconciler.Source] and
// [reconciler.Evaluator] for POST /v1/plan, which it hands to
// [reconciler.PlanCommit], the one evaluation path.
//
// It must not decide placement (it never calls the planner's Compute
// itself), run programs, or reach Dragonboat, git or Ceph: it sees them only
// through those interfaces (gitsync's webhook handler it mounts only
// triggers the reconciler). The node assembly (package node) wires it.
package api
