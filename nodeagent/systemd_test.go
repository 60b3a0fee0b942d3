package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	sdharness "github.com/blixard/blixard/tests/systemd"
)

// The systemd tests share one container (a real systemd 252 in
// systemd-nspawn, tests/systemd/nspawn.sh) running microvm.nix's own host
// units as its microvm user, started by the first of them and stopped by
// TestMain; each test uses its own VM names and stops its units when it
// ends.

// sharedSystemd is the container of this test binary.
var sharedSystemd struct {
	once sync.Once
	c    *sdharness.Container
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if c := sharedSystemd.c; c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := c.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the systemd container: %v\n", err)
			code = 1
		}
		cancel()
	}
	os.Exit(code)
}

// testRestartDropIn makes crashed units restart after 100ms instead of
// microvm.nix's 5s, so that the crash tests take seconds. Start limits are
// switched off, for microvm@ and for every unit it requires (each restart
// starts them again): with 5s systemd's default limit (5 starts in 10s) is
// never reached, with 100ms it would be. Nothing else of microvm.nix's
// units is changed (tests/systemd/doc.go).
const (
	testRestartDropIn = "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nRestartSec=100ms\n"
	testLimitDropIn   = "[Unit]\nStartLimitIntervalSec=0\n"
)

// systemdContainer returns the shared container, booting it on first use.
func systemdContainer(t testing.TB) *sdharness.Container {
	t.Helper()
	requireNix(t)
	sharedSystemd.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		c, err := sdharness.Start(ctx)
		if err != nil {
			sharedSystemd.err = err
			return
		}
		sharedSystemd.c = c
		for file := range c.Units.Files {
			conf := testLimitDropIn
			if file == "microvm@.service" {
				conf = testRestartDropIn
			}
			d := filepath.Join(c.UnitDir, file+".d")
			if err := os.MkdirAll(d, 0o755); err != nil {
				sharedSystemd.err = err
				return
			}
			if err := os.WriteFile(filepath.Join(d, "test-restart.conf"), []byte(conf), 0o644); err != nil {
				sharedSystemd.err = err
				return
			}
		}
		sharedSystemd.err = reloadSystemd(ctx, c)
	})
	if sharedSystemd.err != nil {
		t.Fatalf("systemd container: %v", sharedSystemd.err)
	}
	return sharedSystemd.c
}

// sdOptions are the options of a SystemdBackend on container c: its bus,
// its root (microvm's uid, the journal) and the host's view of its STATE.
func sdOptions(c *sdharness.Container) SystemdOptions {
	return SystemdOptions{StateDir: c.StateDir, BusAddress: c.Bus, Root: c.Root}
}

// reloadSystemd makes systemd read unit files again (daemon-reload).
func reloadSystemd(ctx context.Context, c *sdharness.Container) error {
	b, err := NewSystemdBackend(ctx, sdOptions(c))
	if err != nil {
		return err
	}
	defer b.Close()
	return b.conn.ReloadContext(ctx)
}

// systemdRunner instantiates and builds a runner for the container: its
// scripts use only /bin/sh and /bin/sleep (minbase Debian has no more).
// microvm-shutdown records that it ran in the state directory (its working
// directory) and stops the runner through $MAINPID.
func systemdRunner(t testing.TB, marker string, crash bool) runner {
	t.Helper()
	run := fmt.Sprintf("#!/bin/sh\necho %s\nexec /bin/sleep 1000\n", marker)
	if crash {
		run = "#!/bin/sh\necho crashing\nexit 3\n"
	}
	shutdown := "#!/bin/sh\necho " + marker + " > shutdown-ran\nkill \"$MAINPID\"\n"
	return systemdRunnerScripts(t, run, shutdown)
}

// systemdRunnerScripts builds a runner for the container whose
// bin/microvm-run and bin/microvm-shutdown are the given scripts.
func systemdRunnerScripts(t testing.TB, run, shutdown string) runner {
	t.Helper()
	script := `/bin/mkdir -p $out/bin; printf '%s' "$run" > $out/bin/microvm-run; printf '%s' "$shutdown" > $out/bin/microvm-shutdown; /bin/chmod +x $out/bin/*`
	expr := fmt.Sprintf(`builtins.derivation {
  name = "runner"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" %q ];
  run = %q; shutdown = %q; nonce = "%s-%d-%d";
}`, script, run, shutdown, t.Name(), time.Now().UnixNano(), nonce.Add(1))
	ctx := context.Background()
	drv, err := runNix(ctx, "nix-instantiate", "-E", expr)
	if err != nil {
		t.Fatalf("nix-instantiate: %v (%s)", err, setupHint)
	}
	d := strings.TrimSpace(string(drv))
	out, err := runNix(ctx, "nix-store", "--realise", d)
	if err != nil {
		t.Fatalf("nix-store --realise %s: %v", d, err)
	}
	return runner{drv: d, out: strings.TrimSpace(string(out))}
}

// sdEnv is an agent environment on the container's state directory.
type sdEnv struct {
	*env
	c *sdharness.Container
}

func newSystemdEnv(t *testing.T, vms ...string) *sdEnv {
	c := systemdContainer(t)
	e := &sdEnv{env: &env{t: t, dir: c.StateDir, state: newTestState(t)}, c: c}
	t.Cleanup(func() { e.stopUnits(vms) })
	return e
}

// backend returns a running SystemdBackend on the container (stopped at cleanup).
func (e *sdEnv) backend() *SystemdBackend {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := NewSystemdBackend(ctx, sdOptions(e.c))
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("backend Run: %v", err)
		}
	})
	if err := b.waitReady(ctx); err != nil {
		e.t.Fatal(err)
	}
	return b
}

// startAgent runs an agent with a SystemdBackend of its own.
func (e *sdEnv) startAgent() *runningAgent {
	e.t.Helper()
	b, err := NewSystemdBackend(context.Background(), sdOptions(e.c))
	if err != nil {
		e.t.Fatal(err)
	}
	return e.start(func(o *Options) { o.Backend = b })
}

// stopUnits stops the test's units so that the next test's agent does not
// see (and retire) them.
func (e *sdEnv) stopUnits(vms []string) {
	if len(vms) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := NewSystemdBackend(ctx, sdOptions(e.c))
	if err != nil {
		e.t.Errorf("cleanup: %v", err)
		return
	}
	bctx, bcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(bctx) }()
	for _, vm := range vms {
		if err := b.Stop(ctx, vm); err != nil {
			e.t.Errorf("cleanup: %v", err)
		}
	}
	bcancel()
	<-done
}

// unitStatus polls b until cond holds.
func waitUnit(t testing.TB, b *SystemdBackend, vm, what string, cond func(UnitStatus) bool) UnitStatus {
	t.Helper()
	var s UnitStatus
	testkit.WaitFor(t, waitTimeout, vm+" "+what, func() error {
		var err error
		s, err = b.Status(vm)
		if err != nil || !cond(s) {
			return fmt.Errorf("status %+v, err %v", s, err)
		}
		return nil
	})
	return s
}

func TestSystemdRefusesWithoutTemplate(t *testing.T) {
	c := systemdContainer(t)
	_, err := NewSystemdBackend(t.Context(), SystemdOptions{BusAddress: c.Bus, UnitPrefix: "nosuchvm@"})
	if err == nil {
		t.Fatal("NewSystemdBackend succeeded without a nosuchvm@.service template")
	}
	for _, want := range []string{"nosuchvm@.service", "microvm.host.enable = true", "microvm.nixosModules.host", "not-found"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	_, err = NewSystemdBackend(t.Context(), SystemdOptions{BusAddress: "unix:path=" + filepath.Join(t.TempDir(), "nobus")})
	if err == nil || !strings.Contains(err.Error(), "--backend process") {
		t.Errorf("without a bus: err = %v, want a hint at --backend process", err)
	}
}

func TestSystemdAgentStartsRestartsOntoNewClosureAndStops(t *testing.T) {
	e := newSystemdEnv(t, "sd-a", "sd-b")
	r1 := systemdRunner(t, "v1", false)
	r2 := systemdRunner(t, "v2", false)
	e.state.assign("sd-a", testNode, r1)
	e.state.assign("sd-b", testNode, r1)
	e.startAgent()
	b := e.backend()

	e.waitPhase("sd-a", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == r1.out })
	e.waitPhase("sd-b", replicated.PhaseRunning, nil)
	a1 := waitUnit(t, b, "sd-a", "active", func(s UnitStatus) bool { return s.Active && s.PID > 0 })
	b1 := waitUnit(t, b, "sd-b", "active", func(s UnitStatus) bool { return s.Active && s.PID > 0 })
	if got := e.link("sd-a", "booted"); got != r1.out {
		t.Errorf("booted → %q, want %s", got, r1.out)
	}
	// microvm.nix's units as they run on a NixOS host: the agent gave
	// STATE/NAME and current to microvm:kvm (install-microvm-NAME), the
	// runner runs as microvm, and microvm-set-booted@ (as microvm) wrote
	// booted: the agent runs as root, so a root-owned booted would be its.
	checkOwnedByUnitUser(t, e.c, filepath.Join(e.dir, "sd-a"), filepath.Join(e.dir, "sd-a", "current"),
		filepath.Join(e.dir, "sd-a", "booted"))
	if uid := processUID(t, e.c, a1.PID); uid != e.c.UID {
		t.Errorf("the runner (pid %d in the container) runs as uid %d, want %s's %d", a1.PID, uid, sdharness.UnitUser, e.c.UID)
	}

	// A new closure: systemd restarts the unit onto it (microvm-shutdown of
	// the booted runner first), and the template moves booted.
	e.state.assign("sd-a", testNode, r2)
	e.waitPhase("sd-a", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == r2.out })
	a2 := waitUnit(t, b, "sd-a", "active on v2", func(s UnitStatus) bool { return s.Active && s.Booted == r2.out })
	if a2.PID == a1.PID {
		t.Errorf("sd-a kept main PID %d across the restart", a1.PID)
	}
	if got := e.link("sd-a", "booted"); got != r2.out {
		t.Errorf("booted → %q, want %s", got, r2.out)
	}
	if err := fileContains(filepath.Join(e.dir, "sd-a", "shutdown-ran"), "v1")(); err != nil {
		t.Errorf("the old runner's microvm-shutdown did not run: %v", err)
	}
	checkOwnedByUnitUser(t, e.c, filepath.Join(e.dir, "sd-a", "current"), filepath.Join(e.dir, "sd-a", "booted"),
		filepath.Join(e.dir, "sd-a", "shutdown-ran"))
	if uid := processUID(t, e.c, a2.PID); uid != e.c.UID {
		t.Errorf("the restarted runner runs as uid %d, want %d", uid, e.c.UID)
	}
	if got, _ := b.Status("sd-b"); got.PID != b1.PID {
		t.Errorf("sd-b restarted (main PID %d → %d) although only sd-a changed", b1.PID, got.PID)
	}

	// Unassigned: stopped through its unit; booted goes, the state directory stays.
	e.state.unassign("sd-a")
	e.waitPhase("sd-a", replicated.PhaseStopped, nil)
	waitUnit(t, b, "sd-a", "inactive", func(s UnitStatus) bool { return !s.Active && !s.Restarting })
	if _, err := os.Lstat(filepath.Join(e.dir, "sd-a", "booted")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("booted still exists after stop (err %v)", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "sd-a", "current")); err != nil {
		t.Errorf("state directory not kept: %v", err)
	}
	names, err := b.List()
	if err != nil || len(names) != 1 || names[0] != "sd-b" {
		t.Errorf("List = %v, %v; want [sd-b]", names, err)
	}
}

func TestSystemdCrashingRunnerIsFailedWithSystemdResult(t *testing.T) {
	e := newSystemdEnv(t, "sd-crash")
	bad := systemdRunner(t, "", true)
	e.state.assign("sd-crash", testNode, bad)
	e.startAgent()
	b := e.backend()

	// systemd restarts it (Restart=always); after three restarts the agent
	// reports it failed, in systemd's words.
	s := e.waitPhase("sd-crash", replicated.PhaseFailed, nil)
	for _, want := range []string{"exit-code", "exited with code 3", "journalctl -u microvm@sd-crash.service"} {
		if !strings.Contains(s.Message, want) {
			t.Errorf("message %q does not mention %q", s.Message, want)
		}
	}
	// The failed phase itself says the agent saw >= 3 restarts. The unit keeps
	// crash-looping meanwhile (and the agent may reset and start it between
	// two restarts, which zeroes NRestarts), so only its last exit is stable.
	us, err := b.Status("sd-crash")
	if err != nil || us.ExitCode != 3 {
		t.Errorf("Status = %+v, %v; want exit code 3", us, err)
	}

	// The agent's policy: a new runner replaces a crash-looping one at once.
	fixed := systemdRunner(t, "fixed", false)
	e.state.assign("sd-crash", testNode, fixed)
	e.waitPhase("sd-crash", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == fixed.out })
	waitUnit(t, b, "sd-crash", "active on the fixed runner", func(s UnitStatus) bool { return s.Active && s.Booted == fixed.out })
}

func TestSystemdFailedUnitIsResetAndStartedOnCurrent(t *testing.T) {
	e := newSystemdEnv(t, "sd-limit")
	b := e.backend()
	// A unit that gives up: a start limit of 2 for this instance only.
	d := filepath.Join(e.c.UnitDir, "microvm@sd-limit.service.d")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.WriteFile(filepath.Join(d, "zz-limit.conf"), []byte("[Unit]\nStartLimitIntervalSec=1h\nStartLimitBurst=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.conn.ReloadContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	bad := systemdRunner(t, "", true)
	if err := switchCurrent(b, e.dir, "sd-limit", bad.out); err != nil {
		t.Fatal(err)
	}
	drain(b.Events())
	// The template's ExecStartPost keeps the start job open: a runner that
	// exits at once may fail the job itself.
	if err := b.Start(t.Context(), "sd-limit"); err != nil && !strings.Contains(err.Error(), "exit-code") {
		t.Fatalf("Start of a crashing runner: %v, want nil or systemd's exit-code", err)
	}
	// Failed (listed) once the start limit refused a restart; between two
	// restarts the unit is briefly inactive. systemd keeps the first failure
	// as the Result (exit-code), not start-limit-hit.
	testkit.WaitFor(t, waitTimeout, "sd-limit failed by its start limit", func() error {
		if names, err := b.List(); err != nil || !contains(names, "sd-limit") {
			return fmt.Errorf("List = %v, %v", names, err)
		}
		return nil
	})
	// Status follows from the unit's change signals, which may trail List.
	s := waitUnit(t, b, "sd-limit", "reported failed", func(s UnitStatus) bool {
		return !s.Active && !s.Restarting && s.Restarts == 2 && strings.Contains(s.Result, "exit-code: exited with code 3")
	})
	if s.Booted != "" {
		t.Errorf("a failed unit reports booted %q", s.Booted)
	}
	waitEvent(t, b, "sd-limit")

	// Start resets it and runs current, and booted follows current although
	// the companion unit that records it stayed active when the unit failed.
	good := systemdRunner(t, "good", false)
	if err := switchCurrent(b, e.dir, "sd-limit", good.out); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context(), "sd-limit"); err != nil {
		t.Fatalf("Start of a failed unit: %v", err)
	}
	s = waitUnit(t, b, "sd-limit", "active", func(s UnitStatus) bool { return s.Active })
	if s.Booted != good.out {
		t.Errorf("booted %q, want %s", s.Booted, good.out)
	}
	// Start of a running unit does nothing.
	if err := b.Start(t.Context(), "sd-limit"); err != nil {
		t.Fatal(err)
	}
	if again, _ := b.Status("sd-limit"); again.PID != s.PID {
		t.Errorf("Start restarted a running unit: PID %d → %d", s.PID, again.PID)
	}
}

func TestSystemdEventsReportACrash(t *testing.T) {
	e := newSystemdEnv(t, "sd-ev")
	b := e.backend()
	r := systemdRunner(t, "ev", false)
	// A state directory made as root (by hand, or by an agent before it gave
	// them to microvm:kvm): Start gives it to the units' user first, or
	// microvm-set-booted@ could not write booted in it.
	if err := os.MkdirAll(filepath.Join(e.dir, "sd-ev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := symlinkAtomic(r.out, filepath.Join(e.dir, "sd-ev", "current")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context(), "sd-ev"); err != nil {
		t.Fatal(err)
	}
	s1 := waitUnit(t, b, "sd-ev", "active", func(s UnitStatus) bool { return s.Active && s.Booted == r.out })
	checkOwnedByUnitUser(t, e.c, filepath.Join(e.dir, "sd-ev"), filepath.Join(e.dir, "sd-ev", "current"),
		filepath.Join(e.dir, "sd-ev", "booted"))
	drain(b.Events())
	if err := b.conn.KillUnitWithTarget(t.Context(), b.unit("sd-ev"), "main", 9); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, b, "sd-ev")
	s2 := waitUnit(t, b, "sd-ev", "restarted", func(s UnitStatus) bool { return s.Active && s.Restarts >= 1 })
	if s2.PID == s1.PID {
		t.Errorf("after SIGKILL: %+v, want a new main PID", s2)
	}
}

func TestSystemdRestartedAgentAdoptsUnitsUntouched(t *testing.T) {
	e := newSystemdEnv(t, "sd-keep1", "sd-keep2")
	r := systemdRunner(t, "keep", false)
	e.state.assign("sd-keep1", testNode, r)
	e.state.assign("sd-keep2", testNode, r)
	first := e.startAgent()
	b := e.backend()
	e.waitPhase("sd-keep1", replicated.PhaseRunning, nil)
	e.waitPhase("sd-keep2", replicated.PhaseRunning, nil)
	k1 := waitUnit(t, b, "sd-keep1", "active", func(s UnitStatus) bool { return s.Active })
	k2 := waitUnit(t, b, "sd-keep2", "active", func(s UnitStatus) bool { return s.Active })

	first.stop(t) // VMs belong to their units: they keep running
	for vm, want := range map[string]UnitStatus{"sd-keep1": k1, "sd-keep2": k2} {
		if s, err := b.Status(vm); err != nil || !s.Active || s.PID != want.PID {
			t.Errorf("%s after the agent stopped: %+v, %v; want main PID %d still active", vm, s, err, want.PID)
		}
	}

	e.newAgent()
	e.startAgent()
	e.waitPhase("sd-keep1", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == r.out })
	e.waitPhase("sd-keep2", replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.BootedOut == r.out })
	for vm, want := range map[string]UnitStatus{"sd-keep1": k1, "sd-keep2": k2} {
		if s, err := b.Status(vm); err != nil || s.PID != want.PID || s.Restarts != want.Restarts {
			t.Errorf("%s after the new agent adopted it: %+v, %v; want main PID %d untouched", vm, s, err, want.PID)
		}
	}
}

func TestSystemdConsoleIsTheUnitsJournal(t *testing.T) {
	e := newSystemdEnv(t, "sd-log")
	b := e.backend()
	// The console of a VM that never ran here: no log (404 at the API).
	err := TailConsole(t.Context(), b, e.dir, "sd-nolog", false, &bytes.Buffer{})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "has not started on this node") {
		t.Fatalf("TailConsole of a VM that never started: %v, want fs.ErrNotExist saying so", err)
	}

	// Markers of this run only: the shared container's journal keeps
	// earlier runs' (go test -count).
	v1, v2 := fmt.Sprintf("console-v1-%d", nonce.Add(1)), fmt.Sprintf("console-v2-%d", nonce.Add(1))
	r1 := systemdRunner(t, v1, false)
	if err := switchCurrent(b, e.dir, "sd-log", r1.out); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context(), "sd-log"); err != nil {
		t.Fatal(err)
	}
	// What `blixard logs sd-log` shows: the runner's output, from the
	// container's journal (TailConsole dispatches to the backend, which
	// runs journalctl --root on the container's root).
	testkit.WaitFor(t, waitTimeout, "the runner's output in the journal", func() error {
		var out bytes.Buffer
		if err := TailConsole(t.Context(), b, e.dir, "sd-log", false, &out); err != nil {
			return err
		}
		if !strings.Contains(out.String(), v1+"\n") {
			return fmt.Errorf("journal: %q", out.String())
		}
		return nil
	})

	// Followed (`blixard logs sd-log -f`): what a restart onto a new runner
	// prints arrives while the follow runs; it ends with its ctx.
	ctx, cancel := context.WithCancel(t.Context())
	var w syncBuffer
	done := make(chan error, 1)
	go func() { done <- TailConsole(ctx, b, e.dir, "sd-log", true, &w) }()
	testkit.WaitFor(t, waitTimeout, "the old output first", testkit.Until(func() bool { return strings.Contains(w.String(), v1+"\n") }))
	if strings.Contains(w.String(), v2) {
		t.Fatalf("the followed journal has %s before its runner ran", v2)
	}
	r2 := systemdRunner(t, v2, false)
	if err := switchCurrent(b, e.dir, "sd-log", r2.out); err != nil {
		t.Fatal(err)
	}
	if err := b.Restart(t.Context(), "sd-log"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, waitTimeout, "the new runner's output, followed", testkit.Until(func() bool { return strings.Contains(w.String(), v2+"\n") }))
	cancel()
	if err := <-done; err != nil {
		t.Errorf("TailConsole -f after its ctx ended: %v", err)
	}
	if err := b.TailConsole(t.Context(), "bad/name", false, &bytes.Buffer{}); err == nil {
		t.Error("TailConsole accepted a name that cannot name a unit")
	}
}

// checkOwnedByUnitUser fails unless every path (not its link target)
// belongs to the container's microvm:kvm.
func checkOwnedByUnitUser(t *testing.T, c *sdharness.Container, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if uid, gid, _ := ownerOf(t, p); uid != c.UID || gid != c.GID {
			t.Errorf("%s belongs to %d:%d, want %s:%s (%d:%d)", p, uid, gid, sdharness.UnitUser, sdharness.UnitGroup, c.UID, c.GID)
		}
	}
}

// processUID is the real uid of pid, a pid of the container's namespace
// (as systemd reports MainPID), read through the container's /proc.
func processUID(t *testing.T, c *sdharness.Container, pid int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Root, "proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatalf("status of pid %d in the container: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
	}
	t.Fatalf("no Uid: in the status of pid %d", pid)
	return -1
}

func drain(ch <-chan string) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func waitEvent(t testing.TB, b *SystemdBackend, vm string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case got := <-b.Events():
			if got == vm {
				return
			}
		case <-deadline:
			t.Fatalf("no event for %s within 30s", vm)
		}
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// BenchmarkSystemdStartStopJob measures one Start and one Stop of a unit
// (D-Bus job enqueued → job done, plus the property reads around it) on the
// container's systemd, against the same operations of the ProcessBackend.
func BenchmarkSystemdStartStopJob(b *testing.B) {
	c := systemdContainer(b)
	for _, kind := range []string{"systemd", "process"} {
		b.Run(kind, func(b *testing.B) {
			var be Backend
			var r runner
			dir := c.StateDir
			switch kind {
			case "systemd":
				sb, err := NewSystemdBackend(context.Background(), sdOptions(c))
				if err != nil {
					b.Fatal(err)
				}
				be, r = sb, systemdRunner(b, "bench", false)
			default:
				dir = b.TempDir()
				be = NewProcessBackend(ProcessOptions{StateDir: dir, TermTimeout: 5 * time.Second})
				r = makeRunner(b, runnerSpec{marker: "bench"}).build(b)
				b.Cleanup(func() { killRunners(b, dir) })
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- be.Run(ctx) }()
			defer func() { cancel(); <-done }()
			vm := "bench-" + kind
			if err := switchCurrent(be, dir, vm, r.out); err != nil {
				b.Fatal(err)
			}
			var start, stop []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := be.Start(ctx, vm); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := be.Stop(ctx, vm); err != nil {
					b.Fatal(err)
				}
				start, stop = append(start, t1.Sub(t0)), append(stop, time.Since(t1))
			}
			b.StopTimer()
			reportPercentiles(b, "start", start)
			reportPercentiles(b, "stop", stop)
		})
	}
}

// BenchmarkSystemdCommitToUnitActive measures, through the agent, the time
// from a new assignment (Notify, as the replica would) to its unit being
// started by the SystemdBackend, the closure already present; compare with
// BenchmarkNixCommitToRunnerStarted (the ProcessBackend).
func BenchmarkSystemdCommitToUnitActive(b *testing.B) {
	c := systemdContainer(b)
	e := &env{t: b, dir: c.StateDir, state: newTestState(b)}
	r := systemdRunner(b, "bench", false)
	sb, err := NewSystemdBackend(context.Background(), sdOptions(c))
	if err != nil {
		b.Fatal(err)
	}
	be := startRecorder{Backend: sb, started: make(chan string, 16)}
	ra := startAgentWith(e, be)
	var names []string
	b.Cleanup(func() {
		ra.stop(b)
		(&sdEnv{env: e, c: c}).stopUnits(names)
	})
	lat := measureCommitToStart(b, e, ra, be, r, "bench-commit", &names)
	reportPercentiles(b, "commit", lat)
}

// BenchmarkSystemdStatus measures one Status of a running unit (two GetAll
// calls over D-Bus); the agent calls it for every VM on every pass.
func BenchmarkSystemdStatus(b *testing.B) {
	c := systemdContainer(b)
	e := &sdEnv{env: &env{t: b, dir: c.StateDir}, c: c}
	be := e.backend()
	r := systemdRunner(b, "status", false)
	vm := "bench-status"
	b.Cleanup(func() { e.stopUnits([]string{vm}) })
	if err := switchCurrent(be, e.dir, vm, r.out); err != nil {
		b.Fatal(err)
	}
	if err := be.Start(context.Background(), vm); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if s, err := be.Status(vm); err != nil || !s.Active {
			b.Fatalf("Status = %+v, %v", s, err)
		}
	}
}
