package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

func TestCrashRestarts(t *testing.T) {
	for _, tc := range []struct {
		name               string
		seen, read         map[string]int
		listed             []string
		wantAdded, wantSee map[string]int
	}{
		{"first sight is history, not counted", map[string]int{}, map[string]int{"a": 4}, []string{"a"},
			map[string]int{}, map[string]int{"a": 4}},
		{"an increase counts the difference", map[string]int{"a": 1}, map[string]int{"a": 3}, []string{"a"},
			map[string]int{"a": 2}, map[string]int{"a": 3}},
		{"a reset to zero counts nothing", map[string]int{"a": 3}, map[string]int{"a": 0}, []string{"a"},
			map[string]int{}, map[string]int{"a": 0}},
		{"a reset then crashes counts what it shows", map[string]int{"a": 3}, map[string]int{"a": 1}, []string{"a"},
			map[string]int{"a": 1}, map[string]int{"a": 1}},
		{"a VM not read keeps its count", map[string]int{"a": 2}, map[string]int{}, []string{"a"},
			map[string]int{}, map[string]int{"a": 2}},
		{"a VM gone is forgotten", map[string]int{"a": 2, "b": 1}, map[string]int{"b": 1}, []string{"b"},
			map[string]int{}, map[string]int{"b": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listed := map[string]bool{}
			for _, vm := range tc.listed {
				listed[vm] = true
			}
			seen := maps.Clone(tc.seen)
			added := crashRestarts(seen, tc.read, listed)
			if !maps.Equal(added, tc.wantAdded) || !maps.Equal(seen, tc.wantSee) {
				t.Errorf("added %v, seen %v; want %v, %v", added, seen, tc.wantAdded, tc.wantSee)
			}
		})
	}
}

func TestObserveOpLeavesCanceledOut(t *testing.T) {
	m := &recordedMetrics{}
	observeOp(m, "a", ActRealise, time.Second, true, nil)
	observeOp(m, "a", ActAttach, time.Second, false, errors.New("no ceph"))
	observeOp(m, "a", ActStart, time.Second, false, fmt.Errorf("start: %w", context.Canceled))
	observeOp(m, "a", ActRestart, time.Second, false, nil)
	observeOp(m, "a", ActStop, time.Second, false, nil)
	want := []string{"realise built=true err=<nil>", "attach err=no ceph", "start err=<nil>", "restart a requested 1"}
	if got := m.get(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("observed %q, want %q", got, want)
	}
}

// recordedMetrics records what the agent reports, in order.
type recordedMetrics struct {
	mu  sync.Mutex
	obs []string
}

func (m *recordedMetrics) add(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.obs = append(m.obs, fmt.Sprintf(format, args...))
}

func (m *recordedMetrics) get() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.obs...)
}

func (m *recordedMetrics) ObserveRealise(_ time.Duration, built bool, err error) {
	m.add("realise built=%t err=%v", built, err)
}
func (m *recordedMetrics) ObserveAttach(_ time.Duration, err error) { m.add("attach err=%v", err) }
func (m *recordedMetrics) ObserveStart(_ time.Duration, err error)  { m.add("start err=%v", err) }
func (m *recordedMetrics) CountRestarts(vm, reason string, n int) {
	m.add("restart %s %s %d", vm, reason, n)
}
func (m *recordedMetrics) ObserveRestore(_ time.Duration, startedAhead bool, err error) {
	m.add("restore ahead=%t err=%v", startedAhead, err)
}
func (m *recordedMetrics) SetRestorePool(n int) { m.add("pool %d", n) }

func (m *recordedMetrics) has(prefix string) error {
	for _, o := range m.get() {
		if strings.HasPrefix(o, prefix) {
			return nil
		}
	}
	return fmt.Errorf("no %q among %q", prefix, m.get())
}

// buildLog collects the agent's build reports.
type buildLog struct {
	mu      sync.Mutex
	reports []BuildProgress
}

func (b *buildLog) add(p BuildProgress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reports = append(b.reports, p)
}

func (b *buildLog) get() []BuildProgress {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]BuildProgress(nil), b.reports...)
}

// A real build of a runner from its .drv reports its start, the builder's
// own lines and its end, and the agent's metrics see the realisation (as a
// build), the start, and the restarts of a crashing runner.
func TestNixAgentReportsBuildProgressAndMetrics(t *testing.T) {
	e := newEnv(t)
	script := `echo compiling-step-one; echo compiling-step-two >&2; /bin/mkdir -p $out/bin; ` +
		`printf '#!/bin/sh\necho up\nexec /bin/sleep 1000\n' > $out/bin/microvm-run; /bin/chmod +x $out/bin/microvm-run`
	drv, err := runNix(t.Context(), "nix-instantiate", "-E", fmt.Sprintf(`builtins.derivation {
  name = "runner"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" %q ]; nonce = "%s-%d";
}`, script, t.Name(), time.Now().UnixNano()))
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	d := strings.TrimSpace(string(drv))
	out, err := runNix(t.Context(), "nix-store", "--query", "--outputs", d)
	if err != nil {
		t.Fatal(err)
	}
	e.state.put(replicated.Assignment{VM: "a", Declared: "a", Node: testNode, Drv: d, OutPath: strings.TrimSpace(string(out))})
	e.state.assign("crashy", testNode, makeRunner(t, runnerSpec{crash: true}).build(t))
	m, builds := &recordedMetrics{}, &buildLog{}
	e.start(func(o *Options) {
		o.Metrics, o.OnBuild = m, builds.add
	})
	e.waitPhase("a", replicated.PhaseRunning, nil)
	e.waitPhase("crashy", replicated.PhaseFailed, nil)
	testkit.WaitFor(t, waitTimeout, "metrics", func() error {
		for _, want := range []string{"realise built=true err=<nil>", "start err=<nil>", "restart crashy crash "} {
			if err := m.has(want); err != nil {
				return err
			}
		}
		return nil
	})
	var lines []string
	var started, done bool
	for _, p := range builds.get() {
		if p.VM != "a" || !strings.Contains(p.How, d) || p.Started.IsZero() {
			t.Errorf("report %+v: want VM a building from %s, with its start", p, d)
		}
		switch {
		case p.Done:
			done = p.Err == nil
		case p.Line == "":
			started = true
		default:
			lines = append(lines, p.Line)
		}
	}
	all := strings.Join(lines, "\n")
	if !started || !done || !strings.Contains(all, "compiling-step-one") || !strings.Contains(all, "compiling-step-two") {
		t.Errorf("build reports: started %t, done %t, lines %q; want both builder lines between start and end", started, done, lines)
	}
}
