package raftstore

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/blixard/blixard/replicated"
	sm "github.com/lni/dragonboat/v4/statemachine"
)

// stateMachine adapts [replicated.State] to Dragonboat's IStateMachine. Dragonboat holds
// a write lock around Update and RecoverFromSnapshot and a read lock around
// Lookup and SaveSnapshot, so no lock is needed here.
type stateMachine struct {
	state *replicated.State // non-nil
	// onApply, when non-nil, is told the index after each applied entry,
	// and whether the entry was quiet (changed nothing local readers react
	// to: see replicated.State.ApplyEntryQuiet). It must not block; it
	// lets local consumers (the node agent) react at once instead of
	// polling. It has no effect on state.
	onApply func(index uint64, quiet bool)
}

var _ sm.IStateMachine = (*stateMachine)(nil)

func newStateMachine(shardID, replicaID uint64) sm.IStateMachine {
	return &stateMachine{state: replicated.NewState()}
}

// stateMachineFactory returns a factory whose state machines call onApply.
func stateMachineFactory(onApply func(index uint64, quiet bool)) func(shardID, replicaID uint64) sm.IStateMachine {
	return func(shardID, replicaID uint64) sm.IStateMachine {
		return &stateMachine{state: replicated.NewState(), onApply: onApply}
	}
}

// Update decodes and applies one entry ([replicated.State.ApplyEntry]: an
// undecodable entry is a rejection, never an error, because an error from
// Update halts the replica). The returned Value is the ResultCode and Data
// the JSON of the [replicated.Result].
func (m *stateMachine) Update(e sm.Entry) (sm.Result, error) {
	r, quiet := m.state.ApplyEntryQuiet(e.Index, e.Cmd)
	if m.onApply != nil {
		m.onApply(e.Index, quiet)
	}
	return encodeResult(r), nil
}

func encodeResult(r replicated.Result) sm.Result {
	data, err := json.Marshal(r)
	if err != nil {
		// A replicated.Result is a number and two strings; Marshal cannot fail on it.
		data = nil
	}
	return sm.Result{Value: uint64(r.Code), Data: data}
}

// decodeResult turns a Dragonboat result back into a [replicated.Result].
func decodeResult(res sm.Result) replicated.Result {
	var r replicated.Result
	if err := json.Unmarshal(res.Data, &r); err != nil {
		return replicated.Result{Code: replicated.ResultCode(res.Value), Message: "the state machine returned no readable result"}
	}
	return r
}

// Lookup answers a nil query with a deep copy of the state (*replicated.State).
func (m *stateMachine) Lookup(query any) (any, error) {
	if query != nil {
		return nil, fmt.Errorf("raftstore: unknown query %T; only nil (the whole state) is supported", query)
	}
	return m.state.Clone(), nil
}

// SaveSnapshot writes the state's snapshot (gzip-compressed JSON,
// replicated.EncodeSnapshot).
func (m *stateMachine) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	return replicated.EncodeSnapshot(w, m.state)
}

// RecoverFromSnapshot replaces the state with the one SaveSnapshot wrote.
func (m *stateMachine) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	st, err := replicated.DecodeSnapshot(r)
	if err != nil {
		return err
	}
	m.state = st
	return nil
}

// Close releases nothing: the state lives in memory.
func (m *stateMachine) Close() error { return nil }
