package nixcache

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const setupHint = "run scripts/setup.sh (as root) to install nix"

func requireNix(t testing.TB) {
	t.Helper()
	for _, p := range []string{"nix", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found on PATH: %s", p, setupHint)
		}
	}
}

var nonce atomic.Int64

// runnerClosure is a test runner built in the host's store (node A's): a
// directory with an executable bin/microvm-run, a symlink, and a
// reference to a second path (lib), so its closure has two paths.
type runnerClosure struct {
	drv, out, lib string
}

// runnerExpr is the Nix expression of a runner whose lib holds size bytes
// (both named after tag, so each test has its own paths).
func runnerExpr(tag string, size int) string {
	lib := fmt.Sprintf(`builtins.derivation {
    name = "runner-lib"; system = "x86_64-linux"; builder = "/bin/sh"; tag = %q;
    args = [ "-c" "/bin/mkdir -p $out/share; /bin/head -c %d /dev/urandom > $out/share/blob; echo $tag > $out/share/tag" ];
  }`, tag, size)
	return fmt.Sprintf(`let lib = %s; in builtins.derivation {
  name = "runner"; system = "x86_64-linux"; builder = "/bin/sh"; inherit lib; tag = %q;
  args = [ "-c" "/bin/mkdir -p $out/bin; printf '#!/bin/sh\necho %%s\n' $lib > $out/bin/microvm-run; /bin/chmod +x $out/bin/microvm-run; /bin/ln -s bin/microvm-run $out/run; echo $tag > $out/tag" ];
}`, lib, tag)
}

// instantiate writes a runner's derivations to the host's store without
// building them.
func instantiate(t testing.TB, size int) runnerClosure {
	t.Helper()
	tag := fmt.Sprintf("%s-%d-%d", t.Name(), time.Now().UnixNano(), nonce.Add(1))
	drv := strings.TrimSpace(run(t, nil, "nix-instantiate", "--expr", runnerExpr(tag, size)))
	out := strings.TrimSpace(run(t, nil, "nix-store", "--query", "--outputs", drv))
	return runnerClosure{drv: drv, out: out}
}

// build realises r in the host's store and fills in lib.
func (r *runnerClosure) build(t testing.TB) {
	t.Helper()
	run(t, nil, "nix-store", "--realise", r.drv)
	for _, p := range strings.Fields(run(t, nil, "nix-store", "--query", "--references", r.out)) {
		if strings.HasSuffix(p, "-runner-lib") {
			r.lib = p
		}
	}
	if r.lib == "" {
		t.Fatalf("%s does not reference its runner-lib", r.out)
	}
}

// run runs a nix program (in the test, not through nixrun) and returns its
// stdout; a failure fails the test with its stderr.
func run(t testing.TB, env []string, program string, args ...string) string {
	t.Helper()
	stdout, stderr, err := runNixCmd(env, program, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", program, strings.Join(args, " "), err, stderr)
	}
	return stdout
}

func runNixCmd(env []string, program string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG=extra-experimental-features = nix-command")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// peerStore is node B: a chroot store of its own under a test directory,
// with its own narinfo cache (nix remembers lookups in
// $XDG_CACHE_HOME/nix).
type peerStore struct {
	url   string
	env   []string
	root  string
	cache string
}

func newPeerStore(t testing.TB) peerStore {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "store")
	cache := filepath.Join(dir, "cache")
	t.Cleanup(func() { makeWritable(root) })
	return peerStore{url: "local?root=" + root, root: root, cache: cache, env: []string{"XDG_CACHE_HOME=" + cache}}
}

// makeWritable lets t.TempDir remove a chroot store: nix makes store
// paths read-only.
func makeWritable(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
}

// substitute realises out in s from the binary cache at cacheURL, trusting
// keys; it returns nix's log (stderr) and error.
func (s peerStore) substitute(cacheURL string, keys []string, out string) (string, error) {
	_, stderr, err := runNixCmd(s.env, "nix-store", "--store", s.url, "--realise", out,
		"--option", "extra-substituters", cacheURL,
		"--option", "extra-trusted-public-keys", strings.Join(keys, " "),
		"--option", "narinfo-cache-negative-ttl", "0")
	return stderr, err
}

func (s peerStore) valid(t testing.TB, p string) bool {
	t.Helper()
	invalid := run(t, nil, "nix-store", "--store", s.url, "--check-validity", "--print-invalid", p)
	return strings.TrimSpace(invalid) == ""
}

// serveCache serves c on a loopback port until the test ends and returns
// its URL.
func serveCache(t testing.TB, c *Cache) string {
	t.Helper()
	return serveHandler(t, c)
}

// serveHandler serves h with [Serve] on a loopback port until the test
// ends and returns its URL.
func serveHandler(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func newKey(t testing.TB, name string) SecretKey {
	t.Helper()
	k, err := GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
