package nodeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/vmsnap"
)

func TestPlanPool(t *testing.T) {
	snap := func(sum string) vmsnap.Snapshot {
		return vmsnap.Snapshot{Dir: "/s/key", Manifest: vmsnap.Manifest{State: vmsnap.File{SHA256: sum}}}
	}
	w := func(inst string) poolWant {
		return poolWant{Instance: inst, Tap: "t-" + inst, MAC: "02:00:00:00:00:01", Out: "/nix/store/r", Snap: snap("s1")}
	}
	have := func(want poolWant, alive bool) poolHave { return poolHave{Want: want, Alive: alive} }
	changed := func(p poolWant, f func(*poolWant)) poolWant { f(&p); return p }
	for _, tc := range []struct {
		name string
		f    poolFacts
		// unsettled are wanted for less than poolSettle (every other
		// wanted runner is settled).
		unsettled []string
		want      poolPlan
	}{
		{name: "nothing wanted, nothing had"},
		{
			name: "a wanted runner is started",
			f:    poolFacts{Wanted: []poolWant{w("fn-a-0")}, Size: 4},
			want: poolPlan{Start: []poolWant{w("fn-a-0")}},
		},
		{
			name: "one started for the same instance, runner, tap and snapshot is kept",
			f:    poolFacts{Wanted: []poolWant{w("fn-a-0")}, Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}, Size: 4},
		},
		{
			name: "at most Size, in the order wanted",
			f:    poolFacts{Wanted: []poolWant{w("fn-a-0"), w("fn-b-0"), w("fn-c-0")}, Have: map[string]poolHave{"fn-c-0": have(w("fn-c-0"), true)}, Size: 2},
			want: poolPlan{Kill: []string{"fn-c-0"}, Start: []poolWant{w("fn-a-0"), w("fn-b-0")}},
		},
		{
			name: "one that exited is cleaned up and started again",
			f:    poolFacts{Wanted: []poolWant{w("fn-a-0")}, Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), false)}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}, Start: []poolWant{w("fn-a-0")}},
		},
		{
			name: "a new snapshot of the runner (same key, other state) replaces it",
			f: poolFacts{Wanted: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Snap = snap("s2") })},
				Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}, Start: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Snap = snap("s2") })}},
		},
		{
			name: "another runner (a new revision) replaces it",
			f: poolFacts{Wanted: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Out = "/nix/store/r2" })},
				Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}, Start: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Out = "/nix/store/r2" })}},
		},
		{
			name: "another tap replaces it",
			f: poolFacts{Wanted: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Tap = "t2" })},
				Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}, Start: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Tap = "t2" })}},
		},
		{
			name: "no longer wanted (placed on another node, no spare tap, no snapshot): killed",
			f:    poolFacts{Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}},
		},
		{
			name: "placed on this node, its unit not running: left for its start to take",
			f: poolFacts{Wanted: []poolWant{w("fn-a-1")}, Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)},
				AssignedHere: map[string]bool{"fn-a-0": true}, Size: 4},
			want: poolPlan{Start: []poolWant{w("fn-a-1")}},
		},
		{
			name: "placed on this node and its unit runs: the start did not take it",
			f: poolFacts{Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)},
				AssignedHere: map[string]bool{"fn-a-0": true}, Active: map[string]bool{"fn-a-0": true}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}},
		},
		{
			name: "placed on this node but exited: cleaned up",
			f: poolFacts{Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), false)},
				AssignedHere: map[string]bool{"fn-a-0": true}, Size: 4},
			want: poolPlan{Kill: []string{"fn-a-0"}},
		},
		{
			name:      "a wanted runner is started only once settled",
			f:         poolFacts{Wanted: []poolWant{w("fn-a-0"), w("fn-b-0")}, Size: 4},
			unsettled: []string{"fn-a-0"},
			want:      poolPlan{Start: []poolWant{w("fn-b-0")}},
		},
		{
			name: "an unsettled runner keeps its place: the next wanted one is not started instead",
			f: poolFacts{Wanted: []poolWant{w("fn-a-0"), w("fn-b-0")},
				Have: map[string]poolHave{"fn-b-0": have(w("fn-b-0"), true)}, Size: 1},
			unsettled: []string{"fn-a-0"},
			want:      poolPlan{Kill: []string{"fn-b-0"}},
		},
		{
			name: "a changed runner is killed at once and started again once settled",
			f: poolFacts{Wanted: []poolWant{changed(w("fn-a-0"), func(p *poolWant) { p.Tap = "t2" })},
				Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}, Size: 4},
			unsettled: []string{"fn-a-0"},
			want:      poolPlan{Kill: []string{"fn-a-0"}},
		},
		{
			name: "size 0 keeps nothing",
			f:    poolFacts{Wanted: []poolWant{w("fn-a-0")}, Have: map[string]poolHave{"fn-a-0": have(w("fn-a-0"), true)}},
			want: poolPlan{Kill: []string{"fn-a-0"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f.Settled = map[string]bool{}
			for _, w := range tc.f.Wanted {
				tc.f.Settled[w.Instance] = !slices.Contains(tc.unsettled, w.Instance)
			}
			if got := planPool(tc.f); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("planPool:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// runBackend runs a process backend on dir until the test ends (or stop).
func runBackend(t *testing.T, dir string) (b *ProcessBackend, stop func()) {
	t.Helper()
	b = NewProcessBackend(ProcessOptions{StateDir: dir, TermTimeout: 5 * time.Second})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	if err := b.waitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	return b, stop
}

// aheadDir makes STATE/.pool/vm with current linked to out.
func aheadDir(t *testing.T, stateDir, vm, out string) string {
	t.Helper()
	dir := filepath.Join(stateDir, PoolDir, vm)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out, filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// qemuLike is a runner that makes what qemu makes in its working
// directory (a QMP socket, its pid file) and waits.
const qemuLike = "#!/bin/sh\necho \"runner in $PWD\"\n: >qmp.sock\n: >identity.sock\necho $$ >qemu.pid\nexec sleep 600\n"

func TestProcessAdoptsARunnerStartedAhead(t *testing.T) {
	state := t.TempDir()
	t.Cleanup(func() { killRunners(t, state) })
	b, _ := runBackend(t, state)
	out := fakeRunner(t, state, "a", qemuLike)
	pool := aheadDir(t, state, "a", out)
	r, err := b.spawnAhead(t.Context(), "a", pool)
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the runner started ahead making its files", fileContains(filepath.Join(pool, "qemu.pid"), "\n"))
	if s, _ := b.Status("a"); s.Active {
		t.Errorf("a runner started ahead shows as the unit: %+v", s)
	}
	if names, _ := b.List(); len(names) != 0 {
		t.Errorf("List shows %v while only a runner started ahead runs", names)
	}
	instance := filepath.Join(state, "a")
	err = b.startThen(t.Context(), "a", r, func(context.Context) error {
		s, err := b.Status("a")
		if err != nil || !s.Active || s.PID != r.h.id.PID || s.Booted != out {
			return fmt.Errorf("status %+v (%v); want the runner started ahead (pid %d) active, booted %s", s, err, r.h.id.PID, out)
		}
		for _, f := range aheadFiles {
			if _, err := os.Stat(filepath.Join(instance, f)); err != nil {
				return fmt.Errorf("not moved into the instance's directory: %w", err)
			}
		}
		if id, err := readPidFile(filepath.Join(instance, "pid")); err != nil || id != r.h.id {
			return fmt.Errorf("the instance's pid file: %v %v; want %v", id, err, r.h.id)
		}
		if _, err := os.Stat(pool); !os.IsNotExist(err) {
			return fmt.Errorf("the pool's directory is still there (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(LogPath(state, "a")); !strings.Contains(string(b), "runner in "+pool) {
		t.Errorf("the instance's console log has %q; want the output of the runner started ahead", b)
	}
	// It is the unit's runner now: a stop ends it, and that is no crash.
	if err := b.Stop(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	if s, _ := b.Status("a"); s.Active || s.Restarting || !strings.Contains(s.Result, "signal: terminated") {
		t.Errorf("after Stop: %+v; want stopped by SIGTERM, no restart", s)
	}
	if err := syscall.Kill(r.h.id.PID, 0); err == nil {
		t.Errorf("the adopted runner (pid %d) still runs after Stop", r.h.id.PID)
	}
}

func TestProcessSpawnsWhenTheRunnerStartedAheadExited(t *testing.T) {
	state := t.TempDir()
	t.Cleanup(func() { killRunners(t, state) })
	b, _ := runBackend(t, state)
	// Fails in the pool's directory, runs in the instance's.
	out := fakeRunner(t, state, "a", "#!/bin/sh\ncase $PWD in */"+PoolDir+"/*) echo cannot >&2; exit 7 ;; esac\nexec sleep 600\n")
	r, err := b.spawnAhead(t.Context(), "a", aheadDir(t, state, "a", out))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the failing runner started ahead did not exit")
	}
	if r.alive() || r.exitResult() != "exit status 7" {
		t.Errorf("alive %v, result %q; want it gone with exit status 7", r.alive(), r.exitResult())
	}
	ran := false
	if err := b.startThen(t.Context(), "a", r, func(context.Context) error { ran = true; return nil }); err != nil {
		t.Fatal(err)
	}
	s, _ := b.Status("a")
	if !ran || !s.Active || s.PID == r.h.id.PID {
		t.Fatalf("status %+v (then ran: %v); want a spawned runner, not pid %d", s, ran, r.h.id.PID)
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", s.PID)); err != nil || cwd != filepath.Join(state, "a") {
		t.Errorf("the spawned runner works in %q (%v); want the instance's directory", cwd, err)
	}
	if _, err := os.Stat(filepath.Join(state, PoolDir, "a")); !os.IsNotExist(err) {
		t.Errorf("the failed runner's pool directory is left (%v)", err)
	}
}

func TestProcessRunKillsRunnersStartedAheadThatNoAgentAdopted(t *testing.T) {
	state := t.TempDir()
	t.Cleanup(func() { killRunners(t, state) })
	b1, stop1 := runBackend(t, state)
	out := fakeRunner(t, state, "a", qemuLike)
	left, err := b1.spawnAhead(t.Context(), "a", aheadDir(t, state, "a", out))
	if err != nil {
		t.Fatal(err)
	}
	fakeRunner(t, state, "b", "#!/bin/sh\nexec sleep 600\n")
	if err := b1.Start(t.Context(), "b"); err != nil {
		t.Fatal(err)
	}
	unit := readPid(t, filepath.Join(state, "b", "pid"))
	// An agent that died between recording an adopted runner as the unit's
	// and removing the pool's record: both pid files name it.
	if err := os.MkdirAll(filepath.Join(state, PoolDir, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writePidFile(filepath.Join(state, PoolDir, "b", "pid"), unit); err != nil {
		t.Fatal(err)
	}
	stop1() // the runners outlive the backend

	b2, _ := runBackend(t, state)
	// Our child: reaped here, which shows how it ended.
	_ = left.cmd.Wait()
	if ws, ok := left.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the runner started ahead ended %v; want killed by the next backend", left.cmd.ProcessState)
	}
	if s, _ := b2.Status("b"); !s.Active || s.PID != unit.PID {
		t.Errorf("unit b: %+v; want its runner (pid %d) adopted, not killed", s, unit.PID)
	}
	if _, err := os.Stat(filepath.Join(state, PoolDir)); !os.IsNotExist(err) {
		t.Errorf("STATE/%s is left (%v)", PoolDir, err)
	}
}

func readPid(t *testing.T, path string) procIdentity {
	t.Helper()
	id, err := readPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestAheadDepth: the pool restores ahead only for snapshot functions'
// instances assigned nowhere, within their restoreAhead, and orders them
// by how many such instances come first.
func TestAheadDepth(t *testing.T) {
	state := func(snapshot bool, ahead int, assigned ...string) *replicated.State {
		st := &replicated.State{Desired: &spec.Cluster{Functions: map[string]spec.Function{
			"f": {Runner: spec.Runner{Out: "/nix/store/f-runner"}, MaxInstances: 5, Snapshot: snapshot, RestoreAhead: ahead},
		}}, Assignments: map[string]replicated.Assignment{}}
		for _, a := range assigned {
			st.Assignments[a] = replicated.Assignment{Node: 2}
		}
		return st
	}
	for _, tc := range []struct {
		name     string
		st       *replicated.State
		instance string
		depth    int
		ok       bool
	}{
		{"the next instance", state(true, 1), "fn-f-0", 0, true},
		{"the second next beyond restoreAhead 1", state(true, 1), "fn-f-1", 1, false},
		{"the second next within restoreAhead 2", state(true, 2), "fn-f-1", 1, true},
		{"assigned instances do not count", state(true, 2, "fn-f-0", "fn-f-1"), "fn-f-3", 1, true},
		{"an assigned instance is not restored ahead", state(true, 2, "fn-f-0"), "fn-f-0", 0, false},
		{"restoreAhead 0", state(true, 0), "fn-f-0", 0, false},
		{"not a snapshot function", state(false, 1), "fn-f-0", 0, false},
		{"another function's instance", state(true, 1), "fn-g-0", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			depth, ok := aheadDepth(tc.st, "f", tc.instance)
			if ok != tc.ok || ok && depth != tc.depth {
				t.Errorf("aheadDepth(%s) = %d, %t; want %d, %t", tc.instance, depth, ok, tc.depth, tc.ok)
			}
		})
	}
}

// TestSortWanted: a pool of two keeps snap's and web's next instances
// rather than both of snap's.
func TestSortWanted(t *testing.T) {
	ws := []poolWant{{Instance: "fn-snap-1", Depth: 1}, {Instance: "fn-web-0"}, {Instance: "fn-snap-0"}, {Instance: "fn-web-1", Depth: 1}}
	sortWanted(ws)
	var got []string
	for _, w := range ws {
		got = append(got, w.Instance)
	}
	if want := []string{"fn-snap-0", "fn-web-0", "fn-snap-1", "fn-web-1"}; !slices.Equal(got, want) {
		t.Errorf("sortWanted = %v, want %v", got, want)
	}
}
