package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/progress"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/spec"
)

// talkingSource reports a line while it fetches, as nix's fetchers would.
type talkingSource struct{}

func (talkingSource) Fetch(ctx context.Context) (reconciler.Fetched, error) {
	progress.Report(ctx, "fetching 'git+file:///srv/cluster.git'")
	return reconciler.Fetched{Commit: commitB}, nil
}

// talkingEvaluator reports a line, waits until the test saw it arrive at
// the client (so the stream is shown to carry progress while the
// evaluation runs, not after), then answers.
type talkingEvaluator struct {
	seen chan struct{}
	err  error
}

func (e talkingEvaluator) Evaluate(ctx context.Context, commit string) (reconciler.Evaluation, error) {
	progress.Report(ctx, "trace: evaluating web")
	select {
	case <-e.seen:
	case <-ctx.Done():
		return reconciler.Evaluation{}, ctx.Err()
	}
	if e.err != nil {
		return reconciler.Evaluation{}, e.err
	}
	return reconciler.Evaluation{Spec: desired("v2"), Hash: "h"}, nil
}

func progressServer(t *testing.T, ev reconciler.Evaluator) *api.Client {
	t.Helper()
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1),
		Source: talkingSource{}, Evaluator: ev, Insecure: true}).Handler())
	t.Cleanup(srv.Close)
	c, err := api.NewClient(srv.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// progressLog collects a plan's progress and closes seen once nix's
// evaluation line arrived.
type progressLog struct {
	mu    sync.Mutex
	got   []api.PlanProgress
	seen  chan struct{}
	once  sync.Once
	wants string
}

func (p *progressLog) report(pp api.PlanProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, pp)
	if pp.Stage == "evaluating" && pp.Line == p.wants {
		p.once.Do(func() { close(p.seen) })
	}
}

func TestPlanStreamsProgressThenThePlan(t *testing.T) {
	log := &progressLog{seen: make(chan struct{}), wants: "trace: evaluating web"}
	c := progressServer(t, talkingEvaluator{seen: log.seen})
	v, err := c.PlanWithProgress(t.Context(), commitB, log.report)
	if err != nil {
		t.Fatal(err)
	}
	if v.Commit != commitB || !v.HasChanges || !strings.Contains(v.Summary, "change") {
		t.Errorf("plan %+v, want commit B with a change", v)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.got) < 2 || log.got[0].Stage != "fetching" || log.got[0].Commit != commitB {
		t.Fatalf("progress %+v: want it to start with fetching commit B", log.got)
	}
	last := log.got[len(log.got)-1]
	if last.Stage != "evaluating" || last.Line != "trace: evaluating web" || last.Elapsed < 0 {
		t.Errorf("last progress %+v: want evaluating with nix's line", last)
	}
	for i := 1; i < len(log.got); i++ {
		if log.got[i].Elapsed < log.got[i-1].Elapsed {
			t.Errorf("elapsed went back: %+v", log.got)
		}
	}
}

func TestPlanStreamCarriesTheEvaluationError(t *testing.T) {
	log := &progressLog{seen: make(chan struct{}), wants: "trace: evaluating web"}
	c := progressServer(t, talkingEvaluator{seen: log.seen, err: errors.New("error: attribute 'runner' missing")})
	_, err := c.PlanWithProgress(t.Context(), commitB, log.report)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != http.StatusUnprocessableEntity || !strings.Contains(ae.Message, "attribute 'runner' missing") ||
		!strings.Contains(ae.Message, commitB) {
		t.Fatalf("error %v, want the 422 of a failed evaluation naming the commit", err)
	}
}

// Errors before the stream starts are ordinary answers, and a client that
// asks for nothing gets the one JSON answer it always got.
func TestPlanStreamOnlyWhenAsked(t *testing.T) {
	c := progressServer(t, fakeEvaluator{map[string]*spec.Cluster{commitB: desired("v2")}})
	if _, err := c.PlanWithProgress(t.Context(), "nope", nil); err == nil || !strings.Contains(err.Error(), "40-digit") {
		t.Errorf("a bad commit: %v, want the 400 answer", err)
	}
	v, err := c.Plan(t.Context(), commitB)
	if err != nil || v.Commit != commitB {
		t.Fatalf("plain plan: %+v, %v", v, err)
	}
	// A node that does not stream (an older one) answers with the plan.
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}))
	defer old.Close()
	oc, err := api.NewClient(old.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	called := false
	got, err := oc.PlanWithProgress(t.Context(), commitB, func(api.PlanProgress) { called = true })
	if err != nil || got.Commit != commitB || called {
		t.Errorf("from a node that does not stream: %+v, %v, progress called %t", got.Commit, err, called)
	}
}

func TestPlanStreamEndsWithTheRequest(t *testing.T) {
	log := &progressLog{seen: make(chan struct{}), wants: "never"}
	c := progressServer(t, talkingEvaluator{seen: log.seen})
	ctx, cancel := context.WithCancel(t.Context())
	var once sync.Once
	_, err := c.PlanWithProgress(ctx, commitB, func(p api.PlanProgress) {
		if p.Line == "trace: evaluating web" {
			once.Do(cancel) // the user pressed Ctrl-C during the evaluation
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want the cancellation", err)
	}
}
