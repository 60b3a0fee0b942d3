// Package fngateway is every node's function gateway: an http.Handler
// that routes a request by host and path to a scale-to-zero function
// (flake: functions.NAME.http = { host; path; port; }) and proxies it to
// one of the function's instances, holding it while none is free.
//
// It must not reach Raft, git, nix or netlink, nor run programs: it reads
// the functions and instances it is given ([Gateway.Update]), asks for
// capacity through the [Scaler] interface it declares, and opens sockets
// to instances.
//
// # A request's way
//
//  1. [Gateway.ServeHTTP] matches the request's host and path against the
//     functions' routes with ingress's routing rule (ingress.Table: host in
//     any case, port stripped, the longest path prefix by whole segments).
//     No match: 404.
//  2. [Pick] chooses a ready instance with fewer than the function's
//     concurrency requests in flight: one on this node first
//     (Options.Node), then any; the least in flight; ties in turn. The
//     request counts in flight there until its answer's body is closed,
//     so a stream holds its share of the instance as long as it runs.
//  3. None free: [Admit] decides. Queued (first come, first served) while
//     the function's queue has room; the [Scaler] is told the [Demand].
//     A queued request leaves the queue when an instance becomes ready
//     (Update) or free (another request ends): the gateway hands it that
//     instance directly. The queue full: 503 with Retry-After. No instance
//     within Options.QueueTimeout: 504 saying what was missing. The
//     function's last start failed (Function.StartFailure) and nothing is
//     ready: 502 at once, and queued requests get 502 when the failure is
//     reported.
//  4. The request is proxied (httputil.ReverseProxy) with the client's
//     host and X-Forwarded-For, -Host and -Proto, bodies streaming both
//     ways. An instance that refuses the connection got nothing: it is not
//     picked for Options.DownFor and the request goes to another one (or
//     waits for one); when every ready instance refused it and none is
//     starting, 502. Any other failure of the instance is a 502 and is not
//     retried.
//
// The client sees statuses and short plain-text bodies; instance names,
// addresses and start failures go to the node's log and [Gateway.Stats].
//
// # Bookkeeping for the scaler
//
// [Gateway.Stats] gives per function: ready and starting instances,
// requests in flight and queued, LastActive (a request arrived or ended),
// counters (requests, cold starts = requests that waited, 503/504/502)
// and the queue waits' p50 and p99. The pure [Desired], [Demand.ScaleOut]
// and [ScaleIn] are the scale decisions the Raft-backed scaler makes from
// them: scale out while in flight + queued exceeds concurrency × (ready +
// starting); scale to minInstances after idleTimeout without requests.
//
// # Use
//
//  1. Construct with [New] (Options.Node, Options.Scaler).
//  2. Serve it (it is an http.Handler) on the node's ingress listener.
//  3. After every change of the functions or their instances, call
//     [Gateway.Update] with all of them ([FromSpec] for the routes and
//     limits; the instance source adds Instances and StartFailure).
package fngateway
