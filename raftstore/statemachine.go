package replicated

import (
	"encoding/json"
	"fmt"
	"io"

	sm "github.com/lni/dragonboat/v4/statemachine"
)

// stateMachine adapts [State] to Dragonboat's IStateMachine. Dragonboat holds
// a write lock around Update and RecoverFromSnapshot and a read lock around
// Lookup and SaveSnapshot, so no lock is needed here.
type stateMachine struct {
	state *State // non-nil
	// onApply, when non-nil, is told the index after each applied entry.
	// It must not block; it lets local consumers (the
	// node agent) react at once instead of polling. It has no effect on state.
	onApply func(index uint64)
}

var _ sm.IStateMachine = (*stateMachine)(nil)

func newStateMachine(shardID, replicaID uint64) sm.IStateMachine {
	return &stateMachine{state: NewState()}
}

// stateMachineFactory returns a factory whose state machines call onApply.
func stateMachineFactory(onApply func(uint64)) func(shardID, replicaID uint64) sm.IStateMachine {
	return func(shardID, replicaID uint64) sm.IStateMachine {
		return &stateMachine{state: NewState(), onApply: onApply}
	}
}

// Update decodes and applies one entry. An entry that does not decode is a
// rejected command (ResultUndecodable), never an error: an error from Update
// halts the replica. The returned Value is the ResultCode and Data the JSON of
// the [Result].
func (m *stateMachine) Update(e sm.Entry) (sm.Result, error) {
	var r Result
	cmd, err := DecodeCommand(e.Cmd)
	if err != nil {
		m.state.Applied = e.Index
		r = m.state.reject(ResultUndecodable, err.Error())
	} else {
		r = m.state.Apply(e.Index, cmd)
	}
	if m.onApply != nil {
		m.onApply(e.Index)
	}
	return encodeResult(r), nil
}

func encodeResult(r Result) sm.Result {
	data, err := json.Marshal(r)
	if err != nil {
		// A Result is a number and two strings; Marshal cannot fail on it.
		data = nil
	}
	return sm.Result{Value: uint64(r.Code), Data: data}
}

// decodeResult turns a Dragonboat result back into a [Result].
func decodeResult(res sm.Result) Result {
	var r Result
	if err := json.Unmarshal(res.Data, &r); err != nil {
		return Result{Code: ResultCode(res.Value), Message: "the state machine returned no readable result"}
	}
	return r
}

// Lookup answers a nil query with a deep copy of the state (*State).
func (m *stateMachine) Lookup(query any) (any, error) {
	if query != nil {
		return nil, fmt.Errorf("replicated: unknown query %T; only nil (the whole state) is supported", query)
	}
	return m.state.Clone(), nil
}

// SaveSnapshot writes the JSON of the state.
func (m *stateMachine) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	data, err := json.Marshal(m.state)
	if err != nil {
		return fmt.Errorf("replicated: encode snapshot: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("replicated: write snapshot: %w", err)
	}
	return nil
}

// RecoverFromSnapshot replaces the state with the one SaveSnapshot wrote.
func (m *stateMachine) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("replicated: read snapshot: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("replicated: decode snapshot: %w", err)
	}
	m.state = &st
	return nil
}

// Close releases nothing: the state lives in memory.
func (m *stateMachine) Close() error { return nil }
