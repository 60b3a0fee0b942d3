package replicated

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"encoding/json"

	"github.com/cockroachdb/datadriven"

	"github.com/blixard/blixard/spec"
)

// TestDataDriven runs the scripts in testdata/*.txt against the state
// (ApplyEntry with encoded entries, as the Raft state machine calls it). Regenerate
// the expected output with `go test ./replicated -run TestDataDriven -rewrite`
// and review the diff.
//
// Commands:
//
//	register-node id=1 [vcpu=8] [mem=16384] [labels=k=v,…] [raft=ADDR] [api=ADDR] [ceph=A,…] [cephnode]
//	heartbeat id=1 [epoch=E seq=N] [status=vm:phase[:booted],…] [ceph=A,…]
//	          [health=vm:healthy|unhealthy[:error],…] [health-since=RFC3339]
//	commit-plan parent=N commit=SHA [ref=R] [hash=H] [summary=S] [assign=vm:node,…] [runner=vm:ver,…]
//	            [mem=vm:MiB,…] [volume=vm:MiB,…] [unschedulable=vm:reason,…] [rewrote=SHA] [signer=S] [nospec]
//	            [replicas=web:N,…] [noautostart=vm,…] [health=vm:port,…]
//	            health: an HTTP health check of the VM on port (spec and assignment)
//	            replicas: the instances web-0…web-N-1 (assigned or unschedulable) are
//	            replicas of declared VM web; noautostart: declared VMs with autostart = false
//	vm-run-state vm=NAME [want=running|stopped] [restart]   SetVMRunState
//	commit-plans n=N [assign=vm:node,…]     N chained plans (commit c1…cN); prints the last result
//	record-eval-error commit=SHA [msg=M]      SetCondition EvalFailed (or the message as the input block)
//	set-condition type=T [commit=SHA] [msg=M] [retryable]
//	clear-condition type=T
//	set-node-state id=1 state=cordoned [seq=N] [reason=R] [fenced=A,…]
//	unfence-node id=1 addrs=A,…               UnfenceNode
//	request-sync [n=N]                        RequestSync (N times; prints the last result)
//	create-token name=N role=R [hash=H]       CreateToken (hash: default the SHA-256 of "secret-N")
//	revoke-token name=N                       RevokeToken
//	record-member id=N raft=ADDR [nonvoting]  RecordMember
//	raw                                       the input block is the entry's bytes
//	decode                                    decode the input block; print the command or the error
//	snapshot-roundtrip                        save, recover into a fresh machine, compare, print state
//	state                                     print the state
//
// The rolling-update commands (rollout-step, suspend, resume,
// record-pending) and commit-plan's update= and holdback are described at
// handleRollout (rollout_test.go).
//
// Every command accepts at=RFC3339 (default: a fixed base time + index seconds)
// and by=ACTOR (the API client who proposed it, Command.Actor).
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := &harness{state: NewState()}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.handle(t, d)
		})
	})
}

type harness struct {
	state *State
	index uint64
	last  Result // of the last command applied
}

var ddBase = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func (h *harness) handle(t *testing.T, d *datadriven.TestData) string {
	if out, ok := h.handleRollout(t, d); ok {
		return out
	}
	if out, ok := h.handleFunction(t, d); ok {
		return out
	}
	switch d.Cmd {
	case "register-node":
		c := &RegisterNode{Capacity: Resources{VCPU: 8, MemMiB: 16384}}
		d.ScanArgs(t, "id", &c.ID)
		d.MaybeScanArgs(t, "vcpu", &c.Capacity.VCPU)
		d.MaybeScanArgs(t, "mem", &c.Capacity.MemMiB)
		d.MaybeScanArgs(t, "raft", &c.RaftAddr)
		d.MaybeScanArgs(t, "api", &c.APIAddr)
		if v := strArg(t, d, "labels"); v != "" {
			c.Labels = map[string]string{}
			for _, kv := range strings.Split(v, ",") {
				k, val, _ := strings.Cut(kv, "=")
				c.Labels[k] = val
			}
		}
		if v := strArg(t, d, "ceph"); v != "" {
			c.CephAddrs = strings.Split(v, ",")
		}
		c.Ceph = d.HasArg("cephnode")
		return h.propose(t, d, Command{Type: CmdRegisterNode, RegisterNode: c})

	case "heartbeat":
		c := &NodeHeartbeat{}
		d.ScanArgs(t, "id", &c.ID)
		d.MaybeScanArgs(t, "epoch", &c.Epoch)
		d.MaybeScanArgs(t, "seq", &c.Seq)
		d.MaybeScanArgs(t, "unchanged", &c.Unchanged)
		if v := strArg(t, d, "status"); v != "" {
			for _, s := range strings.Split(v, ",") {
				parts := strings.SplitN(s, ":", 3)
				st := VMStatus{VM: parts[0]}
				if len(parts) > 1 {
					st.Phase = Phase(parts[1])
				}
				if len(parts) > 2 {
					st.BootedOut = parts[2]
				}
				c.Statuses = append(c.Statuses, st)
			}
		}
		if v := strArg(t, d, "ceph"); v != "" {
			c.CephAddrs = strings.Split(v, ",")
		}
		healthArgs(t, d, c.Statuses)
		out := h.propose(t, d, Command{Type: CmdNodeHeartbeat, NodeHeartbeat: c})
		if d.HasArg("show-seq") {
			// The result's StatusSeq: whose statuses the state holds, as
			// the agent learns it.
			out += fmt.Sprintf("statusSeq=%d\n", h.last.StatusSeq)
		}
		return out

	case "commit-plan":
		c := &CommitPlan{}
		d.ScanArgs(t, "parent", &c.Parent)
		d.MaybeScanArgs(t, "commit", &c.Commit)
		d.MaybeScanArgs(t, "ref", &c.Ref)
		d.MaybeScanArgs(t, "hash", &c.EvalHash)
		d.MaybeScanArgs(t, "summary", &c.Summary)
		d.MaybeScanArgs(t, "rewrote", &c.Rewrote)
		d.MaybeScanArgs(t, "signer", &c.Signer)
		c.Assignments, c.Spec = planArgs(t, strArg(t, d, "assign"), strArg(t, d, "runner"))
		if v := strArg(t, d, "mem"); v != "" {
			for _, vm := range strings.Split(v, ",") {
				name, mem, _ := strings.Cut(vm, ":")
				for i := range c.Assignments {
					if c.Assignments[i].VM == name {
						c.Assignments[i].MemMiB, _ = strconv.Atoi(mem)
					}
				}
			}
		}
		if v := strArg(t, d, "volume"); v != "" {
			for _, vm := range strings.Split(v, ",") {
				name, size, _ := strings.Cut(vm, ":")
				for i := range c.Assignments {
					if c.Assignments[i].VM == name {
						n, _ := strconv.Atoi(size)
						c.Assignments[i].Volumes = []spec.VolumeRef{{Name: "data", Image: "test." + name + ".data", Pool: "rbd", SizeMiB: n}}
					}
				}
			}
		}
		if v := strArg(t, d, "unschedulable"); v != "" {
			for _, u := range strings.Split(v, ",") {
				vm, reason, _ := strings.Cut(u, ":")
				c.Unschedulable = append(c.Unschedulable, Unschedulable{VM: vm, Reason: reason})
			}
		}
		if v := strArg(t, d, "replicas"); v != "" {
			for _, r := range strings.Split(v, ",") {
				declared, n, _ := strings.Cut(r, ":")
				replicas, _ := strconv.Atoi(n)
				asReplicas(c, declared, replicas)
			}
		}
		if v := strArg(t, d, "health"); v != "" {
			healthChecks(t, c, v)
		}
		if v := strArg(t, d, "noautostart"); v != "" {
			for _, vm := range strings.Split(v, ",") {
				x := c.Spec.VMs[vm]
				x.Autostart = false
				c.Spec.VMs[vm] = x
			}
		}
		if d.HasArg("nospec") {
			c.Spec = nil
		}
		rolloutPlanArgs(t, d, h.state, c)
		return h.propose(t, d, Command{Type: CmdCommitPlan, CommitPlan: c})

	case "vm-run-state":
		c := &SetVMRunState{Restart: d.HasArg("restart")}
		d.MaybeScanArgs(t, "vm", &c.VM)
		c.Want = RunState(strArg(t, d, "want"))
		return h.propose(t, d, Command{Type: CmdSetVMRunState, SetVMRunState: c})

	case "commit-plans":
		var n int
		d.ScanArgs(t, "n", &n)
		as, sp := planArgs(t, strArg(t, d, "assign"), "")
		var out string
		for i := 1; i <= n; i++ {
			c := &CommitPlan{Parent: h.state.revisionID(), Commit: fmt.Sprintf("c%d", i), Assignments: as, Spec: sp}
			out = h.propose(t, d, Command{Type: CmdCommitPlan, CommitPlan: c})
		}
		return out

	case "record-eval-error", "set-condition":
		c := &SetCondition{Type: EvalFailed}
		if d.Cmd == "set-condition" {
			c.Type = ConditionType(strArg(t, d, "type"))
		}
		d.MaybeScanArgs(t, "commit", &c.Commit)
		d.MaybeScanArgs(t, "msg", &c.Message)
		c.Retryable = d.HasArg("retryable")
		if in := strings.TrimSpace(d.Input); in != "" {
			c.Message = in
		}
		return h.propose(t, d, Command{Type: CmdSetCondition, SetCondition: c})

	case "clear-condition":
		return h.propose(t, d, Command{Type: CmdClearCondition, ClearCondition: &ClearCondition{Type: ConditionType(strArg(t, d, "type"))}})

	case "set-node-state":
		c := &SetNodeState{}
		d.ScanArgs(t, "id", &c.ID)
		var st string
		d.ScanArgs(t, "state", &st)
		c.State = NodeState(st)
		d.MaybeScanArgs(t, "seq", &c.HeartbeatSeq)
		if d.HasArg("reason") {
			d.ScanArgs(t, "reason", &c.Reason)
		}
		if d.HasArg("fenced") {
			var f string
			d.ScanArgs(t, "fenced", &f)
			c.Fenced = strings.Split(f, ",")
		}
		return h.propose(t, d, Command{Type: CmdSetNodeState, SetNodeState: c})

	case "unfence-node":
		c := &UnfenceNode{}
		d.ScanArgs(t, "id", &c.ID)
		if v := strArg(t, d, "addrs"); v != "" {
			c.Addrs = strings.Split(v, ",")
		}
		return h.propose(t, d, Command{Type: CmdUnfenceNode, UnfenceNode: c})

	case "request-sync":
		n := 1
		d.MaybeScanArgs(t, "n", &n)
		var out string
		for range n {
			out = h.propose(t, d, Command{Type: CmdRequestSync, RequestSync: &RequestSync{}})
		}
		return out

	case "create-token":
		c := &CreateToken{}
		d.ScanArgs(t, "name", &c.Name)
		d.MaybeScanArgs(t, "role", &c.Role)
		sum := sha256.Sum256([]byte("secret-" + c.Name))
		c.Hash = hex.EncodeToString(sum[:])
		d.MaybeScanArgs(t, "hash", &c.Hash)
		return h.propose(t, d, Command{Type: CmdCreateToken, CreateToken: c})

	case "revoke-token":
		c := &RevokeToken{}
		d.ScanArgs(t, "name", &c.Name)
		return h.propose(t, d, Command{Type: CmdRevokeToken, RevokeToken: c})

	case "record-member":
		c := &RecordMember{NonVoting: d.HasArg("nonvoting")}
		d.ScanArgs(t, "id", &c.ID)
		d.MaybeScanArgs(t, "raft", &c.RaftAddr)
		return h.propose(t, d, Command{Type: CmdRecordMember, RecordMember: c})

	case "raw":
		return h.update(t, []byte(d.Input))

	case "decode":
		cmd, err := DecodeCommand([]byte(d.Input))
		if err != nil {
			return "error: " + err.Error() + "\n"
		}
		b, err := EncodeCommand(cmd)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		return "ok: " + string(b) + "\n"

	case "snapshot-roundtrip":
		var buf bytes.Buffer
		if err := EncodeSnapshot(&buf, h.state); err != nil {
			t.Fatalf("save snapshot: %v", err)
		}
		fresh, err := DecodeSnapshot(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("recover snapshot: %v", err)
		}
		equal := reflect.DeepEqual(h.state, fresh)
		// The size shown is the state's JSON, not the compressed snapshot:
		// gzip's output may change with the Go release.
		js, err := json.Marshal(h.state)
		if err != nil {
			t.Fatalf("state JSON: %v", err)
		}
		h.state = fresh
		return fmt.Sprintf("snapshot %d bytes, equal=%t\n", len(js), equal) + renderState(fresh)

	case "state":
		return renderState(h.state)
	}
	t.Fatalf("unknown command %q", d.Cmd)
	return ""
}

func strArg(t *testing.T, d *datadriven.TestData, key string) string {
	var v string
	d.MaybeScanArgs(t, key, &v)
	return v
}

// planArgs builds assignments and a matching spec from "web:1,db:2" and
// runner versions "web:v2" (default v1).
func planArgs(t *testing.T, assign, runner string) ([]Assignment, *spec.Cluster) {
	vers := map[string]string{}
	if runner != "" {
		for _, r := range strings.Split(runner, ",") {
			vm, ver, _ := strings.Cut(r, ":")
			vers[vm] = ver
		}
	}
	sp := &spec.Cluster{Name: "test", VMs: map[string]spec.VM{}}
	var as []Assignment
	if assign == "" {
		return as, sp
	}
	for _, a := range strings.Split(assign, ",") {
		vm, node, _ := strings.Cut(a, ":")
		id, err := strconv.ParseUint(node, 10, 64)
		if err != nil {
			t.Fatalf("assign %q: %v", a, err)
		}
		ver := vers[vm]
		if ver == "" {
			ver = "v1"
		}
		r := spec.Runner{Drv: "/nix/store/" + vm + "-" + ver + ".drv", Out: "/nix/store/" + vm + "-" + ver}
		sp.VMs[vm] = spec.VM{Runner: r, VCPU: 1, MemMiB: 512, Replicas: 1, Autostart: true}
		as = append(as, Assignment{VM: vm, Node: id, Drv: r.Drv, OutPath: r.Out, VCPU: 1, MemMiB: 512})
	}
	return as, sp
}

// asReplicas makes the instances declared-0 … declared-(n-1) of c
// replicas of one declared VM: their Declared name and one spec entry.
func asReplicas(c *CommitPlan, declared string, n int) {
	var vm spec.VM
	for i := range n {
		name := fmt.Sprintf("%s-%d", declared, i)
		for j := range c.Assignments {
			if c.Assignments[j].VM == name {
				c.Assignments[j].Declared = declared
			}
		}
		for j := range c.Unschedulable {
			if c.Unschedulable[j].VM == name {
				c.Unschedulable[j].Declared = declared
			}
		}
		if x, ok := c.Spec.VMs[name]; ok {
			vm = x
			delete(c.Spec.VMs, name)
		}
	}
	vm.Replicas, vm.Autostart = n, true
	c.Spec.VMs[declared] = vm
}

func (h *harness) propose(t *testing.T, d *datadriven.TestData, cmd Command) string {
	cmd.At = ddBase.Add(time.Duration(h.index+1) * time.Second)
	if v := strArg(t, d, "at"); v != "" {
		at, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t.Fatalf("at=%s: %v", v, err)
		}
		cmd.At = at
	}
	d.MaybeScanArgs(t, "by", &cmd.Actor)
	data, err := EncodeCommand(cmd)
	if err != nil {
		return "encode error: " + err.Error() + "\n"
	}
	return h.update(t, data)
}

func (h *harness) update(t *testing.T, data []byte) string {
	h.index++
	r := h.state.ApplyEntry(h.index, data)
	h.last = r
	// The result travels to the proposer as JSON: it must survive that.
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || back != r {
		t.Fatalf("result %+v does not round-trip through JSON: %+v, %v", r, back, err)
	}
	return fmt.Sprintf("%d: %s rev=%d: %s\n", h.index, r.Code, r.Revision, r.Message)
}

// renderState is a compact, deterministic rendering of s.
func renderState(s *State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "applied %d\n", s.Applied)
	if r := s.Revision; r != nil {
		fmt.Fprintf(&b, "revision %d parent=%d commit=%s ref=%s hash=%s at=%s summary=%q\n",
			r.ID, r.Parent, r.Commit, r.Ref, r.EvalHash, r.CommittedAt.Format(time.RFC3339), r.Summary)
		if r.Rewrote != "" {
			fmt.Fprintf(&b, "  rewrote=%s\n", r.Rewrote)
		}
		if r.Signer != "" {
			fmt.Fprintf(&b, "  signer=%q\n", r.Signer)
		}
	} else {
		b.WriteString("revision none\n")
	}
	if len(s.History) > 0 {
		ids := make([]string, 0, len(s.History))
		for _, r := range s.History {
			ids = append(ids, strconv.FormatUint(r.ID, 10))
		}
		if len(ids) > 8 {
			ids = append(append(ids[:3:3], "…"), ids[len(ids)-3:]...)
		}
		fmt.Fprintf(&b, "history %d: %s\n", len(s.History), strings.Join(ids, " "))
	}
	for _, id := range sortedKeys(s.Nodes) {
		n := s.Nodes[id]
		fmt.Fprintf(&b, "node %d %s vcpu=%d mem=%d", n.ID, n.State, n.Capacity.VCPU, n.Capacity.MemMiB)
		if len(n.Labels) > 0 {
			var kv []string
			for _, k := range sortedKeys(n.Labels) {
				kv = append(kv, k+"="+n.Labels[k])
			}
			fmt.Fprintf(&b, " labels=%s", strings.Join(kv, ","))
		}
		if n.RaftAddr != "" {
			fmt.Fprintf(&b, " raft=%s", n.RaftAddr)
		}
		if len(n.CephAddrs) > 0 {
			fmt.Fprintf(&b, " ceph=%s", strings.Join(n.CephAddrs, ","))
		} else if n.Ceph {
			b.WriteString(" ceph=(no addresses)")
		}
		if len(n.ReportedCephAddrs) > 0 && !slices.Equal(n.ReportedCephAddrs, n.CephAddrs) {
			fmt.Fprintf(&b, " reported=%s", strings.Join(n.ReportedCephAddrs, ","))
		}
		if len(n.Fenced) > 0 {
			fmt.Fprintf(&b, " fenced=%s", strings.Join(n.Fenced, ","))
		}
		for _, part := range sortedKeys(n.Problems) {
			fmt.Fprintf(&b, " problem[%s]=%q", part, n.Problems[part].Message)
		}
		fmt.Fprintf(&b, " hb=%d", n.LastHeartbeatSeq)
		if !n.LastHeartbeatAt.IsZero() {
			fmt.Fprintf(&b, "@%s", n.LastHeartbeatAt.Format(time.TimeOnly))
		}
		if n.ReportEpoch != 0 {
			fmt.Fprintf(&b, " report=%d/%d", n.ReportEpoch, n.ReportSeq)
			if n.StatusSeq != 0 && n.StatusSeq != n.ReportSeq {
				fmt.Fprintf(&b, " statuses-of=%d", n.StatusSeq)
			}
		}
		b.WriteString("\n")
	}
	if s.Desired != nil {
		fmt.Fprintf(&b, "desired %q vms=%s\n", s.Desired.Name, strings.Join(sortedKeys(s.Desired.VMs), ","))
	}
	for _, vm := range sortedKeys(s.Assignments) {
		a := s.Assignments[vm]
		fmt.Fprintf(&b, "assign %s node=%d gen=%d out=%s mem=%d", vm, a.Node, a.Generation, a.OutPath, a.MemMiB)
		for _, v := range a.Volumes {
			fmt.Fprintf(&b, " vol=%s:%d", v.Name, v.SizeMiB)
		}
		if a.Stopped != "" {
			fmt.Fprintf(&b, " stopped=%s", a.Stopped)
		}
		if a.Restart != 0 {
			fmt.Fprintf(&b, " restart=%d", a.Restart)
		}
		if a.Health != nil {
			fmt.Fprintf(&b, " health=%s", a.Health)
		}
		b.WriteString("\n")
	}
	for _, vm := range sortedKeys(s.RunControls) {
		rc := s.RunControls[vm]
		fmt.Fprintf(&b, "run-control %s want=%s restart=%d at=%s\n", vm, orNone(string(rc.Want)), rc.Restart, rc.At.Format(time.TimeOnly))
	}
	for _, vm := range sortedKeys(s.Observed) {
		o := s.Observed[vm]
		fmt.Fprintf(&b, "observed %s node=%d %s", vm, o.Node, o.Phase)
		if o.BootedOut != "" {
			fmt.Fprintf(&b, " booted=%s", o.BootedOut)
		}
		if o.Health != "" || !o.HealthSince.IsZero() || o.HealthError != "" {
			fmt.Fprintf(&b, " health=%s since=%s", o.Health, o.HealthSince.Format(time.RFC3339))
			if o.HealthError != "" {
				fmt.Fprintf(&b, " error=%q", o.HealthError)
			}
		}
		b.WriteString("\n")
	}
	for _, u := range s.Unschedulable {
		fmt.Fprintf(&b, "unschedulable %s: %s\n", u.VM, u.Reason)
	}
	if s.SyncRequests > 0 {
		fmt.Fprintf(&b, "sync-requests %d\n", s.SyncRequests)
	}
	for _, name := range sortedKeys(s.Tokens) {
		tok := s.Tokens[name]
		fmt.Fprintf(&b, "token %s role=%s hash=%.8s… created=%s", tok.Name, tok.Role, tok.Hash, tok.CreatedAt.Format(time.TimeOnly))
		if tok.CreatedBy != "" {
			fmt.Fprintf(&b, " by=%q", tok.CreatedBy)
		}
		b.WriteString("\n")
	}
	for _, c := range s.Conditions {
		fmt.Fprintf(&b, "condition %s commit=%s retryable=%t since=%s %q\n", c.Type, c.Commit, c.Retryable,
			c.Since.Format(time.TimeOnly), c.Message)
	}
	renderRollouts(&b, s)
	if len(s.Events) > 0 {
		evs := s.Events
		fmt.Fprintf(&b, "events %d", len(evs))
		if len(evs) > 6 {
			evs = evs[len(evs)-6:]
			b.WriteString(" (last 6)")
		}
		b.WriteString(":\n")
		for _, e := range evs {
			fmt.Fprintf(&b, "  %d %s: %s%s\n", e.Index, e.Kind, e.Message, renderAbout(e.About))
		}
	}
	return b.String()
}

func sortedKeys[K interface{ ~string | ~uint64 }, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

// renderAbout is an event's structured fields, " {…}" ("" without any).
func renderAbout(a About) string {
	var parts []string
	add := func(k, v string) {
		if v != "" && v != "0" {
			parts = append(parts, k+"="+v)
		}
	}
	add("node", strconv.FormatUint(a.Node, 10))
	add("state", a.State)
	add("vm", a.VM)
	add("function", a.Function)
	add("commit", a.Commit)
	add("revision", strconv.FormatUint(a.Revision, 10))
	if len(parts) == 0 {
		return ""
	}
	return " {" + strings.Join(parts, " ") + "}"
}
