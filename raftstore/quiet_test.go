package raftstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	sm "github.com/lni/dragonboat/v4/statemachine"
)

// A liveness-only heartbeat is applied by every replica and counted in
// LastApplied, but does not wake the local readers (OnApply); a full one
// does.
func TestQuietHeartbeatDoesNotCallOnApply(t *testing.T) {
	addr := freeAddrs(t, 1)[0]
	var mu sync.Mutex
	var woken []uint64
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, Config{NodeID: 1, RaftAddr: addr, DataDir: filepath.Join(t.TempDir(), "1"),
		Members: map[uint64]string{1: addr}, Logger: quietLogger(),
		OnApply: func(index uint64) {
			mu.Lock()
			defer mu.Unlock()
			woken = append(woken, index)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	leaderOf(t, []*Store{s})
	mustPropose(t, ctx, s, testkit.Register(1), replicated.ResultOK)
	full := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: testkit.T0, NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1, Epoch: 4, Seq: 1}}
	if r := mustPropose(t, ctx, s, full, replicated.ResultOK); r.StatusSeq != 1 {
		t.Fatalf("the full heartbeat's result holds report %d, want 1", r.StatusSeq)
	}
	wokenBefore := func() int { mu.Lock(); defer mu.Unlock(); return len(woken) }
	before := wokenBefore()
	beforeApplied, _ := s.LastApplied()
	live := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: testkit.T0, NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1, Epoch: 4, Seq: 2, Unchanged: 1}}
	if r := mustPropose(t, ctx, s, live, replicated.ResultOK); r.StatusSeq != 1 {
		t.Fatalf("the liveness-only heartbeat's result holds report %d, want 1", r.StatusSeq)
	}
	st, err := s.LocalRead()
	if err != nil {
		t.Fatal(err)
	}
	if n := st.Nodes[1]; n.LastHeartbeatSeq != 2 || n.ReportSeq != 2 || n.StatusSeq != 1 {
		t.Fatalf("node after the liveness-only heartbeat: hb=%d report=%d statuses of %d, want 2, 2, 1", n.LastHeartbeatSeq, n.ReportSeq, n.StatusSeq)
	}
	if after, _ := s.LastApplied(); after <= beforeApplied {
		t.Errorf("LastApplied stayed at %d: a quiet entry must still count as applied", after)
	}
	if got := wokenBefore(); got != before {
		t.Errorf("OnApply called %d times for a liveness-only heartbeat", got-before)
	}
	// A full heartbeat wakes them again.
	full.NodeHeartbeat.Seq = 3
	mustPropose(t, ctx, s, full, replicated.ResultOK)
	if got := wokenBefore(); got != before+1 {
		t.Errorf("OnApply called %d times for a full heartbeat, want 1", got-before)
	}
}

// Snapshots are gzip-compressed JSON; a plain JSON snapshot of an older
// build still recovers.
func TestSnapshotSaveAndRecover(t *testing.T) {
	m := newStateMachine(ShardID, 1).(*stateMachine)
	for i, c := range []replicated.Command{testkit.Register(1), testkit.Register(2),
		testkit.Plan(0, "c1", testkit.Assign("web", 1, "v1"), testkit.Assign("db", 2, "v1"))} {
		b, err := replicated.EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		if res, _ := m.Update(sm.Entry{Index: uint64(i + 1), Cmd: b}); decodeResult(res).Code != replicated.ResultOK {
			t.Fatalf("entry %d: %+v", i+1, decodeResult(res))
		}
	}
	var buf bytes.Buffer
	if err := m.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	if b := buf.Bytes(); len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("the snapshot is not gzip: starts %q", buf.Bytes()[:min(8, buf.Len())])
	}
	plain, err := json.Marshal(m.state)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"gzip": buf.Bytes(), "plain JSON of an older build": plain} {
		t.Run(name, func(t *testing.T) {
			fresh := newStateMachine(ShardID, 2).(*stateMachine)
			if err := fresh.RecoverFromSnapshot(bytes.NewReader(data), nil, nil); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fresh.state, m.state) {
				t.Errorf("recovered state differs: %s", diffHint(fresh.state, m.state))
			}
		})
	}
}

func diffHint(a, b *replicated.State) string {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return fmt.Sprintf("%d vs %d bytes of JSON", len(ja), len(jb))
}
