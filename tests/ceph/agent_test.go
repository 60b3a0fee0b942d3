//go:build ceph

package ceph

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
	"github.com/blixard/blixard/volumes"
)

const nixHint = "run scripts/setup.sh (as root) to install nix"

// nixEnv is the environment of the nix calls: the project's settings
// appended to the caller's NIX_CONFIG.
func nixEnv() []string {
	cfg := "experimental-features = nix-command flakes\nsandbox = false\nsubstituters ="
	if v := os.Getenv("NIX_CONFIG"); v != "" {
		cfg = v + "\n" + cfg
	}
	return append(os.Environ(), "NIX_CONFIG="+cfg)
}

func nix(t testing.TB, bin string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("%s not found on PATH: %s", bin, nixHint)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = nixEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", bin, args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// makeRunner builds a runner that notes whether its volume was attached
// when it started (the process backend runs it in STATE/NAME), then sleeps.
func makeRunner(t testing.TB) spec.Runner {
	t.Helper()
	run := "#!/bin/sh\nif [ -S volumes/data ]; then echo volume-attached; else echo no-volume; fi\nexec /bin/sleep 1000\n"
	expr := fmt.Sprintf(`builtins.derivation {
  name = "runner"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" "/bin/mkdir -p $out/bin; printf '%%s' \"$run\" > $out/bin/microvm-run; /bin/chmod +x $out/bin/microvm-run" ];
  run = %q; nonce = "%s-%d";
}`, run, t.Name(), time.Now().UnixNano())
	drv := nix(t, "nix-instantiate", "-E", expr)
	out := nix(t, "nix-store", "--realise", drv)
	return spec.Runner{Drv: drv, Out: out}
}

// testState is the replicated state as the agents read it; the test
// changes it the way committed plans would.
type testState struct {
	mu  sync.Mutex
	st  *replicated.State
	gen uint64
}

func newTestState(cluster string) *testState {
	return &testState{st: &replicated.State{
		Revision:    &replicated.Revision{ID: 1, Commit: "0123456789abcdef"},
		Desired:     &spec.Cluster{Name: cluster, VMs: map[string]spec.VM{}},
		Assignments: map[string]replicated.Assignment{},
	}}
}

func (s *testState) LocalRead() (*replicated.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Clone(), nil
}

func (s *testState) assign(vm string, node uint64, r spec.Runner, vols map[string]spec.Volume) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.st.Desired.VMs[vm] = spec.VM{Runner: r, VCPU: 1, MemMiB: 64, Replicas: 1, Volumes: vols, Autostart: true}
	// The assignment carries the instance's volumes, as the planner commits
	// them: agents read assignments only.
	in := spec.Instance{Name: vm, Declared: vm, VM: s.st.Desired.VMs[vm]}
	s.st.Assignments[vm] = replicated.Assignment{VM: vm, Declared: vm, Node: node, Drv: r.Drv, OutPath: r.Out,
		VCPU: 1, MemMiB: 64, Volumes: s.st.Desired.VolumesOf(in), Generation: s.gen}
}

func (s *testState) unassign(vm string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.st.Desired.VMs, vm)
	delete(s.st.Assignments, vm)
}

// recorder is a Proposer keeping the last status of each VM and the Ceph
// addresses of the last heartbeat; with a leader it also applies each
// heartbeat to the leader's replicated state, as Raft would.
type recorder struct {
	leader *testkit.Store // nil: none

	mu    sync.Mutex
	last  map[string]replicated.VMStatus
	addrs []string
}

func (r *recorder) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	if cmd.NodeHeartbeat == nil {
		return replicated.Result{Code: replicated.ResultInvalid, Message: "unexpected command"}, nil
	}
	res := replicated.Result{Code: replicated.ResultOK}
	if r.leader != nil {
		var err error
		if res, err = r.leader.Propose(ctx, cmd); err != nil {
			return res, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = map[string]replicated.VMStatus{}
	for _, s := range cmd.NodeHeartbeat.Statuses {
		r.last[s.VM] = s
	}
	r.addrs = cmd.NodeHeartbeat.CephAddrs
	return res, nil
}

// reset forgets what was reported: the statuses of a restarted agent are
// waited for afresh.
func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.addrs = nil, nil
}

func (r *recorder) status(vm string) (replicated.VMStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.last[vm]
	return s, ok
}

func (r *recorder) reported() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.addrs)
}

// node is one agent with its own state directory and Ceph client. It can
// be stopped and started again on the same directory: a restarted agent.
type node struct {
	t          *testing.T
	id         uint64
	dir        string
	st         *testState
	cfg        volumes.Config
	stopOnExit bool
	rec        *recorder

	m      *volumes.Manager // the running agent's
	cancel context.CancelFunc
	done   chan error
}

// startNode starts an agent that stops its VMs and detaches their volumes
// when it stops, as `blixard dev` does.
func startNode(t *testing.T, id uint64, st *testState, cfg volumes.Config) *node {
	return newNode(t, id, st, cfg, true, nil)
}

// newNode starts an agent; with stopOnExit false its VMs and their volume
// daemons outlive it, as under `blixard serve`. leader, when set, receives
// its heartbeats.
func newNode(t *testing.T, id uint64, st *testState, cfg volumes.Config, stopOnExit bool, leader *testkit.Store) *node {
	t.Helper()
	// Unix socket paths are short: keep the state directory near /tmp.
	dir, err := os.MkdirTemp("", "bx-ceph-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, id: id, dir: dir, st: st, cfg: cfg, stopOnExit: stopOnExit, rec: &recorder{leader: leader}}
	n.start()
	t.Cleanup(func() {
		n.stop()
		// An agent that stops its VMs detaches their volumes: no daemon
		// may be left.
		for _, id := range killDaemons(dir) {
			if stopOnExit && !t.Failed() {
				t.Errorf("node %d left volume daemon %d (%s/%s) running", n.id, id.PID, id.Pool, id.Image)
			}
		}
		killRunners(dir)
		os.RemoveAll(dir)
	})
	return n
}

// start runs a new agent and volumes manager on the node's directory.
func (n *node) start() {
	n.rec.reset()
	n.m = volumes.NewManager(n.cfg, nil, slog.New(slog.NewTextHandler(testWriter{n.t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", n.id))
	a := nodeagent.New(nodeagent.Options{
		NodeID: n.id, StateDir: n.dir, State: n.st, Proposer: n.rec, Volumes: n.m,
		Interval: 100 * time.Millisecond, Heartbeat: 200 * time.Millisecond, VolumeRetry: 200 * time.Millisecond,
		StopOnExit: n.stopOnExit, StopTimeout: 20 * time.Second,
		Backend: nodeagent.NewProcessBackend(nodeagent.ProcessOptions{StateDir: n.dir, TermTimeout: 5 * time.Second, ShutdownTimeout: 5 * time.Second}),
	})
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- a.Start(ctx) }()
}

// stop stops the agent and closes its volumes manager (which leaves the
// volumes attached); without stopOnExit the VMs keep running.
func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	if err := <-n.done; err != nil {
		n.t.Errorf("agent %d: %v", n.id, err)
	}
	if err := n.m.Close(context.Background()); err != nil {
		n.t.Errorf("closing the volumes of node %d: %v", n.id, err)
	}
	n.cancel = nil
}

// testWriter sends a logger's lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// killRunners kills runners left behind by a failed test.
func killRunners(dir string) {
	pids, _ := filepath.Glob(filepath.Join(dir, "*", "pid"))
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			if pid, err := strconv.Atoi(f[0]); err == nil && pid > 0 {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// killDaemons kills (by PID) the volume daemons recorded under dir that
// still run and returns them.
func killDaemons(dir string) []volumes.DaemonIdentity {
	files, _ := filepath.Glob(filepath.Join(dir, "*", "volumes", "*.daemon"))
	var out []volumes.DaemonIdentity
	for _, f := range files {
		id, err := volumes.ReadDaemonIdentity(strings.TrimSuffix(f, ".daemon"))
		if err == nil && id.Alive() {
			_ = syscall.Kill(id.PID, syscall.SIGKILL)
			out = append(out, id)
		}
	}
	return out
}

// daemon returns the identity of the daemon serving vm's volume vol.
func (n *node) daemon(t testing.TB, vm, vol string) volumes.DaemonIdentity {
	t.Helper()
	id, err := volumes.ReadDaemonIdentity(nodeagent.VolumePath(n.dir, vm, vol))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// holds fails the test unless img's lock is held by the daemon serving vm's
// volume vol on n, and n reports that daemon's address in its heartbeat.
func (n *node) holds(t testing.TB, c *volumes.Conn, img, vm, vol string) volumes.DaemonIdentity {
	t.Helper()
	id := n.daemon(t, vm, vol)
	if got := ownerAddrs(t, c, img); !slices.Equal(got, []string{id.Addr}) {
		t.Fatalf("lock owners of %s %v, want node %d's volume daemon %s", img, got, n.id, id.Addr)
	}
	if !slices.Contains(n.m.ClientAddrs(), id.Addr) {
		t.Fatalf("node %d's client addresses %v lack its volume daemon's %s", n.id, n.m.ClientAddrs(), id.Addr)
	}
	return id
}

func (n *node) waitPhase(vm string, p replicated.Phase, extra func(replicated.VMStatus) bool) replicated.VMStatus {
	n.t.Helper()
	var got replicated.VMStatus
	testkit.WaitFor(n.t, cephWait, fmt.Sprintf("%s %s on node %d", vm, p, n.id), testkit.Detail(func() (bool, string) {
		s, ok := n.rec.status(vm)
		got = s
		return ok && s.Phase == p && (extra == nil || extra(s)), fmt.Sprintf("last status %+v", s)
	}))
	return got
}

func (n *node) console(vm string) string {
	b, _ := os.ReadFile(nodeagent.LogPath(n.dir, vm))
	return string(b)
}

func ownerAddrs(t testing.TB, c *volumes.Conn, img string) []string {
	t.Helper()
	os, err := c.Owners(context.Background(), "rbd", img)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range os {
		out = append(out, o.Addr)
	}
	return out
}

func TestCephNixAgentLocksBeforeStartMovesAndKeepsTheImage(t *testing.T) {
	cfg := requireCeph(t)
	c := connect(t)
	r := makeRunner(t)
	clusterName := fmt.Sprintf("t%d-%d", os.Getpid(), seq.Add(1))
	img := clusterName + ".db.data"
	st := newTestState(clusterName)
	n1, n2 := startNode(t, 1, st, cfg), startNode(t, 2, st, cfg)
	vols := map[string]spec.Volume{"data": {SizeMiB: 8, Pool: "rbd"}}

	// Assignment to node 1: the image is created and locked, then the VM starts.
	t0 := time.Now()
	st.assign("db", 1, r, vols)
	n1.waitPhase("db", replicated.PhaseRunning, nil)
	t.Logf("assignment → running with a new volume: %v", time.Since(t0).Round(time.Millisecond))
	if size, err := c.Size(context.Background(), "rbd", img); err != nil || size != 8*volumes.MiB {
		t.Fatalf("image %s: size %d, %v; want 8 MiB", img, size, err)
	}
	n1.holds(t, c, img, "db", "data")
	testkit.WaitFor(t, cephWait, "runner's console", testkit.Detail(func() (bool, string) {
		s := n1.console("db")
		return strings.Contains(s, "volume-attached"), s
	}))
	sock1 := nodeagent.VolumePath(n1.dir, "db", "data")
	if out, err := qemuIO(t, sock1, "write -P 0x5a 1M 64k"); err != nil {
		t.Fatalf("write through node 1's attachment: %v\n%s", err, out)
	}

	// Move to node 2: node 1 stops the VM and only then releases the lock;
	// node 2 takes it and starts the VM on the same data.
	t0 = time.Now()
	st.assign("db", 2, r, vols)
	n2.waitPhase("db", replicated.PhaseRunning, nil)
	t.Logf("move: reassignment → running on node 2 (stop, release, lock, start): %v", time.Since(t0).Round(time.Millisecond))
	testkit.WaitFor(t, cephWait, "node 1 reports db stopped (or forgets it)", testkit.Detail(func() (bool, string) {
		s, ok := n1.rec.status("db")
		return !ok || s.Phase == replicated.PhaseStopped, fmt.Sprintf("%+v", s)
	}))
	n2.holds(t, c, img, "db", "data")
	if _, err := os.Stat(sock1); !os.IsNotExist(err) {
		t.Errorf("node 1 still exposes the volume at %s: %v", sock1, err)
	}
	sock2 := nodeagent.VolumePath(n2.dir, "db", "data")
	if out, err := qemuIO(t, sock2, "read -P 0x5a 1M 64k"); err != nil {
		t.Fatalf("node 2 does not see node 1's data: %v\n%s", err, out)
	}

	// A grown spec grows the image in place; node 2 keeps the lock.
	st.assign("db", 2, r, map[string]spec.Volume{"data": {SizeMiB: 16, Pool: "rbd"}})
	testkit.WaitFor(t, cephWait, "image grown to 16 MiB", testkit.Detail(func() (bool, string) {
		size, err := c.Size(context.Background(), "rbd", img)
		return err == nil && size == 16*volumes.MiB, fmt.Sprintf("size %d, %v", size, err)
	}))
	n2.holds(t, c, img, "db", "data")

	// Removed from the flake: the VM stops, the lock is released, the image stays.
	st.unassign("db")
	testkit.WaitFor(t, cephWait, "db stopped and its lock released", testkit.Detail(func() (bool, string) {
		got := ownerAddrs(t, c, img)
		s, _ := n2.rec.status("db")
		return len(got) == 0 && (s.Phase == replicated.PhaseStopped || s.Phase == ""), fmt.Sprintf("owners %v, status %+v", got, s)
	}))
	if ok, err := c.Exists(context.Background(), "rbd", img); err != nil || !ok {
		t.Fatalf("image %s after removal from the flake: exists %v, %v; want it kept", img, ok, err)
	}
}

func TestCephNixAgentBadCephSettingsFailOnlyThatVM(t *testing.T) {
	good := requireCeph(t)
	c := connect(t)
	r := makeRunner(t)
	dir := t.TempDir()

	unreachable := filepath.Join(dir, "unreachable.conf")
	if err := os.WriteFile(unreachable, []byte("[global]\nmon host = v2:127.0.0.1:9\nauth client required = cephx\n[client]\nadmin socket =\nlog file =\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrongKeyring := filepath.Join(dir, "wrong.keyring")
	key := strings.TrimSpace(string(must(exec.Command("ceph-authtool", "--gen-print-key").Output())))
	if err := os.WriteFile(wrongKeyring, []byte("[client.admin]\n\tkey = "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     volumes.Config
		pool    string
		wantMsg string
	}{
		{"an unreachable monitor fails the VM with Ceph's connect error", volumes.Config{ConfigFile: unreachable, KeyringFile: good.KeyringFile, Timeout: time.Second}, "rbd", "ceph: connect as client.admin"},
		{"a missing pool fails the VM naming the pool", good, "no-such-pool", `pool "no-such-pool" does not exist`},
		{"a wrong keyring fails the VM with Ceph's auth error", volumes.Config{ConfigFile: good.ConfigFile, KeyringFile: wrongKeyring, Timeout: 5 * time.Second}, "rbd", "ceph: connect as client.admin"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clusterName := fmt.Sprintf("b%d-%d", os.Getpid(), seq.Add(1))
			st := newTestState(clusterName)
			n := startNode(t, uint64(10+i), st, tt.cfg)
			st.assign("plain", n.id, r, nil)
			st.assign("vol", n.id, r, map[string]spec.Volume{"data": {SizeMiB: 4, Pool: tt.pool}})
			s := n.waitPhase("vol", replicated.PhaseFailed, nil)
			if !strings.Contains(s.Message, tt.wantMsg) || !strings.HasPrefix(s.Message, "volumes: volume data") {
				t.Fatalf("message %q, want it to contain %q", s.Message, tt.wantMsg)
			}
			t.Logf("vol: %s", s.Message)
			n.waitPhase("plain", replicated.PhaseRunning, nil)
			if _, err := os.Lstat(filepath.Join(n.dir, "vol", "booted")); !os.IsNotExist(err) {
				t.Errorf("the VM whose volume failed was started (booted link: %v)", err)
			}
			if tt.pool == "rbd" {
				if ok, err := c.Exists(context.Background(), "rbd", clusterName+".vol.data"); err != nil || ok {
					t.Errorf("image created despite the bad settings: %v, %v", ok, err)
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
