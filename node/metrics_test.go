package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/node"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

// metricsFlake has two VMs whose runners are built on the node (the nonce
// makes them new to the store): web, whose build prints two lines, and
// crashy, whose runner exits once before it stays up (a crash restart).
const metricsFlake = `{
  outputs = { self }: let
    runner = name: run: builtins.derivation {
      inherit name run;
      system = "x86_64-linux";
      builder = "/bin/sh";
      nonce = "NONCE";
      args = [ "-c" "echo compiling-${name}; echo linking-${name} >&2; /bin/mkdir -p $out/bin && printf '%s' \"$run\" > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "metrics";
      vms.web = { runner = runner "web" "#!/bin/sh\necho up\nexec /bin/sleep 1000\n"; vcpu = 1; memMiB = 64; };
      vms.crashy = {
        runner = runner "crashy" "#!/bin/sh\nif [ ! -e crashed-once ]; then /bin/touch crashed-once; echo crashing; exit 3; fi\necho up\nexec /bin/sleep 1000\n";
        vcpu = 1; memMiB = 32;
      };
    };
  };
}
`

// scrape GETs /metrics and parses it.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// value is the value (a histogram's count) of family name's series whose
// labels include want; ok false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		match := true
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetSummary() != nil:
			return float64(m.GetSummary().GetSampleCount()), true
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func labelString(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// builds records the node's build reports.
type builds struct {
	mu  sync.Mutex
	got []nodeagent.BuildProgress
}

func (b *builds) add(p nodeagent.BuildProgress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.got = append(b.got, p)
}

// TestNixNodeMetricsAndDashboard runs a real one-node cluster on a working
// tree (Raft, reconciler, agent with the process backend, real nix builds)
// and scrapes its GET /metrics after a push ran: every histogram of the
// pipeline has counted, the replica's gauges say what status says, the
// crash restart and the runtime's series are there, and every series the
// Grafana dashboard in examples/grafana queries exists in the scrape.
func TestNixNodeMetricsAndDashboard(t *testing.T) {
	flake := t.TempDir()
	src := strings.ReplaceAll(metricsFlake, "NONCE", fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano()))
	if err := os.WriteFile(filepath.Join(flake, "flake.nix"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	dataDir := t.TempDir()
	b := &builds{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- node.Run(ctx, node.Config{NodeID: 1, DataDir: dataDir, APIListener: ln, Insecure: true, QuietRaftLog: true,
			Heartbeat: 100 * time.Millisecond, Poll: time.Second, Capacity: replicated.Resources{VCPU: 4, MemMiB: 1024},
			Source: node.Source{Worktree: flake, Debounce: 50 * time.Millisecond}, StateDir: filepath.Join(dataDir, "vms"),
			Backend: node.BackendProcess, StopOnExit: true, RestartBackoff: 50 * time.Millisecond, OnBuild: b.add})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("Run did not return within 60s of cancel")
		}
	})
	c, err := api.NewClient(addr, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 120*time.Second, "web and crashy running", func() error {
		st, err := c.Status(context.Background())
		if err != nil {
			return err
		}
		running := 0
		for _, vm := range st.VMs {
			if vm.Phase == replicated.PhaseRunning {
				running++
			}
		}
		if running != 2 {
			return fmt.Errorf("VMs %+v", st.VMs)
		}
		return nil
	})

	// The leader measures the push at its next pass after the heartbeat
	// that reported both running, and re-plans the running revision at the
	// first pass after it committed the plan — possibly that same pass, so
	// a scrape may fall between the two; the agent counts the crash at its
	// pass after the backend restarted the runner.
	var fams map[string]*dto.MetricFamily
	testkit.WaitFor(t, 30*time.Second, "the push measured, the revision re-planned and the crash counted", func() error {
		fams = scrape(t, addr)
		if n, _ := value(fams, "blixard_push_to_running_seconds", nil); n < 1 {
			return errors.New("no push to running measured yet")
		}
		if n, _ := value(fams, "blixard_plan_duration_seconds", map[string]string{"kind": "replan"}); n < 1 {
			return errors.New("no re-plan of the running revision measured yet")
		}
		if n, _ := value(fams, "blixard_vm_restarts_total", map[string]string{"vm": "crashy", "reason": nodeagent.RestartCrash}); n < 1 {
			return errors.New("no crash restart of crashy counted yet")
		}
		return nil
	})
	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"blixard_fetch_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_eval_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_plan_duration_seconds", map[string]string{"kind": "commit"}, 1},
		{"blixard_plan_duration_seconds", map[string]string{"kind": "replan"}, 1},
		{"blixard_commit_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_realise_duration_seconds", map[string]string{"result": "ok", "built": "true"}, 2},
		{"blixard_start_duration_seconds", map[string]string{"result": "ok"}, 2},
		{"blixard_vm_phase", map[string]string{"vm": "web", "node": "1", "phase": "running"}, 1},
		{"blixard_vm_health", map[string]string{"vm": "crashy", "health": "healthy"}, 1},
		{"blixard_vms", map[string]string{"phase": "running"}, 2},
		{"blixard_node_is_leader", map[string]string{"node": "1"}, 1},
		{"blixard_node_capacity_vcpu", map[string]string{"node": "1"}, 4},
		{"blixard_node_allocated_memory_bytes", map[string]string{"node": "1"}, 96 << 20},
		{"blixard_node_instances", map[string]string{"node": "1"}, 2},
		{"blixard_raft_leader_changes_total", nil, 1},
		{"blixard_revision", nil, 1},
		{"blixard_applied_index", nil, 1},
		{"go_goroutines", nil, 1},
		{"process_cpu_seconds_total", nil, 0},
	} {
		if v, ok := value(fams, tc.name, tc.labels); !ok || v < tc.min {
			t.Errorf("%s%v = %v (present %t), want ≥ %v", tc.name, tc.labels, v, ok, tc.min)
		}
	}
	// What this run measured, for the record (not asserted: timing).
	for _, name := range []string{"blixard_push_to_running_seconds", "blixard_fetch_duration_seconds", "blixard_eval_duration_seconds",
		"blixard_plan_duration_seconds", "blixard_commit_duration_seconds", "blixard_realise_duration_seconds", "blixard_start_duration_seconds"} {
		for _, m := range fams[name].GetMetric() {
			if h := m.GetHistogram(); h.GetSampleCount() > 0 {
				t.Logf("%s%v: %d, mean %.4fs", name, labelString(m), h.GetSampleCount(), h.GetSampleSum()/float64(h.GetSampleCount()))
			}
		}
	}
	if v, ok := value(fams, "blixard_vm_phase", map[string]string{"vm": "web", "phase": "pending"}); !ok || v != 0 {
		t.Errorf("web pending = %v, %t; want a 0 series beside the running one", v, ok)
	}
	if _, ok := value(fams, "blixard_raft_apply_lag_entries", nil); !ok {
		t.Error("no apply lag")
	}

	// The builds reported their start, the builders' own lines and end.
	b.mu.Lock()
	var lines []string
	ended := map[string]bool{}
	for _, p := range b.got {
		if p.Line != "" {
			lines = append(lines, p.VM+": "+p.Line)
		}
		if p.Done && p.Err == nil {
			ended[p.VM] = true
		}
	}
	b.mu.Unlock()
	all := strings.Join(lines, "\n")
	for _, want := range []string{"web: compiling-web", "web: linking-web", "crashy: compiling-crashy"} {
		if !strings.Contains(all, want) {
			t.Errorf("build lines lack %q:\n%s", want, all)
		}
	}
	if !ended["web"] || !ended["crashy"] {
		t.Errorf("builds ended: %v, want both", ended)
	}

	checkDashboard(t, filepath.Join("..", "examples", "grafana", "blixard-dashboard.json"), fams)
}

// checkDashboard parses the Grafana dashboard at path and checks that it
// is one Grafana can import and that every series its queries name exists
// in fams, a real scrape.
func checkDashboard(t *testing.T, path string, fams map[string]*dto.MetricFamily) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	}
	type panel struct {
		ID         int             `json:"id"`
		Type       string          `json:"type"`
		Title      string          `json:"title"`
		Datasource json.RawMessage `json:"datasource"`
		GridPos    struct{ H, W, X, Y int }
		Targets    []target `json:"targets"`
		Panels     []panel  `json:"panels"`
	}
	var d struct {
		Title         string  `json:"title"`
		UID           string  `json:"uid"`
		SchemaVersion int     `json:"schemaVersion"`
		Panels        []panel `json:"panels"`
		Templating    struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 30 || len(d.Panels) == 0 {
		t.Fatalf("%s: title %q, uid %q, schemaVersion %d, %d panels: not a dashboard Grafana imports", path, d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}
	if len(d.Templating.List) == 0 || d.Templating.List[0].Type != "datasource" {
		t.Errorf("%s: want a datasource variable, so the dashboard imports into any Grafana", path)
	}
	metricRE := regexp.MustCompile(`\b(?:blixard|go|process)_[a-zA-Z0-9_]+`)
	queried := map[string]bool{}
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", p.Title, p.GridPos)
			}
			if p.Type != "row" && (len(p.Targets) == 0 || len(p.Datasource) == 0) {
				t.Errorf("panel %q queries nothing or has no datasource", p.Title)
			}
			for _, tg := range p.Targets {
				if tg.RefID == "" || tg.Expr == "" {
					t.Errorf("panel %q: a target without refId or expr", p.Title)
				}
				for _, m := range metricRE.FindAllString(tg.Expr, -1) {
					queried[m] = true
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	var names []string
	for m := range queried {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		family := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(m, suffix); ok && fams[m] == nil {
				family = base
			}
		}
		if fams[family] == nil {
			t.Errorf("the dashboard queries %s, which a scrape of a running node lacks", m)
		}
	}
	if len(names) < 20 {
		t.Errorf("the dashboard queries only %d series: %v", len(names), names)
	}
}
