package replicated

import (
	"encoding/json"
	"fmt"
	"io"
)

// ApplyEntry decodes data, the payload of the Raft entry at index, and
// applies it. An entry that does not decode is a rejected command
// (ResultUndecodable), never a panic: a replica must keep applying whatever
// its log holds.
func (s *State) ApplyEntry(index uint64, data []byte) Result {
	cmd, err := DecodeCommand(data)
	if err != nil {
		s.Applied = index
		return s.reject(ResultUndecodable, err.Error())
	}
	return s.Apply(index, cmd)
}

// EncodeSnapshot writes s as a snapshot (its JSON).
func EncodeSnapshot(w io.Writer, s *State) error {
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("replicated: encode snapshot: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("replicated: write snapshot: %w", err)
	}
	return nil
}

// DecodeSnapshot reads a state EncodeSnapshot wrote.
func DecodeSnapshot(r io.Reader) (*State, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("replicated: read snapshot: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("replicated: decode snapshot: %w", err)
	}
	return &st, nil
}

// IsCurrentPlan reports whether the current revision of s was made by p: a
// proposal retried after a timeout may have been applied already, and its
// second copy is then refused as a stale parent.
func (s *State) IsCurrentPlan(p *CommitPlan) bool {
	r := s.Revision
	if r == nil || r.Parent != p.Parent || r.Commit != p.Commit || r.Ref != p.Ref ||
		r.EvalHash != p.EvalHash || r.Summary != p.Summary || len(s.Assignments) != len(p.Assignments) {
		return false
	}
	for _, a := range p.Assignments {
		b, ok := s.Assignments[a.VM]
		if !ok || b.Node != a.Node || !b.SameWorkload(a) {
			return false
		}
	}
	return true
}
