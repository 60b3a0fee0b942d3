package reconciler

import (
	"context"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// recordingStore serves a fixed state and records proposals.
type recordingStore struct {
	st       *replicated.State
	proposed []replicated.Command
}

func (s *recordingStore) Read(context.Context) (*replicated.State, error) { return s.st, nil }
func (s *recordingStore) IsLeader() bool                                  { return true }
func (s *recordingStore) Propose(_ context.Context, cmd replicated.Command) (replicated.Result, error) {
	s.proposed = append(s.proposed, cmd)
	return replicated.Result{Code: replicated.ResultOK}, nil
}

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
	store := &recordingStore{st: &replicated.State{
		Nodes:       mkNodes(mkNode(1, replicated.NodeReady, 4, 4096)),
		Revision:    &replicated.Revision{ID: 5, Commit: "old"},
		Desired:     old,
		Assignments: mkCurrent(db),
	}}
	r := New(Options{Store: store, Source: fixedSource("new"), Evaluator: fixedEval{shrunk}})
	r.fetch(context.Background())
	if err := r.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(store.proposed) != 1 || store.proposed[0].Type != replicated.CmdSetCondition {
		t.Fatalf("proposed %+v, want exactly one SetCondition", store.proposed)
	}
	rec := store.proposed[0].SetCondition
	if rec.Commit != "new" || !strings.Contains(rec.Message, "vms.db.volumes.data: sizeMiB 512 is smaller than the committed 1024") {
		t.Fatalf("recorded %+v, want the shrunk volume named", rec)
	}
}
