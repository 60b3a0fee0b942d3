package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

const setupHint = "run scripts/setup.sh (as root) to install nix"

func requireNix(t testing.TB) {
	t.Helper()
	for _, p := range []string{"nix", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found on PATH: %s", p, setupHint)
		}
	}
}

var nonce atomic.Int64

// runnerSpec describes a test runner derivation (builder /bin/sh; nix
// builds have no PATH, so everything uses absolute paths).
type runnerSpec struct {
	marker   string // echoed to the console when the runner starts
	shutdown bool   // add bin/microvm-shutdown: touches shutdown-ran, then kills the runner
	fail     string // the build fails, printing this
	waitFor  string // the build waits until this file exists
	crash    bool   // the runner exits with code 3 at once
}

type runner struct{ drv, out string }

// makeRunner instantiates (does not build) a runner derivation.
func makeRunner(t testing.TB, rs runnerSpec) runner {
	t.Helper()
	run := fmt.Sprintf("#!/bin/sh\necho %s\nexec /bin/sleep 1000\n", rs.marker)
	if rs.crash {
		run = "#!/bin/sh\necho crashing\nexit 3\n"
	}
	shutdown := "#!/bin/sh\n/bin/touch shutdown-ran\nread p s < pid\nkill $p\n"
	script := `/bin/mkdir -p $out/bin; printf '%s' "$run" > $out/bin/microvm-run; /bin/chmod +x $out/bin/microvm-run`
	if rs.shutdown {
		script += `; printf '%s' "$shutdown" > $out/bin/microvm-shutdown; /bin/chmod +x $out/bin/microvm-shutdown`
	}
	if rs.waitFor != "" {
		script = `while [ ! -e "$waitFor" ]; do /bin/sleep 0.05; done; ` + script
	}
	if rs.fail != "" {
		script = `echo "$fail" >&2; exit 1`
	}
	expr := fmt.Sprintf(`builtins.derivation {
  name = "runner"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" %q ];
  run = %q; shutdown = %q; fail = %q; waitFor = %q; nonce = "%s-%d-%d";
}`, script, run, shutdown, rs.fail, rs.waitFor, t.Name(), time.Now().UnixNano(), nonce.Add(1))
	ctx := context.Background()
	drv, err := runNix(ctx, "nix-instantiate", "-E", expr)
	if err != nil {
		t.Fatalf("nix-instantiate: %v (%s)", err, setupHint)
	}
	d := strings.TrimSpace(string(drv))
	out, err := runNix(ctx, "nix-store", "--query", "--outputs", d)
	if err != nil {
		t.Fatalf("nix-store --query: %v", err)
	}
	return runner{drv: d, out: strings.TrimSpace(string(out))}
}

// build realises r in the test (for tests about something else than realising).
func (r runner) build(t testing.TB) runner {
	t.Helper()
	if _, err := runNix(context.Background(), "nix-store", "--realise", r.drv); err != nil {
		t.Fatalf("nix-store --realise %s: %v", r.drv, err)
	}
	return r
}

// testState is a StateReader over a state the test changes.
type testState struct {
	mu  sync.Mutex
	st  *replicated.State
	gen uint64
}

func newTestState() *testState {
	return &testState{st: &replicated.State{
		Revision:    &replicated.Revision{ID: 1, Commit: "0123456789abcdef"},
		Desired:     &spec.Cluster{VMs: map[string]spec.VM{}},
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
	s.st.Desired.VMs[vm] = spec.VM{Runner: spec.Runner{Drv: r.drv, Out: r.out}}
	s.st.Assignments[vm] = replicated.Assignment{VM: vm, Node: node, Drv: r.drv, OutPath: r.out, Generation: s.gen}
}

func (s *testState) unassign(vm string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.st.Desired.VMs, vm)
	delete(s.st.Assignments, vm)
}

// recorder is a Proposer that records heartbeats.
type recorder struct {
	mu    sync.Mutex
	beats []replicated.NodeHeartbeat
}

func (r *recorder) Propose(_ context.Context, cmd replicated.Command) (replicated.Result, error) {
	if cmd.Type != replicated.CmdNodeHeartbeat || cmd.NodeHeartbeat == nil || cmd.At.IsZero() {
		return replicated.Result{Code: replicated.ResultInvalid, Message: "unexpected command"}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.beats = append(r.beats, *cmd.NodeHeartbeat)
	return replicated.Result{Code: replicated.ResultOK}, nil
}

// last returns the statuses of the last heartbeat by VM.
func (r *recorder) last() map[string]replicated.VMStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]replicated.VMStatus{}
	if len(r.beats) > 0 {
		for _, s := range r.beats[len(r.beats)-1].Statuses {
			m[s.VM] = s
		}
	}
	return m
}

// ever reports whether some heartbeat had vm in phase p.
func (r *recorder) ever(vm string, p replicated.Phase) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.beats {
		for _, s := range b.Statuses {
			if s.VM == vm && s.Phase == p {
				return true
			}
		}
	}
	return false
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// env is one agent on one state directory, with cleanup of every runner.
type env struct {
	t     testing.TB
	dir   string
	state *testState
	rec   *recorder
}

const testNode = 7

func newEnv(t testing.TB) *env {
	requireNix(t)
	e := &env{t: t, dir: t.TempDir(), state: newTestState(), rec: &recorder{}}
	t.Cleanup(func() { killRunners(t, e.dir) })
	return e
}

// killRunners kills every runner recorded under dir and reaps the ones
// that are children of the test process.
func killRunners(t testing.TB, dir string) {
	pids, _ := filepath.Glob(filepath.Join(dir, "*", "pid"))
	for _, p := range pids {
		id, err := readPidFile(p)
		if err != nil || !id.alive() {
			continue
		}
		_ = syscall.Kill(-id.PID, syscall.SIGKILL)
		_ = syscall.Kill(id.PID, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(id.PID, &ws, 0, nil)
	}
}

type runningAgent struct {
	agent  *Agent
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func (e *env) start(mod func(*Options)) *runningAgent {
	o := Options{
		NodeID:    testNode,
		StateDir:  e.dir,
		State:     e.state,
		Proposer:  e.rec,
		Interval:  200 * time.Millisecond,
		Heartbeat: 500 * time.Millisecond,
		Backend: NewProcessBackend(ProcessOptions{
			StateDir: e.dir, TermTimeout: 5 * time.Second, ShutdownTimeout: 5 * time.Second,
			RestartBackoff: 50 * time.Millisecond,
		}),
	}
	if mod != nil {
		mod(&o)
	}
	a := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Start(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

func (r *runningAgent) stop(t testing.TB) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("agent did not stop within 60s")
		}
	})
}

// waitPhase waits until the last heartbeat reports vm in phase p (and the
// extra condition, when given).
func (e *env) waitPhase(vm string, p replicated.Phase, extra func(replicated.VMStatus) bool) replicated.VMStatus {
	e.t.Helper()
	var got replicated.VMStatus
	waitFor(e.t, fmt.Sprintf("%s %s", vm, p), func() (bool, string) {
		s, ok := e.rec.last()[vm]
		got = s
		return ok && s.Phase == p && (extra == nil || extra(s)), fmt.Sprintf("last status %+v", s)
	})
	return got
}

// pid returns the live runner identity recorded for vm.
func (e *env) pid(vm string) procIdentity {
	e.t.Helper()
	id, err := readPidFile(filepath.Join(e.dir, vm, "pid"))
	if err != nil {
		e.t.Fatalf("pid of %s: %v", vm, err)
	}
	if !id.alive() {
		e.t.Fatalf("runner of %s (pid %d) is not alive", vm, id.PID)
	}
	return id
}

func (e *env) link(vm, name string) string {
	e.t.Helper()
	l, err := readLink(filepath.Join(e.dir, vm, name))
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func (e *env) waitGone(id procIdentity) {
	e.t.Helper()
	waitFor(e.t, fmt.Sprintf("process %d gone", id.PID), func() (bool, string) {
		return !id.alive(), "still alive"
	})
}

func fileContains(path, s string) (bool, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, path + " does not exist"
		}
		return false, err.Error()
	}
	return strings.Contains(string(b), s), fmt.Sprintf("%s: %q", path, b)
}
