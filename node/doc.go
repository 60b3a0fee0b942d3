// Package node assembles one Blixard node from a [Config] and runs it:
// [Run] starts the Raft replica, registers the node, and runs the API
// server (both with the node's certificate when [Config.TLS] is set:
// mutual TLS on Raft, HTTPS with client certificates or tokens on the API;
// plain and unauthenticated only with [Config.Insecure]), the reconciler (when the node follows a source), the node agent
// (or, without a backend, a control-plane-only heartbeat), the file watcher
// of a working-tree source and sd_notify readiness, and stops them all when
// its context ends.
//
// Its one job is wiring: it adapts gitsync, nixeval and volumes to the
// interfaces the reconciler, the agent and the API declare, and gives every
// resource one owner — [Run] itself closes what it opened (listener,
// backend connection, Ceph client, replica), after every goroutine that
// borrowed it has returned.
//
// It must not hold business logic: no placement, no state transitions, no
// HTTP handling, no parsing of flags or files (cmd/blixard builds the
// Config). A rule that needs a test of its own belongs in the package that
// owns the concept.
package node
