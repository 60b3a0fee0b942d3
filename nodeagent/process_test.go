package nodeagent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
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

func TestRotateLogKeepsTheTailAndTheWriterAppendsAtTheStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if rotated, err := rotateLog(path, 40); rotated || err != nil {
		t.Fatalf("a missing log: rotated %v, %v; want nothing done", rotated, err)
	}
	// The runner's descriptor: O_APPEND, as spawn opens it.
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	write := func(s string) {
		t.Helper()
		if _, err := w.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write(strings.Repeat("0123456789", 4))
	if rotated, err := rotateLog(path, 40); rotated || err != nil {
		t.Fatalf("a log at the cap: rotated %v, %v; want it left alone", rotated, err)
	}
	write("abcdefghij")
	if rotated, err := rotateLog(path, 40); !rotated || err != nil {
		t.Fatalf("a log over the cap: rotated %v, %v; want it rotated", rotated, err)
	}
	if got, want := read(path+".1"), strings.Repeat("0123456789", 3)+"abcdefghij"; got != want {
		t.Errorf("console.log.1 = %q, want the last 40 bytes %q", got, want)
	}
	if fi, err := os.Stat(path + ".1"); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("console.log.1: %v, %v; want mode 0640", fi, err)
	}
	write("after\n")
	if got := read(path); got != "after\n" {
		t.Errorf("console.log after the rotation = %q, want the runner's next write at offset 0 (no hole)", got)
	}
	write(strings.Repeat("x", 40))
	if rotated, err := rotateLog(path, 40); !rotated || err != nil {
		t.Fatalf("second rotation: %v, %v", rotated, err)
	}
	if got := read(path + ".1"); got != strings.Repeat("x", 40) {
		t.Errorf("console.log.1 = %q, want the old one replaced by the newest tail", got)
	}
	if tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".console.log.1-*")); len(tmps) > 0 {
		t.Errorf("temporary files left behind: %v", tmps)
	}
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestProcessConsoleLogIsCappedAndFollowedAcrossRotations(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() { killRunners(t, dir) })
	const limit = 8 << 10
	b := NewProcessBackend(ProcessOptions{StateDir: dir, MaxLogBytes: limit, LogCheckInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// ~7 KB/s: a rotation every second or so.
	fakeRunner(t, dir, "a", "#!/bin/sh\ni=0\nwhile :; do echo \"line $i: "+strings.Repeat("=", 56)+"\"; i=$((i+1)); /bin/sleep 0.01; done\n")
	if err := b.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	var followed lockedBuffer
	tailDone := make(chan error, 1)
	go func() { tailDone <- TailLog(ctx, LogPath(dir, "a"), true, &followed) }()
	t.Cleanup(func() {
		cancel()
		if err := <-tailDone; err != nil {
			t.Errorf("TailLog: %v", err)
		}
	})

	lineRE := regexp.MustCompile(`line (\d+):`)
	lastLine := func(s string) int {
		m := lineRE.FindAllStringSubmatch(s, -1)
		if len(m) == 0 {
			return -1
		}
		n, _ := strconv.Atoi(m[len(m)-1][1])
		return n
	}
	// Twice: the follower reads past a rotation — lines the runner wrote
	// after console.log.1 was cut off — and the log stays near the cap.
	seenOld := -1
	for round := range 2 {
		testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("rotation %d followed", round+1), func() error {
			old, err := os.ReadFile(LogPath(dir, "a") + ".1")
			if err != nil {
				return err
			}
			last := lastLine(string(old))
			if last <= seenOld {
				return fmt.Errorf("console.log.1 ends at line %d: no new rotation yet", last)
			}
			if got := lastLine(followed.String()); got < last+3 {
				return fmt.Errorf("the follower is at line %d; console.log.1 ends at line %d", got, last)
			}
			seenOld = last
			return nil
		})
		fi, err := os.Stat(LogPath(dir, "a"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > limit+64<<10 {
			t.Errorf("console.log is %d bytes; the cap is %d", fi.Size(), limit)
		}
	}
	if out := followed.String(); strings.ContainsRune(out, 0) {
		t.Errorf("the follower read NUL bytes: the runner wrote past a hole after a truncation")
	}
}
