//go:build load

package bench

// A few helpers copied from tests/e2e (which this package must not import:
// test files are not importable), cut down to what the measurements need.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// blixardBin is the binary under measurement: $BLIXARD_BIN, or one built
// from ../../cmd/blixard by TestMain.
var blixardBin string

func loadEnabled() bool { return os.Getenv("BLIXARD_LOAD") == "1" }

func TestMain(m *testing.M) {
	if !loadEnabled() {
		os.Exit(m.Run()) // every test skips itself; nothing to build
	}
	if bin := os.Getenv("BLIXARD_BIN"); bin != "" {
		blixardBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "blixard-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	blixardBin = filepath.Join(dir, "blixard")
	build := exec.Command("go", "build", "-o", blixardBin, "../../cmd/blixard")
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

// requireLoad skips unless BLIXARD_LOAD=1: these measurements take minutes
// and load the machine, so CI does not run them.
func requireLoad(t *testing.T) {
	t.Helper()
	if !loadEnabled() {
		t.Skip("a load measurement: run with BLIXARD_LOAD=1 (minutes; loads the whole machine)")
	}
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

func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
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
	t    testing.TB
	bare string
	work string
}

func newRepo(t testing.TB) *repo {
	root := t.TempDir()
	r := &repo{t: t, bare: filepath.Join(root, "cluster.git"), work: filepath.Join(root, "work")}
	gitRun(t, root, "init", "-q", "--bare", "-b", "main", r.bare)
	gitRun(t, root, "init", "-q", "-b", "main", r.work)
	return r
}

func (r *repo) url() string { return "file://" + r.bare }

// push commits flake as flake.nix and pushes it; it returns the commit SHA.
func (r *repo) push(flake, msg string) string {
	if err := os.WriteFile(filepath.Join(r.work, "flake.nix"), []byte(flake), 0o644); err != nil {
		r.t.Fatal(err)
	}
	gitRun(r.t, r.work, "add", "flake.nix")
	gitRun(r.t, r.work, "commit", "-q", "--allow-empty", "-m", msg)
	gitRun(r.t, r.work, "push", "-q", r.bare, "HEAD:refs/heads/main")
	return gitRun(r.t, r.work, "rev-parse", "HEAD")
}

// lightFlake declares n light VMs (1 vCPU, 64 MiB) named vm00…, each with
// its own tiny runner (a shell script that prints a line and sleeps), as
// tests/e2e's lightFlake does. The runners depend on the names and tag
// only, so their builds are shared by every flake with the same tag.
func lightFlake(n int, tag string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "        vm%02d = { runner = runner \"vm%02d\" %q; vcpu = 1; memMiB = 64; };\n", i, i, tag)
	}
	return `{
  outputs = { self }: let
    runner = name: tag: builtins.derivation {
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho booted ${name} ${tag}\\nexec /bin/sleep infinity\\n' > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "bench";
      vms = {
` + b.String() + `      };
    };
  };
}
`
}

// prebuildRunners builds the runners of lightFlake(n, tag) into the nix
// store (one `nix eval` for the derivations, one `nix-store --realise` per
// 500), so that a measurement sees the agents realise and start them, not
// nix build 2,000 derivations. Runs of the same tag reuse the builds.
func prebuildRunners(t testing.TB, n int, tag string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(lightFlake(n, tag)), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	env := append(os.Environ(), "NIX_CONFIG=extra-experimental-features = nix-command flakes")
	eval := exec.Command("nix", "eval", "--json", "path:"+dir+"#blixard.vms",
		"--apply", "vms: map (v: v.runner.drvPath) (builtins.attrValues vms)")
	eval.Env = env
	var stderr bytes.Buffer
	eval.Stderr = &stderr
	out, err := eval.Output()
	if err != nil {
		t.Fatalf("nix eval of the runners: %v\n%s", err, stderr.String())
	}
	var drvs []string
	if err := json.Unmarshal(out, &drvs); err != nil || len(drvs) != n {
		t.Fatalf("nix eval of the runners: %d derivations, %v", len(drvs), err)
	}
	for i := 0; i < len(drvs); i += 500 {
		batch := drvs[i:min(i+500, len(drvs))]
		build := exec.Command("nix-store", append([]string{"--realise", "--max-jobs", "4", "--quiet"}, batch...)...)
		build.Env = env
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("nix-store --realise of %d runners: %v\n%s", len(batch), err, tailBytes(out, 3000))
		}
	}
	t.Logf("%d runners built or found in the store in %v", n, time.Since(start).Round(time.Millisecond))
}

// node is one `blixard serve` process.
type node struct {
	id      uint64
	api     string
	raft    string
	dataDir string
	logPath string
	args    []string
	cmd     *exec.Cmd
	done    chan error
}

func (n *node) stateDir() string { return filepath.Join(n.dataDir, "vms") }

type cluster struct {
	t     testing.TB
	nodes []*node
}

// startCluster starts n `blixard serve` processes (ids 1…n) following
// repoURL with the process backend; extra are appended to every command
// line.
func startCluster(t testing.TB, repoURL string, n int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t}
	var members []string
	for i := range n {
		nd := &node{id: uint64(i + 1), api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir()}
		nd.logPath = filepath.Join(nd.dataDir, "serve.log")
		members = append(members, fmt.Sprintf("%d=%s", nd.id, nd.raft))
		c.nodes = append(c.nodes, nd)
	}
	if serveHas(t, "--insecure") {
		// Builds with an authenticated API need it for plain HTTP on loopback.
		extra = append(slices.Clip(extra), "--insecure")
	}
	for _, nd := range c.nodes {
		nd.args = append([]string{"serve", "--node-id", fmt.Sprint(nd.id), "--data-dir", nd.dataDir,
			"--raft-addr", nd.raft, "--api-addr", nd.api, "--members", strings.Join(members, ","),
			"--repo", repoURL, "--ref", "main", "--poll", "300ms", "--backend", "process",
			"--state-dir", nd.stateDir()}, extra...)
		c.start(nd)
	}
	t.Cleanup(c.stopAll)
	return c
}

// serveHas reports whether `blixard serve --help` lists flag, so that
// BLIXARD_BIN may be an older build.
func serveHas(t testing.TB, flag string) bool {
	t.Helper()
	out, err := exec.Command(blixardBin, "serve", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("blixard serve --help: %v\n%s", err, out)
	}
	return bytes.Contains(out, []byte(flag+" "))
}

func (c *cluster) start(n *node) {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	n.cmd = exec.Command(blixardBin, n.args...)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	n.done = make(chan error, 1)
	go func() { n.done <- n.cmd.Wait(); logf.Close() }()
}

// stop sends SIGTERM and waits; SIGKILL to its process group after 30 s.
func (n *node) stop() error {
	if n.cmd == nil {
		return nil
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		n.cmd = nil
		return nil
	case <-time.After(30 * time.Second):
		n.kill9()
		return errors.New("did not stop on SIGTERM within 30s")
	}
}

// kill9 kills the node's blixard and the nix programs it runs (its process
// group; not its VMs, which run in their own sessions) and waits.
func (n *node) kill9() {
	if n.cmd == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.done
	n.cmd = nil
}

// runnerPID returns the PID the agent recorded for a VM on this node if
// that process lives, else 0.
func (n *node) runnerPID(vm string) int {
	b, err := os.ReadFile(filepath.Join(n.stateDir(), vm, "pid"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// killRunners kills every VM process the node's agent recorded (by PID):
// a stopped or killed `blixard serve` leaves its VMs running by design.
func (n *node) killRunners() int {
	entries, _ := os.ReadDir(n.stateDir())
	killed := 0
	for _, e := range entries {
		if pid := n.runnerPID(e.Name()); pid > 0 {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
	}
	return killed
}

func (c *cluster) stopAll() {
	for _, n := range c.nodes {
		if err := n.stop(); err != nil {
			c.t.Errorf("node %d: %v", n.id, err)
		}
		n.killRunners()
		if c.t.Failed() {
			if b, err := os.ReadFile(n.logPath); err == nil {
				c.t.Logf("--- log of node %d (last 4000 bytes):\n%s", n.id, tailBytes(b, 4000))
			}
		}
	}
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// cli runs the blixard client and returns stdout, stderr and the exit code.
func cli(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, blixardBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("blixard %s: %v", strings.Join(args, " "), err)
	return "", "", 0
}

var httpc = &http.Client{Timeout: 2 * time.Second}

// getJSON GETs http://api/path into out, within 2 s.
func getJSON(api, path string, out any) error { return getJSONWithin(api, path, out, 0) }

// getJSONWithin GETs http://api/path into out within timeout (0: 2 s).
func getJSONWithin(api, path string, out any, timeout time.Duration) error {
	client := httpc
	if timeout > 0 {
		client = &http.Client{Timeout: timeout}
	}
	resp, err := client.Get("http://" + api + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// statusJSON is the part of GET /v1/status the measurements read.
type statusJSON struct {
	Leader   uint64 `json:"leader"`
	Revision *struct {
		Commit string `json:"commit"`
	} `json:"revision"`
	VMs []struct {
		Name  string `json:"name"`
		Node  uint64 `json:"node"`
		Phase string `json:"phase"`
	} `json:"vms"`
	Nodes []struct {
		ID    uint64 `json:"id"`
		State string `json:"state"`
	} `json:"nodes"`
}

// metrics GETs a node's /metrics (a local read: no Raft round trip) as
// series → value, e.g. `blixard_node_heartbeats{node="2",state="ready"}`.
func metrics(api string) (map[string]float64, error) {
	resp, err := httpc.Get("http://" + api + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// label returns the value of label name in a series key, or "".
func label(series, name string) string {
	i := strings.Index(series, name+`="`)
	if i < 0 {
		return ""
	}
	rest := series[i+len(name)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}

// waitFor polls cond every 200 ms until it returns nil or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", d, what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// memAvailable returns MemAvailable from /proc/meminfo in bytes (0 when
// unreadable).
func memAvailable() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// loadAvg returns the 1-minute load average (0 when unreadable).
func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		v, _ := strconv.ParseFloat(f[0], 64)
		return v
	}
	return 0
}
