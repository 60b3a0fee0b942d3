package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// TestDecide runs the scripts in testdata/*.txt against Decide and the
// agent's records, which feed the actions' results back the way the
// executor does (no I/O: the script plays the backend, the disk and the
// operations). Regenerate the expected output with
// `go test ./nodeagent -run TestDecide -rewrite` and review the diff.
//
// Commands (this node is node 1; times are offsets from a fixed base):
//
//	assign vm=web [node=1] [out=v1] [drv=OUT.drv] [declared=VM] [own-runner] [gen=N] [volumes=data:1024,…]
//	       [stopped=autostart|operator] [restart=N] [commit=SHA] [snapshot]
//	                               the assignment; stopped and restart as Apply derives them
//	                               from autostart and `blixard vm start|stop|restart`
//	unassign vm=web
//	no-plan                        the replica has applied no plan yet
//	plan                           it has (the default)
//	unit web active|activating|restarting|failed|gone [booted=OUT] [restarts=N] [next=2s]
//	                               the backend's unit: active, activating (active, not done
//	                               starting: a Type=notify unit before READY=1), restarting,
//	                               failed (listed, not running) or gone (not listed); the
//	                               input block is its last result
//	unit-error web                 reading web's unit fails with the input block
//	current web OUT                STATE/web/current → OUT
//	rooted web OUT                 the agent realised and rooted OUT
//	attached web data:1024,…       the agent attached these volumes
//	op web KIND [out=OUT]          an operation is in flight (decide begins them too)
//	progress web                   the realisation in flight says it builds (the input block)
//	fail web KIND [out=OUT]        action KIND failed now with the input block (as a result)
//	done web [canceled]            web's operation ends: fails with the input block, or succeeds
//	restart-agent                  the agent restarts: its records and statuses are gone
//	elsewhere web node=2 phase=running
//	                               node 2's last report of web through Raft
//	node-down node=2               node 2 is marked down
//	fenced for=4.1s lease=3.5s     the lease ran out (no heartbeat committed for that long)
//	lease-back                     a heartbeat committed: the lease holds again
//	kill-error web                 the next kills of web fail with the input block (until
//	                               kill-error web with an empty block)
//	decide [now=DURATION]          set the time, decide and print; then apply the decision as
//	                               the executor does: statuses reported, switches done,
//	                               background actions begun, cancels sent, units killed
//	heartbeat                      a heartbeat carries the statuses (they become the
//	                               replicated ones a restarted agent reads); stopped VMs
//	                               gone from this node are then forgotten
func TestDecide(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := newDecideHarness()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.handle(t, d)
		})
	})
}

var ddBase = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const ddNode = 1

type decideHarness struct {
	now         time.Time
	planned     bool
	gen         uint64
	assignments map[string]replicated.Assignment
	units       map[string]UnitStatus
	listed      map[string]bool
	unitErr     map[string]string
	current     map[string]string
	rec         *records
	statuses    map[string]*vmStatus
	canceled    map[string]bool // operations a cancel was sent to
	fenced      string          // Input.Fenced
	nodes       map[uint64]*replicated.Node
	killErr     map[string]string
	// committed are the statuses the last heartbeat carried (the
	// replicated state's Observed); they survive restart-agent.
	committed map[string]replicated.VMStatus
	seq       uint64 // the last heartbeat's number
}

func newDecideHarness() *decideHarness {
	return &decideHarness{
		now:         ddBase,
		planned:     true,
		assignments: map[string]replicated.Assignment{},
		units:       map[string]UnitStatus{},
		listed:      map[string]bool{},
		unitErr:     map[string]string{},
		current:     map[string]string{},
		rec:         newRecords(30*time.Second, 5*time.Second, time.Second),
		statuses:    map[string]*vmStatus{},
		canceled:    map[string]bool{},
		killErr:     map[string]string{},
		nodes:       map[uint64]*replicated.Node{ddNode: {ID: ddNode, State: replicated.NodeReady}},
		committed:   map[string]replicated.VMStatus{},
	}
}

func (h *decideHarness) handle(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "assign":
		as := replicated.Assignment{Node: ddNode, OutPath: "v1"}
		d.ScanArgs(t, "vm", &as.VM)
		d.MaybeScanArgs(t, "node", &as.Node)
		d.MaybeScanArgs(t, "out", &as.OutPath)
		as.Drv, as.Declared = as.OutPath+".drv", as.VM
		d.MaybeScanArgs(t, "drv", &as.Drv)
		d.MaybeScanArgs(t, "declared", &as.Declared)
		as.OwnRunner = d.HasArg("own-runner")
		as.Snapshot = d.HasArg("snapshot")
		h.gen++
		as.Generation = h.gen
		d.MaybeScanArgs(t, "gen", &as.Generation)
		if d.HasArg("volumes") {
			var v string
			d.ScanArgs(t, "volumes", &v)
			as.Volumes = parseVolumes(t, as.VM, v)
		}
		var stopped string
		d.MaybeScanArgs(t, "stopped", &stopped)
		as.Stopped = replicated.StopReason(stopped)
		d.MaybeScanArgs(t, "restart", &as.Restart)
		d.MaybeScanArgs(t, "commit", &as.Commit)
		h.assignments[as.VM] = as
		return ""
	case "unassign":
		var vm string
		d.ScanArgs(t, "vm", &vm)
		delete(h.assignments, vm)
		return ""
	case "no-plan":
		h.planned = false
		return ""
	case "plan":
		h.planned = true
		return ""
	case "unit":
		vm := pos(t, d, 0)
		var us UnitStatus
		switch state := pos(t, d, 1); state {
		case "active":
			us.Active, h.listed[vm] = true, true
		case "activating":
			us.Active, us.Activating, h.listed[vm] = true, true, true
		case "restarting":
			us.Restarting, h.listed[vm] = true, true
		case "failed":
			h.listed[vm] = true
		case "gone":
			delete(h.listed, vm)
		default:
			t.Fatalf("unit state %q: want active, activating, restarting, failed or gone", state)
		}
		d.MaybeScanArgs(t, "booted", &us.Booted)
		d.MaybeScanArgs(t, "restarts", &us.Restarts)
		if d.HasArg("next") {
			us.NextRestart = h.now.Add(durArg(t, d, "next"))
		}
		us.Result = strings.TrimSpace(d.Input)
		h.units[vm] = us
		delete(h.unitErr, vm)
		return ""
	case "unit-error":
		h.unitErr[pos(t, d, 0)] = strings.TrimSpace(d.Input)
		return ""
	case "current":
		h.current[pos(t, d, 0)] = pos(t, d, 1)
		return ""
	case "rooted":
		h.rec.vm(pos(t, d, 0)).rooted = pos(t, d, 1)
		return ""
	case "attached":
		vm := pos(t, d, 0)
		h.rec.vm(vm).attached = parseVolumes(t, vm, pos(t, d, 1))
		return ""
	case "op":
		a := Action{VM: pos(t, d, 0), Kind: parseKind(t, pos(t, d, 1))}
		d.MaybeScanArgs(t, "out", &a.Out)
		h.begin(a)
		return ""
	case "progress":
		vm := pos(t, d, 0)
		v := h.rec.vms[vm]
		if v == nil || v.op == nil {
			t.Fatalf("%s has no operation in flight", vm)
		}
		p := strings.TrimSpace(d.Input)
		v.op.progress.Store(&p)
		return ""
	case "fail":
		vm, kind := pos(t, d, 0), parseKind(t, pos(t, d, 1))
		var out string
		d.MaybeScanArgs(t, "out", &out)
		err := errors.New(strings.TrimSpace(d.Input))
		h.rec.failed(vm, kind, out, err, h.now)
		return h.failureString(vm, kind)
	case "done":
		vm := pos(t, d, 0)
		v := h.rec.vms[vm]
		if v == nil || v.op == nil {
			t.Fatalf("%s has no operation in flight", vm)
		}
		res := Result{VM: vm, Kind: v.op.kind, Out: v.op.out, Volumes: v.op.vols}
		switch {
		case d.HasArg("canceled"):
			res.Err = context.Canceled
		case strings.TrimSpace(d.Input) != "":
			res.Err = errors.New(strings.TrimSpace(d.Input))
		}
		sentCancel := h.canceled[vm]
		delete(h.canceled, vm)
		h.rec.finish(res, h.now)
		switch {
		case res.Err == nil:
			return fmt.Sprintf("%s: %s ok", vm, res.Kind)
		case errors.Is(res.Err, context.Canceled):
			return fmt.Sprintf("%s: %s canceled", vm, res.Kind)
		case sentCancel:
			return fmt.Sprintf("%s: %s canceled (ended with: %v)", vm, res.Kind, res.Err)
		}
		return h.failureString(vm, res.Kind)
	case "elsewhere":
		// Another node's report through Raft (the replicated Observed).
		st := replicated.VMStatus{VM: pos(t, d, 0)}
		d.ScanArgs(t, "node", &st.Node)
		var phase string
		d.ScanArgs(t, "phase", &phase)
		st.Phase = replicated.Phase(phase)
		h.committed[st.VM] = st
		if h.nodes[st.Node] == nil {
			h.nodes[st.Node] = &replicated.Node{ID: st.Node, State: replicated.NodeReady}
		}
		return ""
	case "node-down":
		var id uint64
		d.ScanArgs(t, "node", &id)
		h.nodes[id] = &replicated.Node{ID: id, State: replicated.NodeDown}
		return ""
	case "fenced":
		h.fenced = FenceReason(durArg(t, d, "for"), durArg(t, d, "lease"))
		return ""
	case "lease-back":
		h.fenced = ""
		return ""
	case "kill-error":
		h.killErr[pos(t, d, 0)] = strings.TrimSpace(d.Input)
		return ""
	case "restart-agent":
		h.rec = newRecords(h.rec.buildRetry, h.rec.volumeRetry, h.rec.unitRetry)
		h.statuses = map[string]*vmStatus{}
		h.canceled = map[string]bool{}
		return ""
	case "decide":
		if d.HasArg("now") {
			h.now = ddBase.Add(durArg(t, d, "now"))
		}
		dec := Decide(h.input())
		checkDecision(t, dec)
		h.apply(dec)
		out := fmt.Sprintf("now +%s\n", h.now.Sub(ddBase)) + dec.String()
		var ops []string
		for _, name := range slices.Sorted(maps.Keys(h.rec.vms)) {
			if op := h.rec.vms[name].op; op != nil {
				s := name + ":" + op.kind.String()
				if h.canceled[name] {
					s += "(canceled)"
				}
				ops = append(ops, s)
			}
		}
		if len(ops) > 0 {
			out += "in flight: " + strings.Join(ops, " ") + "\n"
		}
		return out
	case "heartbeat":
		// Sent and committed at once, in order (nextHeartbeat, then a
		// committed sendHeartbeat).
		h.seq++
		markSent(h.statuses, h.seq)
		snap := make([]replicated.VMStatus, 0, len(h.statuses))
		for _, name := range slices.Sorted(maps.Keys(h.statuses)) {
			snap = append(snap, h.statuses[name].VMStatus)
		}
		forgetCommitted(h.statuses, h.seq)
		// As Apply: this node's statuses replace its own, never another
		// node's report of a VM assigned to that node.
		for vm, s := range h.committed {
			if s.Node == ddNode {
				delete(h.committed, vm)
			}
		}
		for _, s := range snap {
			s.Node = ddNode
			if prev, ok := h.committed[s.VM]; ok && prev.Node != ddNode {
				if as, ok := h.assignments[s.VM]; ok && as.Node == prev.Node {
					continue
				}
			}
			h.committed[s.VM] = s
		}
		var b strings.Builder
		for _, s := range snap {
			fmt.Fprintf(&b, "%s %s", s.VM, s.Phase)
			if s.Restart != 0 {
				fmt.Fprintf(&b, " restart=%d", s.Restart)
			}
			if _, ok := h.statuses[s.VM]; !ok {
				b.WriteString(" (forgotten)")
			}
			b.WriteString("\n")
		}
		if b.Len() == 0 {
			return "(no statuses)\n"
		}
		return b.String()
	}
	t.Fatalf("unknown command %q", d.Cmd)
	return ""
}

// input is what the agent's observe would return.
func (h *decideHarness) input() Input {
	in := Input{Now: h.now, Node: ddNode, Planned: h.planned, Assignments: h.assignments, Fenced: h.fenced}
	if h.planned {
		in.Commit = "c1"
	}
	in.Units = slices.Sorted(maps.Keys(h.listed))
	reported := map[string]replicated.VMStatus{}
	for name, s := range h.statuses {
		reported[name] = s.VMStatus
	}
	observeVMs(&in, h.rec, reported, h.committed, h.nodes, func(name string) (UnitStatus, error) {
		if msg := h.unitErr[name]; msg != "" {
			return UnitStatus{}, errors.New(msg)
		}
		return h.units[name], nil
	}, func(name string) string { return h.current[name] },
		func(name string) string { return "STATE/" + name + "/console.log" })
	return in
}

// apply does what the executor does with a decision, minus the I/O: every
// switch succeeds, every kill succeeds unless kill-error says otherwise
// (the unit is then gone), background actions stay in flight until `done`.
func (h *decideHarness) apply(dec Decision) {
	keep := map[string]bool{}
	for _, vd := range dec.VMs {
		keep[vd.VM] = true
		if vd.Status == nil {
			delete(h.statuses, vd.VM)
		} else {
			h.statuses[vd.VM] = keptStatus(h.statuses[vd.VM], vd)
		}
		for _, a := range vd.Actions {
			switch a.Kind {
			case ActCancel:
				h.rec.cancel(a.VM)
			case ActSwitchCurrent:
				h.current[a.VM] = a.Out
			case ActKill:
				if msg := h.killErr[a.VM]; msg != "" {
					h.rec.failed(a.VM, ActKill, "", errors.New(msg), h.now)
					continue
				}
				delete(h.listed, a.VM)
				h.units[a.VM] = UnitStatus{Result: "killed by signal: killed"}
				h.rec.killed(a.VM)
			default:
				h.begin(a)
			}
		}
	}
	h.rec.prune(keep)
}

func (h *decideHarness) begin(a Action) {
	vm := a.VM
	h.rec.begin(a, func() { h.canceled[vm] = true })
}

func (h *decideHarness) failureString(vm string, kind ActionKind) string {
	v := h.rec.vms[vm]
	var f *Failure
	switch kind {
	case ActRealise:
		f = v.build
	case ActAttach, ActDetach:
		f = v.volumes
	default:
		f = v.unit
	}
	return fmt.Sprintf("%s: %s failed: %s (retry at +%s)\n", vm, kind, f.Err, f.RetryAt.Sub(ddBase))
}

// checkDecision checks what holds for every decision: sorted by VM, one
// decision per VM, at most one background action per VM and it is last.
func checkDecision(t *testing.T, d Decision) {
	t.Helper()
	for i, vd := range d.VMs {
		if i > 0 && d.VMs[i-1].VM >= vd.VM {
			t.Errorf("decisions not sorted by VM: %s after %s", vd.VM, d.VMs[i-1].VM)
		}
		for j, a := range vd.Actions {
			if a.VM != vd.VM {
				t.Errorf("%s: action %s is for %s", vd.VM, a, a.VM)
			}
			if a.Kind.background() && j != len(vd.Actions)-1 {
				t.Errorf("%s: background action %s is not the last", vd.VM, a)
			}
		}
	}
}

func pos(t *testing.T, d *datadriven.TestData, i int) string {
	t.Helper()
	if i >= len(d.CmdArgs) || len(d.CmdArgs[i].Vals) > 0 {
		t.Fatalf("%s: argument %d must be a bare word", d.Cmd, i+1)
	}
	return d.CmdArgs[i].Key
}

func durArg(t *testing.T, d *datadriven.TestData, key string) time.Duration {
	t.Helper()
	var s string
	d.ScanArgs(t, key, &s)
	v, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s=%s: %v", key, s, err)
	}
	return v
}

func parseKind(t *testing.T, s string) ActionKind {
	t.Helper()
	for k := ActRealise; k <= ActKill; k++ {
		if k.String() == s {
			return k
		}
	}
	t.Fatalf("unknown action %q", s)
	return 0
}

// parseVolumes reads name:MiB,… into volumes of vm (images named CLUSTER.VM.NAME).
func parseVolumes(t *testing.T, vm, s string) []spec.VolumeRef {
	t.Helper()
	var vs []spec.VolumeRef
	for _, part := range strings.Split(s, ",") {
		name, size, _ := strings.Cut(part, ":")
		n, err := strconv.Atoi(size)
		if err != nil {
			t.Fatalf("volume %q: want name:MiB", part)
		}
		vs = append(vs, spec.VolumeRef{Name: name, Image: "t." + vm + "." + name, Pool: "rbd", SizeMiB: n})
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].Name < vs[j].Name })
	return vs
}
