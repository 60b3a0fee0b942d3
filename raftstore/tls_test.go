package raftstore

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
)

// testPKI is a cluster CA and another, unrelated CA, with node
// certificates for 127.0.0.1 issued on demand.
type testPKI struct {
	dir string
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	for _, ca := range []string{"cluster", "other"} {
		if err := pki.InitCA(filepath.Join(p.dir, ca)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// issue returns node id's files from ca ("cluster" or "other") for hosts;
// the replica trusts the CA that signed its own certificate.
func (p *testPKI) issue(t testing.TB, ca string, id uint64, hosts ...string) TLSFiles {
	t.Helper()
	caDir := filepath.Join(p.dir, ca)
	out := filepath.Join(p.dir, fmt.Sprintf("%s-node-%d-%s", ca, id, strings.Join(hosts, ",")))
	files, err := pki.IssueNode(caDir, out, id, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return TLSFiles{CAFile: filepath.Join(caDir, pki.CACertFile), CertFile: files.Cert, KeyFile: files.Key}
}

func (p *testPKI) node(t testing.TB, id uint64) TLSFiles {
	return p.issue(t, "cluster", id, "127.0.0.1")
}

// neverWithin polls cond for d and fails the test if it ever holds; it is
// how a test shows that something does not happen in a generous time.
func neverWithin(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if ok, detail := cond(); ok {
			t.Fatalf("%s: %s", what, detail)
		}
		<-tick.C
	}
}

func waitApplied(t testing.TB, s *Store, rev uint64) {
	t.Helper()
	testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("node %d to apply revision %d", s.NodeID(), rev), testkit.Until(func() bool {
		st, err := s.LocalRead()
		return err == nil && st.Revision != nil && st.Revision.ID >= rev
	}))
}

func TestDragonboatMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	stores, members := startClusterTLS(t, 3, func(id uint64) TLSFiles { return p.node(t, id) })
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Three replicas with certificates from one CA elect a leader and commit.
	for _, s := range stores {
		mustPropose(t, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
	}
	leader := leaderOf(t, stores)
	rev := mustPropose(t, ctx, stores[1], testkit.Plan(0, "abc", testkit.Assign("web", 1, "v1")), replicated.ResultOK).Revision
	for _, s := range stores {
		waitApplied(t, s, rev)
	}

	// A replica with a certificate from the cluster CA joins and catches up,
	// so the intruders below fail for their certificates, not for joining.
	addrs := freeLocalhostAddrs(t, 3) // the certificates name 127.0.0.1
	if err := stores[0].AddReplica(ctx, 4, addrs[0], true); err != nil {
		t.Fatal(err)
	}
	joined, err := Start(ctx, Config{NodeID: 4, RaftAddr: addrs[0], DataDir: t.TempDir(), Join: true, NonVoting: true,
		Logger: quietLogger(), TLS: p.node(t, 4)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { joined.Close() })
	waitApplied(t, joined, rev)

	// Intruders, added to the membership as an operator would and started
	// with Join: a voter whose certificate comes from another CA, and a
	// non-voting replica without TLS.
	intruders := []struct {
		id        uint64
		addr      string
		nonVoting bool
		tls       TLSFiles
	}{
		{5, addrs[1], false, p.issue(t, "other", 5, "127.0.0.1")},
		{6, addrs[2], true, TLSFiles{}},
	}
	var bad []*Store
	for _, in := range intruders {
		if err := stores[0].AddReplica(ctx, in.id, in.addr, in.nonVoting); err != nil {
			t.Fatal(err)
		}
		// open, not Start: Start would wait for a leader these never learn of.
		s, err := open(Config{NodeID: in.id, RaftAddr: in.addr, DataDir: t.TempDir(), Join: true, NonVoting: in.nonVoting,
			Logger: quietLogger(), TLS: in.tls})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		bad = append(bad, s)
	}

	// Plain TCP clients on the raft ports: one sends Dragonboat's magic
	// number and junk, one connects and stays silent for the rest of the test.
	for id, addr := range members {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial node %d's raft port: %v", id, err)
		}
		_, _ = c.Write([]byte{0xAE, 0x7D, 1, 2, 3, 4, 5, 6, 7, 8})
		c.Close()
	}
	idle, err := net.Dial("tcp", members[leader.NodeID()])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Close() })

	// The shard still commits, and every replica with the CA's certificate
	// applies it.
	good := append(stores[:len(stores):len(stores)], joined)
	rev2 := mustPropose(t, ctx, stores[2], testkit.Plan(rev, "def", testkit.Assign("web", 2, "v2")), replicated.ResultOK).Revision
	for _, s := range good {
		waitApplied(t, s, rev2)
	}

	// The intruders get nothing: no revision, in a time in which the
	// legitimate joiner caught up many times over.
	applied := func(rev uint64) func() (bool, string) {
		return func() (bool, string) {
			for _, s := range bad {
				if st, err := s.LocalRead(); err == nil && st.Revision != nil && st.Revision.ID >= rev {
					return true, fmt.Sprintf("intruder node %d applied revision %d", s.NodeID(), st.Revision.ID)
				}
			}
			return false, ""
		}
	}
	neverWithin(t, 3*time.Second, "intruders stay without the shard's state", applied(rev))

	// After the intruders had their time, the shard still commits, and
	// they have not applied the latest revision.
	rev3 := mustPropose(t, ctx, stores[0], testkit.Plan(rev2, "ghi", testkit.Assign("web", 3, "v3")), replicated.ResultOK).Revision
	for _, s := range good {
		waitApplied(t, s, rev3)
	}
	if ok, detail := applied(rev)(); ok {
		t.Fatal(detail)
	}
	for _, s := range bad {
		if _, ok := s.Leader(); ok {
			t.Errorf("intruder node %d learnt of a leader", s.NodeID())
		}
	}
}

func TestStartRefusesBadTLS(t *testing.T) {
	p := newTestPKI(t)
	node1 := p.node(t, 1)
	node2 := p.node(t, 2)
	elsewhere := p.issue(t, "cluster", 1, "10.9.9.9")
	foreign := p.issue(t, "other", 1, "127.0.0.1")
	user, err := pki.IssueUser(filepath.Join(p.dir, "cluster"), filepath.Join(p.dir, "users"), "alice", pki.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  TLSFiles
		want string
	}{
		{"a CA file alone is refused", TLSFiles{CAFile: node1.CAFile}, "give all three or none"},
		{"another node's certificate is refused", node2, "not of node 1"},
		{"a certificate that does not name the raft host is refused", elsewhere, "--host 127.0.0.1"},
		{"a certificate from another CA than the CA file is refused", TLSFiles{CAFile: node1.CAFile, CertFile: foreign.CertFile, KeyFile: foreign.KeyFile}, "another CA"},
		{"a user certificate is refused", TLSFiles{CAFile: node1.CAFile, CertFile: user.Cert, KeyFile: user.Key}, "node certificate"},
		{"a missing key file is named", TLSFiles{CAFile: node1.CAFile, CertFile: node1.CertFile, KeyFile: "/nonexistent/node-1.key"}, "/nonexistent/node-1.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Start(context.Background(), Config{NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: t.TempDir(),
				Members: map[uint64]string{1: "127.0.0.1:1"}, Logger: quietLogger(), TLS: tc.tls})
			if err == nil {
				s.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// freeLocalhostAddrs returns n distinct free 127.0.0.1 ports.
func freeLocalhostAddrs(t testing.TB, n int) []string {
	t.Helper()
	var ls []net.Listener
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}
