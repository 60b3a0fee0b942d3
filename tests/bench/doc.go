// Package bench holds load measurements on real `blixard serve` processes
// on loopback, with real git and nix: thousands of light VMs started at
// once on three nodes (Raft leader changes, missed heartbeats), and whole
// nodes killed (time until their VMs run elsewhere). They take minutes and
// load the whole machine, so they build only with `-tags load` and run only with BLIXARD_LOAD=1; the
// results and commands are in docs/benchmarks.md.
package bench
