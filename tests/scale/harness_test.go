package scale

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// blixardBin is the server binary: $BLIXARD_BIN, or one built from
// ../../cmd/blixard by TestMain.
var blixardBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if bin := os.Getenv("BLIXARD_BIN"); bin != "" {
		blixardBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "blixard-scale-bin-")
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

// requireTools fails the test (never skips) when a real program is missing.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh", n)
		}
	}
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

// scaleFlake declares m light VMs vm0 … vm(m-1) (1 vCPU, 64 MiB) that
// share one trivial runner derivation: the leader evaluates the flake with
// real nix, and nothing is ever built (the simulated agents realise
// nothing). tag changes the runner, so a new tag is a new workload for
// every VM.
func scaleFlake(m int, tag string) string {
	return fmt.Sprintf(`{
  outputs = { self }: let
    runner = builtins.derivation {
      name = "microvm-scale-%s";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "echo %s > $out" ];
    };
    vm = { inherit runner; vcpu = 1; memMiB = 64; };
  in {
    blixard = {
      cluster = "scale";
      vms = builtins.listToAttrs (builtins.genList (i: { name = "vm${toString i}"; value = vm; }) %d);
    };
  };
}
`, tag, tag, m)
}

// nodeTimeout is the servers' --node-timeout: $BLIXARD_SCALE_NODE_TIMEOUT,
// else the default of `blixard serve` (30s).
func nodeTimeout() string {
	if v := os.Getenv("BLIXARD_SCALE_NODE_TIMEOUT"); v != "" {
		return v
	}
	return "30s"
}

// server is one `blixard serve` process of the Raft cluster.
type server struct {
	id      uint64
	api     string
	raft    string
	dataDir string
	logPath string
	cmd     *exec.Cmd
	done    chan error
}

// startServers starts three control-plane-only `blixard serve` processes
// (ids 1-3, --agent=false: no VMs are placed on them) following repoURL,
// with plain HTTP on loopback, and stops them when the test ends.
func startServers(t testing.TB, repoURL string) []*server {
	t.Helper()
	var ss []*server
	var members []string
	for i := range 3 {
		s := &server{id: uint64(i + 1), api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir()}
		s.logPath = filepath.Join(s.dataDir, "serve.log")
		members = append(members, fmt.Sprintf("%d=%s", s.id, s.raft))
		ss = append(ss, s)
	}
	for _, s := range ss {
		args := []string{"serve", "--node-id", fmt.Sprint(s.id), "--data-dir", s.dataDir,
			"--raft-addr", s.raft, "--api-addr", s.api, "--members", strings.Join(members, ","),
			"--repo", repoURL, "--ref", "main", "--poll", "500ms", "--agent=false", "--insecure",
			"--capacity-vcpu", "0", "--capacity-mem-mib", "0", "--node-timeout", nodeTimeout()}
		logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		s.cmd = exec.Command(blixardBin, args...)
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := s.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.done = make(chan error, 1)
		go func() { s.done <- s.cmd.Wait(); logf.Close() }()
	}
	t.Cleanup(func() {
		for _, s := range ss {
			s.stop(t)
		}
	})
	return ss
}

// stop sends SIGTERM and waits; SIGKILL to its process group after 30 s.
// On a failed test it logs the tail of the server's log.
func (s *server) stop(t testing.TB) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		t.Errorf("server %d did not stop on SIGTERM within 30s; killed", s.id)
	}
	s.cmd = nil
	if t.Failed() {
		if b, err := os.ReadFile(s.logPath); err == nil {
			t.Logf("--- log of server %d (last 4000 bytes):\n%s", s.id, tailBytes(b, 4000))
		}
	}
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// httpc's timeout is long: at 10,000 instances the leader's /metrics
// renders every VM's series, which takes seconds on a loaded machine. A
// connection per request: at N = 1,000 a status request on a connection
// kept from before the push waited out the whole timeout while curl on a
// new one was answered in a second.
var httpc = &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}

// metrics GETs a server's /metrics as series → value.
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
	sc.Buffer(make([]byte, 64<<10), 1<<20)
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

// leader returns the server that leads, by its /metrics
// (blixard_node_is_leader{node="ID"} 1).
func leader(ss []*server) (*server, error) {
	for _, s := range ss {
		m, err := metrics(s.api)
		if err != nil {
			continue
		}
		for k, v := range m {
			if strings.HasPrefix(k, "blixard_node_is_leader") && v == 1 {
				return s, nil
			}
		}
	}
	return nil, errors.New("no server says it leads")
}

// procSample is a process's CPU time and memory from /proc.
type procSample struct {
	at      time.Time
	cpu     time.Duration // user + system
	rss     uint64        // VmRSS, bytes
	peakRSS uint64        // VmHWM, bytes
}

// sampleProc reads /proc/PID/stat and /proc/PID/status.
func sampleProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The fields after the command name (which may hold spaces) start
	// after its closing parenthesis; utime and stime are fields 14, 15.
	rest := stat[bytes.LastIndexByte(stat, ')')+2:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	s.cpu = time.Duration(ut+st) * time.Second / ticks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		kb := func(prefix string) (uint64, bool) {
			rest, ok := strings.CutPrefix(line, prefix)
			if !ok {
				return 0, false
			}
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n << 10, true
		}
		if v, ok := kb("VmRSS:"); ok {
			s.rss = v
		}
		if v, ok := kb("VmHWM:"); ok {
			s.peakRSS = v
		}
	}
	return s, nil
}

// snapshotSize is the size of the newest Raft snapshot file under a
// server's data directory (0 when it has none yet).
func snapshotSize(dataDir string) int64 {
	var newest time.Time
	var size int64
	_ = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".gbsnap") {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().After(newest) {
			newest, size = fi.ModTime(), fi.Size()
		}
		return nil
	})
	return size
}

// statusJSON is the part of GET /v1/status the measurements read.
type statusJSON struct {
	Revision *struct {
		Commit      string    `json:"commit"`
		CommittedAt time.Time `json:"committedAt"`
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

// status GETs a server's /v1/status: what the cluster committed.
func status(api string) (statusJSON, error) {
	var st statusJSON
	resp, err := httpc.Get("http://" + api + "/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /v1/status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// postSync asks a server to fetch the tracked ref now (POST /v1/sync), so a
// measurement does not include up to a poll interval.
func postSync(ctx context.Context, api string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+api+"/v1/sync", strings.NewReader("{}"))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return fmt.Errorf("POST /v1/sync: %s %v", resp.Status, body)
	}
	return nil
}
