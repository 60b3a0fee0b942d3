package node_test

import (
	"context"
	"fmt"
	"maps"
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

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/tests/fault"
)

// The labs of this package (network_lab_test.go with plain runners,
// network_qemu_test.go with qemu microVMs) run three real `blixard serve
// --network` processes, each in its own network namespace, joined by the
// routed underlay of tests/fault (10.77.X.N), on a cluster repository the
// test commits to and pushes.

// labConfig is what differs between labs.
type labConfig struct {
	// files are the cluster repository's first commit, by path (a flake.nix
	// among them).
	files map[string][]byte
	// vcpu is node i's --capacity-vcpu (i from 1 to 3).
	vcpu func(i int) int
	// env is added to the environment of the nodes (and so of the nix runs
	// and runners they start).
	env []string
	// nodes is how many namespaces the lab has (0: 3). Nodes 1 to 3 are
	// the Raft members start runs; the others are for nodes a test starts
	// itself (launch), such as agent-only ones.
	nodes int
	// serveArgs (nil: none) are further `serve` flags of node i.
	serveArgs func(i int) []string
}

// nodeCount is the number of the lab's namespaces.
func (c labConfig) nodeCount() int {
	if c.nodes == 0 {
		return 3
	}
	return c.nodes
}

// lab is one run of a network lab.
type lab struct {
	t    *testing.T
	cfg  labConfig
	net  *fault.Net
	root string // a directory everyone may search (dnsmasq rereads as nobody)
	bin  string
	work string // the working clone pushes are made from
	bare string // the bare repository the nodes follow
	repo string // file:// URL of bare
	cmds map[int]*exec.Cmd
	done map[int]chan error
	mu   sync.Mutex
}

func (l *lab) dir(i int, sub string) string { return filepath.Join(l.root, fmt.Sprintf("n%d", i), sub) }

func (l *lab) api(i int) *api.Client {
	c, err := api.NewClient(l.net.Addr(i)+":7070", api.ClientOptions{Timeout: 10 * time.Second})
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

func requireLabTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the network lab needs root (network namespaces, netlink, nftables): run it as root")
	}
	for _, tool := range []string{"nix", "git", "ip", "sysctl", "dnsmasq", "busybox", "unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh (Debian: iproute2 procps dnsmasq-base busybox util-linux)", tool)
		}
	}
}

func run(t testing.TB, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=lab", "GIT_AUTHOR_EMAIL=lab@example.org",
		"GIT_COMMITTER_NAME=lab", "GIT_COMMITTER_EMAIL=lab@example.org")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// newLab builds blixard, the cluster repository with cfg.files and the
// namespaces; it starts no node (start does). Everything it makes is
// removed when the test ends: nodes, guests, namespaces, files.
func newLab(t *testing.T, cfg labConfig) *lab {
	requireLabTools(t)
	root, err := os.MkdirTemp("", "blixard-netlab-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, cfg: cfg, root: root, cmds: map[int]*exec.Cmd{}, done: map[int]chan error{}}
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= cfg.nodeCount(); i++ {
				if b, err := os.ReadFile(filepath.Join(root, fmt.Sprintf("n%d.log", i))); err == nil {
					t.Logf("--- node %d log (tail) ---\n%s", i, tail(string(b), 60))
				}
			}
		}
		// BLIXARD_LAB_LOGS=DIR keeps the nodes' logs (debug level) for
		// the measurements in docs/benchmarks.md.
		if dir := os.Getenv("BLIXARD_LAB_LOGS"); dir != "" {
			for i := 1; i <= cfg.nodeCount(); i++ {
				if b, err := os.ReadFile(filepath.Join(root, fmt.Sprintf("n%d.log", i))); err == nil {
					name := fmt.Sprintf("%s-n%d.log", strings.ReplaceAll(t.Name(), "/", "_"), i)
					if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
						t.Errorf("keeping node %d's log: %v", i, err)
					}
				}
			}
		}
		_ = os.RemoveAll(root)
	})
	l.bin = filepath.Join(root, "blixard")
	run(t, ".", "go", "build", "-o", l.bin, "../cmd/blixard")

	l.work, l.bare = filepath.Join(root, "work"), filepath.Join(root, "cluster.git")
	run(t, root, "git", "init", "-q", "--bare", "-b", "main", l.bare)
	run(t, root, "git", "init", "-q", "-b", "main", l.work)
	l.repo = "file://" + l.bare
	l.push(cfg.files, "network lab")

	if l.net, err = fault.NewNet(cfg.nodeCount()); err != nil {
		t.Fatalf("building the namespaces: %v", err)
	}
	// Registered after the namespaces: cleanups run last in, first out, so
	// the guests and nodes stop before their namespaces go.
	t.Cleanup(func() {
		if err := l.net.Teardown(); err != nil {
			t.Errorf("tearing the namespaces down: %v", err)
		}
	})
	t.Cleanup(l.killGuests)
	t.Cleanup(func() {
		for i := 1; i <= cfg.nodeCount(); i++ {
			l.stop(i)
		}
	})
	for i := 1; i <= cfg.nodeCount(); i++ {
		// The instances' outbound traffic is routed from the bridge to the
		// uplink: a host setting (NixOS: the module sets it).
		if out, err := l.net.Command(i, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
			t.Fatalf("sysctl in node %d: %v: %s", i, err, out)
		}
	}
	return l
}

// push writes files (by path; executable when they end in .sh) into the
// working clone, commits them and pushes to the repository the nodes
// follow; it returns the commit.
func (l *lab) push(files map[string][]byte, msg string) string {
	l.t.Helper()
	for _, name := range slices.Sorted(maps.Keys(files)) {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		p := filepath.Join(l.work, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			l.t.Fatal(err)
		}
		if err := os.WriteFile(p, files[name], mode); err != nil {
			l.t.Fatal(err)
		}
	}
	run(l.t, l.work, "git", "add", ".")
	run(l.t, l.work, "git", "commit", "-q", "-m", msg)
	run(l.t, l.work, "git", "push", "-q", l.bare, "HEAD:refs/heads/main")
	return run(l.t, l.work, "git", "rev-parse", "HEAD")
}

// waitRevision waits until node i's committed revision is commit.
func (l *lab) waitRevision(i int, commit string, timeout time.Duration) {
	l.t.Helper()
	c := l.api(i)
	testkit.WaitFor(l.t, timeout, "revision "+commit[:12]+" committed", func() error {
		st, err := c.Status(context.Background())
		if err != nil {
			return err
		}
		if st.LastError != nil && st.LastError.Commit == commit {
			return fmt.Errorf("evaluating %s failed: %s", commit[:12], st.LastError.Message)
		}
		if st.Revision == nil || st.Revision.Commit != commit {
			return fmt.Errorf("revision %+v", st.Revision)
		}
		return nil
	})
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// start runs node i with the lab's capacity for it.
func (l *lab) start(i int) {
	var members []string
	for j := 1; j <= 3; j++ {
		members = append(members, fmt.Sprintf("%d=%s:7001", j, l.net.Addr(j)))
	}
	for _, d := range []string{"data", "state", "netdns"} {
		if err := os.MkdirAll(l.dir(i, d), 0o755); err != nil {
			l.t.Fatal(err)
		}
	}
	args := []string{"serve", "--node-id", strconv.Itoa(i), "--data-dir", l.dir(i, "data"),
		"--raft-addr", l.net.Addr(i) + ":7001", "--api-addr", l.net.Addr(i) + ":7070", "--members", strings.Join(members, ","),
		"--repo", l.repo, "--poll", "500ms", "--heartbeat", "500ms", "--node-timeout", "30s",
		"--capacity-vcpu", strconv.Itoa(l.cfg.vcpu(i)), "--capacity-mem-mib", "1024", "--state-dir", l.dir(i, "state"), "--backend", "process",
		"--insecure", "--insecure-i-know", "--log-level", "debug",
		"--network", "--dns-dir", l.dir(i, "netdns"), "--ingress-addr", l.net.Addr(i) + ":8080"}
	if l.cfg.serveArgs != nil {
		args = append(args, l.cfg.serveArgs(i)...)
	}
	cmd := l.net.Command(i, l.bin, args...)
	cmd.Env = append(os.Environ(), l.cfg.env...)
	l.launch(i, cmd)
}

// launch starts cmd as node i, its output appended to the node's log, and
// records it for stop (cmd's process must be the node itself: stop
// signals it).
func (l *lab) launch(i int, cmd *exec.Cmd) {
	logf, err := os.OpenFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	l.mu.Lock()
	l.cmds[i], l.done[i] = cmd, done
	l.mu.Unlock()
}

// startAll starts the three Raft nodes and waits until node via runs the
// revision of the repository's current commit.
func (l *lab) startAll(via int, within time.Duration) {
	l.t.Helper()
	commit := run(l.t, l.work, "git", "rev-parse", "HEAD")
	for i := 1; i <= 3; i++ {
		l.start(i)
	}
	l.waitRevision(via, commit, within)
}

// stop ends node i with SIGTERM (SIGKILL after 20 s) and waits for it.
func (l *lab) stop(i int) {
	l.mu.Lock()
	cmd, done := l.cmds[i], l.done[i]
	delete(l.cmds, i)
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		l.t.Errorf("node %d did not stop within 20 s of SIGTERM", i)
	}
}

// killGuests kills what the runners left when their nodes stopped (serve
// leaves VMs running): the plain runners' guest processes, which live in
// namespaces of their own (fault.Net's teardown finds only the nodes'), and
// qemu (qemu.pid in the instance's directory).
func (l *lab) killGuests() {
	var files []string
	for _, pat := range []string{"guest.pids", "qemu.pid"} {
		m, _ := filepath.Glob(filepath.Join(l.root, "n*", "state", "*", pat))
		pool, _ := filepath.Glob(filepath.Join(l.root, "n*", "state", ".pool", "*", pat)) // runners started ahead
		files = append(files, append(m, pool...)...)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, p := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(p)
			if err != nil || pid <= 1 {
				continue
			}
			// A pid file a killed runner left may name a reused PID: only
			// qemu, and guests still working in the lab's directories.
			if filepath.Base(f) == "qemu.pid" {
				if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmdline), "qemu-system") {
					continue
				}
			} else if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || !strings.HasPrefix(cwd, l.root+"/") {
				continue
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
