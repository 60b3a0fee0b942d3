package main

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	nixprogress "github.com/blixard/blixard/progress"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// TestProgressPrinter drives the printer with a clock of its own: what it
// shows of one build and one evaluation running side by side.
func TestProgressPrinter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	drv := "from /nix/store/0123456789abcdfghijklmnpqrsvwxyz-web-runner.drv"
	type step func(p *progressPrinter)
	build := func(b nodeagent.BuildProgress, d time.Duration) step {
		return func(p *progressPrinter) { b.VM, b.How, b.Started = "web", drv, t0; p.build(b, at(d)) }
	}
	line := func(l string, d time.Duration) step {
		return build(nodeagent.BuildProgress{Line: l}, d)
	}
	tick := func(d time.Duration) step { return func(p *progressPrinter) { p.tick(at(d)) } }
	for _, tc := range []struct {
		name  string
		steps []step
		want  []string
	}{
		{"a quick build shows its start, its first line and its end", []step{build(nodeagent.BuildProgress{}, 0),
			line("compiling", 100*time.Millisecond), line("linking", 200*time.Millisecond),
			build(nodeagent.BuildProgress{Done: true}, 300*time.Millisecond)},
			[]string{"building web (from web-runner.drv) …", "building web (from web-runner.drv): 100ms  compiling",
				"building web (from web-runner.drv): done in 300ms"}},
		{"after the first, lines come at most once a second, the latest shown at the next tick", []step{build(nodeagent.BuildProgress{}, 0),
			line("zero", 100*time.Millisecond), line("one", 1100*time.Millisecond), line("two", 1200*time.Millisecond),
			line("three", 1300*time.Millisecond), tick(1500 * time.Millisecond), tick(2200 * time.Millisecond), tick(2300 * time.Millisecond)},
			[]string{"building web (from web-runner.drv) …", "building web (from web-runner.drv): 100ms  zero",
				"building web (from web-runner.drv): 1.1s  one", "building web (from web-runner.drv): 2.2s  three"}},
		{"silence shows the time so far every 10 s", []step{build(nodeagent.BuildProgress{}, 0), line("unpacking", 2*time.Second),
			tick(5 * time.Second), tick(11 * time.Second), tick(12 * time.Second), tick(25 * time.Second)},
			[]string{"building web (from web-runner.drv) …", "building web (from web-runner.drv): 2s  unpacking",
				"building web (from web-runner.drv): 12s  unpacking", "building web (from web-runner.drv): 25s  unpacking"}},
		{"a failure says so", []step{build(nodeagent.BuildProgress{}, 0), build(nodeagent.BuildProgress{Done: true, Err: errors.New("exit 1")}, 75*time.Second)},
			[]string{"building web (from web-runner.drv) …", "building web (from web-runner.drv): failed after 1m15s"}},
		{"a line before the start starts it; an end never started shows nothing", []step{line("late", time.Second),
			func(p *progressPrinter) { p.done("other", nil, at(2*time.Second)) }},
			[]string{"building web (from web-runner.drv) …", "building web (from web-runner.drv): 1s  late"}},
		{"a long line is clipped", []step{line(strings.Repeat("x", 300), 2*time.Second)},
			[]string{"building web (from web-runner.drv) …", "building web (from web-runner.drv): 2s  " + strings.Repeat("x", progressLineMax-1) + "…"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			p := newProgressPrinter(&out)
			for _, s := range tc.steps {
				s(p)
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// talkingEval reports a line through the context, as nix's would arrive,
// and plans commit b.
type talkingEval struct{ spec reconciler.Evaluation }

func (e talkingEval) Evaluate(ctx context.Context, commit string) (reconciler.Evaluation, error) {
	nixprogress.Report(ctx, "fetching 'git+file:///srv/cluster.git?rev="+commit+"'")
	if commit != strings.Repeat("b", 40) {
		return reconciler.Evaluation{}, errors.New("cannot evaluate " + commit)
	}
	return e.spec, nil
}

// `plan --commit --progress` shows the node's stages and nix's line on
// stderr and the plan on stdout; without --progress (stderr is no
// terminal here) stderr stays quiet.
func TestPlanCommitShowsProgress(t *testing.T) {
	st := testkit.NewStore(nil)
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Plan(0, "c1", testkit.Assign("web", 1, "v1"))} {
		st.Propose(context.Background(), cmd)
	}
	v2 := testkit.Plan(0, "", testkit.Assign("web", 1, "v2")).CommitPlan.Spec
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1),
		Evaluator: talkingEval{reconciler.Evaluation{Spec: v2}}, Insecure: true}).Handler())
	defer srv.Close()
	commit := strings.Repeat("b", 40)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"plan", "--commit", commit, "--progress", "--server", srv.URL}, &out, &errb); code != 2 {
		t.Fatalf("exit %d, want 2 (changes)\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "web") || strings.Contains(out.String(), "evaluating") {
		t.Errorf("stdout %q: want the plan alone", out.String())
	}
	for _, want := range []string{"evaluating commit bbbbbbbbbbbb …", "fetching 'git+file:///srv/cluster.git?rev=" + commit} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"plan", "--commit", commit, "--server", srv.URL}, &out, &errb); code != 2 || errb.Len() != 0 {
		t.Errorf("without --progress: exit %d, stderr %q; want 2 and nothing on stderr", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"plan", "--commit", strings.Repeat("c", 40), "--progress", "--server", srv.URL}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "cannot evaluate") {
		t.Errorf("a failing evaluation: exit %d, stderr %q", code, errb.String())
	}
}

// `plan --flake --progress` runs a real nix evaluation here and shows its
// lines (a trace) while it runs, and how long it took.
func TestNixPlanFlakeShowsProgress(t *testing.T) {
	dir := t.TempDir()
	flake := `{
  outputs = { self }: {
    blixard = builtins.trace "progress-from-nix" {
      cluster = "c";
      vms.web = {
        runner = builtins.derivation { name = "web-runner"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
        vcpu = 1; memMiB = 64;
      };
    };
  };
}`
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	st := testkit.NewStore(nil)
	st.Propose(context.Background(), testkit.Register(1))
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true}).Handler())
	defer srv.Close()
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"plan", "--flake", dir, "--progress", "--server", srv.URL}, &out, &errb); code != 2 {
		t.Fatalf("exit %d, want 2 (web is new)\n%s%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"evaluating " + dir + " …", "trace: progress-from-nix", "evaluating " + dir + ": done in "} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	if !strings.Contains(out.String(), "web") {
		t.Errorf("stdout lacks the plan:\n%s", out.String())
	}
}

// `blixard dev` hands the agent's build reports to its printer.
func TestDevConfigPassesBuildReports(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte("{ }"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []nodeagent.BuildProgress
	o := &devOptions{apiAddr: "127.0.0.1:0", dataDir: t.TempDir()}
	cfg, err := o.config(dir, &bytes.Buffer{}, func(b nodeagent.BuildProgress) { got = append(got, b) })
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnBuild(nodeagent.BuildProgress{VM: "web"})
	if len(got) != 1 || got[0].VM != "web" {
		t.Errorf("reports %+v", got)
	}
}
