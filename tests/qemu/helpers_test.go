package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/tests/microvm"
)

// demoDir is the demo flake, relative to this package.
const demoDir = "../../examples/demo"

// runner is a built runner derivation.
type runner struct {
	drv, out string
	port     int
	version  string
}

// buildRunner builds the demo's runner for vm name with a free port.
func buildRunner(t testing.TB, name, version string) runner {
	t.Helper()
	port := microvm.FreePort(t)
	r := microvm.Build(t, microvm.Options{Name: name, Port: port, Version: version})
	return runner{drv: r.Drv, out: r.Out, port: port, version: version}
}

func fileContains(path, s string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), s) {
		return fmt.Errorf("%s has no %q", path, s)
	}
	return nil
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// killQemus kills every qemu recorded under stateDir (the backend's pid
// files and qemu's own qemu.pid) and reaps those that are our children.
func killQemus(stateDir string) {
	var files []string
	for _, pat := range []string{"*/pid", "*/qemu.pid", "qemu.pid"} {
		m, _ := filepath.Glob(filepath.Join(stateDir, pat))
		files = append(files, m...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		fields := strings.Fields(string(b))
		if len(fields) == 0 {
			continue
		}
		pid, err := strconv.Atoi(fields[0])
		if err != nil || pid <= 1 || !alive(pid) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
	}
}

// testState is a nodeagent.StateReader over a state the test changes.
type testState struct {
	mu  sync.Mutex
	st  *replicated.State
	gen uint64
}

func newTestState() *testState {
	return &testState{st: &replicated.State{
		Revision:    &replicated.Revision{ID: 1, Commit: "0123456789abcdef"},
		Desired:     &spec.Cluster{Name: "test", VMs: map[string]spec.VM{}},
		Assignments: map[string]replicated.Assignment{},
	}}
}

func (s *testState) LocalRead() (*replicated.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Clone(), nil
}

func (s *testState) assign(vm string, node uint64, r runner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.st.Desired.VMs[vm] = spec.VM{Runner: spec.Runner{Drv: r.drv, Out: r.out}, VCPU: 1, MemMiB: 128}
	s.st.Assignments[vm] = replicated.Assignment{VM: vm, Node: node, Drv: r.drv, OutPath: r.out,
		VCPU: 1, MemMiB: 128, Generation: s.gen}
}

func (s *testState) unassign(vm string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.st.Desired.VMs, vm)
	delete(s.st.Assignments, vm)
}

// accept is a Proposer that accepts every heartbeat.
type accept struct{}

func (accept) Propose(context.Context, replicated.Command) (replicated.Result, error) {
	return replicated.Result{Code: replicated.ResultOK}, nil
}

const testNode = 1

// agentEnv is a real node agent with a real process backend on a temp
// state directory.
type agentEnv struct {
	dir     string
	state   *testState
	backend *nodeagent.ProcessBackend
	agent   *nodeagent.Agent
}

// startAgent runs an agent until the test ends; at the end it stops its
// VMs (StopOnExit), and any qemu left is killed.
func startAgent(t testing.TB) *agentEnv {
	t.Helper()
	e := &agentEnv{dir: t.TempDir(), state: newTestState()}
	t.Cleanup(func() {
		entries, _ := os.ReadDir(e.dir)
		for _, d := range entries {
			killQemus(filepath.Join(e.dir, d.Name()))
		}
		killQemus(e.dir)
	})
	e.backend = nodeagent.NewProcessBackend(nodeagent.ProcessOptions{
		StateDir: e.dir, ShutdownTimeout: 30 * time.Second, TermTimeout: 5 * time.Second,
	})
	e.agent = nodeagent.New(nodeagent.Options{
		NodeID: testNode, StateDir: e.dir, State: e.state, Proposer: accept{}, Backend: e.backend,
		Interval: 200 * time.Millisecond, Heartbeat: time.Second, StopOnExit: true, StopTimeout: 40 * time.Second,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.agent.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("agent did not stop within 60s")
		}
	})
	return e
}

func (e *agentEnv) status(vm string) (replicated.VMStatus, bool) {
	for _, s := range e.agent.Statuses() {
		if s.VM == vm {
			return s, true
		}
	}
	return replicated.VMStatus{}, false
}

func (e *agentEnv) waitPhase(t testing.TB, vm string, p replicated.Phase, timeout time.Duration) {
	t.Helper()
	testkit.WaitFor(t, timeout, fmt.Sprintf("%s %s", vm, p), func() error {
		s, ok := e.status(vm)
		if !ok {
			return errors.New("no status")
		}
		if s.Phase != p {
			return fmt.Errorf("phase %s (%s)", s.Phase, s.Message)
		}
		return nil
	})
}
