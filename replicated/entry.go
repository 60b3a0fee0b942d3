package replicated

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"slices"
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

// ApplyEntryQuiet is [State.ApplyEntry] that also reports whether the
// entry changed nothing a local reader reacts to: a liveness-only
// heartbeat ([NodeHeartbeat.Unchanged]) that moved only the node's
// heartbeat count, order and time — not its statuses, not its Ceph
// addresses. In a steady cluster nearly every entry is one, so the shell
// need not wake the agent, the API's watchers and the status page for it
// (the leader's liveness check reads the count on its own schedule).
func (s *State) ApplyEntryQuiet(index uint64, data []byte) (Result, bool) {
	cmd, err := DecodeCommand(data)
	if err != nil {
		s.Applied = index
		return s.reject(ResultUndecodable, err.Error()), false
	}
	hb := cmd.NodeHeartbeat
	if hb == nil || hb.Unchanged == 0 {
		return s.Apply(index, cmd), false
	}
	n := s.Nodes[hb.ID]
	if n == nil {
		return s.Apply(index, cmd), false
	}
	// A heartbeat only adds to CephAddrs: an equal length is no change.
	ceph, reported := len(n.CephAddrs), slices.Clone(n.ReportedCephAddrs)
	res := s.Apply(index, cmd)
	quiet := res.OK() && len(n.CephAddrs) == ceph && slices.Equal(n.ReportedCephAddrs, reported)
	return res, quiet
}

// EncodeSnapshot writes s as a snapshot: its JSON, gzip-compressed. A
// state of 1,000 nodes and 10,000 instances is ~7 MB of JSON, which
// compresses ~8× at the fastest level for about the time encoding takes
// (see BenchmarkScale1000Nodes10000VMs); the snapshot travels to every
// replica that falls behind and is kept on disk.
func EncodeSnapshot(w io.Writer, s *State) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return fmt.Errorf("replicated: encode snapshot: %w", err)
	}
	if err := json.NewEncoder(zw).Encode(s); err != nil {
		return fmt.Errorf("replicated: encode snapshot: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("replicated: write snapshot: %w", err)
	}
	return nil
}

// DecodeSnapshot reads a state EncodeSnapshot wrote: gzip-compressed JSON,
// or the plain JSON of builds before compression (told apart by gzip's
// magic bytes: JSON starts with "{"), so older snapshots still recover.
func DecodeSnapshot(r io.Reader) (*State, error) {
	br := bufio.NewReader(r)
	var src io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("replicated: read compressed snapshot: %w", err)
		}
		defer zr.Close()
		src = zr
	}
	data, err := io.ReadAll(src)
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
