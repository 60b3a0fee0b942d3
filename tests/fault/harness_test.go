package fault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/replicated"
)

// binaries are the two blixard builds of a run: [0] is what nodes start
// with, [1] what restart-new-binary switches to (a second build of the same
// source with another build ID, or -blixard-b).
var (
	binOnce sync.Once
	binDir  string
	bins    [2]string
	binErr  error
)

func TestMain(m *testing.M) {
	if code, ok := helperMain(); ok {
		os.Exit(code)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds blixard once per test binary (tailscale's GetBinaries).
func binaries(t testing.TB) [2]string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "blixard-fault-bin-")
		if binErr != nil {
			return
		}
		build := func(out string, extra ...string) error {
			args := append([]string{"build"}, extra...)
			args = append(args, "-o", out, "../../cmd/blixard")
			cmd := exec.Command("go", args...)
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
			}
			return nil
		}
		bins[0] = filepath.Join(binDir, "blixard-a")
		if binErr = build(bins[0]); binErr != nil {
			return
		}
		if *flagBinaryB != "" {
			bins[1] = *flagBinaryB
			return
		}
		bins[1] = filepath.Join(binDir, "blixard-b")
		// -X of a symbol that does not exist changes only the build ID: the
		// same code in another file with other bytes.
		binErr = build(bins[1], "-ldflags=-X=main.faultHarnessBuild=b")
	})
	if binErr != nil {
		t.Fatalf("building blixard: %v", binErr)
	}
	return bins
}

func fileDigest(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "?"
	}
	defer f.Close()
	h := sha256.New()
	_, _ = io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))[:12]
}

// requireTools fails the test (never skips) when a real program or root is
// missing.
func requireTools(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the fault harness needs root (network namespaces): run it as root")
	}
	for _, n := range []string{"nix", "git", "ip", "sysctl"} {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh", n)
		}
	}
}

// boottime is CLOCK_BOOTTIME in ns: the clock of /proc/uptime, which the
// runners read, shared by every process on the machine.
func boottime() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

func gitRun(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=fault", "GIT_AUTHOR_EMAIL=fault@example.org",
		"GIT_COMMITTER_NAME=fault", "GIT_COMMITTER_EMAIL=fault@example.org")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// repo is a bare "remote" on the shared file system (file:// reaches it
// from every namespace) and a work tree that pushes to it.
type repo struct {
	bare, work string
}

func newRepo(root string) (*repo, error) {
	r := &repo{bare: filepath.Join(root, "cluster.git"), work: filepath.Join(root, "work")}
	if _, err := gitRun(root, "init", "-q", "--bare", "-b", "main", r.bare); err != nil {
		return nil, err
	}
	if _, err := gitRun(root, "init", "-q", "-b", "main", r.work); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *repo) url() string { return "file://" + r.bare }

// push commits flake as flake.nix and pushes it; it returns the commit.
func (r *repo) push(flake, msg string) (string, error) {
	if err := os.WriteFile(filepath.Join(r.work, "flake.nix"), []byte(flake), 0o644); err != nil {
		return "", err
	}
	for _, args := range [][]string{{"add", "flake.nix"}, {"commit", "-q", "--allow-empty", "-m", msg}, {"push", "-q", r.bare, "HEAD:refs/heads/main"}} {
		if _, err := gitRun(r.work, args...); err != nil {
			return "", err
		}
	}
	return gitRun(r.work, "rev-parse", "HEAD")
}

// node is one `blixard serve` in its namespace.
type node struct {
	id       int
	addr     string
	dataDir  string
	stateDir string
	logPath  string
	bin      int // index into the run's binaries

	mu   sync.Mutex
	cmd  *exec.Cmd  // guarded by mu; nil while blixard is not running
	done chan error // guarded by mu
}

func (n *node) api() string { return "http://" + n.addr + ":7070" }

// pid is blixard's PID, 0 when it is not running.
func (n *node) pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// start runs blixard in the node's namespace: it execs, so its PID is
// blixard's. Runners inherit FAULT_NODE and FAULT_RECORDS.
func (r *run) startNode(n *node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("node %d already runs", n.id)
	}
	var members []string
	for _, m := range r.nodes {
		members = append(members, fmt.Sprintf("%d=%s:7001", m.id, m.addr))
	}
	args := []string{"serve", "--node-id", fmt.Sprint(n.id), "--data-dir", n.dataDir,
		"--raft-addr", n.addr + ":7001", "--api-addr", n.addr + ":7070", "--members", strings.Join(members, ","),
		"--repo", r.repo.url(), "--ref", "main", "--poll", "500ms", "--heartbeat", "500ms",
		"--node-timeout", r.cfg.NodeTimeout.String(),
		"--capacity-vcpu", "3", "--capacity-mem-mib", "4096",
		"--state-dir", n.stateDir, "--backend", "process", "--insecure", "--insecure-i-know", "--log-level", "debug"}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== fault harness: %s starts %s (%s)\n", r.rel(boottime()), r.bins[n.bin], fileDigest(r.bins[n.bin]))
	cmd := r.net.Command(n.id, r.bins[n.bin], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), fmt.Sprintf("FAULT_NODE=%d", n.id), "FAULT_RECORDS="+r.recordsDir())
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	n.cmd, n.done = cmd, done
	return nil
}

// killNode sends SIGKILL to blixard (only) and waits for it.
func (n *node) kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and waits; SIGKILL after 20 s.
func (n *node) stop() error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return errors.New("did not stop within 20 s of SIGTERM")
	}
}

// exited reports blixard's exit when it died on its own (nil, false while
// it runs or was never started).
func (n *node) exited() (error, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return nil, false
	}
	select {
	case err := <-n.done:
		n.done <- err
		return err, true
	default:
		return nil, false
	}
}

// The API, through the root namespace's address on the network.

var (
	readClient = &http.Client{Timeout: 5 * time.Second}
	opClient   = &http.Client{Timeout: 15 * time.Second}
)

func getJSON(ctx context.Context, c *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	// The harness asks for ?consistent (a linearizable read or 503); an
	// answer marked stale is no linearizable read, so the checks must not
	// count it even if a node sent one.
	if resp.Header.Get(api.HeaderStale) == "true" {
		return fmt.Errorf("GET %s: stale answer (%s)", url, resp.Header.Get(api.HeaderStaleReason))
	}
	return json.Unmarshal(b, v)
}

func (n *node) status(ctx context.Context) (api.StatusView, error) {
	var s api.StatusView
	err := getJSON(ctx, readClient, n.api()+"/v1/status?consistent", &s)
	return s, err
}

func (n *node) history(ctx context.Context) ([]replicated.Revision, error) {
	var h []replicated.Revision
	err := getJSON(ctx, readClient, n.api()+"/v1/history?consistent", &h)
	return h, err
}

func (n *node) nodes(ctx context.Context) ([]api.NodeView, error) {
	var v []api.NodeView
	err := getJSON(ctx, readClient, n.api()+"/v1/nodes", &v)
	return v, err
}

// setReady asks n's API to mark node id ready (`blixard node ready ID`).
func (n *node) setReady(ctx context.Context, id int) error {
	req, err := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("%s/v1/nodes/%d/state", n.api(), id), strings.NewReader(`{"state": "ready"}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := opClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("node %d ready via node %d: %s: %s", id, n.id, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
