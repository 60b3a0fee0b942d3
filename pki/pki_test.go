package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// newCA creates a CA in a fresh directory and returns the directory.
func newCA(t *testing.T, opts ...Option) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := InitCA(dir, opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := readCerts(path)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func pool(t *testing.T, caDir string) *x509.CertPool {
	t.Helper()
	p, err := loadPool(filepath.Join(caDir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func verify(cert *x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestIssuedCertificatesVerifyAndReadBack(t *testing.T) {
	ca := newCA(t)
	roots := pool(t, ca)
	for _, tc := range []struct {
		name string
		// issue writes the certificate into out.
		issue     func(out string) (Files, error)
		want      Identity
		cn        string
		serverUse bool
	}{
		{
			name: "node 7 verifies for server and client use and reads back as node-7 with role admin",
			issue: func(out string) (Files, error) {
				return IssueNode(ca, out, 7, []string{"10.0.0.7", "node7.example.org"})
			},
			want: Identity{Kind: KindNode, Name: "node-7", Role: RoleAdmin, NodeID: 7}, cn: "node-7", serverUse: true,
		},
		{
			name:  "user alice with role read verifies for client use and reads back as a read user",
			issue: func(out string) (Files, error) { return IssueUser(ca, out, "alice", RoleRead) },
			want:  Identity{Kind: KindUser, Name: "alice", Role: RoleRead}, cn: "alice",
		},
		{
			name:  "user bob with role operate reads back as an operate user",
			issue: func(out string) (Files, error) { return IssueUser(ca, out, "bob", RoleOperate) },
			want:  Identity{Kind: KindUser, Name: "bob", Role: RoleOperate}, cn: "bob",
		},
		{
			name:  "CI user ci@example.org with role admin reads back as an admin user",
			issue: func(out string) (Files, error) { return IssueUser(ca, out, "ci@example.org", RoleAdmin) },
			want:  Identity{Kind: KindUser, Name: "ci@example.org", Role: RoleAdmin}, cn: "ci@example.org",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			files, err := tc.issue(out)
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(out, tc.cn+".crt"); files.Cert != want || files.Key != filepath.Join(out, tc.cn+".key") {
				t.Fatalf("files %+v, want %s and its .key", files, want)
			}
			cert := readCert(t, files.Cert)
			if err := verify(cert, roots, x509.ExtKeyUsageClientAuth); err != nil {
				t.Fatalf("client use: %v", err)
			}
			err = verify(cert, roots, x509.ExtKeyUsageServerAuth)
			if tc.serverUse && err != nil {
				t.Fatalf("server use: %v", err)
			}
			if !tc.serverUse && err == nil {
				t.Fatal("a user certificate verifies for server use")
			}
			got, err := IdentityOf(cert)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("identity %+v, want %+v", got, tc.want)
			}
			if cert.Subject.CommonName != tc.cn {
				t.Fatalf("CN %q, want %q", cert.Subject.CommonName, tc.cn)
			}
			if d := cert.NotAfter.Sub(cert.NotBefore); d < LeafValidity || d > LeafValidity+time.Hour {
				t.Fatalf("valid for %s, want about %s", d, LeafValidity)
			}
			if cert.IsCA {
				t.Fatal("a leaf certificate is a CA")
			}
		})
	}
}

func TestNodeCertificateNamesItsHosts(t *testing.T) {
	ca := newCA(t)
	files, err := IssueNode(ca, t.TempDir(), 3, []string{"10.0.0.3", "Node3.Example.org", "::1", "10.0.0.3"})
	if err != nil {
		t.Fatal(err)
	}
	cert := readCert(t, files.Cert)
	for _, h := range []string{"10.0.0.3", "node3.example.org", "::1"} {
		if err := cert.VerifyHostname(h); err != nil {
			t.Errorf("host %s: %v", h, err)
		}
	}
	if err := cert.VerifyHostname("10.0.0.4"); err == nil {
		t.Error("the certificate also covers 10.0.0.4")
	}
	if len(cert.IPAddresses) != 2 || len(cert.DNSNames) != 1 {
		t.Errorf("SANs: IPs %v, DNS %v; want the duplicate dropped", cert.IPAddresses, cert.DNSNames)
	}
}

func TestSerialNumbersDiffer(t *testing.T) {
	ca := newCA(t)
	out := t.TempDir()
	seen := map[string]bool{readCert(t, filepath.Join(ca, CACertFile)).SerialNumber.String(): true}
	for _, name := range []string{"a", "b", "c", "d"} {
		files, err := IssueUser(ca, out, name, RoleRead)
		if err != nil {
			t.Fatal(err)
		}
		s := readCert(t, files.Cert).SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestVerificationFails(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	// An old CA, so that a certificate issued two years ago can be made.
	old := newCA(t, IssuedAt(time.Now().Add(-3*365*24*time.Hour)))
	for _, tc := range []struct {
		name   string
		issue  func(out string) (Files, error)
		roots  string
		usage  x509.ExtKeyUsage
		reason any // the x509 error type expected
	}{
		{
			name:  "a user certificate from another CA fails verification",
			issue: func(out string) (Files, error) { return IssueUser(other, out, "mallory", RoleAdmin) },
			roots: ca, usage: x509.ExtKeyUsageClientAuth, reason: x509.UnknownAuthorityError{},
		},
		{
			name:  "a node certificate from another CA fails verification",
			issue: func(out string) (Files, error) { return IssueNode(other, out, 1, []string{"127.0.0.1"}) },
			roots: ca, usage: x509.ExtKeyUsageServerAuth, reason: x509.UnknownAuthorityError{},
		},
		{
			name: "an expired certificate fails verification",
			issue: func(out string) (Files, error) {
				return IssueUser(old, out, "alice", RoleRead, IssuedAt(time.Now().Add(-2*365*24*time.Hour)))
			},
			roots: old, usage: x509.ExtKeyUsageClientAuth, reason: x509.CertificateInvalidError{},
		},
		{
			name:  "a user certificate fails verification for server use",
			issue: func(out string) (Files, error) { return IssueUser(ca, out, "alice", RoleAdmin) },
			roots: ca, usage: x509.ExtKeyUsageServerAuth, reason: x509.CertificateInvalidError{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := tc.issue(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			err = verify(readCert(t, files.Cert), pool(t, tc.roots), tc.usage)
			if err == nil {
				t.Fatal("verified")
			}
			if target := reflect.New(reflect.TypeOf(tc.reason)); !errors.As(err, target.Interface()) {
				t.Fatalf("error %v (%T), want a %T", err, err, tc.reason)
			}
		})
	}
}

func TestIssueRefuses(t *testing.T) {
	ca := newCA(t)
	shortCA := newCA(t, ValidFor(30*24*time.Hour))
	existing := t.TempDir()
	if _, err := IssueUser(ca, existing, "alice", RoleRead); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		issue func(out string) (Files, error)
		want  string // in the error
	}{
		{"an unknown role string is refused", func(out string) (Files, error) { return IssueUser(ca, out, "alice", Role("superuser")) }, `role "superuser" is not one of read, operate, admin`},
		{"a role in capitals is refused", func(out string) (Files, error) { return IssueUser(ca, out, "alice", Role("Admin")) }, "not one of"},
		{"an empty role is refused", func(out string) (Files, error) { return IssueUser(ca, out, "alice", "") }, "not one of"},
		{"a user named ca is refused", func(out string) (Files, error) { return IssueUser(ca, out, "ca", RoleRead) }, "taken by the CA's or a node's files"},
		{"a user named like a node is refused", func(out string) (Files, error) { return IssueUser(ca, out, "node-3", RoleRead) }, "taken by"},
		{"a user name with a slash is refused", func(out string) (Files, error) { return IssueUser(ca, out, "../alice", RoleRead) }, "must be 1–64 letters"},
		{"node id 0 is refused", func(out string) (Files, error) { return IssueNode(ca, out, 0, []string{"h"}) }, "node id must be > 0"},
		{"a node without hosts is refused", func(out string) (Files, error) { return IssueNode(ca, out, 1, nil) }, "no host given"},
		{"a host with a port is refused", func(out string) (Files, error) { return IssueNode(ca, out, 1, []string{"node1:7001"}) }, "without port"},
		{"an empty host is refused", func(out string) (Files, error) { return IssueNode(ca, out, 1, []string{" "}) }, "an empty host"},
		{"existing files are not overwritten", func(string) (Files, error) { return IssueUser(ca, existing, "alice", RoleAdmin) }, "refusing to overwrite"},
		{"a certificate outliving its CA is refused", func(out string) (Files, error) { return IssueUser(shortCA, out, "alice", RoleRead) }, "issue it for a shorter validity"},
		{"a zero validity is refused", func(out string) (Files, error) { return IssueUser(ca, out, "alice", RoleRead, ValidFor(0)) }, "not positive"},
		{"a directory without a CA names ca.crt", func(out string) (Files, error) { return IssueUser(out, out, "alice", RoleRead) }, "ca.crt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			_, err := tc.issue(out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if tc.name != "existing files are not overwritten" {
				if left, _ := os.ReadDir(out); len(left) != 0 {
					t.Fatalf("a refused issue left %d files in %s", len(left), out)
				}
			}
		})
	}
	// The refused overwrite left alice's read certificate as it was.
	id, err := IdentityOf(readCert(t, filepath.Join(existing, "alice.crt")))
	if err != nil || id.Role != RoleRead {
		t.Fatalf("alice after the refused overwrite: %+v, %v", id, err)
	}
}

func TestParseRole(t *testing.T) {
	for _, s := range []string{"read", "operate", "admin"} {
		if r, err := ParseRole(s); err != nil || string(r) != s {
			t.Errorf("ParseRole(%q) = %q, %v", s, r, err)
		}
	}
	for _, s := range []string{"", "root", "READ", "read "} {
		if _, err := ParseRole(s); err == nil {
			t.Errorf("ParseRole(%q) accepted", s)
		}
	}
}

func TestInitCARefusesAnExistingCA(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove string // file removed before the second InitCA, "" for none
	}{
		{"a complete CA is not overwritten", ""},
		{"a CA key without its certificate is not overwritten", CACertFile},
		{"a CA certificate without its key is not overwritten", CAKeyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newCA(t)
			if tc.remove != "" {
				if err := os.Remove(filepath.Join(dir, tc.remove)); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshotDir(t, dir)
			err := InitCA(dir)
			if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
				t.Fatalf("second InitCA: %v, want a refusal", err)
			}
			if after := snapshotDir(t, dir); !reflect.DeepEqual(before, after) {
				t.Fatal("the refused InitCA changed the directory")
			}
		})
	}
}

func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = b
	}
	return m
}

func TestFileModes(t *testing.T) {
	// Under a strict umask ca.crt must still be readable by everyone it is
	// handed to, and keys are exactly 0600 under any umask. The umask is
	// process-wide; this test does not run in parallel.
	for _, umask := range []int{0o077, 0o000, 0o022} {
		old := syscall.Umask(umask)
		base := t.TempDir()
		ca := filepath.Join(base, "ca")
		err := InitCA(ca)
		var node, user Files
		if err == nil {
			node, err = IssueNode(ca, filepath.Join(base, "out"), 1, []string{"127.0.0.1"})
		}
		if err == nil {
			user, err = IssueUser(ca, filepath.Join(base, "out"), "alice", RoleRead)
		}
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		for path, want := range map[string]os.FileMode{
			filepath.Join(ca, CACertFile): 0o644, filepath.Join(ca, CAKeyFile): 0o600,
			node.Cert: 0o644, node.Key: 0o600, user.Cert: 0o644, user.Key: 0o600,
			ca: 0o700 &^ os.FileMode(umask), filepath.Join(base, "out"): 0o700 &^ os.FileMode(umask),
		} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("umask %04o: %s has mode %04o, want %04o", umask, filepath.Base(path), got, want)
			}
		}
	}
}

func TestKeysAreNotInCertificates(t *testing.T) {
	ca := newCA(t)
	files, err := IssueNode(ca, t.TempDir(), 1, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{files.Cert, filepath.Join(ca, CACertFile)} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Fatalf("%s holds a private key", p)
		}
	}
}

func uris(t *testing.T, ss ...string) *x509.Certificate {
	t.Helper()
	c := &x509.Certificate{}
	c.Subject.CommonName = "test"
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		c.URIs = append(c.URIs, u)
	}
	return c
}

func TestIdentityOfRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		uris []string
	}{
		{"a certificate without blixard URIs is refused", []string{"spiffe://example.org/x"}},
		{"a node id 0 is refused", []string{"blixard:node:0"}},
		{"a node id that is not a number is refused", []string{"blixard:node:x"}},
		{"a node with a role is refused", []string{"blixard:node:1", "blixard:role:read"}},
		{"two nodes are refused", []string{"blixard:node:1", "blixard:node:2"}},
		{"a node and a user are refused", []string{"blixard:node:1", "blixard:user:alice", "blixard:role:read"}},
		{"a user without a role is refused", []string{"blixard:user:alice"}},
		{"a user with two roles is refused", []string{"blixard:user:alice", "blixard:role:read", "blixard:role:admin"}},
		{"a user with an unknown role is refused", []string{"blixard:user:alice", "blixard:role:root"}},
		{"a user with an invalid name is refused", []string{"blixard:user:../x", "blixard:role:read"}},
		{"an unknown blixard URI is refused", []string{"blixard:user:alice", "blixard:role:read", "blixard:group:wheel"}},
		{"a malformed blixard URI is refused", []string{"blixard:node"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if id, err := IdentityOf(uris(t, tc.uris...)); err == nil {
				t.Fatalf("identity %+v accepted", id)
			}
		})
	}
	if _, err := IdentityOf(nil); err == nil {
		t.Fatal("nil certificate accepted")
	}
}

// handshake runs a TLS handshake between server and client over loopback
// and returns the server's error and the identity it read, if any.
func handshake(t *testing.T, server, client *tls.Config) (Identity, bool, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		id    Identity
		hasID bool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		st := tc.ConnectionState()
		if len(st.VerifiedChains) == 0 {
			done <- result{}
			return
		}
		id, err := IdentityOf(st.VerifiedChains[0][0])
		done <- result{id: id, hasID: true, err: err}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	cc := tls.Client(c, client)
	// The client's own result is not what is tested (in TLS 1.3 it may
	// finish before the server refuses its certificate).
	_ = cc.Handshake()
	r := <-done
	return r.id, r.hasID, r.err
}

func TestTLSConfigs(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	out := t.TempDir()
	caFile := filepath.Join(ca, CACertFile)
	node1, err := IssueNode(ca, out, 1, []string{"127.0.0.1", "node1.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	node2, err := IssueNode(ca, out, 2, []string{"127.0.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	alice, err := IssueUser(ca, out, "alice", RoleOperate)
	if err != nil {
		t.Fatal(err)
	}
	mallory, err := IssueUser(other, t.TempDir(), "mallory", RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	required, err := ServerTLS(caFile, node1.Cert, node1.Key)
	if err != nil {
		t.Fatal(err)
	}
	optional, err := ServerTLSClientCertIfGiven(caFile, node1.Cert, node1.Key)
	if err != nil {
		t.Fatal(err)
	}
	client := func(certFile, keyFile string) *tls.Config {
		cfg, err := ClientTLS(caFile, certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ServerName = "node1.example.org"
		return cfg
	}
	// Mallory knows the cluster's (public) CA certificate, but her own
	// certificate comes from another CA.
	malloryCfg, err := ClientTLS(filepath.Join(other, CACertFile), mallory.Cert, mallory.Key)
	if err != nil {
		t.Fatal(err)
	}
	malloryCfg.RootCAs = pool(t, ca)
	malloryCfg.ServerName = "node1.example.org"
	// Go's client withholds a certificate the server's CA list does not
	// name; an attacker presents it anyway.
	polite := malloryCfg.Clone()
	malloryPair := malloryCfg.Certificates[0]
	malloryCfg.Certificates = nil
	malloryCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &malloryPair, nil }

	for _, tc := range []struct {
		name   string
		server *tls.Config
		client *tls.Config
		want   *Identity // nil: refused, or accepted without a certificate when wantOK
		wantOK bool
	}{
		{"node 2 is accepted by node 1 as node-2", required, client(node2.Cert, node2.Key), &Identity{Kind: KindNode, Name: "node-2", Role: RoleAdmin, NodeID: 2}, true},
		{"alice is accepted as an operate user", required, client(alice.Cert, alice.Key), &Identity{Kind: KindUser, Name: "alice", Role: RoleOperate}, true},
		{"a certificate from another CA is refused", required, malloryCfg, nil, false},
		{"a client without certificate is refused by ServerTLS", required, client("", ""), nil, false},
		{"a client without certificate is accepted by ServerTLSClientCertIfGiven, with no identity", optional, client("", ""), nil, true},
		{"a certificate from another CA is refused by ServerTLSClientCertIfGiven too", optional, malloryCfg, nil, false},
		{"a Go client whose certificate is from another CA presents none and gets no identity from ServerTLSClientCertIfGiven", optional, polite, nil, true},
		{"alice is read back by ServerTLSClientCertIfGiven", optional, client(alice.Cert, alice.Key), &Identity{Kind: KindUser, Name: "alice", Role: RoleOperate}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, hasID, err := handshake(t, tc.server, tc.client)
			if tc.wantOK != (err == nil) {
				t.Fatalf("server handshake error %v, want ok=%v", err, tc.wantOK)
			}
			if (tc.want != nil) != hasID || (tc.want != nil && id != *tc.want) {
				t.Fatalf("identity %+v (present %v), want %+v", id, hasID, tc.want)
			}
		})
	}

	// The client checks the server's name against the node certificate.
	wrongName := client(alice.Cert, alice.Key)
	wrongName.ServerName = "node9.example.org"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			defer c.Close()
			_ = tls.Server(c, required).Handshake()
		}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), wrongName)
	if err == nil {
		c.Close()
		t.Fatal("a client accepted node 1's certificate for node9.example.org")
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	out := t.TempDir()
	caFile := filepath.Join(ca, CACertFile)
	node, err := IssueNode(ca, out, 1, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	user, err := IssueUser(ca, out, "alice", RoleRead)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := IssueNode(other, t.TempDir(), 1, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	openKey := filepath.Join(t.TempDir(), "open.key")
	if b, err := os.ReadFile(node.Key); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(openKey, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(openKey, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(out, "missing.key")
	for _, tc := range []struct {
		name string
		load func() error
		want []string // all in the error
	}{
		{"a missing key file is named", func() error { _, err := ServerTLS(caFile, node.Cert, missing); return err }, []string{missing}},
		{"a key readable by everyone is refused with the chmod to run", func() error { _, err := ServerTLS(caFile, node.Cert, openKey); return err }, []string{openKey, "chmod 600"}},
		{"a certificate from another CA names both files", func() error { _, err := ServerTLS(caFile, foreign.Cert, foreign.Key); return err }, []string{foreign.Cert, caFile, "another CA"}},
		{"a user certificate cannot serve", func() error { _, err := ServerTLS(caFile, user.Cert, user.Key); return err }, []string{user.Cert, "node certificate"}},
		{"a key that belongs to another certificate is named", func() error { _, err := ClientTLS(caFile, node.Cert, user.Key); return err }, []string{node.Cert, user.Key}},
		{"a key given as the CA file is named", func() error { _, err := ClientTLS(node.Key, node.Cert, node.Key); return err }, []string{node.Key, "no PEM certificate"}},
		{"a leaf given as the CA file is refused", func() error { _, err := ClientTLS(node.Cert, node.Cert, node.Key); return err }, []string{node.Cert, "not a CA certificate"}},
		{"no CA file says which file to give", func() error { _, err := ClientTLS("", node.Cert, node.Key); return err }, []string{"ca.crt"}},
		{"a client with a certificate and no key is refused", func() error { _, err := ClientTLS(caFile, node.Cert, ""); return err }, []string{"both a certificate and a key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.load()
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestCAFileWithTwoCAsTrustsBoth(t *testing.T) {
	// During a CA change every node's CA file holds the old and the new CA
	// (docs/security.md), so certificates of both verify.
	oldDir, newDir := newCA(t), newCA(t)
	bundle := filepath.Join(t.TempDir(), "ca.crt")
	var data []byte
	for _, dir := range []string{oldDir, newDir} {
		b, err := os.ReadFile(filepath.Join(dir, CACertFile))
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b...)
	}
	if err := os.WriteFile(bundle, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{oldDir, newDir} {
		files, err := IssueNode(dir, t.TempDir(), 1, []string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ServerTLS(bundle, files.Cert, files.Key); err != nil {
			t.Errorf("certificate of %s: %v", filepath.Base(dir), err)
		}
	}
}
