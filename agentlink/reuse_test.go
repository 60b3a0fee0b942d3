package agentlink_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/agentlink"
	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// countingListener counts the connections a server accepted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestLinkReusesConnections: proposals one after the other go over one
// kept-alive connection (a body left unread to its end made every request
// dial, and over TLS shake hands, again); a committed heartbeat that only
// renews the node's liveness signals no change, while one that changes a
// status does.
func TestLinkReusesConnections(t *testing.T) {
	store := testkit.NewStore(nil)
	srv := api.NewServer(api.Options{Replica: testkit.NewReplica(store, 1, 1), Insecure: true})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
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
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if res, err := l.Propose(pctx, register(7)); err != nil || !res.OK() {
		t.Fatalf("register: %v %+v", err, res)
	}
	drain(l.Changed())
	const n = 20
	for i := range n {
		if res, err := l.Propose(pctx, heartbeat(7)); err != nil || !res.OK() {
			t.Fatalf("heartbeat %d: %v %+v", i, err, res)
		}
	}
	if got := ln.n.Load(); got != 1 {
		t.Errorf("%d proposals one after the other opened %d connections, want 1", n+1, got)
	}
	// Pipelined heartbeats: rounds of `burst` at once use at most 3
	// connections in all (the link's bound on one server), kept between
	// the rounds.
	const burst, rounds, maxConns = 6, 4, 3
	for r := range rounds {
		errs := make(chan error, burst)
		for range burst {
			go func() {
				res, err := l.Propose(pctx, heartbeat(7))
				if err == nil && !res.OK() {
					err = res.Err()
				}
				errs <- err
			}()
		}
		for range burst {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", r, err)
			}
		}
	}
	if got := ln.n.Load(); got > maxConns {
		t.Errorf("%d rounds of %d heartbeats at once opened %d connections in all, want at most %d", rounds, burst, got, maxConns)
	}
	select {
	case <-l.Changed():
		t.Errorf("heartbeats that changed nothing but the node's liveness signalled Changed")
	default:
	}
	st, err := l.LocalRead()
	if err != nil || st.Nodes[7].LastHeartbeatSeq != n+burst*rounds {
		t.Fatalf("the view after %d heartbeats: %v %+v", n+burst*rounds, err, st.Nodes[7])
	}
	if res, err := l.Propose(pctx, heartbeat(7, replicated.VMStatus{VM: "web", Node: 7, Phase: replicated.PhaseRunning})); err != nil || !res.OK() {
		t.Fatalf("heartbeat with a status: %v %+v", err, res)
	}
	select {
	case <-l.Changed():
	default:
		t.Errorf("a heartbeat that committed a status signalled no change")
	}
	shared, err := l.SharedRead()
	if err != nil || shared.Observed["web"].Phase != replicated.PhaseRunning {
		t.Errorf("SharedRead after the status committed: %v %+v", err, shared)
	}
}
