package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// Self-fencing: Backend.Kill on both backends, and the agent's lease
// (Options.Lease) with the real ProcessBackend and a Proposer the test
// controls (testkit.Store.FailProposals: heartbeats stop committing, as on a
// node cut off from the quorum). The agent's clock is a testkit.Clock the
// test advances, so the lease runs out when the test says, never because
// the machine is slow.

// errNoQuorum is what a proposal of a node cut off from the quorum gets.
var errNoQuorum = errors.New("no quorum: the Raft leader cannot be reached")

// startProcessBackend runs a ProcessBackend on dir until the test ends.
func startProcessBackend(t *testing.T, o ProcessOptions) *ProcessBackend {
	t.Helper()
	t.Cleanup(func() { killRunners(t, o.StateDir) })
	b := NewProcessBackend(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if err := b.waitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProcessKillEndsARunnerThatIgnoresSIGTERMWhileAStopWaits(t *testing.T) {
	dir := t.TempDir()
	// A graceful stop would take two hours: microvm-shutdown hangs, then
	// the runner ignores SIGTERM.
	b := startProcessBackend(t, ProcessOptions{StateDir: dir, ShutdownTimeout: time.Hour, TermTimeout: time.Hour})
	out := fakeRunner(t, dir, "a", "#!/bin/sh\ntrap '' TERM\nexec /bin/sleep 3600\n")
	if err := os.WriteFile(filepath.Join(out, "bin", "microvm-shutdown"),
		[]byte("#!/bin/sh\n/bin/touch shutdown-ran\nexec /bin/sleep 3600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	id, err := readPidFile(filepath.Join(dir, "a", "pid"))
	if err != nil || !id.alive() {
		t.Fatalf("runner not running after Start: %v", err)
	}

	// The graceful Stop holds the unit's lock while microvm-shutdown hangs.
	sctx, scancel := context.WithCancel(t.Context())
	defer scancel()
	stopped := make(chan error, 1)
	go func() { stopped <- b.Stop(sctx, "a") }()
	testkit.WaitFor(t, waitTimeout, "microvm-shutdown running", func() error {
		_, err := os.Stat(filepath.Join(dir, "a", "shutdown-ran"))
		return err
	})

	kctx, kcancel := context.WithTimeout(t.Context(), waitTimeout)
	defer kcancel()
	if err := b.Kill(kctx, "a"); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	// Kill returned once the runner had exited: nothing to wait for.
	if id.alive() {
		t.Errorf("runner (pid %d) alive after Kill returned", id.PID)
	}
	s, err := b.Status("a")
	if err != nil || s.Active || s.Restarting || s.Booted != "" || !strings.Contains(s.Result, "killed") {
		t.Errorf("Status after Kill = %+v, %v; want stopped, not restarting, killed, nothing booted", s, err)
	}
	if names, err := b.List(); err != nil || len(names) != 0 {
		t.Errorf("List after Kill = %v, %v; want nothing", names, err)
	}
	for _, f := range []string{"booted", "pid"} {
		if _, err := os.Lstat(filepath.Join(dir, "a", f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Kill: %v, want it removed as Stop removes it", f, err)
		}
	}

	// The Stop that waited ends with its operation: the agent cancels it.
	scancel()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("the interrupted Stop: %v, want nil (its runner is gone)", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the Stop that waited on microvm-shutdown did not return once its context ended")
	}
	if err := b.Kill(t.Context(), "a"); err != nil {
		t.Errorf("Kill of a unit that no longer runs: %v", err)
	}
	if err := b.Kill(t.Context(), "never-ran"); err != nil {
		t.Errorf("Kill of an unknown unit: %v", err)
	}
}

func TestProcessKillDropsTheRestartOfACrashedRunnerOnFakeClock(t *testing.T) {
	dir := t.TempDir()
	clock := testkit.NewClock(testkit.T0)
	b := startProcessBackend(t, ProcessOptions{StateDir: dir, Clock: clock, RestartBackoff: time.Second})
	fakeRunner(t, dir, "a", "#!/bin/sh\nexit 3\n")
	if err := b.Start(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, waitTimeout, "the crash reported", func() error {
		if s, err := b.Status("a"); err != nil || !s.Restarting {
			return fmt.Errorf("status %+v, %v", s, err)
		}
		return nil
	})
	testkit.WaitFor(t, waitTimeout, "the backend waiting for the restart", clock.TimerIn(time.Second))
	if err := b.Kill(t.Context(), "a"); err != nil {
		t.Fatalf("Kill of a restarting unit: %v", err)
	}
	clock.Advance(time.Second)
	// The loop took the timer and found nothing to restart: it waits for
	// nothing due (an hour) again.
	testkit.WaitFor(t, waitTimeout, "the backend idle", clock.TimerIn(time.Hour))
	s, err := b.Status("a")
	if err != nil || s.Active || s.Restarting {
		t.Errorf("Status after Kill and the restart's due time = %+v, %v; want stopped", s, err)
	}
	if names, _ := b.List(); len(names) != 0 {
		t.Errorf("List = %v, want nothing", names)
	}
}

// captureLogs returns a logger writing text lines into the returned buffer.
func captureLogs() (*slog.Logger, *lockedBuffer) {
	var buf lockedBuffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), &buf
}

// waitStatus waits until the agent's status of vm satisfies cond.
func waitStatus(t *testing.T, a *Agent, vm, what string, cond func(replicated.VMStatus) bool) replicated.VMStatus {
	t.Helper()
	var got replicated.VMStatus
	testkit.WaitFor(t, waitTimeout, vm+" "+what, func() error {
		for _, s := range a.Statuses() {
			if s.VM == vm {
				got = s
				if cond(s) {
					return nil
				}
			}
		}
		return fmt.Errorf("status %+v", got)
	})
	return got
}

func fencedFor(silence string) func(replicated.VMStatus) bool {
	return func(s replicated.VMStatus) bool {
		return s.Phase == replicated.PhaseStopped && strings.Contains(s.Message, "fenced: no heartbeat committed for "+silence)
	}
}

func TestNixProcessFencedAgentKillsItsVMsUntilAHeartbeatCommits(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m", ignoreTerm: true}).build(t)
	e.state.assign("a", testNode, r)
	e.state.assign("b", testNode, r)
	clock := testkit.NewClock(testkit.T0)
	const lease = 3 * time.Second
	log, logs := captureLogs()
	ra := e.start(func(o *Options) {
		o.Lease, o.Now, o.Logger = lease, clock.Now, log
		// Only a kill ends these runners before an hour: no shutdown, and
		// they ignore SIGTERM.
		o.Backend = NewProcessBackend(ProcessOptions{StateDir: e.dir, ShutdownTimeout: time.Hour, TermTimeout: time.Hour})
	})
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	pa, pb := e.pid("a"), e.pid("b")

	// Cut off: heartbeats stop committing, and the lease runs out.
	e.state.FailProposals(errNoQuorum)
	committed := len(e.state.ProposedOf(replicated.CmdNodeHeartbeat))
	clock.Advance(lease + 100*time.Millisecond)
	e.waitGone(pa)
	e.waitGone(pb)
	waitStatus(t, ra.agent, "a", "reported fenced", fencedFor("3.1s (lease 3s)"))
	waitStatus(t, ra.agent, "b", "reported fenced", fencedFor("3.1s (lease 3s)"))

	// Still fenced a second later (the message follows the silence, so a
	// pass has run since): nothing was started again.
	clock.Advance(time.Second)
	waitStatus(t, ra.agent, "a", "fenced for longer", fencedFor("4.1s"))
	for _, vm := range []string{"a", "b"} {
		if id, err := readPidFile(filepath.Join(e.dir, vm, "pid")); err == nil && id.alive() {
			t.Errorf("%s runs (pid %d) while its node is fenced", vm, id.PID)
		}
	}

	// The quorum is back: the next heartbeat commits, renews the lease,
	// and the VMs still assigned here start again.
	e.since = committed
	e.state.FailProposals(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("b", replicated.PhaseRunning, nil)
	if e.pid("a") == pa || e.pid("b") == pb {
		t.Errorf("a runner survived the fence")
	}
	// The first heartbeat that committed told the cluster why they had stopped.
	if !e.ever("a", replicated.PhaseStopped) {
		t.Errorf("no committed heartbeat reported a stopped while fenced")
	}
	out := logs.String()
	if n := strings.Count(out, "level=WARN msg=\"fenced: "); n != 1 || !strings.Contains(out, "killed=2 failed=0") {
		t.Errorf("%d \"fenced\" warnings, want one saying killed=2 failed=0; logs:\n%s", n, out)
	}
	if n := strings.Count(out, "msg=\"no longer fenced"); n != 1 {
		t.Errorf("%d \"no longer fenced\" lines, want one; logs:\n%s", n, out)
	}
}

func TestNixProcessRestartedAgentStartsItsLeaseAtItsLastCommittedHeartbeat(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	clock := testkit.NewClock(testkit.T0)
	const lease = 3 * time.Second
	opts := func(o *Options) { o.Lease, o.Now = lease, clock.Now }
	first := e.start(opts)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	pa := e.pid("a")
	first.stop(t)
	// From now on no heartbeat commits until the test says so: the
	// restarted agents have only the replica's last heartbeat to go by.
	e.state.FailProposals(errNoQuorum)
	committed := len(e.state.ProposedOf(replicated.CmdNodeHeartbeat))
	st, err := e.state.LocalRead()
	if err != nil {
		t.Fatal(err)
	}
	if last := st.Nodes[testNode].LastHeartbeatAt; !last.Equal(clock.Now()) {
		t.Fatalf("last heartbeat at %s, want the agent's clock %s", last, clock.Now())
	}

	// Back within the lease: the adopted runner keeps running.
	clock.Advance(lease - time.Second)
	second := e.start(opts)
	waitStatus(t, second.agent, "a", "adopted and running", func(s replicated.VMStatus) bool {
		return s.Phase == replicated.PhaseRunning
	})
	if got := e.pid("a"); got != pa {
		t.Errorf("a restarted (pid %d → %d) by an agent back within its lease", pa.PID, got.PID)
	}
	second.stop(t)

	// Back after longer than the lease: the leader may have moved a, so the
	// adopted runner dies at once, and runs again once a heartbeat commits.
	clock.Advance(2 * time.Second)
	third := e.start(opts)
	e.waitGone(pa)
	waitStatus(t, third.agent, "a", "reported fenced", fencedFor("4s (lease 3s)"))
	e.since = committed
	e.state.FailProposals(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	if e.pid("a") == pa {
		t.Errorf("a's old runner still runs")
	}
}

func TestNixProcessNodeMarkedDownIsFencedUntilReady(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m", ignoreTerm: true}).build(t)
	e.state.assign("a", testNode, r)
	clock := testkit.NewClock(testkit.T0)
	ra := e.start(func(o *Options) {
		o.Lease, o.Now = 3*time.Second, clock.Now
		o.Backend = NewProcessBackend(ProcessOptions{StateDir: e.dir, ShutdownTimeout: time.Hour, TermTimeout: time.Hour})
	})
	e.waitPhase("a", replicated.PhaseRunning, nil)
	pa := e.pid("a")

	// Its heartbeats commit (the lease holds), but the leader marked it
	// down: it may be placing a elsewhere right now.
	setState := func(st replicated.NodeState) {
		e.state.Update(func(s *replicated.State) { s.Nodes[testNode].State = st })
		ra.agent.Notify()
	}
	setState(replicated.NodeDown)
	e.waitGone(pa)
	waitStatus(t, ra.agent, "a", "reported fenced", func(s replicated.VMStatus) bool {
		return s.Phase == replicated.PhaseStopped && strings.Contains(s.Message, "marked down") &&
			strings.Contains(s.Message, fmt.Sprintf("blixard node ready %d", testNode))
	})

	setState(replicated.NodeReady)
	waitStatus(t, ra.agent, "a", "running again", func(s replicated.VMStatus) bool { return s.Phase == replicated.PhaseRunning })
	if e.pid("a") == pa {
		t.Errorf("a's runner survived the mark")
	}
}

// BenchmarkNixFenceLeaseExpiryToRunnersDead measures, with the real
// ProcessBackend, the time from the lease's expiry (the agent's last
// committed heartbeat's send time plus Options.Lease, on the real clock)
// to every runner having exited, for 1 and 20 running VMs whose runners
// ignore SIGTERM. It is what has to fit between the lease and the
// leader's node timeout.
func BenchmarkNixFenceLeaseExpiryToRunnersDead(b *testing.B) {
	for _, vms := range []int{1, 20} {
		b.Run("vms="+strconv.Itoa(vms), func(b *testing.B) {
			e := newEnv(b)
			r := makeRunner(b, runnerSpec{marker: "bench", ignoreTerm: true}).build(b)
			names := make([]string, vms)
			for i := range names {
				names[i] = fmt.Sprintf("vm-%d", i)
				e.state.assign(names[i], testNode, r)
			}
			const lease = time.Second
			e.start(func(o *Options) {
				o.Lease, o.Heartbeat = lease, 200*time.Millisecond
				o.Backend = NewProcessBackend(ProcessOptions{StateDir: e.dir, ShutdownTimeout: time.Hour, TermTimeout: time.Hour})
			})
			var lat []time.Duration
			b.ResetTimer()
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				// Every VM runs and a heartbeat saying so committed (the
				// lease counts from it), then heartbeats stop committing.
				e.state.FailProposals(nil)
				ids := make([]procIdentity, len(names))
				testkit.WaitFor(b, time.Minute, "every VM running", func() error {
					last := e.last()
					for j, vm := range names {
						id, err := readPidFile(filepath.Join(e.dir, vm, "pid"))
						if err != nil || !id.alive() {
							return fmt.Errorf("%s: %v", vm, err)
						}
						if s := last[vm]; s.Phase != replicated.PhaseRunning {
							return fmt.Errorf("%s reported %s", vm, s.Phase)
						}
						ids[j] = id
					}
					return nil
				})
				e.state.FailProposals(errNoQuorum)
				st, err := e.state.LocalRead()
				if err != nil {
					b.Fatal(err)
				}
				expiry := st.Nodes[testNode].LastHeartbeatAt.Add(lease)
				b.StartTimer()
				for _, id := range ids {
					h, err := openProc(id)
					if err != nil {
						continue // already dead
					}
					err = h.wait(context.Background())
					h.close()
					if err != nil {
						b.Fatal(err)
					}
				}
				dead := time.Now()
				b.StopTimer()
				if dead.Before(expiry) {
					b.Fatalf("runners died %s before the lease ran out", expiry.Sub(dead))
				}
				lat = append(lat, dead.Sub(expiry))
			}
			reportPercentiles(b, "expiry-to-dead", lat)
		})
	}
}

func TestSystemdKillEndsAUnitWhoseShutdownHangs(t *testing.T) {
	e := newSystemdEnv(t, "sd-kill")
	b := e.backend()
	// microvm-shutdown (ExecStop) hangs and the runner ignores SIGTERM: a
	// stop job would wait the unit's stop timeout, then SIGTERM in vain.
	r := systemdRunnerScripts(t, "#!/bin/sh\necho kill-me\ntrap '' TERM\nexec /bin/sleep 1000\n",
		"#!/bin/sh\necho started > shutdown-ran\nexec /bin/sleep 1000\n")
	if err := switchCurrent(b, e.dir, "sd-kill", r.out); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context(), "sd-kill"); err != nil {
		t.Fatal(err)
	}
	s := waitUnit(t, b, "sd-kill", "active", func(s UnitStatus) bool { return s.Active && s.PID > 0 && s.Booted == r.out })

	// A graceful Stop is in progress (it holds the unit's op lock) …
	stopped := make(chan error, 1)
	go func() { stopped <- b.Stop(t.Context(), "sd-kill") }()
	testkit.WaitFor(t, waitTimeout, "microvm-shutdown running", fileContains(filepath.Join(e.dir, "sd-kill", "shutdown-ran"), "started"))

	// … and the kill does not wait for it.
	kctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := b.Kill(kctx, "sd-kill"); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	// Kill returned after its stop job: the unit is stopped, and not
	// waiting to be restarted (that would be activating, auto-restart).
	if got, err := b.Status("sd-kill"); err != nil || got.Active || got.Restarting {
		t.Errorf("Status after Kill = %+v, %v; want stopped, no restart pending", got, err)
	}
	if names, err := b.List(); err != nil || contains(names, "sd-kill") {
		t.Errorf("List after Kill = %v, %v; want sd-kill gone (reset if it failed)", names, err)
	}
	if _, err := os.Stat(filepath.Join(e.c.Root, "proc", strconv.Itoa(s.PID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the runner (pid %d in the container) still exists: %v", s.PID, err)
	}
	select {
	case err := <-stopped:
		t.Logf("the graceful Stop ended with the kill: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("the graceful Stop still waits after the kill")
	}
	// microvm-set-booted@ stops with the unit (PartOf) and removes booted.
	testkit.WaitFor(t, waitTimeout, "booted removed", func() error {
		if _, err := os.Lstat(filepath.Join(e.dir, "sd-kill", "booted")); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("booted: %v", err)
		}
		return nil
	})
	if err := b.Kill(t.Context(), "sd-never-ran"); err != nil {
		t.Errorf("Kill of a unit that never ran: %v", err)
	}
}
