// Package nixeval evaluates a cluster flake's `blixard` output with the real
// `nix eval --json` and turns it into a validated [spec.Cluster].
//
// Its one job: run nix through nixrun (a timeout kills nix and everything it
// started, and what nix prints is capped), decode and validate the result, and
// return evaluation failures as values ([*Error] with an [ErrorKind]) whose
// message is nix's own, with file and line. It must not know about Raft,
// plans, nodes or git history: callers hand it a flake reference and say
// which results may be cached.
//
// Use:
//
//  1. Build one [Evaluator] with [New] and share it; it starts nothing.
//  2. Get a flake reference from gitsync, the one place that builds them:
//     gitsync.GitFlakeURL for a commit of a repository (bare or not, on any
//     branch), gitsync.PathFlakeURL for a working tree as it is on disk,
//     uncommitted and untracked edits included.
//  3. Call [Evaluator.Eval]. Pass the commit SHA as cacheKey when the
//     reference pins a commit: the same (commit, attribute) is then
//     evaluated once, even by concurrent callers, and its result, failure
//     included, is remembered. Timeouts, cancellations and sources nix could
//     not fetch (a commit not in the mirror yet, an unreachable input) are
//     never remembered: they are no verdict on the commit. Pass "" for a working tree.
//
// Nix runs with `--extra-experimental-features 'nix-command flakes'` and
// `--no-write-lock-file`, and with nixConfig (see run.go) appended to the
// caller's NIX_CONFIG, so that it wins: no import-from-derivation and no
// builds at all, pure evaluation, no builtins.exec, the flake's own
// nixConfig ignored, no substituters.
//
// A flake is code from whoever can push, so an evaluation is confined:
// it builds and runs nothing of the flake's (above), its memory is bounded
// (Options.MaxMemory, a MemoryLimit error), its time too (Options.Timeout),
// and with Options.User it runs as an unprivileged user, so that the
// flake's inputs (path:, git+file:, which nix fetches whatever pure mode
// says) can read only what that user may read. Options.Store says where
// that user's nix writes sources and .drv files: the host's nix-daemon, or
// a chroot store of its own. Error messages are nix's own (the flake's
// files and lines, store paths, and the host paths the flake itself
// named), the schema problems, or blixard's words for a limit: no cgroup
// paths, environment or settings of the host (docs/security.md).
package nixeval
