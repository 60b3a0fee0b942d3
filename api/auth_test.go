package api_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
)

// testPKI is a cluster CA with a node certificate for 127.0.0.1 and user
// certificates, and an unrelated CA with a certificate of its own.
type testPKI struct {
	dir, ca string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.ca = filepath.Join(p.dir, "ca", pki.CACertFile)
	for _, ca := range []string{"ca", "other"} {
		if err := pki.InitCA(filepath.Join(p.dir, ca)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint64{1, 2} {
		if _, err := pki.IssueNode(filepath.Join(p.dir, "ca"), filepath.Join(p.dir, "certs"), id, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	for name, role := range map[string]pki.Role{"alice": pki.RoleRead, "bob": pki.RoleOperate, "carol": pki.RoleAdmin} {
		if _, err := pki.IssueUser(filepath.Join(p.dir, "ca"), filepath.Join(p.dir, "certs"), name, role); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pki.IssueUser(filepath.Join(p.dir, "other"), filepath.Join(p.dir, "other-certs"), "mallory", pki.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPKI) files(name string) (cert, key string) {
	dir := filepath.Join(p.dir, "certs")
	if name == "mallory" {
		dir = filepath.Join(p.dir, "other-certs")
	}
	return filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
}

// server is the node's TLS configuration.
func (p *testPKI) server(t *testing.T, node string) *tls.Config {
	t.Helper()
	cert, key := p.files(node)
	cfg, err := pki.ServerTLSClientCertIfGiven(p.ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// client is a client that presents who's certificate ("": none) and the
// bearer token tok ("": none).
func (p *testPKI) client(t *testing.T, addr, who, tok string) *api.Client {
	t.Helper()
	var cert, key string
	if who != "" {
		cert, key = p.files(who)
	}
	cfg, err := pki.ClientTLS(p.ca, cert, key)
	if who == "mallory" {
		// mallory's files do not verify against the cluster CA: load them as
		// an attacker would, without the check.
		pair, lerr := tls.LoadX509KeyPair(cert, key)
		if lerr != nil {
			t.Fatal(lerr)
		}
		cfg, err = pki.ClientTLS(p.ca, "", "")
		// Presented whatever CAs the server asks for, as curl does.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(addr, api.ClientOptions{TLS: cfg, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serveTLS runs node id's API with TLS on loopback until the test ends.
func serveTLS(t *testing.T, o api.Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.NewServer(o).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	})
	return ln.Addr().String()
}

func apiCode(err error) int {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Code
	}
	if err == nil {
		return http.StatusOK
	}
	return -1 // no HTTP answer (a refused handshake)
}

func TestRolesDecideWhoMayCallWhat(t *testing.T) {
	p := newTestPKI(t)
	replica := testkit.NewReplica(clusterState(t), 1, 1)
	addr := serveTLS(t, api.Options{Replica: replica, Reconciler: newFakeReconciler(), TLS: p.server(t, "node-1"),
		Logs: fakeLogs{"web": "booted web v1\n"}, Now: func() time.Time { return testkit.T0 }})
	ctx := context.Background()

	// An admin makes two tokens; their secrets come back once.
	carol := p.client(t, addr, "carol", "")
	ciOperate, err := carol.CreateToken(ctx, "ci", "operate")
	if err != nil {
		t.Fatal(err)
	}
	ciRead, err := carol.CreateToken(ctx, "dashboard", "read")
	if err != nil {
		t.Fatal(err)
	}

	status := func(c *api.Client) error { _, err := c.Status(ctx); return err }
	drain := func(c *api.Client) error { _, err := c.SetNodeState(ctx, 2, replicated.NodeDraining); return err }
	ready := func(c *api.Client) error { _, err := c.SetNodeState(ctx, 2, replicated.NodeReady); return err }
	member := func(c *api.Client) error {
		_, err := c.AddMember(ctx, api.MemberRequest{ID: 9, RaftAddr: "127.0.0.1:9"})
		return err
	}
	tokens := func(c *api.Client) error { _, err := c.Tokens(ctx); return err }
	logs := func(c *api.Client) error { return c.Logs(ctx, "web", false, io.Discard) }
	sync := func(c *api.Client) error { _, err := c.Sync(ctx); return err }
	for _, tt := range []struct {
		name string
		c    *api.Client
		call func(*api.Client) error
		code int
	}{
		{"no credentials cannot read status: 401", p.client(t, addr, "", ""), status, 401},
		{"no credentials cannot drain: 401", p.client(t, addr, "", ""), drain, 401},
		{"no credentials cannot add a member: 401", p.client(t, addr, "", ""), member, 401},
		{"a read certificate reads status", p.client(t, addr, "alice", ""), status, 200},
		{"a read certificate reads logs", p.client(t, addr, "alice", ""), logs, 200},
		{"a read certificate cannot drain: 403", p.client(t, addr, "alice", ""), drain, 403},
		{"a read certificate cannot sync: 403", p.client(t, addr, "alice", ""), sync, 403},
		{"an operate certificate drains", p.client(t, addr, "bob", ""), drain, 200},
		{"an operate certificate syncs", p.client(t, addr, "bob", ""), sync, 200},
		{"an operate certificate cannot add a member: 403", p.client(t, addr, "bob", ""), member, 403},
		{"an operate certificate cannot list tokens: 403", p.client(t, addr, "bob", ""), tokens, 403},
		{"an admin certificate lists tokens", carol, tokens, 200},
		{"a node certificate acts as admin", p.client(t, addr, "node-2", ""), member, 200},
		{"an operate token readies", p.client(t, addr, "", ciOperate.Token), ready, 200},
		{"a read token cannot drain: 403", p.client(t, addr, "", ciRead.Token), drain, 403},
		{"a read token reads status", p.client(t, addr, "", ciRead.Token), status, 200},
		{"an unknown token is 401", p.client(t, addr, "", api.TokenPrefix+"guessed"), status, 401},
		{"a certificate from another CA fails the handshake", p.client(t, addr, "mallory", ""), status, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(tt.c); apiCode(err) != tt.code {
				t.Fatalf("got %v (HTTP %d), want HTTP %d", err, apiCode(err), tt.code)
			}
		})
	}

	// Revoked, the token is refused at once.
	if _, err := carol.RevokeToken(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	err = drain(p.client(t, addr, "", ciOperate.Token))
	if apiCode(err) != 401 || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("drain with a revoked token: %v, want 401 saying it may be revoked", err)
	}

	// Every change names who asked for it.
	ev, err := p.client(t, addr, "alice", "").Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ev {
		if e.Actor != "" {
			got = append(got, e.Kind+" by "+e.Actor)
		}
	}
	want := []string{"TokenCreated by carol", "TokenCreated by carol", "NodeStateChanged by bob", "MemberAdded by node-2",
		"NodeStateChanged by token ci", "TokenRevoked by carol"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("attributed events:\n got %v\nwant %v", got, want)
	}

	// Nobody reads a token's hash back.
	st, err := p.client(t, addr, "alice", "").State(ctx)
	if err != nil || len(st.Tokens) != 1 || st.Tokens["dashboard"].Hash != "" {
		t.Errorf("state tokens %+v, %v; want dashboard without its hash", st.Tokens, err)
	}
	for _, cmd := range replica.Proposed() {
		if cmd.CreateToken != nil && strings.Contains(cmd.CreateToken.Hash, api.TokenPrefix) {
			t.Errorf("a token's secret was proposed: %+v", cmd.CreateToken)
		}
	}
}

func TestUnauthorizedAnswersAreJSONAndSayWhatToPresent(t *testing.T) {
	p := newTestPKI(t)
	addr := serveTLS(t, api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), TLS: p.server(t, "node-1")})
	cfg, err := pki.ClientTLS(p.ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	for _, tt := range []struct {
		name, auth string
		want       string
	}{
		{"no credentials say what to present", "", "--token-file"},
		{"another scheme is refused", "Basic YWxpY2U6eA==", "Bearer"},
		{"a token without the prefix is refused", "Bearer abc", "Bearer blx_"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "https://"+addr+"/v1/status", nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("HTTP %d, WWW-Authenticate %q: %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
			}
			errorSays(tt.want)(t, nil, body)
		})
	}
	// The health check stays open, for load balancers.
	resp, err := hc.Get("https://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz without credentials: %v", err)
	}
	resp.Body.Close()
}

// TestUnauthenticatedSlowBodyDoesNotHoldTheConnection: a client without
// credentials that promises a body and sends one byte is answered 401 and
// disconnected at once, not when the read timeout ends.
func TestUnauthenticatedSlowBodyDoesNotHoldTheConnection(t *testing.T) {
	p := newTestPKI(t)
	addr := serveTLS(t, api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), TLS: p.server(t, "node-1"),
		ReadTimeout: time.Hour})
	cfg, err := pki.ClientTLS(p.ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /v1/nodes/2/state HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	// A bound for a failing test, not a timing assertion: the server would
	// hold the connection for an hour.
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 401 {
		t.Fatalf("HTTP %d, want 401", resp.StatusCode)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the 401 the connection gave %v, want EOF (closed by the server)", err)
	}
}

func TestLogsOfAVMOnAnotherNodeComeOverTLSWithTheNodesCertificate(t *testing.T) {
	p := newTestPKI(t)
	st := clusterState(t)
	node2 := serveTLS(t, api.Options{Replica: testkit.NewReplica(st, 2, 1), Logs: fakeLogs{"db": "booted db v1\n"},
		TLS: p.server(t, "node-2")})
	st.Update(func(s *replicated.State) { s.Nodes[2].APIAddr = node2 })
	cert, key := p.files("node-1")
	peer, err := pki.ClientTLS(p.ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	node1 := serveTLS(t, api.Options{Replica: testkit.NewReplica(st, 1, 1), Logs: fakeLogs{}, TLS: p.server(t, "node-1"), PeerTLS: peer})
	var out bytes.Buffer
	if err := p.client(t, node1, "alice", "").Logs(context.Background(), "db", false, &out); err != nil || out.String() != "booted db v1\n" {
		t.Fatalf("logs of db through node 1: %q, %v", out.String(), err)
	}
	// Without its certificate node 1 is refused by node 2 like anyone.
	node1Plain := serveTLS(t, api.Options{Replica: testkit.NewReplica(st, 1, 1), Logs: fakeLogs{}, TLS: p.server(t, "node-1"),
		PeerTLS: mustClientTLS(t, p.ca)})
	err = p.client(t, node1Plain, "alice", "").Logs(context.Background(), "db", false, &out)
	if apiCode(err) != 401 {
		t.Fatalf("logs through a node without a peer certificate: %v, want node 2's 401", err)
	}
}

func mustClientTLS(t *testing.T, ca string) *tls.Config {
	t.Helper()
	cfg, err := pki.ClientTLS(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestServeRefusesPlainHTTPWithAuthentication(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = api.NewServer(api.Options{Replica: testkit.NewReplica(nil, 1, 1)}).Serve(context.Background(), ln)
	if err == nil || !strings.Contains(err.Error(), "Insecure") {
		t.Fatalf("Serve without TLS or Insecure: %v, want a refusal", err)
	}
}
