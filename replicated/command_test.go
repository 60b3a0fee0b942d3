package replicated

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/spec"
)

func sampleCommands() []Command {
	at := time.Date(2025, 2, 3, 4, 5, 6, 7000, time.FixedZone("", 3600))
	return []Command{
		cmdAt(at, Command{Type: CmdRegisterNode, RegisterNode: &RegisterNode{
			ID: 1, RaftAddr: "127.0.0.1:7001", APIAddr: "127.0.0.1:8001", Capacity: Resources{VCPU: 4, MemMiB: 2048},
			Labels: map[string]string{"zone": "a"}, CephAddrs: []string{"10.0.0.1:0/42"},
		}}),
		cmdAt(at, Command{Type: CmdNodeHeartbeat, NodeHeartbeat: &NodeHeartbeat{ID: 1, Statuses: []VMStatus{
			{VM: "web", Node: 1, Phase: PhaseRunning, BootedOut: "/nix/store/x-web", Generation: 3, ObservedAt: at},
		}}}),
		cmdAt(at, Command{Type: CmdCommitPlan, CommitPlan: &CommitPlan{
			Parent: 3, Commit: "abc", Ref: "refs/heads/main", EvalHash: "h", Summary: "+1",
			Spec: &spec.Cluster{Name: "prod", VMs: map[string]spec.VM{"web": {
				Runner: spec.Runner{Drv: "/nix/store/w.drv", Out: "/nix/store/w"}, VCPU: 1, MemMiB: 256, Replicas: 2,
				Placement: spec.Placement{Nodes: []uint64{1}, Labels: map[string]string{"zone": "a"}, AntiAffinity: []string{"db"}},
				Volumes:   map[string]spec.Volume{"data": {SizeMiB: 10, Pool: "rbd"}}, Autostart: true,
			}}, Functions: map[string]spec.Function{"f": {MemMiB: 64, HTTP: spec.FunctionHTTP{Path: "/f"}, MaxInstances: 2}}},
			Assignments: []Assignment{{VM: "web-0", Declared: "web", Node: 1, Drv: "/nix/store/w.drv", OutPath: "/nix/store/w",
				VCPU: 1, MemMiB: 256, Volumes: []spec.VolumeRef{{Name: "data", Image: "prod.web-0.data", Pool: "rbd", SizeMiB: 10}}}},
			Unschedulable: []Unschedulable{{VM: "web-1", Declared: "web", Reason: "no node has 256 MiB free"}},
		}}),
		cmdAt(at, Command{Type: CmdSetCondition, SetCondition: &SetCondition{Type: EvalFailed, Commit: "def", Message: "boom"}}),
		cmdAt(at, Command{Type: CmdClearCondition, ClearCondition: &ClearCondition{Type: FetchFailed}}),
		cmdAt(at, Command{Type: CmdSetNodeState, SetNodeState: &SetNodeState{ID: 1, State: NodeDraining}}),
		cmdAt(at, Command{Type: CmdSetVMRunState, SetVMRunState: &SetVMRunState{VM: "web", Want: RunStateStopped, Restart: true}}),
		cmdAt(at, Command{Type: CmdRequestSync, RequestSync: &RequestSync{}}),
		cmdAt(at, Command{Type: CmdCreateToken, Actor: "alice", CreateToken: &CreateToken{Name: "ci", Role: "operate",
			Hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}),
		cmdAt(at, Command{Type: CmdRevokeToken, Actor: "token ci", RevokeToken: &RevokeToken{Name: "ci"}}),
		cmdAt(at, Command{Type: CmdRecordMember, Actor: "node-1", RecordMember: &RecordMember{ID: 4, RaftAddr: "10.0.0.4:7001", NonVoting: true}}),
		cmdAt(at, Command{Type: CmdUnfenceNode, UnfenceNode: &UnfenceNode{ID: 1, Addrs: []string{"10.0.0.1:0/42", "10.0.0.1:0/43"}}}),
	}
}

func TestCommandRoundTrip(t *testing.T) {
	for _, c := range sampleCommands() {
		t.Run(string(c.Type), func(t *testing.T) {
			b, err := EncodeCommand(c)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeCommand(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c) {
				t.Fatalf("round trip changed the command:\n got %+v\nwant %+v", got, c)
			}
		})
	}
}

func TestEncodeCommandFillsVersionAndRefusesBadEnvelopes(t *testing.T) {
	c := Command{Type: CmdSetNodeState, SetNodeState: &SetNodeState{ID: 1, State: NodeReady}}
	b, err := EncodeCommand(c)
	if err != nil || !strings.Contains(string(b), `"v":1`) {
		t.Fatalf("encode = %s, %v; want version 1 filled in", b, err)
	}
	// Only a liveness-only heartbeat needs version 2: every other command
	// stays readable by a build that knows version 1.
	b, err = EncodeCommand(Command{Type: CmdNodeHeartbeat, NodeHeartbeat: &NodeHeartbeat{ID: 1, Epoch: 7, Seq: 2, Unchanged: 1}})
	if err != nil || !strings.Contains(string(b), `"v":2`) {
		t.Fatalf("encode = %s, %v; want version 2 filled in for a heartbeat with unchanged", b, err)
	}
	b, err = EncodeCommand(Command{Type: CmdNodeHeartbeat, NodeHeartbeat: &NodeHeartbeat{ID: 1, Epoch: 7, Seq: 2}})
	if err != nil || !strings.Contains(string(b), `"v":1`) {
		t.Fatalf("encode = %s, %v; want version 1 for a full heartbeat", b, err)
	}
	for name, bad := range map[string]Command{
		"unknown type makes an error":        {Type: "Reboot"},
		"missing payload makes an error":     {Type: CmdCommitPlan},
		"extra payload makes an error":       {Type: CmdSetNodeState, SetNodeState: &SetNodeState{}, NodeHeartbeat: &NodeHeartbeat{}},
		"unsupported version makes an error": {V: MaxCommandVersion + 1, Type: CmdSetNodeState, SetNodeState: &SetNodeState{}},
		"a liveness-only heartbeat as version 1 makes an error": {V: 1, Type: CmdNodeHeartbeat,
			NodeHeartbeat: &NodeHeartbeat{ID: 1, Epoch: 7, Seq: 2, Unchanged: 1}},
	} {
		if _, err := EncodeCommand(bad); err == nil {
			t.Errorf("%s: encode succeeded", name)
		}
	}
}

func TestDecodeCommandRejects(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"malformed JSON is rejected", `{"v":1,`, "malformed JSON"},
		{"an array is rejected", `[]`, "malformed JSON"},
		{"an empty entry is rejected", ``, "malformed JSON"},
		{"a missing version is rejected", `{"type":"SetNodeState","setNodeState":{"id":1}}`, "no version"},
		{"an unknown version is rejected", `{"v":7,"type":"SetNodeState","setNodeState":{"id":1}}`, "version 7 is not supported"},
		{"an unknown type is rejected", `{"v":1,"type":"Explode","setNodeState":{"id":1}}`, `unknown command type "Explode"`},
		{"a missing payload is rejected", `{"v":1,"type":"CommitPlan"}`, "has no commitPlan payload"},
		{"a null payload is rejected", `{"v":1,"type":"CommitPlan","commitPlan":null}`, "has no commitPlan payload"},
		{"an extra payload is rejected", `{"v":1,"type":"NodeHeartbeat","nodeHeartbeat":{"id":1},"commitPlan":{}}`, "extra commitPlan payload"},
		{"a wrongly typed field is rejected", `{"v":1,"type":"NodeHeartbeat","nodeHeartbeat":{"id":-1}}`, "malformed JSON"},
		{"an unknown field is rejected", `{"v":1,"type":"NodeHeartbeat","nodeHeartbeat":{"id":1,"cpu":3}}`, `unknown field "cpu"`},
		{"a bad time is rejected", `{"v":1,"at":"yesterday","type":"NodeHeartbeat","nodeHeartbeat":{"id":1}}`, "malformed JSON"},
		{"trailing data is rejected", `{"v":1,"type":"NodeHeartbeat","nodeHeartbeat":{"id":1}}x`, "trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeCommand([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// FuzzDecodeCommand: decoding never panics, and a decoded command survives
// encode → decode unchanged.
func FuzzDecodeCommand(f *testing.F) {
	for _, c := range sampleCommands() {
		b, err := EncodeCommand(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"type":"RegisterNode","registerNode":{"id":1,"labels":{},"cephAddrs":[]}}`))
	f.Add([]byte(`{"v":1,"type":"CommitPlan","commitPlan":{"spec":{"vms":{"a":{"volumes":{},"placement":{"nodes":[]}}},"functions":{}},"assignments":[]}}`))
	f.Add([]byte(`{"v":1,"type":"NodeHeartbeat","nodeHeartbeat":{"id":1,"statuses":[]},"at":"2025-01-01T00:00:00.5-07:00"}`))
	// "+00:00" decodes as Local on a UTC host and encodes as "Z".
	f.Add([]byte(`{"v":1,"type":"CreateToken","at":"2025-02-03T04:05:06.000007+00:00","createToken":{"name":"ci","role":"read","hash":"0000000000000000000000000000000000000000000000000000000000000000"}}`))
	f.Add([]byte(`{"v":2,"type":"SetNodeState"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCommand(data)
		if err != nil {
			return
		}
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("a decoded command does not encode: %v", err)
		}
		c2, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
		// The encoded form is a fixed point, and so is the command decoded
		// from it. (The command decoded from the fuzzer's bytes may differ
		// from c2 in a time's Location alone: "+00:00" parses as Local on a
		// UTC host, and encodes as "Z". Replicas apply the encoded bytes.)
		b2, err := EncodeCommand(c2)
		if err != nil {
			t.Fatalf("a re-decoded command does not encode: %v", err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not a fixed point:\n%s\n%s", b, b2)
		}
		c3, err := DecodeCommand(b2)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", b2, err)
		}
		if !reflect.DeepEqual(c2, c3) {
			t.Fatalf("round trip changed the command:\n%#v\n%#v", c2, c3)
		}
		if !c.At.Equal(c2.At) {
			t.Fatalf("round trip changed the time: %v → %v", c.At, c2.At)
		}
		// Applying a decoded command never panics either.
		s := NewState()
		s.Apply(1, c)
	})
}
