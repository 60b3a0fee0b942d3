package reconciler

import (
	"context"
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

type fixedSource string

func (f fixedSource) Fetch(context.Context) (Fetched, error) { return Fetched{Commit: string(f)}, nil }

type fixedEval struct{ c *spec.Cluster }

func (f fixedEval) Evaluate(context.Context, string) (Evaluation, error) {
	return Evaluation{Spec: f.c, Hash: "h"}, nil
}

func TestPassRefusesAVolumeShrinkAsAnEvalError(t *testing.T) {
	old := mkCluster(map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 1024)})
	shrunk := mkCluster(map[string]spec.VM{"db": withVolume(mkVM("db", 1, 512), "data", 512)})
	db := mkAssign("db", 1, "db", 1, 512, 5)
	db.Volumes = old.VolumesOf(old.Instances()[0])
	store := testkit.NewStore(&replicated.State{
		Nodes:       mkNodes(withCeph(mkNode(1, replicated.NodeReady, 4, 4096))),
		Revision:    &replicated.Revision{ID: 5, Commit: "old"},
		Desired:     old,
		Assignments: mkCurrent(db),
	})
	r := newTestReconciler(t, Options{Store: store, Source: fixedSource("new"), Evaluator: fixedEval{shrunk}})
	if _, err := settle(t, context.Background(), r); err != nil {
		t.Fatal(err)
	}
	proposed := store.Proposed()
	if len(proposed) != 1 || proposed[0].Type != replicated.CmdSetCondition {
		t.Fatalf("proposed %+v, want exactly one SetCondition", proposed)
	}
	rec := proposed[0].SetCondition
	if rec.Commit != "new" || rec.Retryable || !strings.Contains(rec.Message, "vms.db.volumes.data: sizeMiB 512 is smaller than the committed 1024") {
		t.Fatalf("recorded %+v, want the shrunk volume named, not retryable", rec)
	}
}
