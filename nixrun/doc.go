// Package nixrun runs nix programs (nix, nix-store, nix-instantiate) for the
// rest of blixard, so that every nix run is bounded the same way.
//
// Its one job: start a nix program and return its stdout, or a failure as a
// value ([*Error] with a [Kind]). A timeout, the caller's cancellation or
// too much stdout kill everything the run started, not only nix: builders
// that nix starts for import-from-derivation or `nix build` run in their own
// session, so neither they nor what they start are in nix's process group.
// Each run therefore gets a cgroup of its own when one can be made (cgroup
// v2 under this process's cgroup, else a v1 freezer cgroup), and the whole
// cgroup is killed; nix's process group is killed too. Without a cgroup only
// the process group is killed, and the error says so: its message always
// says what was killed. The cgroup is removed before [Runner.Run] returns,
// after anything the run left behind, even after success, was killed.
//
// Stdout is capped; of stderr the end is kept, where nix prints its error,
// cleaned of colours, warnings and the --show-trace hint. The caller's
// NIX_CONFIG entries are merged into one and the command's own settings are
// appended (so a caller can turn substituters off for evaluation and leave
// them on for builds).
//
// Two more bounds are the caller's choice. [Command.MaxMemory] limits the
// address space of nix and of each process it starts (RLIMIT_AS, set by a
// /bin/sh that then execs nix: Go cannot set a limit between fork and exec,
// and limits are per process, so setting it here would limit the daemon);
// nix running out of memory under it is a MemoryLimit error. A cgroup
// memory limit would bound the whole run, but a run's cgroup is a child of
// this process's own, which holds this process, so cgroup v2's "no
// internal processes" rule keeps the memory controller away from it.
// [Runner.User] runs the programs as another user (needs root, or
// CAP_SETUID and CAP_SETGID), with a reduced environment, so that what they
// read is what that user may read.
//
// It must not know about Raft, git, the cluster spec or placement: it imports
// nothing of this module. Callers word the errors for their users.
//
// On hosts with cgroup v2, give blixard's systemd unit Delegate=yes so that
// the per-run cgroups under its own cgroup are its to manage. Builds that a
// nix daemon runs belong to the daemon, which stops them when its client
// (the killed nix) disconnects.
package nixrun
