//go:build ceph

package ceph

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/volumes"
)

const setupHint = "run scripts/setup-ceph.sh (as root) to install Ceph"

// cluster is the throw-away cluster of this test run, started by TestMain.
var cluster struct {
	conf, dir string
	err       error // why there is none
}

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	cluster.err = startCluster()
	code := m.Run()
	if cluster.dir != "" {
		if out, err := exec.Command("./ceph.sh", "stop", cluster.dir).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ceph.sh stop: %v: %s\n", err, out)
			code = 1
		}
	}
	os.Exit(code)
}

func startCluster() error {
	for _, p := range []string{"ceph-mon", "ceph-osd", "ceph", "rbd", "qemu-io", "qemu-storage-daemon"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found on PATH: %s", p, setupHint)
		}
	}
	var stderr bytes.Buffer
	cmd := exec.Command("./ceph.sh", "start")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("tests/ceph/ceph.sh start: %v: %s (%s)", err, stderr.String(), setupHint)
	}
	cluster.conf = strings.TrimSpace(string(out))
	cluster.dir = filepath.Dir(cluster.conf)
	return nil
}

// requireCeph fails the test when the cluster could not start.
func requireCeph(t testing.TB) volumes.Config {
	t.Helper()
	if cluster.err != nil {
		t.Fatal(cluster.err)
	}
	return volumes.Config{ConfigFile: cluster.conf, KeyringFile: filepath.Join(cluster.dir, "keyring"), Timeout: 5 * time.Second}
}

func connect(t testing.TB) *volumes.Conn {
	t.Helper()
	cfg := requireCeph(t)
	c, err := volumes.Connect(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

var seq atomic.Int64

// shortTempDir is a temporary directory near /tmp (unix socket paths are
// short), removed after the test together with the volume daemons recorded
// under it that still run (killed by PID).
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bx-vol-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join(dir, "*.daemon"))
		more, _ := filepath.Glob(filepath.Join(dir, "*", "*.daemon"))
		for _, f := range append(files, more...) {
			if id, err := volumes.ReadDaemonIdentity(strings.TrimSuffix(f, ".daemon")); err == nil && id.Alive() {
				_ = syscall.Kill(id.PID, syscall.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	})
	return dir
}

// imageName returns a fresh image name for this test.
func imageName(t testing.TB) string {
	n := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(n) > 60 {
		n = n[:60]
	}
	return fmt.Sprintf("%s-%d-%d", n, os.Getpid(), seq.Add(1))
}

// cephWait bounds every wait of these tests.
const cephWait = 30 * time.Second

// qemuIO runs qemu-io commands against the NBD export on socket.
func qemuIO(t testing.TB, socket string, cmds ...string) (string, error) {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, "nbd+unix:///?socket="+socket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
	s := string(out)
	if err == nil && (strings.Contains(s, "failed") || strings.Contains(s, "Pattern verification")) {
		err = fmt.Errorf("qemu-io reported a failure")
	}
	return s, err
}

// helper is a separate process holding an image's lock (the test binary
// re-executed): the frozen holder of the fencing test.
type helper struct {
	cmd   *exec.Cmd
	in    *os.File
	lines *bufio.Scanner
	addrs []string
}

const helperEnv = "BLIXARD_CEPH_TEST_HELPER"

func startHelper(t *testing.T, cfg volumes.Config, pool, image string) *helper {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_CONF="+cfg.ConfigFile, "HELPER_KEYRING="+cfg.KeyringFile,
		"HELPER_POOL="+pool, "HELPER_IMAGE="+image)
	cmd.Stdin = pr
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	h := &helper{cmd: cmd, in: pw, lines: bufio.NewScanner(out)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		pw.Close()
	})
	line := h.read(t)
	addrs, ok := strings.CutPrefix(line, "locked ")
	if !ok {
		t.Fatalf("helper: %s", line)
	}
	h.addrs = strings.Fields(addrs)
	return h
}

func (h *helper) read(t testing.TB) string {
	t.Helper()
	if !h.lines.Scan() {
		t.Fatalf("helper exited: %v", h.lines.Err())
	}
	return h.lines.Text()
}

// write asks the helper to write text at offset 0 and returns its answer:
// "ok" or "err ERRNO MESSAGE".
func (h *helper) write(t testing.TB, text string) string {
	t.Helper()
	if _, err := fmt.Fprintf(h.in, "%s\n", text); err != nil {
		t.Fatal(err)
	}
	return h.read(t)
}

// helperMain holds the lock of an image and writes on request.
func helperMain() int {
	ctx := context.Background()
	c, err := volumes.Connect(ctx, volumes.Config{ConfigFile: os.Getenv("HELPER_CONF"), KeyringFile: os.Getenv("HELPER_KEYRING")})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	h, err := c.Lock(ctx, os.Getenv("HELPER_POOL"), os.Getenv("HELPER_IMAGE"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	addrs, _ := c.Addrs()
	fmt.Println("locked", strings.Join(addrs, " "))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		_, err := h.WriteAt([]byte(in.Text()), 0)
		if err == nil {
			err = h.Flush()
		}
		if err != nil {
			fmt.Println("err", volumes.Errno(err), err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}
