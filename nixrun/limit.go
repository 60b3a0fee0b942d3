package nixrun

import (
	"strconv"
	"strings"
	"syscall"
)

// limitShell is the program that applies Command.MaxMemory: Go's os/exec
// cannot set a resource limit between fork and exec, and setting it in
// this process would limit the whole daemon (limits are per process), so a
// POSIX shell, present on every Linux host including NixOS, sets the
// limit on itself and then becomes the nix program (exec: same pid, same
// process group, same cgroup).
const limitShell = "/bin/sh"

// limitScript runs as `sh -c limitScript nixrun-limit KIB PROGRAM ARGS…`.
// `ulimit -v` sets RLIMIT_AS, soft and hard, so nix cannot raise it again;
// it is inherited by everything nix starts (git for fetching).
const limitScript = `ulimit -v "$1" || exit 126; shift; exec "$@"`

// withMemoryLimit returns the program and arguments that run bin with args
// under an address-space limit of limit bytes (never above this process's
// own hard limit, which the shell could not raise).
func withMemoryLimit(bin string, args []string, limit int64) (string, []string) {
	kib := uint64(limit) / 1024
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_AS, &lim); err == nil && lim.Max != ^uint64(0) && lim.Max/1024 < kib {
		kib = lim.Max / 1024
	}
	kib = max(kib, 1)
	return limitShell, append([]string{"-c", limitScript, "nixrun-limit", strconv.FormatUint(kib, 10), bin}, args...)
}

// outOfMemory reports whether nix's stderr says it ran out of memory: its
// Boehm GC could not grow the heap, or an allocation failed (nix prints
// "error: out of memory" for std::bad_alloc). Under an address-space limit
// that is the limit, not the host: Linux overcommits, so without a limit an
// allocation is rarely refused — the OOM killer acts instead.
//
// A flake can throw "out of memory" itself; it then only mislabels its own
// failure, which is permanent either way.
func outOfMemory(stderr string) bool {
	if strings.Contains(stderr, "GC Warning: Out of Memory!") {
		return true
	}
	lines := strings.Split(strings.TrimSpace(cleanMessage(stderr)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	return last == "error: out of memory" || last == "error: std::bad_alloc"
}
