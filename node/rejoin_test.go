package node

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

func TestShouldReconnect(t *testing.T) {
	now := time.Unix(1000, 0)
	fenced := &replicated.Node{ID: 1, State: replicated.NodeReady, Fenced: []string{"10.0.0.1:0/1"}}
	down := &replicated.Node{ID: 1, State: replicated.NodeDown, Fenced: []string{"10.0.0.1:0/1"}}
	clean := &replicated.Node{ID: 1, State: replicated.NodeReady}
	tests := []struct {
		name    string
		n       *replicated.Node
		wasDown bool
		lastTry time.Time
		want    bool
	}{
		{"a node readied after a fence reconnects at once", fenced, true, now.Add(-time.Millisecond), true},
		{"a fenced node seen for the first time reconnects", fenced, false, time.Time{}, true},
		{"a fenced node tries again after the interval", fenced, false, now.Add(-2 * time.Second), true},
		{"but not before", fenced, false, now.Add(-500 * time.Millisecond), false},
		{"a node still down keeps its client (it waits for node ready)", down, true, time.Time{}, false},
		{"a node without a fence has nothing to replace", clean, true, time.Time{}, false},
		{"an unregistered node has nothing to replace", nil, false, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := shouldReconnect(tt.n, tt.wasDown, tt.lastTry, now, time.Second); got != tt.want {
				t.Errorf("shouldReconnect = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestLostRaftDataKillsTheNodesVMs: a node whose Raft directory was wiped
// (its member record survives) refuses to start with ErrDataLost and kills
// the runners that outlived its last agent, which the cluster will run
// elsewhere.
func TestLostRaftDataKillsTheNodesVMs(t *testing.T) {
	dataDir, stateDir := t.TempDir(), t.TempDir()
	ready := make(chan struct{}, 2)
	run := func(ctx context.Context) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return Run(ctx, Config{NodeID: 1, DataDir: dataDir, StateDir: stateDir, Backend: BackendProcess, APIListener: ln,
			Heartbeat: 100 * time.Millisecond, Insecure: true, QuietRaftLog: true,
			Capacity: replicated.Resources{VCPU: 2, MemMiB: 512},
			OnReady:  func(net.Addr) { ready <- struct{}{} }})
	}

	// A first life: the node joins (writing its member record) and stops.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("first run returned before the node was ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the node did not get ready within 60s")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("first run: %v", err)
	}

	// A runner that outlives the agent, as after a crash.
	pid := startDetachedRunner(t, stateDir, "web-0")

	// The Raft data is lost.
	if err := os.RemoveAll(filepath.Join(dataDir, "raft")); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background())
	if !errors.Is(err, ErrDataLost) {
		t.Fatalf("Run with a wiped raft directory = %v, want ErrDataLost", err)
	}
	if !strings.Contains(err.Error(), "node remove") {
		t.Errorf("the error does not name the replacement procedure: %v", err)
	}
	testkit.WaitFor(t, 10*time.Second, "the orphaned runner killed", func() error {
		if syscall.Kill(pid, 0) == nil && !isZombie(pid) {
			return errors.New("runner " + strconv.Itoa(pid) + " still runs")
		}
		return nil
	})
}

// startDetachedRunner starts VM name on a process backend of its own that
// then stops, leaving the runner running; it returns the runner's PID.
func startDetachedRunner(t *testing.T, stateDir, name string) int {
	t.Helper()
	out := filepath.Join(t.TempDir(), "runner")
	if err := os.MkdirAll(filepath.Join(out, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "bin", "microvm-run"), []byte("#!/bin/sh\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(stateDir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out, filepath.Join(stateDir, name, "current")); err != nil {
		t.Fatal(err)
	}
	b := nodeagent.NewProcessBackend(nodeagent.ProcessOptions{StateDir: stateDir})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- b.Run(ctx) }()
	if err := b.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	st, err := b.Status(name)
	if err != nil || !st.Active {
		t.Fatalf("runner not active: %+v, %v", st, err)
	}
	cancel()
	<-ran
	t.Cleanup(func() { syscall.Kill(st.PID, syscall.SIGKILL) })
	return st.PID
}

// isZombie: pid exited and waits for its parent to reap it.
func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}
