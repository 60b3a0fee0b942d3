package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// demoDir is the demo flake, relative to this package.
const demoDir = "../../examples/demo"

const (
	setupNix     = "run scripts/setup.sh (as root) to install nix"
	setupMicrovm = "run scripts/setup-microvm.sh (as root) to install qemu, socat, busybox-static, cpio and the cloud kernel"
)

// nixConfig is appended to the caller's NIX_CONFIG for every nix run.
const nixConfig = "experimental-features = nix-command flakes\nsandbox = false\nsubstituters ="

// kernelDir is where scripts/setup-microvm.sh unpacks the kernel.
func kernelDir() string {
	if d := os.Getenv("BLIXARD_KERNEL_DIR"); d != "" {
		return d
	}
	return "/var/cache/blixard/kernel"
}

// requireMicrovm fails the test (never skips) when something the demo's
// runners need is missing. The runners run with PATH=/usr/bin:/bin.
func requireMicrovm(t testing.TB) {
	t.Helper()
	for _, p := range []string{"nix", "nix-store"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found on PATH: %s", p, setupNix)
		}
	}
	for _, f := range []string{"/usr/bin/qemu-system-x86_64", "/usr/bin/socat", "/usr/bin/cpio", "/bin/busybox",
		filepath.Join(kernelDir(), "vmlinuz"), filepath.Join(kernelDir(), "modules", "kernel")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s: %v: %s", f, err, setupMicrovm)
		}
	}
}

func nixEnv() []string {
	cfg := nixConfig
	if v := os.Getenv("NIX_CONFIG"); v != "" {
		cfg = v + "\n" + nixConfig
	}
	return append(os.Environ(), "NIX_CONFIG="+cfg)
}

// runner is a built runner derivation.
type runner struct {
	drv, out string
	port     int
	version  string
}

// buildRunner builds the demo's microvm.nix runner for vm name with a free
// port, through a test flake next to copies of the demo's files (a flake
// cannot import files outside itself in pure evaluation).
func buildRunner(t testing.TB, name, version string) runner {
	t.Helper()
	flake := t.TempDir()
	entries, err := os.ReadDir(demoDir)
	if err != nil {
		t.Fatalf("demo flake: %v", err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "flake.nix" || e.Name() == "flake.lock" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(demoDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(flake, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	src := fmt.Sprintf(`{
  outputs = { self }: {
    runner = (import ./microvm.nix).runner {
      name = %q; port = %d; version = %q; kernelDir = %q;
    };
  };
}
`, name, port, version, kernelDir())
	if err := os.WriteFile(filepath.Join(flake, "flake.nix"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nix", "build", "--json", "--no-link", "path:"+flake+"#runner")
	cmd.Env = nixEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix build of the demo runner: %v\n%s\n(if a host tool or the kernel is missing: %s)", err, stderr.String(), setupMicrovm)
	}
	var res []struct {
		DrvPath string            `json:"drvPath"`
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res) != 1 || res[0].Outputs["out"] == "" {
		t.Fatalf("nix build --json printed %q (%v)", stdout.String(), err)
	}
	return runner{drv: res[0].DrvPath, out: res[0].Outputs["out"], port: port, version: version}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// get fetches the guest's page through its forwarded port.
func get(ctx context.Context, port int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(port)+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %s: %q", resp.Status, body.String())
	}
	return body.String(), nil
}

// waitFor polls cond until it returns nil, failing the test after timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// waitHTTP polls the guest until it answers, returning the body.
func waitHTTP(t testing.TB, port int, timeout time.Duration, console string) string {
	t.Helper()
	var body string
	waitFor(t, fmt.Sprintf("the guest to answer HTTP on 127.0.0.1:%d (console: %s)", port, console), timeout, func() error {
		b, err := get(context.Background(), port)
		body = b
		return err
	})
	return body
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
	waitFor(t, fmt.Sprintf("%s %s", vm, p), timeout, func() error {
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
