package replicated

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/blixard/blixard/spec"
)

// handleFunction runs the function commands of the datadriven scripts
// (testdata/function_*.txt):
//
//	function-plan parent=N [commit=SHA] fns=NAME:MIN:MAX,… [assign=INSTANCE:NODE,…]
//	    a CommitPlan whose spec declares the functions (and no VM) and
//	    assigns the function instances given (fn-NAME-I of function NAME)
//	scale-function fn=NAME kind=out|in want=N [node=N] [from=N] [idle=RFC3339] [reason=R]
//	function-activity node=N active=NAME:RFC3339,…
//	functions    the functions' committed scale and the function events
func (h *harness) handleFunction(t *testing.T, d *datadriven.TestData) (string, bool) {
	switch d.Cmd {
	case "function-plan":
		c := &CommitPlan{Commit: "c1", Spec: &spec.Cluster{Name: "test", Functions: map[string]spec.Function{}}}
		d.ScanArgs(t, "parent", &c.Parent)
		d.MaybeScanArgs(t, "commit", &c.Commit)
		r := spec.Runner{Drv: "/nix/store/fn.drv", Out: "/nix/store/fn"}
		for _, f := range strings.Split(strArg(t, d, "fns"), ",") {
			p := strings.Split(f, ":")
			if len(p) != 3 {
				t.Fatalf("fns: %q is not NAME:MIN:MAX", f)
			}
			lo, _ := strconv.Atoi(p[1])
			hi, _ := strconv.Atoi(p[2])
			c.Spec.Functions[p[0]] = spec.Function{Runner: r, VCPU: 1, MemMiB: 128, MinInstances: lo, MaxInstances: hi,
				Concurrency: 1, IdleTimeout: time.Minute, HTTP: spec.FunctionHTTP{Host: p[0] + ".test", Path: "/", Port: 80}}
		}
		if v := strArg(t, d, "assign"); v != "" {
			for _, a := range strings.Split(v, ",") {
				inst, node, _ := strings.Cut(a, ":")
				id, _ := strconv.ParseUint(node, 10, 64)
				fn := ""
				for name := range c.Spec.Functions {
					if _, ok := FunctionInstanceIndex(name, inst); ok {
						fn = name
					}
				}
				c.Assignments = append(c.Assignments, Assignment{VM: inst, Declared: fn, Function: fn, Node: id,
					Drv: r.Drv, OutPath: r.Out, VCPU: 1, MemMiB: 128})
			}
		}
		return h.propose(t, d, Command{Type: CmdCommitPlan, CommitPlan: c}), true
	case "scale-function":
		c := &ScaleFunction{}
		d.ScanArgs(t, "fn", &c.Function)
		c.Kind = ScaleKind(strArg(t, d, "kind"))
		d.ScanArgs(t, "want", &c.Want)
		d.MaybeScanArgs(t, "node", &c.Node)
		d.MaybeScanArgs(t, "from", &c.From)
		d.MaybeScanArgs(t, "reason", &c.Reason)
		if v := strArg(t, d, "idle"); v != "" {
			at, err := time.Parse(time.RFC3339, v)
			if err != nil {
				t.Fatalf("idle=%s: %v", v, err)
			}
			c.Idle = at
		}
		return h.propose(t, d, Command{Type: CmdScaleFunction, ScaleFunction: c}), true
	case "function-activity":
		c := &FunctionActivity{Active: map[string]time.Time{}}
		d.ScanArgs(t, "node", &c.Node)
		for _, a := range strings.Split(strArg(t, d, "active"), ",") {
			fn, v, _ := strings.Cut(a, ":")
			at, err := time.Parse(time.RFC3339, v)
			if err != nil {
				t.Fatalf("active=%s: %v", a, err)
			}
			c.Active[fn] = at
		}
		return h.propose(t, d, Command{Type: CmdFunctionActivity, FunctionActivity: c}), true
	case "functions":
		var b strings.Builder
		for _, fn := range slices.Sorted(maps.Keys(h.state.Functions)) {
			st := h.state.Functions[fn]
			fmt.Fprintf(&b, "function %s want=%d (effective %d) near=%d lastActive=%s scaledAt=%s reason=%q\n", fn, st.Want,
				h.state.FunctionWant(fn), st.Near, fmtTime(st.LastActive), fmtTime(st.ScaledAt), st.Reason)
		}
		if h.state.Desired != nil {
			for _, fn := range slices.Sorted(maps.Keys(h.state.Desired.Functions)) {
				if _, ok := h.state.Functions[fn]; !ok {
					fmt.Fprintf(&b, "function %s unscaled (effective %d)\n", fn, h.state.FunctionWant(fn))
				}
			}
		}
		for _, e := range h.state.Events {
			if strings.HasPrefix(e.Kind, "Function") {
				fmt.Fprintf(&b, "event %d %s: %s\n", e.Index, e.Kind, e.Message)
			}
		}
		if b.Len() == 0 {
			return "no functions\n", true
		}
		return b.String(), true
	}
	return "", false
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func TestFunctionInstanceNames(t *testing.T) {
	for _, tc := range []struct {
		fn, name string
		i        int
		ok       bool
	}{
		{"hello", "fn-hello-0", 0, true},
		{"hello", "fn-hello-12", 12, true},
		{"hello", "fn-hello-012", 0, false},
		{"hello", "fn-hello-", 0, false},
		{"hello", "fn-hello-x", 0, false},
		{"hello", "fn-hello-world-1", 0, false},
		{"hello", "hello-1", 0, false},
		{"hello-world", "fn-hello-world-1", 1, true},
	} {
		i, ok := FunctionInstanceIndex(tc.fn, tc.name)
		if i != tc.i || ok != tc.ok {
			t.Errorf("FunctionInstanceIndex(%q, %q) = %d, %v; want %d, %v", tc.fn, tc.name, i, ok, tc.i, tc.ok)
		}
		if tc.ok && FunctionInstance(tc.fn, tc.i) != tc.name {
			t.Errorf("FunctionInstance(%q, %d) = %q, want %q", tc.fn, tc.i, FunctionInstance(tc.fn, tc.i), tc.name)
		}
	}
}

func TestClampWant(t *testing.T) {
	for _, tc := range []struct{ lo, hi, want, got int }{
		{0, 3, 5, 3}, {0, 3, 2, 2}, {1, 3, 0, 1}, {2, 2, 0, 2}, {0, 1, -1, 0},
	} {
		if got := ClampWant(spec.Function{MinInstances: tc.lo, MaxInstances: tc.hi}, tc.want); got != tc.got {
			t.Errorf("ClampWant([%d,%d], %d) = %d, want %d", tc.lo, tc.hi, tc.want, got, tc.got)
		}
	}
}

func TestFunctionMayRun(t *testing.T) {
	node := &Node{ID: 2, Labels: map[string]string{"zone": "a"}, Capacity: Resources{VCPU: 2, MemMiB: 1024}}
	f := spec.Function{VCPU: 2, MemMiB: 1024}
	tests := []struct {
		name   string
		change func(f *spec.Function)
		node   *Node
		want   bool
	}{
		{"fits the node's whole capacity", nil, node, true},
		{"listed among its nodes", func(f *spec.Function) { f.Placement.Nodes = []uint64{1, 2} }, node, true},
		{"not listed", func(f *spec.Function) { f.Placement.Nodes = []uint64{1, 3} }, node, false},
		{"its labels match", func(f *spec.Function) { f.Placement.Labels = map[string]string{"zone": "a"} }, node, true},
		{"a label differs", func(f *spec.Function) { f.Placement.Labels = map[string]string{"zone": "b"} }, node, false},
		{"a label the node lacks", func(f *spec.Function) { f.Placement.Labels = map[string]string{"gpu": "yes"} }, node, false},
		{"more vCPUs than the node has", func(f *spec.Function) { f.VCPU = 3 }, node, false},
		{"more memory than the node has", func(f *spec.Function) { f.MemMiB = 1025 }, node, false},
		{"no node", nil, nil, false},
	}
	for _, tt := range tests {
		f := f
		if tt.change != nil {
			tt.change(&f)
		}
		if got := FunctionMayRun(f, tt.node); got != tt.want {
			t.Errorf("%s: FunctionMayRun = %t, want %t", tt.name, got, tt.want)
		}
	}
}
