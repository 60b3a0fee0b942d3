// Package ingress is every node's entry point for traffic from outside the
// cluster: an HTTP reverse proxy that routes by host and path, and TCP
// passthrough, both to the running instances of the VM an ingress entry
// names (flake: ingress.NAME = { host; path; to; port; protocol;
// listenPort; }), wherever they run: a node that runs no instance of the VM
// proxies over the cluster network like any other.
//
// It must not decide placement, run programs, reach Raft or touch the
// host's network configuration: it reads the routing table it is given
// and opens sockets.
//
// # The pieces
//
//   - [Table] is pure data: [NewTable] builds it from the entries and the
//     running instances of every VM, [FromState] from a replicated state
//     (the current revision's spec and [RunningInstances]). [Table.Match]
//     is the one routing rule: the entry of the request's host (any case,
//     port stripped) with the longest path prefix (whole segments).
//   - [Server] holds the current table ([Server.Update] swaps it
//     atomically), balances each request or connection over the route's
//     instances (least in flight, ties in turn; see balance.go for why) with
//     passive health checks, and answers what it cannot route with a
//     plain-text [*Error]: 404 no route, 503 no running instance, 502 no
//     instance answered.
//   - [Server.Serve] serves HTTP on a listener; [Server.ServeTCP] keeps a
//     listener per TCP entry. Both run until their context ends.
//
// # Use
//
//  1. Construct with [New]; it starts nothing.
//  2. Run [Server.Serve] (with the listener of serve --ingress-addr) and
//     [Server.ServeTCP], each on a goroutine the caller owns.
//  3. After each applied Raft entry (or on a resync), call
//     [Server.Update] with [FromState] of the local replica's state. A
//     table that did not change costs a rebuild and nothing else: requests
//     and connections in flight are never dropped by an Update.
//  4. Cancel the context: every listener and connection is closed, and
//     Serve and ServeTCP return.
//
// Requests are forwarded unchanged (path included; no prefix stripping),
// with the client's Host header, and X-Forwarded-For, -Host and -Proto set
// by the proxy (the client's own are dropped: at the edge they cannot be
// trusted). Bodies stream both ways; there is no bound on a request's
// duration, only on connecting to an instance (Options.DialTimeout).
// Upgraded connections (WebSocket) pass through.
//
// Not modelled: TLS termination (pass a TLS listener to Serve), wildcard
// hosts, rewriting paths, active health probes, a cap on connections.
package ingress
