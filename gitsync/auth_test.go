package gitsync

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshServer is an in-process SSH server on 127.0.0.1 that serves one bare
// repository: it accepts one client key and runs the real git-upload-pack
// for `git-upload-pack 'PATH'` exec requests, as a git host does.
type sshServer struct {
	addr     string
	hostKeys []ssh.Signer
	execs    atomic.Int32 // upload-packs run

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startSSHServer(t *testing.T, repo string, client ssh.PublicKey, hostKeys ...ssh.Signer) *sshServer {
	t.Helper()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if !bytes.Equal(key.Marshal(), client.Marshal()) {
				return nil, errors.New("unknown client key")
			}
			return nil, nil
		},
	}
	for _, k := range hostKeys {
		cfg.AddHostKey(k)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sshServer{addr: ln.Addr().String(), hostKeys: hostKeys, ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c, cfg, repo)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *sshServer) serve(c net.Conn, cfg *ssh.ServerConfig, repo string) {
	conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return // a refused host key or client key ends here
	}
	defer conn.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			return
		}
		s.session(ch, chReqs, repo)
	}
}

// session serves one exec of git-upload-pack and reports its exit status.
func (s *sshServer) session(ch ssh.Channel, reqs <-chan *ssh.Request, repo string) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			_ = req.Reply(req.Type == "env", nil)
			continue
		}
		var payload struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
			_ = req.Reply(false, nil)
			return
		}
		_ = req.Reply(true, nil)
		status := uint32(1)
		prog, path, _ := strings.Cut(payload.Command, " ")
		if prog == "git-upload-pack" && strings.Trim(path, "'") == repo {
			s.execs.Add(1)
			cmd := exec.Command("git", "upload-pack", repo)
			cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
			stdin, err := cmd.StdinPipe()
			if err == nil && cmd.Start() == nil {
				go func() { _, _ = io.Copy(stdin, ch); stdin.Close() }()
				if cmd.Wait() == nil {
					status = 0
				}
			}
		} else {
			fmt.Fprintf(ch.Stderr(), "this server only serves git-upload-pack %s\n", repo)
		}
		_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
		return
	}
}

func newECDSASigner(t *testing.T) ssh.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writePrivateKey writes key's private key file (0600) into dir.
func writePrivateKey(t *testing.T, dir string, key *pemSigner) string {
	t.Helper()
	p := filepath.Join(dir, "id")
	if err := os.WriteFile(p, key.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// pemSigner is an ssh.Signer that remembers its private key file form.
type pemSigner struct {
	ssh.Signer
	pem []byte
}

func newClientKey(t *testing.T) *pemSigner {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &pemSigner{Signer: s, pem: pem.EncodeToMemory(block)}
}

func knownHostsFile(t *testing.T, dir, name string, lines ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGitSSHFetchChecksTheHostKey(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	client := newClientKey(t)
	// The server has an ECDSA and an Ed25519 host key; known_hosts lists
	// only the Ed25519 one, as after `ssh-keyscan -t ed25519`.
	ecdsaKey, edKey := newECDSASigner(t), newSSHKey(t)
	srv := startSSHServer(t, up.remote, client.PublicKey(), ecdsaKey, edKey)
	host := knownhosts.Normalize(srv.addr)
	dir := t.TempDir()
	keyFile := writePrivateKey(t, dir, client)
	good := knownHostsFile(t, dir, "good", knownhosts.Line([]string{host}, edKey.PublicKey()))
	changed := knownHostsFile(t, dir, "changed", knownhosts.Line([]string{host}, newSSHKey(t).PublicKey()))
	otherHost := knownHostsFile(t, dir, "other", knownhosts.Line([]string{"[127.0.0.1]:1"}, edKey.PublicKey()))
	url := "ssh://git@" + srv.addr + up.remote

	t.Run("fetch works with the host key known_hosts lists", func(t *testing.T) {
		m := newMirror(t, Options{URL: url, Dir: filepath.Join(t.TempDir(), "m"), SSHKeyFile: keyFile, SSHKnownHostsFile: good})
		if err := m.CheckCredentials(); err != nil {
			t.Fatalf("CheckCredentials: %v", err)
		}
		if got := fetch(t, m); got.Commit != c1 {
			t.Fatalf("fetched %s, want %s", got.Commit, c1)
		}
		c2 := up.commit("two")
		up.push("main")
		if got := fetch(t, m); got.Commit != c2 || got.Previous != c1 {
			t.Fatalf("second fetch = %+v, want %s after %s", got, c2, c1)
		}
	})
	for _, tt := range []struct {
		name, knownHosts, want string
		changed                bool
	}{
		{"a changed host key is refused, naming known_hosts", changed, "does not match known_hosts file " + changed, true},
		{"a host known_hosts does not list is refused, with the ssh-keyscan to run", otherHost, "is not in known_hosts file " + otherHost, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			execs := srv.execs.Load()
			mdir := filepath.Join(t.TempDir(), "m")
			m := newMirror(t, Options{URL: url, Dir: mdir, SSHKeyFile: keyFile, SSHKnownHostsFile: tt.knownHosts})
			_, err := m.Fetch(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Fetch: err = %v, want one containing %q", err, tt.want)
			}
			t.Logf("refused: %v", err)
			var hk *HostKeyError
			if !errors.As(err, &hk) || hk.Changed != tt.changed || hk.File != tt.knownHosts {
				t.Errorf("err %v: HostKeyError %+v, want Changed=%t for file %s", err, hk, tt.changed, tt.knownHosts)
			}
			if !tt.changed && !strings.Contains(err.Error(), "ssh-keyscan -p") {
				t.Errorf("error %q does not say how to add the key", err)
			}
			if n := srv.execs.Load() - execs; n != 0 {
				t.Errorf("the server ran %d upload-packs for a client that refused its key", n)
			}
			if _, err := os.Stat(mdir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused fetch created the mirror (stat: %v)", err)
			}
		})
	}
	t.Run("a client key the server does not accept is an authentication error", func(t *testing.T) {
		other := writePrivateKey(t, t.TempDir(), newClientKey(t))
		m := newMirror(t, Options{URL: url, Dir: filepath.Join(t.TempDir(), "m"), SSHKeyFile: other, SSHKnownHostsFile: good})
		if _, err := m.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "--git-ssh-key") {
			t.Fatalf("Fetch with a key the server refuses: err = %v, want one pointing at --git-ssh-key", err)
		}
	})
	t.Run("a key file every user can read is refused", func(t *testing.T) {
		open := writePrivateKey(t, t.TempDir(), client)
		if err := os.Chmod(open, 0o644); err != nil {
			t.Fatal(err)
		}
		m := newMirror(t, Options{URL: url, Dir: filepath.Join(t.TempDir(), "m"), SSHKeyFile: open, SSHKnownHostsFile: good})
		if err := m.CheckCredentials(); err == nil || !strings.Contains(err.Error(), "chmod o-rwx") {
			t.Fatalf("CheckCredentials: err = %v, want the chmod to run", err)
		}
	})
}

// gitHTTPServer serves the bare repositories under root over smart HTTPS
// with the real git http-backend, for clients that send user and token.
func gitHTTPServer(t *testing.T, root, user, token string) *httptest.Server {
	t.Helper()
	backend := filepath.Join(runGit(t, root, "--exec-path"), "git-http-backend")
	cgiHandler := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		cgiHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func serverCA(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// logBuffer is a logger whose output the test reads.
func logBuffer() (*slog.Logger, *syncBuffer) {
	b := &syncBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestGitHTTPBackendFetchWithATokenFile(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	const token = "glpat-Sup3rS3cretT0ken"
	srv := gitHTTPServer(t, filepath.Dir(up.remote), "deploy", token)
	repoURL := srv.URL + "/" + filepath.Base(up.remote)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logger, logs := logBuffer()
	m := newMirror(t, Options{URL: repoURL, Dir: filepath.Join(dir, "m"), HTTPTokenFile: tokenFile, HTTPUsername: "deploy",
		Logger: logger, caBundle: serverCA(srv)})
	if got := fetch(t, m); got.Commit != c1 {
		t.Fatalf("fetched %s, want %s", got.Commit, c1)
	}

	// The token is read at every fetch: a revoked one fails the next fetch,
	// and the error holds neither the old nor the new token.
	const revoked = "glpat-Revok3dT0kenValue"
	if err := os.WriteFile(tokenFile, []byte(revoked+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := m.Fetch(context.Background())
	if err == nil || !strings.Contains(err.Error(), "check the credentials") {
		t.Fatalf("Fetch with a revoked token: err = %v, want an authentication error", err)
	}
	for _, secret := range []string{token, revoked} {
		if strings.Contains(err.Error(), secret) || strings.Contains(logs.String(), secret) {
			t.Fatalf("a token reached the error or the log:\nerror: %v\nlog: %s", err, logs.String())
		}
	}
}

func TestGitHTTPSErrorsNeverShowCredentials(t *testing.T) {
	up := newUpstream(t, "main")
	up.commit("one")
	up.push("main")
	srv := gitHTTPServer(t, filepath.Dir(up.remote), "deploy", "the-right-token")
	host := strings.TrimPrefix(srv.URL, "https://")
	for _, tt := range []struct {
		name, url string
		secrets   []string
	}{
		{"a password in the URL of an unreachable host", "https://bot:s3cr3t-P%40ss@127.0.0.1:1/c.git", []string{"s3cr3t-P"}},
		{"a password in the URL the server refuses", "https://bot:s3cr3t-P%40ss@" + host + "/remote.git", []string{"s3cr3t-P"}},
		{"a token as the URL's user name", "https://ghp_TokenAsUserName0123@" + host + "/remote.git", []string{"ghp_TokenAsUserName0123"}},
		{"a token as the URL's user name, unreachable", "https://ghp_TokenAsUserName0123@127.0.0.1:1/c.git", []string{"ghp_TokenAsUserName0123"}},
		{"a password the URL parser chokes on", "https://bot:s3cr3t-P%40ss/word@" + host + "/remote.git", []string{"s3cr3t-P", "word"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logger, logs := logBuffer()
			m, err := New(Options{URL: tt.url, Dir: filepath.Join(t.TempDir(), "m"), Logger: logger, caBundle: serverCA(srv)})
			if err == nil {
				_, err = m.Fetch(context.Background())
			}
			if err == nil {
				t.Fatal("Fetch succeeded")
			}
			for _, s := range tt.secrets {
				if strings.Contains(err.Error(), s) || strings.Contains(logs.String(), s) {
					t.Fatalf("secret %q reached the error or the log:\nerror: %v\nlog: %s", s, err, logs.String())
				}
			}
			if !strings.Contains(err.Error(), redacted+"@") {
				t.Errorf("error %q does not show the redacted URL", err)
			}
			if m != nil && !strings.Contains(logs.String(), "--git-token-file") {
				t.Errorf("no warning about credentials in the URL was logged: %s", logs.String())
			}
		})
	}
}

func TestNewChecksCredentialOptions(t *testing.T) {
	for _, tt := range []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"an ssh remote needs a key", Options{URL: "ssh://git@git.example.invalid/c.git", SSHKnownHostsFile: "kh"}, "--git-ssh-key"},
		{"an ssh remote needs known_hosts", Options{URL: "ssh://git@git.example.invalid/c.git", SSHKeyFile: "id"}, "--git-known-hosts"},
		{"an scp-like remote needs known_hosts too", Options{URL: "git@git.example.invalid:infra/c.git", SSHKeyFile: "id"}, "--git-known-hosts"},
		{"known_hosts and accepting any host key exclude each other", Options{URL: "ssh://h/c.git", SSHKeyFile: "id", SSHKnownHostsFile: "kh", SSHInsecureIgnoreHostKey: true}, "exclude each other"},
		{"an ssh remote with key and known_hosts is accepted", Options{URL: "ssh://git@git.example.invalid/c.git", SSHKeyFile: "id", SSHKnownHostsFile: "kh"}, ""},
		{"accepting any host key must be asked for", Options{URL: "ssh://h/c.git", SSHKeyFile: "id", SSHInsecureIgnoreHostKey: true}, ""},
		{"a token is refused for an ssh remote", Options{URL: "ssh://h/c.git", SSHKeyFile: "id", SSHKnownHostsFile: "kh", HTTPTokenFile: "t"}, "https://"},
		{"SSH options are refused for an https remote", Options{URL: "https://h/c.git", SSHKeyFile: "id"}, "ssh://"},
		{"a token is refused over plain http", Options{URL: "http://h/c.git", HTTPTokenFile: "t"}, "clear text"},
		{"a user name needs a token", Options{URL: "https://h/c.git", HTTPUsername: "deploy"}, "--git-token-file"},
		{"a token file and URL credentials exclude each other", Options{URL: "https://u:p4ssw0rd@h/c.git", HTTPTokenFile: "t"}, "remove the user information"},
		{"an https remote with a token file is accepted", Options{URL: "https://h/c.git", HTTPTokenFile: "t", HTTPUsername: "oauth2"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.Dir = "m"
			_, err := New(tt.o)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: err = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "p4ssw0rd") {
				t.Fatalf("New's error shows the password: %v", err)
			}
		})
	}
}

func TestRedaction(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"https://bot:s3cret@git.example.invalid/c.git", "https://bot:xxxxx@git.example.invalid/c.git"},
		{"https://ghp_token@github.com/o/c.git", "https://xxxxx@github.com/o/c.git"},
		{"https://git.example.invalid/c.git", "https://git.example.invalid/c.git"},
		{"ssh://git@git.example.invalid/c.git", "ssh://git@git.example.invalid/c.git"},
		{"ssh://git:pw@git.example.invalid/c.git", "ssh://git:xxxxx@git.example.invalid/c.git"},
		{"git@git.example.invalid:infra/c.git", "git@git.example.invalid:infra/c.git"},
		{"git:pw@git.example.invalid:infra/c.git", "xxxxx@git.example.invalid:infra/c.git"},
		{"https://bot:50%zz/x@git.example.invalid/c.git", "https://xxxxx@git.example.invalid/c.git"},
		{"/srv/git/c.git", "/srv/git/c.git"},
	} {
		if got := redactURL(tt.in); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	r := redactor{raw: "https://bot:p@ss-word@h/c.git", safe: redactURL("https://bot:p@ss-word@h/c.git"), secrets: []string{"p@ss-word"}}
	for _, in := range []string{
		`Get "https://bot:p@ss-word@h/c.git/info/refs": dial tcp: connection refused`,
		`Get "https://bot:p%40ss-word@h/c.git/info/refs": x509: unknown authority`,
		"token tok-123456 rejected",
	} {
		got := r.text(in, "tok-123456")
		if strings.Contains(got, "ss-word") || strings.Contains(got, "tok-123456") {
			t.Errorf("redactor.text(%q) = %q, still shows a secret", in, got)
		}
	}
}
