package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
)

// e2ePKI is a cluster CA, node certificates for 127.0.0.1, user
// certificates (reader: read, operator: operate, admin: admin) and an
// unrelated CA with a node certificate of its own, all made by the real
// binary (`blixard ca init`, `blixard cert issue`).
type e2ePKI struct{ dir string }

func newE2EPKI(t *testing.T, nodes int) *e2ePKI {
	t.Helper()
	p := &e2ePKI{dir: t.TempDir()}
	must := func(args ...string) {
		t.Helper()
		if out, stderr, code := cli(t, "", args...); code != 0 {
			t.Fatalf("blixard %s: exit %d: %s%s", strings.Join(args, " "), code, out, stderr)
		}
	}
	ca, other := filepath.Join(p.dir, "ca"), filepath.Join(p.dir, "other")
	must("ca", "init", ca)
	must("ca", "init", other)
	for id := 1; id <= nodes; id++ {
		must("cert", "issue", "--ca", ca, "--node", fmt.Sprint(id), "--host", "127.0.0.1", "--out", filepath.Join(p.dir, "certs"))
	}
	for user, role := range map[string]string{"reader": "read", "operator": "operate", "admin": "admin"} {
		must("cert", "issue", "--ca", ca, "--user", user, "--role", role, "--out", filepath.Join(p.dir, "certs"))
	}
	must("cert", "issue", "--ca", other, "--node", fmt.Sprint(nodes+1), "--host", "127.0.0.1", "--out", filepath.Join(p.dir, "other-certs"))
	return p
}

func (p *e2ePKI) ca() string { return filepath.Join(p.dir, "ca", pki.CACertFile) }

func (p *e2ePKI) files(name string) (cert, key string) {
	return filepath.Join(p.dir, "certs", name+".crt"), filepath.Join(p.dir, "certs", name+".key")
}

// serveArgs are node n's TLS flags.
func (p *e2ePKI) serveArgs(n *node) []string {
	cert, key := p.files(fmt.Sprintf("node-%d", n.id))
	return []string{"--tls-ca", p.ca(), "--tls-cert", cert, "--tls-key", key}
}

// as are the client flags of user who ("": the CA only, no credentials).
func (p *e2ePKI) as(who string, args ...string) []string {
	args = append(args, "--ca", p.ca())
	if who != "" {
		cert, key := p.files(who)
		args = append(args, "--cert", cert, "--key", key)
	}
	return args
}

// tlsClient is an HTTPS client trusting the cluster CA that presents cert
// (nil: none) whatever CAs the server asks for, as curl would.
func (p *e2ePKI) tlsClient(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	cfg, err := pki.ClientTLS(p.ca(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
}

type eventJSON struct {
	Kind, Message, Actor string
}

// TestRaftTLSThreeNodes runs three `serve` nodes with mutual TLS on Raft and
// HTTPS on the API, and checks who may do what: roles from certificates and
// tokens, 401 without credentials, 403 with the wrong role, revocation, the
// event log's record of who asked, a node with another CA's certificate
// that cannot join, and 500 slow-body connections that leave a node with a
// low file descriptor limit answering.
//
// Without credentials a client gets HTTP 401 (the TLS handshake succeeds:
// the API accepts clients without a certificate, for bearer tokens); a
// certificate the cluster CA did not sign is refused at the TLS handshake.
func TestRaftTLSThreeNodes(t *testing.T) {
	p := newE2EPKI(t, 3)
	c := startClusterWith(t, "", []nodeSpec{{0, 0, ""}, {0, 0, ""}, {0, 0, ""}}, func(n *node) []string {
		if n.id == 3 {
			// The node the slow bodies go to: a limit many hosts have.
			n.fdLimit = 1024
		}
		return p.serveArgs(n)
	}, "--agent=false")
	n1, n3 := c.nodes[0], c.nodes[2]
	testkit.WaitFor(t, 90*time.Second, "three registered nodes, read over HTTPS with a read certificate", func() error {
		var nodes []struct{ ID uint64 }
		if err := cliJSON(t, &nodes, p.as("reader", "nodes", "--server", n1.api)...); err != nil {
			return err
		}
		if len(nodes) != 3 {
			return fmt.Errorf("%d nodes", len(nodes))
		}
		return nil
	})

	t.Run("a read certificate reads status on every node", func(t *testing.T) {
		for _, n := range c.nodes {
			if out, stderr, code := cli(t, "", p.as("reader", "status", "--server", n.api)...); code != 0 || !strings.Contains(out, "Leader: node") {
				t.Fatalf("status on node %d: exit %d: %s%s", n.id, code, out, stderr)
			}
		}
	})

	t.Run("a read certificate cannot drain: 403", func(t *testing.T) {
		_, stderr, code := cli(t, "", p.as("reader", "node", "drain", "2", "--server", n1.api)...)
		if code != 1 || !strings.Contains(stderr, "reader (role read) may not POST /v1/nodes/2/state: it needs role operate") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		resp := httpsDo(t, p.tlsClient(t, mustPair(t, p, "reader")), "POST", n1.api, "/v1/nodes/2/state", `{"state": "draining"}`)
		if resp.code != 403 {
			t.Fatalf("HTTP %d, want 403: %s", resp.code, resp.body)
		}
	})

	t.Run("without credentials status, drain and membership are 401", func(t *testing.T) {
		for _, args := range [][]string{{"status"}, {"node", "drain", "2"}, {"node", "add", "9", "127.0.0.1:9"}} {
			_, stderr, code := cli(t, "", p.as("", append(args, "--server", n1.api)...)...)
			if code != 1 || !strings.Contains(stderr, "no credentials") {
				t.Errorf("blixard %s without credentials: exit %d: %s", strings.Join(args, " "), code, stderr)
			}
		}
		anon := p.tlsClient(t, nil)
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/status", ""}, {"POST", "/v1/nodes/2/state", `{"state": "draining"}`},
			{"POST", "/v1/members", `{"id": 9, "raftAddr": "127.0.0.1:9"}`}, {"GET", "/v1/tokens", ""},
		} {
			resp := httpsDo(t, anon, r.method, n1.api, r.path, r.body)
			var e struct{ Error string }
			if resp.code != 401 || json.Unmarshal(resp.body, &e) != nil || e.Error == "" {
				t.Errorf("%s %s without credentials: HTTP %d: %s; want 401 with a JSON error", r.method, r.path, resp.code, resp.body)
			}
		}
		// Plain HTTP gets no answer from the API.
		if resp, err := http.Get("http://" + n1.api + "/v1/status"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Errorf("plain HTTP status answered: %s", b)
			}
		}
	})

	t.Run("a certificate from another CA is refused at the TLS handshake", func(t *testing.T) {
		cert := filepath.Join(p.dir, "other-certs", "node-4.crt")
		pair, err := tls.LoadX509KeyPair(cert, strings.TrimSuffix(cert, ".crt")+".key")
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.tlsClient(t, &pair).Get("https://" + n1.api + "/v1/status")
		if err == nil || !strings.Contains(err.Error(), "tls") {
			t.Fatalf("GET with another CA's certificate: %v, want a TLS error", err)
		}
	})

	t.Run("an operate certificate drains", func(t *testing.T) {
		if out, stderr, code := cli(t, "", p.as("operator", "node", "drain", "2", "--server", c.nodes[1].api)...); code != 0 || !strings.Contains(out, "node 2 is draining") {
			t.Fatalf("exit %d: %s%s", code, out, stderr)
		}
	})

	t.Run("an operate token drains; revoked, it gets 401", func(t *testing.T) {
		tokFile := filepath.Join(t.TempDir(), "ci.token")
		if out, stderr, code := cli(t, "", p.as("admin", "token", "create", "--name", "ci", "--role", "operate", "--out", tokFile, "--server", n1.api)...); code != 0 {
			t.Fatalf("token create: exit %d: %s%s", code, out, stderr)
		}
		withToken := func(n *node, args ...string) (string, int) {
			_, stderr, code := cli(t, "", append(args, "--server", n.api, "--ca", p.ca(), "--token-file", tokFile)...)
			return stderr, code
		}
		if stderr, code := withToken(n1, "node", "ready", "2"); code != 0 {
			t.Fatalf("node ready with the token: exit %d: %s", code, stderr)
		}
		if stderr, code := withToken(n1, "node", "drain", "2"); code != 0 {
			t.Fatalf("node drain with the token: exit %d: %s", code, stderr)
		}
		if stderr, code := withToken(n1, "token", "list"); code != 1 || !strings.Contains(stderr, "needs role admin") {
			t.Fatalf("token list with an operate token: exit %d: %s", code, stderr)
		}
		if out, stderr, code := cli(t, "", p.as("admin", "token", "revoke", "ci", "--server", n1.api)...); code != 0 {
			t.Fatalf("token revoke: exit %d: %s%s", code, out, stderr)
		}
		// The node that committed the revocation applied it before answering.
		if stderr, code := withToken(n1, "node", "ready", "2"); code != 1 || !strings.Contains(stderr, "revoked") {
			t.Fatalf("node ready with the revoked token: exit %d: %s", code, stderr)
		}
		// The others refuse it once they applied it too.
		testkit.WaitFor(t, 30*time.Second, "node 3 to refuse the revoked token", func() error {
			if stderr, code := withToken(n3, "status"); code != 1 || !strings.Contains(stderr, "revoked") {
				return fmt.Errorf("status with the revoked token on node 3: exit %d: %s", code, stderr)
			}
			return nil
		})
		resp := httpsDo(t, p.tlsClient(t, nil), "GET", n1.api, "/v1/status", "", "Authorization", "Bearer "+readToken(t, tokFile))
		if resp.code != 401 {
			t.Fatalf("status with the revoked token: HTTP %d, want 401: %s", resp.code, resp.body)
		}
	})

	t.Run("the event log names who made each change", func(t *testing.T) {
		var events []eventJSON
		if err := cliJSON(t, &events, p.as("reader", "events", "--server", n3.api)...); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range events {
			if e.Actor != "" {
				got = append(got, e.Kind+" by "+e.Actor)
				if !strings.HasSuffix(e.Message, "(by "+e.Actor+")") {
					t.Errorf("event %q does not name %s", e.Message, e.Actor)
				}
			}
		}
		want := "NodeStateChanged by operator, TokenCreated by admin, NodeStateChanged by token ci, NodeStateChanged by token ci, TokenRevoked by admin"
		if strings.Join(got, ", ") != want {
			t.Errorf("attributed events:\n got %s\nwant %s", strings.Join(got, ", "), want)
		}
	})

	t.Run("a node with another CA's certificate never joins", func(t *testing.T) {
		n4 := &node{id: 4, api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir()}
		n4.logPath = filepath.Join(n4.dataDir, "serve.log")
		// The cluster's admin adds it, as for any new node.
		if out, stderr, code := cli(t, "", p.as("admin", "node", "add", "4", n4.raft, "--non-voting", "--server", n1.api)...); code != 0 {
			t.Fatalf("node add: exit %d: %s%s", code, out, stderr)
		}
		cert := filepath.Join(p.dir, "other-certs", "node-4.crt")
		c.start(n4, []string{"serve", "--node-id", "4", "--data-dir", n4.dataDir, "--raft-addr", n4.raft, "--api-addr", n4.api,
			"--join", "--non-voting", "--agent=false", "--heartbeat", "500ms", "--log-level", "debug",
			"--tls-ca", filepath.Join(p.dir, "other", pki.CACertFile), "--tls-cert", cert, "--tls-key", strings.TrimSuffix(cert, ".crt") + ".key"})
		defer func() {
			// It is still waiting for a leader; stopping it then is a failed start.
			_ = n4.stop()
			if t.Failed() {
				b, _ := os.ReadFile(n4.logPath)
				t.Logf("--- log of node 4:\n%s", tail(b, 4000))
			}
		}()
		// The cluster goes on committing; give node 4 ten heartbeats of node 1
		// to join, then look for it.
		start := heartbeats(t, p, n1, 1)
		testkit.WaitFor(t, 60*time.Second, "ten more heartbeats of node 1", func() error {
			if hb := heartbeats(t, p, n1, 1); hb < start+10 {
				return fmt.Errorf("%d heartbeats, want %d", hb, start+10)
			}
			return nil
		})
		var nodes []struct{ ID uint64 }
		if err := cliJSON(t, &nodes, p.as("reader", "nodes", "--server", n1.api)...); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.ID == 4 {
				t.Fatal("node 4 registered: it applied entries of the shard")
			}
		}
		select {
		case err := <-n4.done:
			t.Fatalf("node 4 exited (%v) instead of waiting to join", err)
		default:
		}
		// Its API never serves: it waits for a leader before it starts.
		cl := p.tlsClient(t, nil)
		cl.Timeout = 2 * time.Second
		if resp, err := cl.Get("https://" + n4.api + "/healthz"); err == nil {
			resp.Body.Close()
			t.Fatalf("node 4's API answered HTTP %d", resp.StatusCode)
		}
	})

	t.Run("500 slow-body connections leave the node up and answering", func(t *testing.T) {
		if limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", n3.cmd.Process.Pid)); err != nil ||
			!strings.Contains(strings.Join(strings.Fields(string(limits)), " "), "Max open files 1024 1024") {
			t.Fatalf("node 3 does not run with 1024 descriptors at most: %v\n%s", err, limits)
		}
		pair := mustPair(t, p, "operator")
		held := holdSlowBodies(t, n3.api, p.ca(), pair, 500)
		fds := openFiles(n3.cmd.Process.Pid)
		t.Logf("node 3 (RLIMIT_NOFILE 1024) holds %d descriptors with 500 slow bodies open", fds)
		if fds < 500 {
			t.Errorf("node 3 has %d descriptors open, fewer than the 500 held connections: they are not held", fds)
		}
		// Answers while they are held, with a valid certificate.
		if out, stderr, code := cli(t, "", p.as("reader", "status", "--server", n3.api)...); code != 0 || !strings.Contains(out, "Leader: node") {
			t.Fatalf("status while 500 slow bodies are held: exit %d: %s%s", code, out, stderr)
		}
		held.release()
		if out, stderr, code := cli(t, "", p.as("reader", "status", "--server", n3.api)...); code != 0 || !strings.Contains(out, "Leader: node") {
			t.Fatalf("status after the slow bodies left: exit %d: %s%s", code, out, stderr)
		}
		select {
		case err := <-n3.done:
			t.Fatalf("node 3 exited: %v", err)
		default:
		}
		if b, err := os.ReadFile(n3.logPath); err == nil && strings.Contains(string(b), "too many open files") {
			t.Errorf("node 3 ran out of file descriptors:\n%s", tail(b, 3000))
		}
	})
}

// httpAnswer is a status code and body.
type httpAnswer struct {
	code int
	body []byte
}

// httpsDo sends one request; header is name, value pairs.
func httpsDo(t *testing.T, c *http.Client, method, addr, path, body string, header ...string) httpAnswer {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpAnswer{resp.StatusCode, b}
}

func mustPair(t *testing.T, p *e2ePKI, who string) *tls.Certificate {
	t.Helper()
	cert, key := p.files(who)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return &pair
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// heartbeats is node id's heartbeat count, read through n.
func heartbeats(t *testing.T, p *e2ePKI, n *node, id uint64) uint64 {
	t.Helper()
	var nodes []struct {
		ID         uint64 `json:"id"`
		Heartbeats uint64 `json:"heartbeats"`
	}
	if err := cliJSON(t, &nodes, p.as("reader", "nodes", "--server", n.api)...); err != nil {
		t.Fatal(err)
	}
	for _, x := range nodes {
		if x.ID == id {
			return x.Heartbeats
		}
	}
	t.Fatalf("node %d is not registered", id)
	return 0
}

// openFiles counts the descriptors process pid has open (0: unknown).
func openFiles(pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(entries)
}

// slowBodies are connections that each sent a request's header and the
// first byte of a body they promised to be 1000 bytes long.
type slowBodies struct {
	conns []net.Conn
	once  sync.Once
}

func (s *slowBodies) release() {
	s.once.Do(func() {
		for _, c := range s.conns {
			c.Close()
		}
	})
}

// holdSlowBodies opens n TLS connections to addr that present pair (an
// operate certificate, so the API reads the body of a drain), each sending
// the header of POST /v1/nodes/1/state and one byte of its body; they stay
// open until release (also at the end of the test). The server holds each
// until its read timeout (30 s).
func holdSlowBodies(t *testing.T, addr, ca string, pair *tls.Certificate, n int) *slowBodies {
	t.Helper()
	cfg, err := pki.ClientTLS(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Certificates = []tls.Certificate{*pair}
	cfg.ServerName = "127.0.0.1"
	s := &slowBodies{conns: make([]net.Conn, n)}
	t.Cleanup(s.release)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	work := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := tls.Dialer{Config: cfg}
			for i := range work {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err == nil {
					_, err = io.WriteString(c, "POST /v1/nodes/1/state HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					s.conns[i] = c
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		s.release()
		t.Fatalf("%d of %d slow-body connections failed, first: %v", len(errs), n, errors.Join(errs[0]))
	}
	return s
}
