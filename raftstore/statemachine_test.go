package raftstore

import (
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	sm "github.com/lni/dragonboat/v4/statemachine"
)

func TestStateMachineUpdate(t *testing.T) {
	m := newStateMachine(ShardID, 1)
	t.Run("an undecodable entry is a rejection, not an error", func(t *testing.T) {
		res, err := m.Update(sm.Entry{Index: 1, Cmd: []byte("\x00garbage")})
		if err != nil {
			t.Fatalf("Update error halts the shard: %v", err)
		}
		r := decodeResult(res)
		if r.Code != replicated.ResultUndecodable || res.Value != uint64(replicated.ResultUndecodable) || !strings.Contains(r.Message, "malformed") {
			t.Fatalf("result = %+v", r)
		}
	})
	t.Run("a valid entry is applied and its result returned", func(t *testing.T) {
		b, err := replicated.EncodeCommand(testkit.Register(1))
		if err != nil {
			t.Fatal(err)
		}
		res, err := m.Update(sm.Entry{Index: 2, Cmd: b})
		if err != nil || decodeResult(res).Code != replicated.ResultOK {
			t.Fatalf("result = %+v, %v", decodeResult(res), err)
		}
	})
	t.Run("Lookup returns a deep copy", func(t *testing.T) {
		v, err := m.Lookup(nil)
		if err != nil {
			t.Fatal(err)
		}
		st := v.(*replicated.State)
		if st.Applied != 2 || st.Nodes[1] == nil {
			t.Fatalf("state = %+v", st)
		}
		st.Nodes[1].State = replicated.NodeDown
		v2, _ := m.Lookup(nil)
		if v2.(*replicated.State).Nodes[1].State != replicated.NodeReady {
			t.Fatal("Lookup result aliases the state machine")
		}
	})
	t.Run("Lookup refuses other queries", func(t *testing.T) {
		if _, err := m.Lookup("nodes"); err == nil {
			t.Fatal("want an error")
		}
	})
}
