package nodeagent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

func TestNixProcessConvergesFromLocalDrv(t *testing.T) {
	e := newEnv(t)
	// Builds may run as a nixbld user: t.TempDir's parent is private.
	rdir, err := os.MkdirTemp("", "nodeagent-release-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rdir) })
	if err := os.Chmod(rdir, 0o755); err != nil {
		t.Fatal(err)
	}
	release := filepath.Join(rdir, "release")
	r := makeRunner(t, runnerSpec{marker: "hello-from-a", waitFor: release})
	e.state.assign("a", testNode, r)
	e.state.assign("elsewhere", testNode+1, r) // another node's VM: ignored
	e.start(nil)

	// The build blocks until the test has seen the building phase.
	e.waitPhase("a", replicated.PhaseBuilding, nil)
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := e.waitPhase("a", replicated.PhaseRunning, nil)
	if s.BootedOut != r.out || s.Node != testNode || s.Generation == 0 || s.ObservedAt.IsZero() {
		t.Errorf("status = %+v, want booted %s on node %d with a generation", s, r.out, testNode)
	}
	if _, ok := e.last()["elsewhere"]; ok {
		t.Errorf("a VM of another node is reported")
	}
	for _, l := range []string{"current", "booted", "gcroot"} {
		if got := e.link("a", l); got != r.out {
			t.Errorf("%s → %q, want %s", l, got, r.out)
		}
	}
	e.pid("a")
	testkit.WaitFor(t, waitTimeout, "console marker", fileContains(LogPath(e.dir, "a"), "hello-from-a"))
}

func TestNixProcessChangedRunnerRestartsOnlyThatVM(t *testing.T) {
	e := newEnv(t)
	r1 := makeRunner(t, runnerSpec{marker: "v1"}).build(t)
	r2 := makeRunner(t, runnerSpec{marker: "v2"}).build(t)
	e.state.assign("a", testNode, r1)
	e.state.assign("b", testNode, r1)
	e.start(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	pa, pb := e.pid("a"), e.pid("b")

	e.state.assign("a", testNode, r2)
	e.waitPhase("a", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == r2.out })
	if got := e.pid("a"); got == pa {
		t.Errorf("a kept pid %d after its runner changed", pa.PID)
	}
	e.waitGone(pa)
	if got := e.pid("b"); got != pb {
		t.Errorf("b restarted (pid %d → %d) although only a changed", pb.PID, got.PID)
	}
	if got := e.link("a", "booted"); got != r2.out {
		t.Errorf("a booted → %s, want %s", got, r2.out)
	}
	testkit.WaitFor(t, waitTimeout, "v2 marker", fileContains(LogPath(e.dir, "a"), "v2"))
}

func TestNixProcessUnassignedVMIsStopped(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	e.state.assign("b", testNode, r)
	e.start(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	pa, pb := e.pid("a"), e.pid("b")

	e.state.unassign("a")
	e.waitGone(pa)
	testkit.WaitFor(t, waitTimeout, "a reported stopped, then forgotten", testkit.Until(func() bool {
		_, still := e.last()["a"]
		return e.ever("a", replicated.PhaseStopped) && !still
	}))
	if _, err := os.Stat(filepath.Join(e.dir, "a", "current")); err != nil {
		t.Errorf("state directory of a not kept: %v", err)
	}
	if e.link("a", "booted") != "" {
		t.Errorf("booted of a stopped VM still exists")
	}
	if got := e.pid("b"); got != pb {
		t.Errorf("b restarted")
	}
}

func TestNixProcessKilledRunnerIsRestarted(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	e.start(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	old := e.pid("a")

	h, err := openProc(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.signal(9, false); err != nil {
		t.Fatal(err)
	}
	h.close()
	e.waitGone(old)
	testkit.WaitFor(t, waitTimeout, "a restarted with a new pid", testkit.Until(func() bool {
		id, err := readPidFile(filepath.Join(e.dir, "a", "pid"))
		return err == nil && id != old && id.alive()
	}))
	e.waitPhase("a", replicated.PhaseRunning, nil)
}

func TestNixProcessRestartedAgentAdoptsRunners(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "once"}).build(t)
	e.state.assign("a", testNode, r)
	e.state.assign("b", testNode, r)
	first := e.start(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	pa, pb := e.pid("a"), e.pid("b")
	first.stop(t)
	if !pa.alive() || !pb.alive() {
		t.Fatalf("runners did not survive their agent")
	}

	e.newAgent()
	e.start(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	if e.pid("a") != pa || e.pid("b") != pb {
		t.Errorf("runners restarted by the new agent")
	}
	if e.ever("a", replicated.PhaseStarting) {
		t.Errorf("the new agent reported a starting although a was running")
	}
	// Running is reported once the runner was exec'd, which may be before
	// its shell printed anything (a loaded machine).
	testkit.WaitFor(t, waitTimeout, "a's first start on its console", fileContains(LogPath(e.dir, "a"), "once"))
	b, _ := os.ReadFile(LogPath(e.dir, "a"))
	if n := strings.Count(string(b), "once"); n != 1 {
		t.Errorf("a's console shows %d starts, want 1", n)
	}
}

func TestNixProcessFailingBuildKeepsOldVersion(t *testing.T) {
	e := newEnv(t)
	good := makeRunner(t, runnerSpec{marker: "good"}).build(t)
	e.state.assign("a", testNode, good)
	e.state.assign("b", testNode, good)
	e.start(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	pa, pb := e.pid("a"), e.pid("b")

	bad := makeRunner(t, runnerSpec{fail: "boom-intentional-build-failure"})
	e.state.assign("a", testNode, bad)
	e.state.assign("c", testNode, makeRunner(t, runnerSpec{fail: "boom-for-c"}))
	s := e.waitPhase("a", replicated.PhaseFailed, nil)
	if !strings.Contains(s.Message, "boom-intentional-build-failure") {
		t.Errorf("a's message lacks the build error: %q", s.Message)
	}
	if s.BootedOut != good.out {
		t.Errorf("a booted %q, want the old runner %s", s.BootedOut, good.out)
	}
	c := e.waitPhase("c", replicated.PhaseFailed, nil)
	if !strings.Contains(c.Message, "boom-for-c") {
		t.Errorf("c's message lacks the build error: %q", c.Message)
	}
	if e.pid("a") != pa || e.pid("b") != pb {
		t.Errorf("a failing build restarted a running VM")
	}
	if got := e.link("a", "current"); got != good.out {
		t.Errorf("a's current switched to %s by a failed build", got)
	}
	if st := e.last()["b"]; st.Phase != replicated.PhaseRunning {
		t.Errorf("b = %+v, want running", st)
	}
}

func TestNixProcessStopOnExit(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	e.state.assign("b", testNode, r)
	baseline := runtime.NumGoroutine()
	ra := e.start(func(o *Options) { o.StopOnExit = true })
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	pa, pb := e.pid("a"), e.pid("b")
	ra.stop(t)
	if pa.alive() || pb.alive() {
		t.Errorf("runners still alive after Start returned with StopOnExit")
	}
	for _, vm := range []string{"a", "b"} {
		if _, err := os.Stat(filepath.Join(e.dir, vm, "current")); err != nil {
			t.Errorf("state of %s not kept: %v", vm, err)
		}
	}
	testkit.WaitFor(t, waitTimeout, "the agent's goroutines to end", func() error {
		if n := runtime.NumGoroutine(); n > baseline {
			return fmt.Errorf("%d goroutines, %d before the agent", n, baseline)
		}
		return nil
	})
	last := e.last()
	if last["a"].Phase != replicated.PhaseStopped || last["b"].Phase != replicated.PhaseStopped {
		t.Errorf("last heartbeat = %+v, want both stopped", last)
	}
}

func TestNixProcessShutdownScriptRunsOnStop(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m", shutdown: true}).build(t)
	e.state.assign("a", testNode, r)
	e.start(func(o *Options) {
		// A SIGTERM would come only after an hour: the runner must exit through microvm-shutdown.
		o.Backend = NewProcessBackend(ProcessOptions{StateDir: e.dir, ShutdownTimeout: time.Hour, TermTimeout: time.Hour})
	})
	e.waitPhase("a", replicated.PhaseRunning, nil)
	pa := e.pid("a")
	e.state.unassign("a")
	e.waitGone(pa)
	if _, err := os.Stat(filepath.Join(e.dir, "a", "shutdown-ran")); err != nil {
		t.Errorf("microvm-shutdown did not run: %v", err)
	}
}

func TestNixFlakeBuilderBuildsMissingRunner(t *testing.T) {
	e := newEnv(t)
	flake := t.TempDir()
	src := `{
  outputs = { self }: {
    blixard.vms.web.runner = builtins.derivation {
      name = "web-runner"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin; printf '#!/bin/sh\\necho from-flake\\nexec /bin/sleep 1000\\n' > $out/bin/microvm-run; /bin/chmod +x $out/bin/microvm-run" ];
      nonce = "NONCE";
    };
  };
}`
	src = strings.Replace(src, "NONCE", t.Name()+time.Now().String(), 1)
	if err := os.WriteFile(filepath.Join(flake, "flake.nix"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runNix(t.Context(), "nix", "eval", "--raw", "path:"+flake+"#blixard.vms.web.runner.outPath")
	if err != nil {
		t.Fatalf("nix eval: %v", err)
	}
	want := string(out)
	// web-0: an instance of declared VM web; no .drv is known, so the
	// builder builds it from the flake.
	e.state.put(replicated.Assignment{VM: "web-0", Declared: "web", Node: testNode, OutPath: want})
	e.state.put(replicated.Assignment{VM: "web-1", Declared: "web", Node: testNode,
		OutPath: "/nix/store/00000000000000000000000000000000-other"})
	flakeURL := func(commit string) (string, error) {
		// The flake's commit would select a revision; a path: flake has one.
		return "path:" + flake, nil
	}
	e.start(func(o *Options) {
		o.Builder = FlakeBuilder{FlakeURL: func(commit string) (string, error) {
			if commit != "0123456789abcdef" {
				t.Errorf("builder got commit %q", commit)
			}
			return flakeURL(commit)
		}}
	})
	e.waitPhase("web-0", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == want })
	testkit.WaitFor(t, waitTimeout, "console", fileContains(LogPath(e.dir, "web-0"), "from-flake"))
	// web-1 is built from the same declared VM, but the plan wants another path.
	s := e.waitPhase("web-1", replicated.PhaseFailed, nil)
	if !strings.Contains(s.Message, "but the plan wants") {
		t.Errorf("web-1's message = %q, want an out path mismatch", s.Message)
	}
}

func TestNixProcessCrashLoopIsFailedWithExitCode(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{crash: true}).build(t)
	e.state.assign("a", testNode, r)
	e.start(nil)
	s := e.waitPhase("a", replicated.PhaseFailed, nil)
	if !strings.Contains(s.Message, "exited with code 3") || !strings.Contains(s.Message, LogPath(e.dir, "a")) {
		t.Errorf("message = %q, want the exit code and the console log path", s.Message)
	}
	fixed := makeRunner(t, runnerSpec{marker: "fixed"}).build(t)
	e.state.assign("a", testNode, fixed)
	e.waitPhase("a", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == fixed.out })
	e.pid("a")
}

func TestProcessPidfdWatchesAnyProcess(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	id, err := identify(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	h, err := openProc(id)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if h.pidfd == nil {
		t.Errorf("no pidfd: watching falls back to polling /proc")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := h.wait(ctx); err != context.Canceled {
		t.Fatalf("wait with a cancelled ctx = %v", err)
	}
	if err := h.signal(syscall.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	if err := h.wait(t.Context()); err != nil {
		t.Fatalf("wait = %v", err)
	}
	if id.alive() {
		t.Errorf("process still alive (a zombie must count as gone)")
	}
	if _, err := openProc(procIdentity{PID: id.PID, Start: id.Start + 1}); err == nil {
		t.Errorf("openProc accepted a wrong start time (PID reuse guard)")
	}
}

// TestNixProcessPrepareRunsBeforeEveryStart: a VM starts only once
// Options.Prepare returned (the node's network component writes the
// instance's network.env); a failing Prepare fails the start, which is
// tried again.
func TestNixProcessPrepareRunsBeforeEveryStart(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "prepared"}).build(t)
	e.state.assign("a", testNode, r)
	release := make(chan struct{})
	calls := make(chan string, 16)
	fail := make(chan bool, 1)
	fail <- true // the first call fails
	e.start(func(o *Options) {
		o.Prepare = func(ctx context.Context, vm string) error {
			calls <- vm
			select {
			case f := <-fail:
				if f {
					return fmt.Errorf("network.env of %s not written yet", vm)
				}
			default:
			}
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	s := e.waitPhase("a", replicated.PhaseFailed, nil)
	if !strings.Contains(s.Message, "prepare: network.env of a not written yet") {
		t.Errorf("failed start says %q, want the Prepare error", s.Message)
	}
	// Tried again: the second call waits for the release; the VM does not run meanwhile.
	testkit.WaitFor(t, waitTimeout, "a second Prepare call", func() error {
		if len(calls) < 2 {
			return fmt.Errorf("%d calls", len(calls))
		}
		return nil
	})
	if _, err := os.Lstat(filepath.Join(e.dir, "a", "pid")); err == nil {
		t.Fatal("the VM runs before Prepare returned")
	}
	close(release)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	if got := <-calls; got != "a" {
		t.Errorf("Prepare called for %q, want a", got)
	}
}
