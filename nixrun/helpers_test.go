package nixrun

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testConfig is what the tests' nix runs append to NIX_CONFIG: offline,
// no sandbox (builders use host tools by absolute path).
const testConfig = "extra-experimental-features = nix-command flakes\nsandbox = false\nsubstituters ="

// testUser is the unprivileged user of the tests of Runner.User: it exists
// on Debian and NixOS alike.
const testUser = "nobody"

// requireNix returns the path of the real nix, failing the test (not
// skipping it) when nix is missing.
func requireNix(t testing.TB) string {
	t.Helper()
	nix, err := exec.LookPath("nix")
	if err != nil {
		t.Fatalf("nix not found: run scripts/setup.sh (%v)", err)
	}
	return nix
}

// testRunner is a Runner limited to mode, with nix's caches in a temp dir
// and a logger that records the cgroup of every run it starts.
func testRunner(t testing.TB, nix string, mode cgroupMode) (Runner, *cgroupLog) {
	t.Helper()
	cl := &cgroupLog{Handler: slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})}
	return Runner{
		Nix:     nix,
		Env:     []string{"XDG_CACHE_HOME=" + t.TempDir()},
		Logger:  slog.New(cl),
		cgroups: mode,
	}, cl
}

// requireCgroup skips the test when this host cannot give a run a cgroup
// of mode (not root, no such hierarchy).
func requireCgroup(t *testing.T, mode cgroupMode) {
	t.Helper()
	if mode == cgroupNone {
		return
	}
	g, err := newCgroup(mode)
	if err != nil {
		t.Skipf("no cgroup of this kind here: %v", err)
	}
	if left := g.remove(slog.New(slog.DiscardHandler), false); left != nil {
		t.Fatalf("probe cgroup %s not removed: %v", g.path(), left)
	}
}

// cgroupLog is a slog handler that remembers the "cgroup" attributes of
// the records: the directories the runs were given.
type cgroupLog struct {
	slog.Handler
	mu   sync.Mutex
	dirs []string
}

func (c *cgroupLog) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "cgroup" && a.Value.String() != "" {
			c.mu.Lock()
			if !slices.Contains(c.dirs, a.Value.String()) {
				c.dirs = append(c.dirs, a.Value.String())
			}
			c.mu.Unlock()
		}
		return true
	})
	return c.Handler.Handle(ctx, r)
}

// requireGone fails unless every cgroup the runs got (at least want of
// them) has been removed.
func (c *cgroupLog) requireGone(t *testing.T, want int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.dirs) < want {
		t.Fatalf("%d runs had a cgroup, want %d", len(c.dirs), want)
	}
	for _, d := range c.dirs {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the run's cgroup %s is still there (%v)", d, err)
		}
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func runErr(t *testing.T, err error, kind Kind) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("Run succeeded, want a %s error", kind)
	}
	var re *Error
	if !errors.As(err, &re) {
		t.Fatalf("Run error %v (%T) is not a *nixrun.Error", err, err)
	}
	if re.Kind != kind {
		t.Fatalf("Run error kind %s, want %s:\n%v", re.Kind, kind, err)
	}
	return re
}

// ifdCommand is an evaluation that imports from a derivation whose builder
// starts a child, then sleeps; both write their pids to the returned files.
// nix starts the builder in a session of its own, outside nix's process
// group. nix 2.8 has the kernel kill the builder when nix dies (a parent
// death signal), but not the builder's child.
func ifdCommand(t *testing.T, timeout time.Duration) (cmd Command, builderPID, childPID string) {
	t.Helper()
	dir := t.TempDir()
	builderPID, childPID = filepath.Join(dir, "builder"), filepath.Join(dir, "child")
	script := fmt.Sprintf(`/bin/sh -c 'echo $$ > %[2]s; exec /bin/sleep 1000' & `+
		`while [ ! -s %[2]s ]; do :; done; echo $$ > %[1]s; exec /bin/sleep 1000`, builderPID, childPID)
	expr := fmt.Sprintf(`import (builtins.derivation {
  name = "nixrun-ifd"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" %q ];
  nonce = "%s-%d";
})`, script, t.Name(), time.Now().UnixNano())
	return Command{Program: "nix", Args: []string{"eval", "--impure", "--expr", expr},
		Timeout: timeout, ExtraConfig: testConfig}, builderPID, childPID
}

// readPID returns the pid in file, 0 when the file is not (fully) written.
func readPID(t testing.TB, file string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// alive reports whether pid runs (a zombie has exited; it only waits to be
// reaped by its parent).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// waitGone polls until pid no longer runs.
func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) is still alive", what, pid)
		}
	}
}
