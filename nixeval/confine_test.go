package nixeval

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/gitsync"
)

// testUser is the unprivileged user of the tests of Options.User: it
// exists on Debian and NixOS alike.
const testUser = "nobody"

// writeSecret writes a file only root may read, holding a random token,
// into a directory everyone may enter: it stands for /etc/shadow. It
// returns the file and the token.
func writeSecret(t *testing.T) (path, token string) {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	token = "blixard-secret-" + hex.EncodeToString(b)
	dir := t.TempDir()
	shareDir(t, dir)
	path = filepath.Join(dir, "shadow")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, token
}

// shareDir lets every user enter dir and its parents up to the temp
// directory (t.TempDir makes them 0700).
func shareDir(t *testing.T, dir string) {
	t.Helper()
	top := filepath.Clean(os.TempDir())
	for d := filepath.Clean(dir); strings.HasPrefix(d, top+"/"); d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, fi.Mode().Perm()|0o055); err != nil {
			t.Fatal(err)
		}
	}
}

// shareTree lets every user read the tree at dir (a fixture repository).
func shareTree(t *testing.T, dir string) {
	t.Helper()
	shareDir(t, dir)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		add := fs.FileMode(0o044)
		if d.IsDir() {
			add = 0o055
		}
		return os.Chmod(p, fi.Mode().Perm()|add)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// flakeRepo commits flake.nix with content into a new repository and
// returns it and the commit.
func flakeRepo(t *testing.T, content string) (dir, commit string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "flake")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "flake.nix", content)
	runGit(t, dir, "init", "--quiet")
	return dir, commitAll(t, dir, "flake")
}

// logBuffer is a logger that keeps what it logged (and logs it to the
// test), so a test can check that a secret never reached the logs.
type logBuffer struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLogBuffer(t testing.TB) (*logBuffer, *slog.Logger) {
	l := &logBuffer{t: t}
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// requireHidden fails when token appears in any of texts.
func requireHidden(t *testing.T, token string, texts map[string]string) {
	t.Helper()
	for what, text := range texts {
		if strings.Contains(text, token) {
			t.Errorf("the secret appears in %s:\n%s", what, text)
		}
	}
}

// A flake that imports from a derivation whose builder reads a file only
// root may read fails: the builder never runs, and the file's content
// appears nowhere. Neither the flake's nixConfig nor the operator's
// NIX_CONFIG can turn import-from-derivation back on.
func TestNixImportFromDerivationIsRefused(t *testing.T) {
	requireNix(t)
	t.Parallel()
	secret, token := writeSecret(t)
	marker := filepath.Join(t.TempDir(), "builder-ran")
	builder := fmt.Sprintf("echo ran > %s; /bin/cat %s > $out", marker, secret)
	dir, commit := flakeRepo(t, fmt.Sprintf(`{
  nixConfig.allow-import-from-derivation = true;
  outputs = { self }:
    let
      steal = builtins.derivation {
        name = "steal"; system = "x86_64-linux"; builder = "/bin/sh";
        args = [ "-c" %q ]; nonce = "%d";
      };
    in {
      importIt = { cluster = import steal; };
      readIt = { cluster = builtins.readFile steal; };
      asRunner = { cluster = "test"; vms.web = { runner = steal; vcpu = 1; memMiB = 64; }; };
    };
}
`, builder, time.Now().UnixNano()))
	logs, log := newLogBuffer(t)
	ev := newEvaluator(t, Options{Logger: log, Env: []string{
		"NIX_CONFIG=allow-import-from-derivation = true\naccept-flake-config = true\nmax-jobs = 2"}})
	for _, ref := range []string{gitsync.GitFlakeURL(dir, "", commit), gitsync.PathFlakeURL(dir)} {
		for _, attr := range []string{"importIt", "readIt"} {
			res, err := ev.Eval(context.Background(), ref, attr, "")
			if err == nil {
				t.Fatalf("%s#%s evaluated to %s", ref, attr, res.JSON)
			}
			ee := evalErr(t, err, EvalFailed)
			t.Logf("%s: %s", attr, ee.Message)
			for _, want := range []string{"'allow-import-from-derivation' is disabled", "import-from-derivation disabled",
				"a program of the flake's choosing"} {
				if !strings.Contains(ee.Message, want) {
					t.Errorf("%s: message does not contain %q:\n%s", attr, want, ee.Message)
				}
			}
			if ee.Temporary() {
				t.Errorf("%s: refused IFD is Temporary", attr)
			}
			requireHidden(t, token, map[string]string{"Error()": err.Error(), "Message": ee.Message})
		}
	}
	// The same derivation as a runner is fine: the nodes build it later.
	res, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), "asRunner", "")
	if err != nil {
		t.Fatalf("a derivation as a runner: %v", err)
	}
	requireHidden(t, token, map[string]string{"the result": string(res.JSON), "the logs": logs.String()})
	if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the builder ran during evaluation (%s: %v)", marker, err)
	}
}

// A direct read of a host file is refused by pure evaluation, which the
// operator's NIX_CONFIG cannot turn off.
func TestNixDirectReadIsRefused(t *testing.T) {
	requireNix(t)
	t.Parallel()
	secret, token := writeSecret(t)
	dir, commit := flakeRepo(t, fmt.Sprintf(`{
  outputs = { self }: {
    pathLiteral = { cluster = builtins.readFile %s; };
    pathString = { cluster = builtins.readFile "%s"; };
    env = { cluster = if builtins.getEnv "HOME" == "" then "pure" else "impure"; };
  };
}
`, secret, secret))
	logs, log := newLogBuffer(t)
	ev := newEvaluator(t, Options{Logger: log, Env: []string{"NIX_CONFIG=pure-eval = false"}})
	for _, attr := range []string{"pathLiteral", "pathString"} {
		_, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), attr, "")
		ee := evalErr(t, err, EvalFailed)
		t.Logf("%s: %s", attr, ee.Message)
		for _, want := range []string{"forbidden in pure eval mode", "blixard always evaluates flakes in pure mode"} {
			if !strings.Contains(ee.Message, want) {
				t.Errorf("%s: message does not contain %q:\n%s", attr, want, ee.Message)
			}
		}
		requireHidden(t, token, map[string]string{"Error()": err.Error(), "Message": ee.Message})
	}
	// builtins.getEnv is "" in pure mode, whatever the environment.
	res, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), "env", "")
	if err != nil || res.Spec.Name != "pure" {
		t.Errorf("builtins.getEnv: %v, %v; want the cluster name \"pure\"", res, err)
	}
	requireHidden(t, token, map[string]string{"the logs": logs.String()})
}

// An evaluation that allocates without bound fails with MemoryLimit, is
// remembered like any verdict on a commit, and leaves this process (the
// node) as it was: the next evaluation works.
func TestNixEvalMemoryLimit(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "errors")
	validDir, validCommit := fixtureRepo(t, "valid")
	nix, pidLog := wrapNix(t, realNix)
	ev := newEvaluator(t, Options{Nix: nix, MaxMemory: 512 << 20})
	ref := gitsync.GitFlakeURL(dir, "", commit)
	for range 2 {
		_, err := ev.Eval(context.Background(), ref, "allocate", commit)
		ee := evalErr(t, err, MemoryLimit)
		t.Log(err)
		if want := "evaluation exceeded the memory limit of 512 MiB; "; !strings.HasPrefix(ee.Message, want) {
			t.Errorf("message does not start with %q: %s", want, ee.Message)
		}
		if ee.Temporary() {
			t.Error("MemoryLimit is Temporary; the same commit needs as much memory again")
		}
	}
	if n := len(readPIDs(t, pidLog)); n != 1 {
		t.Errorf("nix ran %d times, want 1: a commit over the memory limit is not evaluated again", n)
	}
	if _, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(validDir, "", validCommit), "blixard", validCommit); err != nil {
		t.Fatalf("after a flake hit the memory limit: %v", err)
	}
	// The memory went to nix, not to this process.
	if hwm := peakRSS(t); hwm > 1<<30 {
		t.Errorf("this process's peak RSS is %d MiB", hwm>>20)
	}
}

// peakRSS is this process's peak resident set size (bytes).
func peakRSS(t *testing.T) int64 {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kib << 10
		}
	}
	t.Fatal("no VmHWM in /proc/self/status")
	return 0
}

func TestOptionsDefaults(t *testing.T) {
	if ev := New(Options{}); ev.opts.MaxMemory != DefaultMaxMemory || DefaultMaxMemory != 4<<30 {
		t.Errorf("default MaxMemory %d, want %d", ev.opts.MaxMemory, int64(DefaultMaxMemory))
	}
	args := strings.Join(nixArgs("path:/f", "blixard", "daemon"), " ")
	if !strings.Contains(args, " eval --store daemon --json ") {
		t.Errorf("nix arguments %q do not choose the store", args)
	}
	if args := strings.Join(nixArgs("path:/f", "blixard", ""), " "); strings.Contains(args, "--store") {
		t.Errorf("nix arguments %q choose a store without Options.Store", args)
	}
}

// evalUser prepares an evaluation as testUser: a home directory of its own
// (for nix's caches and a chroot store) in a directory it may enter.
func evalUser(t *testing.T) (o Options, home string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("evaluating as another user needs root: run the suite as root, as scripts/test.sh does")
	}
	u, err := user.Lookup(testUser)
	if err != nil {
		t.Fatalf("user %s: %v", testUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	base := t.TempDir()
	shareDir(t, base)
	home = filepath.Join(base, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	return Options{User: testUser, Env: []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache")}}, home
}

// startDaemon starts a nix-daemon (as root, like a host's) listening on a
// socket of its own under dir, and returns that socket; the test stops it.
func startDaemon(t *testing.T, realNix, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "daemon.sock")
	logs, _ := newLogBuffer(t)
	cmd := exec.Command(filepath.Join(filepath.Dir(realNix), "nix-daemon"))
	cmd.Env = append(os.Environ(), "NIX_DAEMON_SOCKET_PATH="+sock)
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group: the daemon forks one process per client.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("nix-daemon: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("nix-daemon did not create %s", sock)
		}
	}
}

// Evaluating as an unprivileged user, through a chroot store of its own or
// through a nix-daemon, gives the same result as evaluating as root; a
// flake input naming a file only root may read fails, and its content
// appears nowhere.
func TestNixEvalAsUnprivilegedUser(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	secret, token := writeSecret(t)
	validDir, validCommit := fixtureRepo(t, "valid")
	shareTree(t, validDir)
	// Pure mode does not stop inputs: nix fetches whatever they name, as
	// the user it runs as.
	stealDir, stealCommit := flakeRepo(t, fmt.Sprintf(`{
  inputs.secret = { url = "path:%s"; flake = false; };
  outputs = { self, secret }: { blixard = { cluster = builtins.readFile secret; }; };
}
`, secret))
	shareTree(t, stealDir)

	asRoot, err := newEvaluator(t, Options{}).Eval(context.Background(), gitsync.GitFlakeURL(validDir, "", validCommit), "blixard", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"chroot store", "nix-daemon"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			o, home := evalUser(t)
			if mode == "chroot store" {
				o.Store = "local?root=" + filepath.Join(home, "store")
			} else {
				o.Store = "unix://" + startDaemon(t, realNix, filepath.Dir(home))
			}
			logs, log := newLogBuffer(t)
			o.Logger = log
			ev := New(o)
			for name, ref := range map[string]string{"git": gitsync.GitFlakeURL(validDir, "", validCommit), "path": gitsync.PathFlakeURL(validDir)} {
				res, err := ev.Eval(context.Background(), ref, "blixard", "")
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if res.Hash != asRoot.Hash {
					t.Errorf("%s: as %s the result is\n%s\nas root\n%s", name, testUser, res.JSON, asRoot.JSON)
				}
			}
			if mode == "chroot store" {
				// The sources and .drv files went to the evaluation's own store.
				drv := asRoot.Spec.VMs["web"].Runner.Drv
				if _, err := os.Stat(filepath.Join(home, "store", drv)); err != nil {
					t.Errorf("the runner's .drv is not in the chroot store: %v", err)
				}
			}
			_, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(stealDir, "", stealCommit), "blixard", "")
			ee := evalErr(t, err, EvalFailed)
			t.Log(err)
			if !strings.Contains(ee.Message, "Permission denied") {
				t.Errorf("reading %s as %s: message does not say Permission denied:\n%s", secret, testUser, ee.Message)
			}
			requireHidden(t, token, map[string]string{"Error()": err.Error(), "Message": ee.Message, "the logs": logs.String()})
		})
	}
}
