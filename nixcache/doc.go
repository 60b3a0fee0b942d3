// Package nixcache shares runner closures between a cluster's nodes, so a
// runner is built once and copied everywhere else: every node serves the
// closures of the runners assigned in the cluster from its own nix store
// over nix's binary-cache HTTP protocol, and the agents of the other nodes
// substitute from it (nix's extra-substituters) before they build.
//
// Its one job is that protocol, both ends of it:
//
//   - [Cache], an http.Handler: `nix-cache-info` (StoreDir, WantMassQuery,
//     Priority), `HASH.narinfo` (StorePath, URL, Compression none, NarHash,
//     NarSize, References, Deriver, Sig, CA) and `nar/HASH.nar`, for the
//     closures of an allow-list of roots only (the node gives it the
//     runners assigned in the replicated state). Path infos come from the
//     store (`nix path-info --json --recursive` through nixrun) and are
//     cached with their rendered narinfo: a valid path never changes. NARs
//     are serialised in Go from the files on disk ([WriteNAR]) and streamed;
//     the client checks them against the NarHash nix recorded, so a file
//     damaged on disk is refused too. [Serve] runs it on its own listener.
//   - signing: each node has its own ed25519 key in nix's format
//     ([LoadOrCreateKey]; "blixard-node-ID" unless the operator put another
//     key there) and signs the fingerprint "1;PATH;NARHASH;NARSIZE;REFS" of
//     every narinfo itself ([SecretKey.Sign]) — in Go, without a nix run per
//     path; nix verifies it against the public keys the nodes registered in
//     the replicated state. Why a key per node and not one cluster key: a
//     node never needs another's secret, and a node that leaves takes only
//     its own key with it.
//   - [Probe], the client side of a small extension: the 404 of a root the
//     node is building (or, on a builder, means to build) carries
//     [BuildingHeader], so an agent waits for that build instead of
//     starting the same one.
//
// It must not decide what is assigned where, know Raft or the replicated
// state (the node passes roots and what it produces), run programs except
// through nixrun, or write to the nix store: it only reads it.
package nixcache
