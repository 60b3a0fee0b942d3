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

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
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
	// ignoreTerm: the runner ignores SIGTERM (a guest that takes its time):
	// only SIGKILL ends it before its hour is up.
	ignoreTerm bool
}

type runner struct{ drv, out string }

// makeRunner instantiates (does not build) a runner derivation.
func makeRunner(t testing.TB, rs runnerSpec) runner {
	t.Helper()
	run := fmt.Sprintf("#!/bin/sh\necho %s\nexec /bin/sleep 1000\n", rs.marker)
	if rs.crash {
		run = "#!/bin/sh\necho crashing\nexit 3\n"
	}
	if rs.ignoreTerm {
		run = fmt.Sprintf("#!/bin/sh\necho %s\ntrap '' TERM\nexec /bin/sleep 3600\n", rs.marker)
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

// testState is the replicated state the agent reads and proposes to (a
// testkit.Store), with test node registered and a plan applied; the test
// changes its assignments as committed plans would.
type testState struct {
	*testkit.Store
	gen uint64 // guarded by the store's lock (changed in Update only)
}

func newTestState(t testing.TB) *testState {
	t.Helper()
	st := replicated.NewState()
	if res := st.Apply(1, testkit.Register(testNode)); !res.OK() {
		t.Fatalf("register node %d: %s", testNode, res.Message)
	}
	st.Revision = &replicated.Revision{ID: 1, Commit: "0123456789abcdef"}
	return &testState{Store: testkit.NewStore(st)}
}

// assign assigns vm to node, running r.
func (s *testState) assign(vm string, node uint64, r runner) {
	s.put(replicated.Assignment{VM: vm, Declared: vm, Node: node, Drv: r.drv, OutPath: r.out})
}

// put sets an assignment, with a new generation.
func (s *testState) put(as replicated.Assignment) {
	s.Update(func(st *replicated.State) {
		s.gen++
		as.Generation = s.gen
		if st.Assignments == nil {
			st.Assignments = map[string]replicated.Assignment{}
		}
		st.Assignments[as.VM] = as
	})
}

func (s *testState) unassign(vm string) {
	s.Update(func(st *replicated.State) { delete(st.Assignments, vm) })
}

// heartbeats returns the statuses of the heartbeats proposed after the
// first skip ones, oldest first.
func (s *testState) heartbeats(skip int) [][]replicated.VMStatus {
	cmds := s.ProposedOf(replicated.CmdNodeHeartbeat)
	var out [][]replicated.VMStatus
	for i, c := range cmds {
		if i >= skip && c.NodeHeartbeat != nil {
			out = append(out, c.NodeHeartbeat.Statuses)
		}
	}
	return out
}

// env is one agent on one state directory, with cleanup of every runner.
type env struct {
	t     testing.TB
	dir   string
	state *testState
	// since: heartbeats before it were sent by earlier agents (see newAgent).
	since int
}

const testNode = 7

func newEnv(t testing.TB) *env {
	requireNix(t)
	e := &env{t: t, dir: t.TempDir(), state: newTestState(t)}
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
		Proposer:  e.state,
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

// newAgent makes the heartbeats checked from now on those of the next agent.
func (e *env) newAgent() {
	e.since = len(e.state.ProposedOf(replicated.CmdNodeHeartbeat))
}

// last returns the statuses of the last heartbeat by VM.
func (e *env) last() map[string]replicated.VMStatus {
	m := map[string]replicated.VMStatus{}
	if hb := e.state.heartbeats(e.since); len(hb) > 0 {
		for _, s := range hb[len(hb)-1] {
			m[s.VM] = s
		}
	}
	return m
}

// ever reports whether some heartbeat had vm in phase p.
func (e *env) ever(vm string, p replicated.Phase) bool {
	for _, hb := range e.state.heartbeats(e.since) {
		for _, s := range hb {
			if s.VM == vm && s.Phase == p {
				return true
			}
		}
	}
	return false
}

// waitPhase waits until the last heartbeat reports vm in phase p (and the
// extra condition, when given).
func (e *env) waitPhase(vm string, p replicated.Phase, extra func(replicated.VMStatus) bool) replicated.VMStatus {
	e.t.Helper()
	var got replicated.VMStatus
	testkit.WaitFor(e.t, waitTimeout, fmt.Sprintf("%s %s", vm, p), func() error {
		s, ok := e.last()[vm]
		got = s
		if ok && s.Phase == p && (extra == nil || extra(s)) {
			return nil
		}
		return fmt.Errorf("last status %+v", s)
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
	testkit.WaitFor(e.t, waitTimeout, fmt.Sprintf("process %d gone", id.PID), func() error {
		if id.alive() {
			return errors.New("still alive")
		}
		return nil
	})
}

// waitTimeout bounds the waits of these tests (builds, starts, stops).
const waitTimeout = 30 * time.Second

// fileContains is a WaitFor condition: the file at path contains s.
func fileContains(path, s string) func() error {
	return func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), s) {
			return fmt.Errorf("%s: %q", path, b)
		}
		return nil
	}
}
