package node

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// DevDataDir is the data directory of `blixard dev` on the flake in dir:
// per project and outside it ($XDG_STATE_HOME/blixard/dev/NAME-HASH), so a
// flake directory never fills with state and two projects never share a
// node.
func DevDataDir(dir string) (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no --data-dir and no home directory: %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(base, "blixard", "dev", filepath.Base(dir)+"-"+hex.EncodeToString(sum[:4])), nil
}

// stableRaftAddr is a single voter's Raft address: chosen once (a free
// loopback port) and remembered in dataDir/raft-addr, because the Raft log
// records it.
func stableRaftAddr(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "raft-addr")
	if b, err := os.ReadFile(p); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("choosing a Raft address: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	if err := os.WriteFile(p, []byte(addr+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("choosing a Raft address: %w", err)
	}
	return addr, nil
}

// HostMemMiB is this machine's memory in MiB (4096 when unknown), the
// default capacity of a dev node.
func HostMemMiB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 4096
	}
	var kb int
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			fmt.Sscanf(rest, "%d", &kb)
		}
	}
	if kb == 0 {
		return 4096
	}
	return kb / 1024
}
