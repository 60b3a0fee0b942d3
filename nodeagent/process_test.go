package nodeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// fakeRunner makes a runner directory outside the store (the process
// backend only execs current/bin/microvm-run) and links STATE/vm/current to it.
func fakeRunner(t *testing.T, stateDir, vm, script string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "runner")
	if err := os.MkdirAll(filepath.Join(out, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "bin", "microvm-run"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(stateDir, vm), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := symlinkAtomic(out, filepath.Join(stateDir, vm, "current")); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestProcessCrashBackoffDoublesUpToMaxOnFakeClock(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() { killRunners(t, dir) })
	clock := testkit.NewClock(testkit.T0)
	b := NewProcessBackend(ProcessOptions{
		StateDir: dir, Clock: clock, TermTimeout: 5 * time.Second,
		RestartBackoff: time.Second, MaxRestartBackoff: 4 * time.Second, ResetBackoffAfter: time.Hour,
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	fakeRunner(t, dir, "a", "#!/bin/sh\nexit 3\n")
	if err := b.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}

	// Each crash doubles the delay before the next restart, up to the
	// maximum; the clock only moves when the test advances it, so the
	// restarts wait for no real time.
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		restarts := i + 1
		var s UnitStatus
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("crash %d reported", restarts), func() error {
			var err error
			if s, err = b.Status("a"); err != nil || !s.Restarting || s.Restarts != restarts {
				return fmt.Errorf("status %+v, err %v", s, err)
			}
			return nil
		})
		if got := s.NextRestart.Sub(clock.Now()); got != want {
			t.Errorf("after crash %d: next restart in %s, want %s", restarts, got, want)
		}
		if s.Result != "exited with code 3" || s.Booted == "" {
			t.Errorf("after crash %d: %+v, want the exit code and what was booted", restarts, s)
		}
		testkit.WaitFor(t, 10*time.Second, "the backend waiting for the restart", clock.TimerIn(want))
		clock.Advance(want)
	}
	testkit.WaitFor(t, 10*time.Second, "crash 5 reported", func() error {
		if s, err := b.Status("a"); err != nil || s.Restarts != 5 {
			return fmt.Errorf("status %+v, err %v", s, err)
		}
		return nil
	})
}

func TestProcessBackoffResetsAfterARunnerStayedUp(t *testing.T) {
	dir := t.TempDir()
	clock := testkit.NewClock(testkit.T0)
	b := NewProcessBackend(ProcessOptions{StateDir: dir, Clock: clock, RestartBackoff: time.Second, ResetBackoffAfter: 10 * time.Second})
	u := &procUnit{name: "a"}
	b.mu.Lock()
	defer b.mu.Unlock()
	u.startedAt = clock.Now()
	b.scheduleRestartLocked(u, clock.Now())
	b.scheduleRestartLocked(u, clock.Now())
	if u.restarts != 2 || u.backoff != 2*time.Second {
		t.Fatalf("after two quick crashes: restarts %d, backoff %s; want 2, 2s", u.restarts, u.backoff)
	}
	clock.Advance(10 * time.Second) // the runner stayed up long enough
	b.scheduleRestartLocked(u, clock.Now())
	if u.restarts != 1 || u.backoff != time.Second || !u.nextRestart.Equal(clock.Now().Add(time.Second)) {
		t.Errorf("after a crash that followed 10s up: restarts %d, backoff %s, next %s; want 1, 1s, now+1s",
			u.restarts, u.backoff, u.nextRestart.Sub(clock.Now()))
	}
}

func TestNixProcessAgentTakesTimeFromOptionsNow(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	at := testkit.T0.Add(time.Hour)
	e.start(func(o *Options) { o.Now = func() time.Time { return at } })
	s := e.waitPhase("a", replicated.PhaseRunning, nil)
	if !s.ObservedAt.Equal(at) {
		t.Errorf("observed at %s, want the injected %s", s.ObservedAt, at)
	}
	for _, c := range e.state.ProposedOf(replicated.CmdNodeHeartbeat) {
		if !c.At.Equal(at) {
			t.Errorf("heartbeat at %s, want the injected %s", c.At, at)
		}
	}
}
