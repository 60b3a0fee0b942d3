package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/volumes"
)

// blixardBin is the binary built once by TestMain.
var blixardBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "blixard-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	blixardBin = filepath.Join(dir, "blixard")
	build := exec.Command("go", "build", "-tags", blixardTags, "-o", blixardBin, "../../cmd/blixard")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building blixard:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTools fails the test (never skips) when a real program is missing.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh", n)
		}
	}
}

// ports hands out the nodes' ports: 127.0.0.1 (the tests' certificates
// name it) below the ephemeral range, so that no outgoing connection of
// the packages tested beside takes one before its node binds it.
var ports = testkit.NewPorts()

func freeAddr(t testing.TB) string {
	t.Helper()
	return ports.Addr(t)
}

func gitRun(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=test", "GIT_AUTHOR_EMAIL=test@example.org",
		"GIT_COMMITTER_NAME=test", "GIT_COMMITTER_EMAIL=test@example.org")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// repo is a bare "remote" repository and a work tree that pushes to it.
type repo struct {
	t      testing.TB
	bare   string
	work   string
	branch string
}

func newRepo(t testing.TB) *repo {
	root := t.TempDir()
	r := &repo{t: t, bare: filepath.Join(root, "cluster.git"), work: filepath.Join(root, "work"), branch: "main"}
	gitRun(t, root, "init", "-q", "--bare", "-b", r.branch, r.bare)
	gitRun(t, root, "init", "-q", "-b", r.branch, r.work)
	return r
}

func (r *repo) url() string { return "file://" + r.bare }

// write replaces flake.nix in the work tree without committing.
func (r *repo) write(flake string) {
	if err := os.WriteFile(filepath.Join(r.work, "flake.nix"), []byte(flake), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// push commits flake.nix and pushes it; it returns the commit SHA.
func (r *repo) push(flake, msg string) string {
	r.write(flake)
	gitRun(r.t, r.work, "add", "flake.nix")
	gitRun(r.t, r.work, "commit", "-q", "-m", msg)
	gitRun(r.t, r.work, "push", "-q", r.bare, "HEAD:refs/heads/"+r.branch)
	return gitRun(r.t, r.work, "rev-parse", "HEAD")
}

// node is one `blixard serve` process.
type node struct {
	args    []string // serve arguments, for restarts
	env     []string // extra environment
	fdLimit int      // RLIMIT_NOFILE (soft and hard) of the process; 0: inherited
	id      uint64
	api     string
	raft    string
	dataDir string
	logPath string
	cmd     *exec.Cmd
	done    chan error
}

type cluster struct {
	t     testing.TB
	nodes []*node
}

type nodeSpec struct {
	vcpu, mem int
	labels    string
}

func startCluster(t testing.TB, repoURL string, specs []nodeSpec, extra ...string) *cluster {
	t.Helper()
	return startClusterWith(t, repoURL, specs, nil, extra...)
}

// startClusterWith is startCluster with setup (may be nil) called for each
// node before it starts: it returns the node's own arguments and may set
// its fields (fdLimit, env). Without --repo when repoURL is "".
func startClusterWith(t testing.TB, repoURL string, specs []nodeSpec, setup func(n *node) []string, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t}
	var members []string
	for i := range specs {
		n := &node{id: uint64(i + 1), api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir()}
		n.logPath = filepath.Join(n.dataDir, "serve.log")
		members = append(members, fmt.Sprintf("%d=%s", n.id, n.raft))
		c.nodes = append(c.nodes, n)
	}
	for i, n := range c.nodes {
		args := []string{"serve", "--node-id", fmt.Sprint(n.id), "--data-dir", n.dataDir,
			"--raft-addr", n.raft, "--api-addr", n.api, "--members", strings.Join(members, ","),
			"--ref", "main", "--poll", "300ms", "--heartbeat", "500ms",
			"--capacity-vcpu", fmt.Sprint(specs[i].vcpu), "--capacity-mem-mib", fmt.Sprint(specs[i].mem),
			"--state-dir", n.stateDir(), "--log-level", "debug"}
		if repoURL != "" {
			args = append(args, "--repo", repoURL)
		}
		if specs[i].labels != "" {
			args = append(args, "--labels", specs[i].labels)
		}
		if setup != nil {
			args = append(args, setup(n)...)
		}
		args = append(args, extra...)
		n.args = args
		c.start(n, args)
	}
	t.Cleanup(c.stopAll)
	return c
}

// plainServe adds --insecure to a `serve` without TLS files: the tests that
// predate TLS talk plain HTTP on loopback, which the daemon allows only
// when asked.
func plainServe(args []string) []string {
	if len(args) > 0 && args[0] == "serve" && !slices.Contains(args, "--tls-ca") && !slices.Contains(args, "--insecure") {
		return append(slices.Clip(args), "--insecure")
	}
	return args
}

// start starts n with args (see plainServe).
func (c *cluster) start(n *node, args []string) {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	n.cmd = exec.Command(blixardBin, plainServe(args)...)
	if n.fdLimit > 0 {
		// exec keeps the PID, so signals reach blixard itself.
		n.cmd = exec.Command("/bin/sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, n.fdLimit), blixardBin}, plainServe(args)...)...)
	}
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	n.cmd.Env = append(os.Environ(), n.env...)
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	n.done = make(chan error, 1)
	go func() { n.done <- n.cmd.Wait(); logf.Close() }()
}

// restart starts the node again with its original arguments.
func (c *cluster) restart(n *node) { c.start(n, n.args) }

// stop sends SIGTERM and waits; SIGKILL after a grace period.
func (n *node) stop() error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.done:
		n.cmd = nil
		return err
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
		n.cmd = nil
		return errors.New("did not stop on SIGTERM within 15s")
	}
}

func (n *node) stateDir() string { return filepath.Join(n.dataDir, "vms") }

// kill9 kills the node's blixard process (not its VMs, which run in their
// own sessions) and waits for it.
func (n *node) kill9() {
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
	n.cmd = nil
}

// runnerPID returns the PID the agent recorded for a VM on this node, or 0.
func (n *node) runnerPID(vm string) int {
	b, err := os.ReadFile(filepath.Join(n.stateDir(), vm, "pid"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	if pid > 0 && syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// killRunners ends every VM process the agents recorded: stopping a node
// leaves its VMs running by design.
func (n *node) killRunners() {
	entries, _ := os.ReadDir(n.stateDir())
	for _, e := range entries {
		if pid := n.runnerPID(e.Name()); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (c *cluster) stopAll() {
	for _, n := range c.nodes {
		if err := n.stop(); err != nil {
			c.t.Errorf("node %d: %v", n.id, err)
		}
		n.killRunners()
		killVolumeDaemons(n.stateDir()) // they outlive blixard by design
		if c.t.Failed() {
			if b, err := os.ReadFile(n.logPath); err == nil {
				c.t.Logf("--- log of node %d (last 6000 bytes):\n%s", n.id, tail(b, 6000))
			}
		}
	}
	if c.t.Failed() {
		c.logDigest()
	}
}

// logDigest logs, after the nodes' tails, the lines of every node's log
// that say what the leader loop did and what went wrong (blixard's own
// warnings and errors, and the leader loop's lines), so that the end of a
// failed test's output (often all a CI report keeps) names the cause even
// when it happened long before the tails begin.
func (c *cluster) logDigest() {
	const keep = 30
	var out strings.Builder
	for _, n := range c.nodes {
		b, err := os.ReadFile(n.logPath)
		if err != nil {
			continue
		}
		var lines []string
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "time=") {
				continue // Dragonboat's own lines: transport noise around every stop
			}
			// The leader loop logs without a component; the other parts
			// (Raft, agent, backend, …) name theirs and are kept only for
			// their warnings and errors.
			warn := strings.Contains(line, " level=WARN ") || strings.Contains(line, " level=ERROR ")
			if warn || strings.Contains(line, " level=INFO ") && !strings.Contains(line, " component=") {
				lines = append(lines, line)
			}
		}
		fmt.Fprintf(&out, "node %d: %d such lines", n.id, len(lines))
		if len(lines) > keep {
			fmt.Fprintf(&out, ", the last %d", keep)
			lines = lines[len(lines)-keep:]
		}
		out.WriteString(":\n")
		for _, line := range lines {
			out.WriteString("  " + truncate(line, 600) + "\n")
		}
	}
	c.t.Logf("--- digest: blixard's warnings, errors and leader-loop lines of every node:\n%s", out.String())
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// cli runs the blixard client (or a `serve` that should fail; see
// plainServe) and returns stdout, stderr and the exit code.
func cli(t testing.TB, dir string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, blixardBin, plainServe(args)...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("blixard %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func cliJSON(t testing.TB, out any, args ...string) error {
	t.Helper()
	stdout, stderr, code := cli(t, "", append(args, "--json")...)
	if code != 0 {
		return fmt.Errorf("blixard %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return json.Unmarshal([]byte(stdout), out)
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// killVolumeDaemons kills (by PID) the volume daemons recorded under a
// node's state directory that still run: like its VMs, a stopped `blixard
// serve` leaves them running by design.
func killVolumeDaemons(stateDir string) {
	files, _ := filepath.Glob(filepath.Join(stateDir, "*", "volumes", "*.daemon"))
	for _, f := range files {
		if id, err := volumes.ReadDaemonIdentity(strings.TrimSuffix(f, ".daemon")); err == nil && id.Alive() {
			_ = syscall.Kill(id.PID, syscall.SIGKILL)
		}
	}
}
