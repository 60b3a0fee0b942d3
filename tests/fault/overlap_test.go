package fault

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// interval is one runner's life: from its start record to the first of its
// stop record, the harness's kill record or the harness noticing it gone.
type interval struct {
	VM     string
	Node   int
	PID    int
	Out    string
	Start  int64 // boottime ns
	End    int64 // boottime ns; meaningful when !Open
	Open   bool
	EndHow string // stop, killed, gone
}

// parseRecords reads record lines (the runners' files and the harness's)
// into intervals. A line is `start|stop|killed|gone NODE VM PID SECONDS
// [OUT]`; intervals are keyed by (node, PID), and an end record ends the
// open interval of its key, or lowers the end of the key's last interval
// (a runner's stop line written just before the harness noticed it gone).
func parseRecords(lines []string) ([]interval, error) {
	type record struct {
		kind      string
		node, pid int
		vm, out   string
		at        int64
	}
	recs := make([]record, 0, len(lines))
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 5 {
			return nil, fmt.Errorf("record %q: want KIND NODE VM PID SECONDS [OUT]", line)
		}
		nodeID, err1 := strconv.Atoi(f[1])
		pid, err2 := strconv.Atoi(f[3])
		secs, err3 := strconv.ParseFloat(f[4], 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("record %q: bad number", line)
		}
		switch f[0] {
		case "start", "stop", "killed", "gone":
		default:
			return nil, fmt.Errorf("record %q: unknown kind %q", line, f[0])
		}
		r := record{kind: f[0], node: nodeID, vm: f[2], pid: pid, at: int64(secs * 1e9)}
		if len(f) > 5 {
			r.out = f[5]
		}
		recs = append(recs, r)
	}
	// One timeline: the files are written by different processes. At one
	// time (/proc/uptime has 10 ms steps) a start goes first: a runner lives
	// longer than that, and a PID is not reused that fast.
	slices.SortStableFunc(recs, func(a, b record) int {
		if c := cmpInt64(a.at, b.at); c != 0 {
			return c
		}
		return boolInt(a.kind != "start") - boolInt(b.kind != "start")
	})
	type key struct{ node, pid int }
	var out []interval
	open := map[key]int{} // index into out
	last := map[key]int{}
	for _, r := range recs {
		k := key{r.node, r.pid}
		if r.kind == "start" {
			if i, ok := open[k]; ok { // PID reused without an end record: it ended before the new start
				out[i].End, out[i].Open, out[i].EndHow = r.at, false, "gone"
			}
			out = append(out, interval{VM: r.vm, Node: r.node, PID: r.pid, Out: r.out, Start: r.at, Open: true})
			open[k], last[k] = len(out)-1, len(out)-1
			continue
		}
		if i, ok := open[k]; ok {
			out[i].End, out[i].Open, out[i].EndHow = r.at, false, r.kind
			delete(open, k)
		} else if i, ok := last[k]; ok && r.at < out[i].End {
			out[i].End, out[i].EndHow = r.at, r.kind
		}
	}
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// readRecords reads every *.log in dir.
func readRecords(dir string) ([]interval, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return parseRecords(lines)
}

// overlap is a time when two runners of one instance ran at once.
type overlap struct {
	VM         string
	A, B       interval // A started first
	Start, End int64
	Open       bool // both still run
}

func (o overlap) Duration() time.Duration { return time.Duration(o.End - o.Start) }

// findOverlaps lists every pair of intervals of one instance that
// intersect; open intervals end at now.
func findOverlaps(ivs []interval, now int64) []overlap {
	byVM := map[string][]interval{}
	for _, iv := range ivs {
		if iv.Open {
			iv.End = now
		}
		byVM[iv.VM] = append(byVM[iv.VM], iv)
	}
	var out []overlap
	for _, vm := range slices.Sorted(maps.Keys(byVM)) {
		list := byVM[vm]
		slices.SortFunc(list, func(a, b interval) int { return cmpInt64(a.Start, b.Start) })
		for i := range list {
			for j := i + 1; j < len(list) && list[j].Start < list[i].End; j++ {
				a, b := list[i], list[j]
				out = append(out, overlap{VM: vm, A: a, B: b, Start: b.Start, End: min(a.End, b.End), Open: a.Open && b.Open})
			}
		}
	}
	return out
}

// window is a time a node was cut off: its agent killed, frozen or
// restarting, or a partition that separated it from another node.
type window struct {
	Node    int
	Kind    kind   // what cut it off
	Fault   string // the fault, for reports ("#3 partition-leader")
	Start   int64
	End     int64
	Ongoing bool
}

// verdict is what the one-copy rule says of an overlap.
type verdict struct {
	Allowed  bool
	Pending  bool          // not decided yet: its window has not healed plus grace
	PastHeal time.Duration // allowed and over: how long it outlasted the heal (≤ 0: it ended before)
	Why      string        // the window that allows it, or why none does
}

// judge applies the documented bound. A node whose agent runs fences
// itself: once its heartbeats stop committing for --lease (shorter than
// --node-timeout) it kills its runners, before the leader may place them
// elsewhere, so a partition allows no overlap at all. Only a node whose
// agent cannot act may leave its runners running beside the new copies:
// its blixard killed (kill9) or restarting, or the whole node frozen (the
// runners are stopped too, but their records cannot say so). Such an
// overlap is allowed when the window began before it and it ended within
// grace of the window's end (the restarted agent, or the thawed one, finds
// its lease expired and kills them). strict allows no overlap. During the
// run (now set, the overlap or the window still open) an overlap is
// pending until it can no longer be allowed.
func judge(o overlap, windows []window, grace time.Duration, strict bool, now int64) verdict {
	if o.A.Node == o.B.Node {
		return verdict{Why: fmt.Sprintf("two runners on node %d at once", o.A.Node)}
	}
	if strict {
		return verdict{Why: "-strict allows no overlap"}
	}
	g := int64(grace)
	// Candidates: windows on either node that began before the overlap;
	// the one in effect when it began first, then the most recent.
	var cands []window
	for _, w := range windows {
		if (w.Node == o.A.Node || w.Node == o.B.Node) && w.Start <= o.Start && agentCannotAct(w.Kind) {
			cands = append(cands, w)
		}
	}
	inEffect := func(w window) bool { return w.Ongoing || w.End >= o.Start }
	slices.SortStableFunc(cands, func(a, b window) int {
		if ea, eb := inEffect(a), inEffect(b); ea != eb {
			return boolInt(eb) - boolInt(ea)
		}
		return cmpInt64(b.Start, a.Start)
	})
	var pendingWhy string
	for _, w := range cands {
		if w.Ongoing {
			return verdict{Allowed: true, Pending: o.Open, Why: fmt.Sprintf("node %d cut off by %s (ongoing)", w.Node, w.Fault)}
		}
		if o.End <= w.End+g && !o.Open {
			when := fmt.Sprintf("ended %.1fs after its heal", float64(o.End-w.End)/1e9)
			switch past := time.Duration(o.End - w.End); {
			case past < -50*time.Millisecond:
				when = "ended before its heal"
			case past < 50*time.Millisecond: // runners' stop lines have /proc/uptime's 10 ms steps
				when = "ended as it healed"
			}
			return verdict{Allowed: true, PastHeal: time.Duration(o.End - w.End), Why: fmt.Sprintf("node %d cut off by %s; %s (grace %v)",
				w.Node, w.Fault, when, grace)}
		}
		if o.Open && now <= w.End+g && pendingWhy == "" {
			pendingWhy = fmt.Sprintf("node %d cut off by %s, healed %.1fs ago (grace %v)", w.Node, w.Fault, float64(now-w.End)/1e9, grace)
		}
	}
	if pendingWhy != "" {
		return verdict{Allowed: true, Pending: true, Why: pendingWhy}
	}
	return verdict{Why: fmt.Sprintf("neither node %d nor node %d had its agent stopped (killed, frozen, restarting) when it began, or it outlasted the heal by more than %v; a partitioned node must fence itself", o.A.Node, o.B.Node, grace)}
}

// agentCannotAct: during a fault of kind k the node's agent cannot fence
// it (a partition leaves the agent running: it must).
func agentCannotAct(k kind) bool {
	switch k {
	case kill9, freeze, restartNewBin, leaderChange, nodeKill:
		return true
	}
	return false
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestParseRecordsAndFindOverlaps(t *testing.T) {
	lines := []string{
		"start 1 web-0 100 10.00 /nix/store/a-web",
		"start 2 db 200 10.50 /nix/store/b-db",
		"start 2 web-0 201 20.00 /nix/store/a-web", // node 1 cut off; web-0 placed on node 2
		"stop 1 web-0 100 23.00 /nix/store/a-web",  // node 1 healed and stopped its copy
		"gone 2 db 200 31.00",                      // noticed after the kill, written to another file first
		"killed 2 db 200 30.00",
		"start 3 db 300 32.00 /nix/store/b-db",
		"start 3 cache 301 33.00 /nix/store/c",
		"gone 3 cache 301 34.00",
		"start 3 cache 301 35.00 /nix/store/c", // PID reused
	}
	ivs, err := parseRecords(lines)
	if err != nil {
		t.Fatal(err)
	}
	want := []interval{
		{VM: "web-0", Node: 1, PID: 100, Out: "/nix/store/a-web", Start: 10e9, End: 23e9, EndHow: "stop"},
		{VM: "db", Node: 2, PID: 200, Out: "/nix/store/b-db", Start: 10.5e9, End: 30e9, EndHow: "killed"},
		{VM: "web-0", Node: 2, PID: 201, Out: "/nix/store/a-web", Start: 20e9, Open: true},
		{VM: "db", Node: 3, PID: 300, Out: "/nix/store/b-db", Start: 32e9, Open: true},
		{VM: "cache", Node: 3, PID: 301, Out: "/nix/store/c", Start: 33e9, End: 34e9, EndHow: "gone"},
		{VM: "cache", Node: 3, PID: 301, Out: "/nix/store/c", Start: 35e9, Open: true},
	}
	if fmt.Sprint(ivs) != fmt.Sprint(want) {
		t.Fatalf("intervals:\n got %v\nwant %v", ivs, want)
	}
	ovs := findOverlaps(ivs, 40e9)
	if len(ovs) != 1 || ovs[0].VM != "web-0" || ovs[0].Start != 20e9 || ovs[0].End != 23e9 || ovs[0].Duration() != 3*time.Second {
		t.Fatalf("overlaps: %+v", ovs)
	}
}

func TestJudgeAllowsOnlyTheDocumentedWindow(t *testing.T) {
	ov := func(nodeA, nodeB int, start, end float64, open bool) overlap {
		return overlap{VM: "web-0", A: interval{Node: nodeA, Open: open}, B: interval{Node: nodeB, Open: open},
			Start: int64(start * 1e9), End: int64(end * 1e9), Open: open}
	}
	win := func(nodeID int, start, end float64, ongoing bool) window {
		return window{Node: nodeID, Kind: freeze, Fault: "#1 freeze", Start: int64(start * 1e9), End: int64(end * 1e9), Ongoing: ongoing}
	}
	part := func(nodeID int, start, end float64, ongoing bool) window {
		return window{Node: nodeID, Kind: partMinority, Fault: "#1 partition-minority", Start: int64(start * 1e9), End: int64(end * 1e9), Ongoing: ongoing}
	}
	grace := 15 * time.Second
	tests := []struct {
		name    string
		o       overlap
		windows []window
		strict  bool
		now     float64
		allowed bool
		pending bool
	}{
		{"an overlap that ends within grace of the old node's heal is allowed", ov(1, 2, 20, 30, false), []window{win(1, 10, 25, false)}, false, 60, true, false},
		{"an overlap that outlasts the heal by more than grace is a violation", ov(1, 2, 20, 45, false), []window{win(1, 10, 25, false)}, false, 60, false, false},
		{"an overlap that began before the node was cut off is a violation", ov(1, 2, 5, 12, false), []window{win(1, 10, 25, false)}, false, 60, false, false},
		{"an overlap between two nodes that were never cut off is a violation", ov(1, 2, 20, 21, false), []window{win(3, 10, 25, false)}, false, 60, false, false},
		{"an overlap during an ongoing fault is pending", ov(1, 2, 20, 30, true), []window{win(1, 10, 0, true)}, false, 30, true, true},
		{"an open overlap within grace of the heal is pending", ov(1, 2, 20, 30, true), []window{win(1, 10, 25, false)}, false, 30, true, true},
		{"an open overlap past grace is a violation", ov(1, 2, 20, 45, true), []window{win(1, 10, 25, false)}, false, 45, false, false},
		{"-strict allows nothing", ov(1, 2, 20, 21, false), []window{win(1, 10, 25, false)}, true, 60, false, false},
		{"two runners on one node are a violation", ov(1, 1, 20, 21, false), []window{win(1, 10, 25, false)}, false, 60, false, false},
		{"a partitioned node must fence itself: no overlap is allowed", ov(1, 2, 20, 21, false), []window{part(1, 10, 25, false)}, false, 60, false, false},
		{"an ongoing partition does not make an overlap pending", ov(1, 2, 20, 30, true), []window{part(1, 10, 0, true)}, false, 30, false, false},
		{"a killed agent allows an overlap until its restart plus grace", ov(1, 2, 20, 30, false), []window{{Node: 1, Kind: kill9, Fault: "#2 kill9", Start: 10e9, End: 25e9}}, false, 60, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := judge(tt.o, tt.windows, grace, tt.strict, int64(tt.now*1e9))
			if v.Allowed != tt.allowed || v.Pending != tt.pending {
				t.Fatalf("judge = %+v, want allowed %v pending %v", v, tt.allowed, tt.pending)
			}
		})
	}
}
