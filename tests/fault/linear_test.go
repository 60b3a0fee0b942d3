package fault

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/blixard/blixard/replicated"
)

// op is one recorded operation: a client's read of GET /v1/status (its
// revision id and commit) or a push, with invoke and return times
// (boottime ns). Reads that failed or timed out are not recorded: a read
// changes nothing, so leaving it out loses nothing.
type op struct {
	Client       int // 0: the pusher; N: the reader of node N
	Push         bool
	Call, Return int64
	Rev          uint64 // read: the revision id (0: none yet)
	Commit       string // read: the revision's commit; push: the pushed commit
	Index        int    // push: its number (0 is the initial commit)
	Broken       bool   // push: a flake that does not evaluate
}

type opLog struct {
	mu  sync.Mutex
	ops []op // guarded by mu
}

func (l *opLog) add(o op) {
	l.mu.Lock()
	l.ops = append(l.ops, o)
	l.mu.Unlock()
}

func (l *opLog) snapshot() []op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ops)
}

// The register: the cluster's current revision. Only the leader moves it
// (a CommitPlan), never a client, so the model has no write: a read may see
// any revision at least as new as the last one seen (ids only grow), one id
// names one commit, and a revision's commit was pushed (its push began
// before the read returned) and evaluates (never the broken one).
type regState struct {
	Rev    uint64
	Push   int // the push index of Rev's commit; -1 before any revision
	Pushed int // the highest push linearized so far; -1 before any
}

type readInput struct{ Node int }
type pushInput struct {
	Index  int
	Broken bool
}
type readOutput struct {
	Rev  uint64
	Push int // the push index of the commit read; -1 for a commit never pushed
}

func registerModel(broken map[int]bool) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return regState{Push: -1, Pushed: -1} },
		Step: func(state, input, output any) (bool, any) {
			s := state.(regState)
			switch in := input.(type) {
			case pushInput:
				s.Pushed = max(s.Pushed, in.Index)
				return true, s
			case readInput:
				out := output.(readOutput)
				if out.Rev == 0 {
					return s.Rev == 0, s
				}
				if out.Push < 0 || broken[out.Push] || out.Push > s.Pushed {
					return false, s
				}
				if out.Rev < s.Rev || out.Rev == s.Rev && out.Push != s.Push {
					return false, s
				}
				s.Rev, s.Push = out.Rev, out.Push
				return true, s
			}
			return false, s
		},
		Hash: func(state any) uint64 {
			s := state.(regState)
			return s.Rev*1_000_003 + uint64(s.Push+1)*1_009 + uint64(s.Pushed+1)
		},
		DescribeOperation: func(input, output any) string {
			switch in := input.(type) {
			case pushInput:
				if in.Broken {
					return fmt.Sprintf("push #%d (broken)", in.Index)
				}
				return fmt.Sprintf("push #%d", in.Index)
			case readInput:
				out := output.(readOutput)
				return fmt.Sprintf("node %d read → rev %d (push #%d)", in.Node, out.Rev, out.Push)
			}
			return "?"
		},
		DescribeState: func(state any) string {
			s := state.(regState)
			return fmt.Sprintf("rev %d (push #%d), pushed up to #%d", s.Rev, s.Push, s.Pushed)
		},
	}
}

// porcupineHistory converts ops for the model.
func porcupineHistory(ops []op) ([]porcupine.Operation, map[int]bool) {
	idx := map[string]int{}
	broken := map[int]bool{}
	for _, o := range ops {
		if o.Push {
			idx[o.Commit] = o.Index
			if o.Broken {
				broken[o.Index] = true
			}
		}
	}
	var out []porcupine.Operation
	for _, o := range ops {
		if o.Push {
			out = append(out, porcupine.Operation{ClientId: 0, Input: pushInput{Index: o.Index, Broken: o.Broken}, Call: o.Call,
				Output: nil, Return: o.Return})
			continue
		}
		p, ok := idx[o.Commit]
		if !ok {
			p = -1
		}
		if o.Rev == 0 {
			p = -1
		}
		out = append(out, porcupine.Operation{ClientId: o.Client, Input: readInput{Node: o.Client}, Call: o.Call,
			Output: readOutput{Rev: o.Rev, Push: p}, Return: o.Return})
	}
	return out, broken
}

// checkLinearizable runs porcupine; on Illegal it writes the visualization
// to html (when not "").
func checkLinearizable(ops []op, timeout time.Duration, html string) (porcupine.CheckResult, error) {
	hist, broken := porcupineHistory(ops)
	model := registerModel(broken)
	res, info := porcupine.CheckOperationsVerbose(model, hist, timeout)
	if res == porcupine.Illegal && html != "" {
		return res, porcupine.VisualizePath(model, info, html)
	}
	return res, nil
}

// quickCheck is the same rule as the model, checked pairwise (exact for a
// register that only moves forward: a history is linearizable iff no read
// returns an older revision than a read that returned before it was
// invoked), cheap enough to run during the run, and it names the reads.
func quickCheck(ops []op, rel func(int64) string) []string {
	pushes := map[string]op{}
	var reads []op
	for _, o := range ops {
		if o.Push {
			pushes[o.Commit] = o
		} else {
			reads = append(reads, o)
		}
	}
	var bad []string
	commitOf := map[uint64]op{}
	for _, r := range reads {
		if r.Rev == 0 {
			continue
		}
		p, ok := pushes[r.Commit]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("node %d read revision %d of commit %.12s, which was never pushed (%s)", r.Client, r.Rev, r.Commit, rel(r.Return)))
		case p.Broken:
			bad = append(bad, fmt.Sprintf("node %d read revision %d of the broken commit %.12s (%s)", r.Client, r.Rev, r.Commit, rel(r.Return)))
		case p.Call > r.Return:
			bad = append(bad, fmt.Sprintf("node %d read revision %d of commit %.12s at %s, before its push began at %s", r.Client, r.Rev, r.Commit, rel(r.Return), rel(p.Call)))
		}
		if first, ok := commitOf[r.Rev]; ok && first.Commit != r.Commit {
			bad = append(bad, fmt.Sprintf("revision %d is commit %.12s on node %d (%s) but %.12s on node %d (%s)",
				r.Rev, first.Commit, first.Client, rel(first.Return), r.Commit, r.Client, rel(r.Return)))
		} else if !ok {
			commitOf[r.Rev] = r
		}
	}
	byReturn := slices.Clone(reads)
	slices.SortFunc(byReturn, func(a, b op) int { return cmpInt64(a.Return, b.Return) })
	byCall := slices.Clone(reads)
	slices.SortFunc(byCall, func(a, b op) int { return cmpInt64(a.Call, b.Call) })
	var newest op // the read with the highest revision among those returned so far
	i := 0
	for _, r := range byCall {
		for ; i < len(byReturn) && byReturn[i].Return < r.Call; i++ {
			if byReturn[i].Rev > newest.Rev {
				newest = byReturn[i]
			}
		}
		if r.Rev < newest.Rev {
			bad = append(bad, fmt.Sprintf("stale read: node %d read revision %d (%s–%s) after node %d had read revision %d (returned %s)",
				r.Client, r.Rev, rel(r.Call), rel(r.Return), newest.Client, newest.Rev, rel(newest.Return)))
		}
	}
	return bad
}

// histObs is one GET /v1/history answer.
type histObs struct {
	Node         int
	Call, Return int64
	H            []replicated.Revision
}

// checkHistory checks one history answer: ids grow and each revision's
// parent is the one before; no broken commit; it agrees with every other
// answer on each revision (known collects them), so histories are prefixes
// of each other; and it holds every revision a read saw before the
// request began (the history read is linearizable too), unless trimmed.
func checkHistory(h histObs, reads []op, known map[uint64]replicated.Revision, broken map[string]bool, rel func(int64) string) []string {
	var bad []string
	ids := map[uint64]string{}
	for i, rev := range h.H {
		ids[rev.ID] = rev.Commit
		if i > 0 && (rev.ID <= h.H[i-1].ID || rev.Parent != h.H[i-1].ID) {
			bad = append(bad, fmt.Sprintf("node %d history (%s): revision %d (parent %d) follows revision %d", h.Node, rel(h.Return), rev.ID, rev.Parent, h.H[i-1].ID))
		}
		if broken[rev.Commit] {
			bad = append(bad, fmt.Sprintf("node %d history (%s): revision %d is the broken commit %.12s", h.Node, rel(h.Return), rev.ID, rev.Commit))
		}
		if k, ok := known[rev.ID]; ok && (k.Commit != rev.Commit || k.Parent != rev.Parent) {
			bad = append(bad, fmt.Sprintf("node %d history (%s): revision %d is commit %.12s parent %d, elsewhere commit %.12s parent %d",
				h.Node, rel(h.Return), rev.ID, rev.Commit, rev.Parent, k.Commit, k.Parent))
		} else if !ok {
			known[rev.ID] = rev
		}
	}
	if len(h.H) == 0 {
		return bad
	}
	oldest := h.H[0].ID
	missing := map[uint64]bool{}
	for _, r := range reads {
		if r.Rev == 0 || r.Return >= h.Call || r.Rev < oldest || missing[r.Rev] {
			continue
		}
		if c, ok := ids[r.Rev]; !ok || c != r.Commit {
			missing[r.Rev] = true
			bad = append(bad, fmt.Sprintf("node %d history (%s–%s) lacks revision %d (commit %.12s) that node %d read at %s",
				h.Node, rel(h.Call), rel(h.Return), r.Rev, r.Commit, r.Client, rel(r.Return)))
		}
	}
	return bad
}

func TestRegisterModelAcceptsForwardReadsAndRefusesStaleOnes(t *testing.T) {
	rel := func(ns int64) string { return fmt.Sprintf("%dms", ns/1e6) }
	ms := func(n int64) int64 { return n * 1e6 }
	push := func(i int, commit string, call, ret int64, broken bool) op {
		return op{Push: true, Index: i, Commit: commit, Call: ms(call), Return: ms(ret), Broken: broken}
	}
	read := func(client int, rev uint64, commit string, call, ret int64) op {
		return op{Client: client, Rev: rev, Commit: commit, Call: ms(call), Return: ms(ret)}
	}
	base := []op{push(0, "c0", 0, 1, false), push(1, "c1", 50, 60, false), push(2, "bad", 100, 110, true)}
	tests := []struct {
		name string
		ops  []op
		ok   bool
	}{
		{"reads that only move forward are linearizable", []op{
			read(1, 0, "", 2, 3), read(2, 5, "c0", 10, 20), read(3, 5, "c0", 15, 25), read(1, 9, "c1", 61, 70), read(2, 12, "c0", 120, 130)}, true},
		{"concurrent reads may see either side of a commit", []op{
			read(1, 5, "c0", 10, 20), read(2, 9, "c1", 55, 80), read(3, 5, "c0", 56, 79)}, true},
		{"a read older than one that returned before it began is stale", []op{
			read(1, 5, "c0", 10, 20), read(2, 9, "c1", 61, 70), read(3, 5, "c0", 71, 80)}, false},
		{"a revision id with two commits is refused", []op{
			read(1, 5, "c0", 10, 20), read(2, 5, "c1", 61, 70)}, false},
		{"a commit seen before its push began is refused", []op{
			read(1, 9, "c1", 10, 20)}, false},
		{"the broken commit is never a revision", []op{
			read(1, 5, "c0", 10, 20), read(2, 11, "bad", 111, 120)}, false},
		{"no revision after a revision is stale", []op{
			read(1, 5, "c0", 10, 20), read(2, 0, "", 30, 40)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops := append(slices.Clone(base), tt.ops...)
			res, err := checkLinearizable(ops, 10*time.Second, "")
			if err != nil {
				t.Fatal(err)
			}
			if (res == porcupine.Ok) != tt.ok {
				t.Errorf("porcupine: %s, want ok %v", res, tt.ok)
			}
			// quickCheck does not model "no revision" reads; it agrees on the rest.
			if tt.name != "no revision after a revision is stale" {
				if bad := quickCheck(ops, rel); (len(bad) == 0) != tt.ok {
					t.Errorf("quickCheck: %v, want ok %v", bad, tt.ok)
				}
			}
		})
	}
}

func TestCheckHistory(t *testing.T) {
	rel := func(ns int64) string { return fmt.Sprint(ns) }
	rev := func(id, parent uint64, commit string) replicated.Revision {
		return replicated.Revision{ID: id, Parent: parent, Commit: commit}
	}
	reads := []op{{Client: 1, Rev: 5, Commit: "a", Call: 1, Return: 2}, {Client: 2, Rev: 9, Commit: "b", Call: 3, Return: 4}}
	good := histObs{Node: 1, Call: 10, Return: 11, H: []replicated.Revision{rev(5, 0, "a"), rev(9, 5, "b"), rev(12, 9, "b")}}
	known := map[uint64]replicated.Revision{}
	if bad := checkHistory(good, reads, known, nil, rel); len(bad) != 0 {
		t.Fatalf("a good history: %v", bad)
	}
	for name, h := range map[string]histObs{
		"a gap in the parent chain":       {Node: 2, Call: 10, H: []replicated.Revision{rev(5, 0, "a"), rev(12, 9, "b")}},
		"a revision read earlier is lost": {Node: 2, Call: 10, H: []replicated.Revision{rev(5, 0, "a")}},
		"another commit for a revision":   {Node: 2, Call: 10, H: []replicated.Revision{rev(5, 0, "a"), rev(9, 5, "c")}},
		"the broken commit":               {Node: 2, Call: 10, H: []replicated.Revision{rev(5, 0, "a"), rev(9, 5, "b"), rev(13, 9, "x")}},
	} {
		if bad := checkHistory(h, reads, known, map[string]bool{"x": true}, rel); len(bad) == 0 {
			t.Errorf("%s: no violation found", name)
		}
	}
}
