package agentlink_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/agentlink"
	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
)

// cluster is a CA with node certificates and API servers of nodes 1 and 2
// over one replicated store (what two replicas of one shard show).
type cluster struct {
	dir   string
	store *testkit.Store
	addrs []string
	srvs  []*api.Server
	stops []func()
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{dir: t.TempDir(), store: testkit.NewStore(nil)}
	if err := pki.InitCA(filepath.Join(c.dir, "ca")); err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= 4; id++ {
		if _, err := pki.IssueNode(filepath.Join(c.dir, "ca"), filepath.Join(c.dir, "certs"), id, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint64{1, 2} {
		if _, err := c.store.Propose(context.Background(), testkit.Register(id)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint64{1, 2} {
		cert, key := c.files(id)
		cfg, err := pki.ServerTLSClientCertIfGiven(c.ca(), cert, key)
		if err != nil {
			t.Fatal(err)
		}
		srv := api.NewServer(api.Options{Replica: testkit.NewReplica(c.store, id, 1), TLS: cfg})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, ln) }()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("server %d: %v", id, err)
				}
			})
		}
		t.Cleanup(stop)
		c.addrs, c.srvs, c.stops = append(c.addrs, ln.Addr().String()), append(c.srvs, srv), append(c.stops, stop)
	}
	return c
}

func (c *cluster) ca() string { return filepath.Join(c.dir, "ca", pki.CACertFile) }

func (c *cluster) files(id uint64) (cert, key string) {
	return filepath.Join(c.dir, "certs", fmt.Sprintf("node-%d.crt", id)), filepath.Join(c.dir, "certs", fmt.Sprintf("node-%d.key", id))
}

// applied tells the servers an entry was applied, as the node does.
func (c *cluster) applied() {
	for _, s := range c.srvs {
		s.Applied()
	}
}

// link runs a link of node id with cert's certificate until the test ends.
func (c *cluster) link(t *testing.T, id, cert uint64) *agentlink.Client {
	t.Helper()
	certFile, keyFile := c.files(cert)
	cfg, err := pki.ClientTLS(c.ca(), certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := agentlink.New(agentlink.Options{Servers: c.addrs, NodeID: id, TLS: cfg, Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return l
}

func register(id uint64) replicated.Command {
	cmd := testkit.Register(id)
	cmd.RegisterNode.RaftAddr = ""
	return cmd
}

func heartbeat(id uint64, sts ...replicated.VMStatus) replicated.Command {
	return replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdNodeHeartbeat, At: time.Now(),
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: id, Statuses: sts}}
}

// TestLinkProposesAndFollows: a proposal's return shows its commit in
// LocalRead at once (what the agent's lease and start hold rely on); a
// plan shows up through the long poll with a Changed signal; a server
// going away is left for the other; with none left proposals fail and
// the last view stays readable.
func TestLinkProposesAndFollows(t *testing.T) {
	c := newCluster(t)
	l := c.link(t, 3, 3)
	ctx := context.Background()
	if _, err := l.LocalRead(); err == nil {
		// Allowed only once a view arrived; it may have already.
		select {
		case <-l.Ready():
		default:
			t.Fatal("LocalRead succeeded before any view arrived")
		}
	}

	res, err := l.Propose(ctx, register(3))
	if err != nil || !res.OK() {
		t.Fatalf("registering: %v %+v", err, res)
	}
	st, err := l.LocalRead()
	if err != nil || st.Nodes[3] == nil {
		t.Fatalf("right after RegisterNode committed, the view lacks node 3: %v %+v", err, st)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if res, err := l.Propose(ctx, heartbeat(3)); err != nil || !res.OK() {
			t.Fatalf("heartbeat %d: %v %+v", seq, err, res)
		}
		st, _ = l.LocalRead()
		if st.Nodes[3].LastHeartbeatSeq != seq {
			t.Fatalf("right after heartbeat %d committed, the view shows seq %d", seq, st.Nodes[3].LastHeartbeatSeq)
		}
	}

	// A plan puts web on node 3: the poll brings it.
	drain(l.Changed())
	if res, err := c.store.Propose(ctx, testkit.Plan(0, "c1", testkit.Assign("web", 3, "v1"), testkit.Assign("db", 1, "v1"))); err != nil || !res.OK() {
		t.Fatal(err, res)
	}
	c.applied()
	waitChanged(t, l, func(st *replicated.State) bool { return st.Assignments["web"].Node == 3 })
	st, _ = l.LocalRead()
	if _, ok := st.Assignments["db"]; ok {
		t.Errorf("node 1's db is in node 3's state without the placement part: %+v", st.Assignments)
	}
	if st.Revision == nil || st.Revision.Commit != "c1" || st.Desired == nil || st.Desired.Name != "t" {
		t.Errorf("revision %+v, desired %+v: want c1 of cluster t", st.Revision, st.Desired)
	}

	// Server 1 goes away: proposals and the poll go on through server 2.
	c.stops[0]()
	for range 3 {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := l.Propose(pctx, heartbeat(3, replicated.VMStatus{VM: "web", Node: 3, Phase: replicated.PhaseRunning}))
		cancel()
		if err != nil || !res.OK() {
			t.Fatalf("heartbeat with server 1 gone: %v %+v", err, res)
		}
	}
	st, _ = l.LocalRead()
	if st.Observed["web"].Phase != replicated.PhaseRunning {
		t.Errorf("web's committed status in the view = %+v, want running", st.Observed["web"])
	}
	if res, err := c.store.Propose(ctx, testkit.Plan(st.Revision.ID, "c2", testkit.Assign("web", 3, "v2"))); err != nil || !res.OK() {
		t.Fatal(err, res)
	}
	c.applied()
	waitChanged(t, l, func(st *replicated.State) bool {
		return st.Revision.Commit == "c2" && st.Assignments["web"].OutPath == "/nix/store/web-v2"
	})

	// No server left: a proposal fails by its deadline, the view stays.
	c.stops[1]()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := l.Propose(pctx, heartbeat(3)); err == nil {
		t.Errorf("a heartbeat committed with every server gone")
	}
	if st, err := l.LocalRead(); err != nil || st.Revision.Commit != "c2" {
		t.Errorf("the last view after the servers went: %v %+v", err, st)
	}
}

// TestLinkRefused: another node's certificate is refused for good, at
// once, not retried on the next server.
func TestLinkRefused(t *testing.T) {
	c := newCluster(t)
	l := c.link(t, 4, 3) // node 3's certificate, claiming node 4
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := l.Propose(ctx, register(4))
	if err == nil || !strings.Contains(err.Error(), "may not act for node 4") || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("proposing as node 4 with node 3's certificate: %v, want a refusal", err)
	}
	if _, err := agentlink.New(agentlink.Options{NodeID: 1}); err == nil {
		t.Errorf("New without servers succeeded")
	}
	if _, err := agentlink.New(agentlink.Options{NodeID: 1, Servers: []string{"http://x:1"}, TLS: c.tls(t)}); err == nil {
		t.Errorf("New with http:// and TLS succeeded")
	}
}

func (c *cluster) tls(t *testing.T) *tls.Config {
	t.Helper()
	cert, key := c.files(3)
	cfg, err := pki.ClientTLS(c.ca(), cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// waitChanged waits for Changed signals until ok holds for the view.
func waitChanged(t *testing.T, l *agentlink.Client, ok func(*replicated.State) bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if st, err := l.LocalRead(); err == nil && ok(st) {
			return
		}
		select {
		case <-l.Changed():
		case <-deadline:
			st, err := l.LocalRead()
			t.Fatalf("the view never got there: %v %s", err, testkit.JSON(t, st))
		}
	}
}

// TestLinkInsecure: without TLS the link speaks plain HTTP to an API
// without authentication (`serve --insecure`, the scale harness).
func TestLinkInsecure(t *testing.T) {
	store := testkit.NewStore(nil)
	srv := api.NewServer(api.Options{Replica: testkit.NewReplica(store, 1, 1), Insecure: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	l, err := agentlink.New(agentlink.Options{Servers: []string{ln.Addr().String()}, NodeID: 7})
	if err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- l.Run(lctx) }()
	defer func() { lcancel(); <-ran }()
	if res, err := l.Propose(ctx, register(7)); err != nil || !res.OK() {
		t.Fatalf("register over plain HTTP: %v %+v", err, res)
	}
	if st, err := l.LocalRead(); err != nil || st.Nodes[7] == nil {
		t.Fatalf("view after registering: %v %+v", err, st)
	}
}
