package fault

import (
	"fmt"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// summary is what a run reports.
type summary struct {
	cfg                  runConfig
	dir                  string
	upIn, converged      time.Duration
	injected             []*injection
	pushes, brokenPushes int
	reads, histories     int
	revisions, readied   int
	porcupine            porcupine.CheckResult
	porcupineTook        time.Duration
	overlaps             []judged
	fencing              fencing
	violations           []string
	rel                  func(int64) string
}

type judged struct {
	o overlap
	v verdict
}

func (s *summary) String() string {
	rel := s.rel
	if rel == nil {
		rel = func(ns int64) string { return fmt.Sprint(ns) }
	}
	var b strings.Builder
	result := "PASS"
	if len(s.violations) > 0 {
		result = "FAIL"
	}
	fmt.Fprintf(&b, "=== fault run: seed %d, duration %v, %d nodes, --node-timeout %v, --lease %v, overlap grace %v, strict %v: %s\n",
		s.cfg.Seed, s.cfg.Duration, s.cfg.Nodes, s.cfg.NodeTimeout, s.cfg.Lease, s.cfg.Grace, s.cfg.Strict, result)
	fmt.Fprintf(&b, "cluster up in %v; %d faults injected:\n", s.upIn.Round(100*time.Millisecond), len(s.injected))
	counts := map[kind]int{}
	var maxRecov time.Duration
	leaderChanges := 0
	for _, in := range s.injected {
		counts[in.f.Kind]++
		recov := time.Duration(in.recov - in.healed)
		if in.recov == 0 {
			recov = -1
		}
		maxRecov = max(maxRecov, recov)
		fmt.Fprintf(&b, "  #%-3d %s %-19s %s; healed %s, recovered in %v, leader %d → %d\n", in.f.N, rel(in.at), in.f.Kind, in.desc,
			rel(in.healed), recov.Round(100*time.Millisecond), in.leaderBefore, in.leaderAfter)
		if in.leaderAfter != 0 && in.leaderAfter != in.leaderBefore {
			leaderChanges++
		}
	}
	var kinds []string
	for _, w := range allKinds {
		if counts[w.k] > 0 {
			kinds = append(kinds, fmt.Sprintf("%s ×%d", w.k, counts[w.k]))
		}
	}
	fmt.Fprintf(&b, "  by kind: %s; the leader changed across %d of them; slowest recovery (every node answers a linearizable read, one leader) %v\n",
		strings.Join(kinds, ", "), leaderChanges, maxRecov.Round(100*time.Millisecond))
	fmt.Fprintf(&b, "pushes: %d (%d broken, each followed by a fixed one); operator readied nodes %d times\n", s.pushes, s.brokenPushes, s.readied)
	var maxOv, maxPast time.Duration
	bad := 0
	for _, j := range s.overlaps {
		maxOv = max(maxOv, j.o.Duration())
		maxPast = max(maxPast, j.v.PastHeal)
		if !j.v.Allowed {
			bad++
		}
	}
	ok := func(v bool) string {
		if v {
			return "ok"
		}
		return "FAILED"
	}
	oneCopy, lin, hist := true, true, true
	for _, v := range s.violations {
		switch {
		case strings.Contains(v, "one copy:"):
			oneCopy = false
		case strings.Contains(v, "linearizability:"):
			lin = false
		case strings.Contains(v, "history:"):
			hist = false
		}
	}
	fmt.Fprintf(&b, "invariants:\n")
	fmt.Fprintf(&b, "  one copy:          %s — %d overlaps, %d beyond the bound, longest %.1fs, stale copies gone at most %.1fs after their node healed\n",
		ok(oneCopy), len(s.overlaps), bad, maxOv.Seconds(), maxPast.Seconds())
	fmt.Fprintf(&b, "  self-fencing:      %s — %s (lease %v)\n", ok(!hasPrefix(s.violations, "self-fencing:")), s.fencing, s.cfg.Lease)
	fmt.Fprintf(&b, "  linearizable reads: %s — %d reads of /v1/status and %d pushes; porcupine %s in %v\n", ok(lin), s.reads, s.pushes, s.porcupine, s.porcupineTook.Round(time.Millisecond))
	fmt.Fprintf(&b, "  history:           %s — %d answers of /v1/history checked, %d revisions\n", ok(hist), s.histories, s.revisions)
	fmt.Fprintf(&b, "  convergence:       %s — %v after the last heal and push (bound %v)\n", ok(s.converged > 0 && s.converged <= s.cfg.Converge && !hasPrefix(s.violations, "no convergence")), s.converged.Round(100*time.Millisecond), s.cfg.Converge)
	if len(s.overlaps) > 0 {
		fmt.Fprintf(&b, "overlaps (instance, old node → new node, when, how long, verdict):\n")
		for _, j := range s.overlaps {
			verdict := "allowed: " + j.v.Why
			if !j.v.Allowed {
				verdict = "VIOLATION: " + j.v.Why
			}
			fmt.Fprintf(&b, "  %-9s %d → %d  %s  %5.1fs  %s\n", j.o.VM, j.o.A.Node, j.o.B.Node, rel(j.o.Start), j.o.Duration().Seconds(), verdict)
		}
	}
	if len(s.violations) > 0 {
		fmt.Fprintf(&b, "violations:\n")
		for _, v := range s.violations {
			fmt.Fprintf(&b, "  %s\n", v)
		}
	}
	return b.String()
}

func hasPrefix(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
