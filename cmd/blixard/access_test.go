package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
)

// blixard runs the CLI and returns its exit code and output.
func blixard(args ...string) (int, string) {
	var out bytes.Buffer
	code := run(context.Background(), args, &out, &out)
	return code, out.String()
}

// TestCAAndCertificatesFromTheCommandLine issues a CA, a node and a user
// certificate with the CLI, then uses them: the CLI talks HTTPS to a node's
// API with the user's certificate, whose role decides what it may do.
func TestCAAndCertificatesFromTheCommandLine(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"ca", "init", ca}, 0, "ca.key"},
		{[]string{"ca", "init", ca}, 1, "already exists"},
		{[]string{"cert", "issue", "--ca", ca, "--node", "1", "--host", "127.0.0.1", "--out", dir}, 0, "node-1.key"},
		{[]string{"cert", "issue", "--ca", ca, "--user", "alice", "--role", "read", "--out", dir}, 0, "alice.crt"},
		{[]string{"cert", "issue", "--ca", ca, "--user", "bob", "--role", "operate", "--out", dir, "--json"}, 0, `"cert"`},
		{[]string{"cert", "issue", "--ca", ca, "--user", "eve", "--role", "root", "--out", dir}, 1, "--role"},
		{[]string{"cert", "issue", "--ca", ca, "--user", "eve", "--role", "read", "--host", "h"}, 1, "--host is for node"},
		{[]string{"cert", "issue", "--ca", ca, "--node", "2", "--role", "read"}, 1, "--role is for user"},
		{[]string{"cert", "issue", "--ca", ca, "--node", "2", "--user", "eve"}, 1, "either --node"},
		{[]string{"cert", "issue", "--node", "2", "--host", "h"}, 1, "--ca DIR is required"},
		{[]string{"cert", "issue", "--ca", ca, "--node", "2", "--out", dir}, 1, "host"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			if code, out := blixard(tt.args...); code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tt.code, tt.want, out)
			}
		})
	}

	server, err := pki.ServerTLSClientCertIfGiven(filepath.Join(ca, "ca.crt"), filepath.Join(dir, "node-1.crt"), filepath.Join(dir, "node-1.key"))
	if err != nil {
		t.Fatal(err)
	}
	st := testkit.NewStore(nil)
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Register(2)} {
		st.Propose(context.Background(), cmd)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), TLS: server}).Serve(ctx, ln)
	}()
	defer func() { cancel(); <-done }()

	t.Setenv("BLIXARD_SERVER", ln.Addr().String())
	t.Setenv("BLIXARD_CA", filepath.Join(ca, "ca.crt"))
	as := func(user string, args ...string) []string {
		return append(args, "--cert", filepath.Join(dir, user+".crt"), "--key", filepath.Join(dir, user+".key"))
	}
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a read certificate reads the nodes", as("alice", "nodes"), 0, "NODE"},
		{"a read certificate cannot drain", as("alice", "node", "drain", "2"), 1, "needs role operate"},
		{"an operate certificate drains", as("bob", "node", "drain", "2"), 0, "node 2 is draining"},
		{"without a certificate the node says what to present", []string{"nodes"}, 1, "no credentials"},
		{"a plain http:// server is refused with a CA", []string{"nodes", "--server", "http://" + ln.Addr().String()}, 1, "use https://"},
		{"the event log names who drained", as("alice", "events"), 0, "(by bob)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if code, out := blixard(tt.args...); code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tt.code, tt.want, out)
			}
		})
	}

	// A token, written to a file, works where a certificate does; revoked,
	// it does not.
	tokFile := filepath.Join(dir, "ci.token")
	if code, out := blixard(as("node-1", "token", "create", "--name", "ci", "--role", "operate", "--out", tokFile)...); code != 0 || strings.Contains(out, "blx_") {
		t.Fatalf("token create --out: exit %d (the secret must not be printed):\n%s", code, out)
	}
	if fi, err := os.Stat(tokFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v; want mode 0600", fi, err)
	}
	if code, out := blixard("node", "ready", "2", "--token-file", tokFile); code != 0 {
		t.Fatalf("node ready with the token: exit %d:\n%s", code, out)
	}
	if code, out := blixard(as("node-1", "token", "revoke", "ci")...); code != 0 {
		t.Fatalf("token revoke: exit %d:\n%s", code, out)
	}
	if code, out := blixard("node", "ready", "2", "--token-file", tokFile); code != 1 || !strings.Contains(out, "revoked") {
		t.Fatalf("node ready with a revoked token: exit %d:\n%s", code, out)
	}
	if err := os.Chmod(tokFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := blixard("status", "--token-file", tokFile); code != 1 || !strings.Contains(out, "chmod 600") {
		t.Fatalf("a world-readable token file: exit %d:\n%s", code, out)
	}
}
