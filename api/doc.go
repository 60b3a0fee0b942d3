// Package api is a Blixard node's HTTP JSON API: the [Server] every node
// runs, the typed [Client] the CLI uses, and the text renderings of its
// answers the CLI prints ([WriteStatus], [WriteNodes], [WriteHistory],
// [WriteDrift]).
//
// Its one job is to translate HTTP to the node's parts and back: routing
// (405 with Allow for a known path and another method, 404 for anything
// else), authentication and roles (HTTPS with a client certificate from
// the cluster CA or a bearer token; read, operate, admin: see auth.go; 401
// and 403 hang up without reading the body), strict request decoding
// (1 MiB, unknown fields and trailing data refused, path and query
// parameters validated), JSON answers, and errors as `{"error": "…"}` that
// say what failed and where to look — never the text of an internal error,
// which can name files and addresses: that goes to the node's log under a
// reference the answer gives. Its edges are bounded: header, read, write
// and idle timeouts, a connection cap below the file descriptor limit, and
// a cap on followed logs. Reads come from the replicated state and
// answer at once: linearizable through Raft when a leader confirms within
// a heartbeat period, else from the node's local replica, marked stale
// ([Freshness]: JSON fields and headers); /healthz says 503 without a
// leader or progress; metrics, logs and authentication read the local
// replica. Writes are proposals that name the caller ([replicated.Command]
// Actor), so the event log says who asked for each change. Status is
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
