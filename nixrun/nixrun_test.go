package nixrun

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// modes are the ways a run can be grouped, each tested where the host has
// it.
var modes = []struct {
	name string
	mode cgroupMode
}{
	{"cgroup v2", cgroupV2},
	{"cgroup v1 freezer", cgroupV1Freezer},
	{"process group only", cgroupNone},
}

func TestNixRunStdout(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	r, cl := testRunner(t, nix, cgroupAny)
	out, err := r.Run(context.Background(), Command{Args: []string{"eval", "--json", "--expr", "1 + 2"}, ExtraConfig: testConfig})
	if err != nil || strings.TrimSpace(string(out)) != "3" {
		t.Fatalf("nix eval 1 + 2 = %q, %v; want 3", out, err)
	}
	// The other programs come from nix's directory.
	out, err = r.Run(context.Background(), Command{Program: "nix-instantiate", Args: []string{"--eval", "--expr", `"a" + "b"`}})
	if err != nil || strings.TrimSpace(string(out)) != `"ab"` {
		t.Fatalf("nix-instantiate --eval = %q, %v", out, err)
	}
	cl.requireGone(t, 0)
}

func TestNixRunFailureKeepsNixMessage(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	r, cl := testRunner(t, nix, cgroupAny)
	_, err := r.Run(context.Background(), Command{Args: []string{"eval", "--expr", `let x = throw "boom"; in x + 1`}, ExtraConfig: testConfig})
	re := runErr(t, err, Failed)
	if !strings.Contains(re.Message, "error: boom") {
		t.Errorf("message does not carry nix's error:\n%s", re.Message)
	}
	for _, noise := range []string{"--show-trace", "\x1b["} {
		if strings.Contains(re.Message, noise) {
			t.Errorf("message contains noise %q:\n%s", noise, re.Message)
		}
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Errorf("error %v does not wrap nix's exit status 1", err)
	}
	if re.Temporary() {
		t.Error("a failed evaluation is Temporary; running it again gives the same")
	}
	if !strings.HasPrefix(err.Error(), "nix eval --expr 'let x = throw \"boom\"; in x + 1': exit status 1:\nerror") {
		t.Errorf("Error() does not name the command and its exit status:\n%v", err)
	}
	cl.requireGone(t, 0)
}

func TestNixRunNotFound(t *testing.T) {
	t.Parallel()
	r := Runner{Nix: filepath.Join(t.TempDir(), "nix")}
	for _, program := range []string{"nix", "nix-store"} {
		_, err := r.Run(context.Background(), Command{Program: program, Args: []string{"--version"}})
		re := runErr(t, err, NotFound)
		if !re.Temporary() || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: not found error %v is not Temporary or does not wrap ErrNotExist", program, err)
		}
		if want := filepath.Join(filepath.Dir(r.Nix), program); !strings.Contains(re.Message, want) {
			t.Errorf("%s was not looked up next to nix (%s): %s", program, want, re.Message)
		}
	}
}

// A program that cannot start in its cgroup is tried without one; the
// cgroup is removed either way.
func TestNixRunStartFailureRemovesCgroup(t *testing.T) {
	t.Parallel()
	for _, m := range modes[:2] {
		t.Run(m.name, func(t *testing.T) {
			requireCgroup(t, m.mode)
			t.Parallel()
			nix := filepath.Join(t.TempDir(), "nix")
			if err := os.WriteFile(nix, []byte("\x7fELF not really\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			r, cl := testRunner(t, nix, m.mode)
			_, err := r.Run(context.Background(), Command{Args: []string{"--version"}})
			re := runErr(t, err, NotFound)
			if !errors.Is(err, syscall.ENOEXEC) || !strings.Contains(re.Message, nix) {
				t.Errorf("error %v does not say why %s did not run", err, nix)
			}
			cl.requireGone(t, 1)
		})
	}
}

func TestNixRunOutputTooLargeKills(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	r, cl := testRunner(t, nix, cgroupAny)
	_, err := r.Run(context.Background(), Command{Args: []string{"eval", "--json", "--expr", "builtins.genList (x: x) 100000"},
		MaxStdout: 100, ExtraConfig: testConfig})
	re := runErr(t, err, OutputTooLarge)
	if !strings.Contains(re.Message, "more than 100 bytes on stdout") || !strings.Contains(re.Message, "killed") || re.Stopped == "" {
		t.Errorf("message does not state the limit and what was killed: %s", re.Message)
	}
	if re.Temporary() {
		t.Error("too much output is Temporary; the same command prints as much again")
	}
	cl.requireGone(t, 0)
}

// A timeout kills what nix started for import-from-derivation too, when the
// run has a cgroup: the builder runs in a session of its own.
func TestNixRunTimeoutKillsIFDBuilder(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			requireCgroup(t, m.mode)
			t.Parallel()
			r, cl := testRunner(t, nix, m.mode)
			// Long enough for nix to start the builder, which takes well
			// under a second.
			cmd, builderPID, childPID := ifdCommand(t, 3*time.Second)
			_, err := r.Run(context.Background(), cmd)
			re := runErr(t, err, Timeout)
			if !errors.Is(err, context.DeadlineExceeded) || !re.Temporary() {
				t.Errorf("timeout %v does not wrap DeadlineExceeded or is not Temporary", err)
			}
			if !strings.HasPrefix(re.Message, "did not finish within 3s, so ") || !strings.HasSuffix(re.Message, re.Stopped) {
				t.Errorf("message does not say what happened: %s", re.Message)
			}
			checkKilled(t, m.mode, re, builderPID, childPID, cl)
		})
	}
}

// Cancellation kills like a timeout does.
func TestNixRunCancelKillsIFDBuilder(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			requireCgroup(t, m.mode)
			t.Parallel()
			r, cl := testRunner(t, nix, m.mode)
			cmd, builderPID, childPID := ifdCommand(t, 0)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				// Cancel once the builder runs (poll for its pid; no
				// sleeping on a guess).
				for deadline := time.Now().Add(30 * time.Second); readPID(t, builderPID) == 0 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
				cancel()
			}()
			_, err := r.Run(ctx, cmd)
			re := runErr(t, err, Canceled)
			if !errors.Is(err, context.Canceled) || !re.Temporary() {
				t.Errorf("error %v does not wrap context.Canceled or is not Temporary", err)
			}
			if !strings.HasPrefix(re.Message, "canceled (context canceled), so ") || !strings.HasSuffix(re.Message, re.Stopped) {
				t.Errorf("message does not say what happened: %s", re.Message)
			}
			checkKilled(t, m.mode, re, builderPID, childPID, cl)
		})
	}
}

// checkKilled checks what a stopped IFD run (ifdCommand) killed: with a
// cgroup, the builder's child too, and the cgroup is gone; without, only
// nix's process group, and the message says builders may survive.
func checkKilled(t *testing.T, mode cgroupMode, re *Error, builderPID, childPID string, cl *cgroupLog) {
	t.Helper()
	builder, child := readPID(t, builderPID), readPID(t, childPID)
	if builder == 0 || child == 0 {
		t.Fatalf("the IFD builder did not start before the run was stopped (%v)", re)
	}
	if mode == cgroupNone {
		// The reason for cgroups: the builder's child escaped the kill.
		t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL); _ = syscall.Kill(builder, syscall.SIGKILL) })
		if !strings.HasPrefix(re.Stopped, "nix's process group was killed; builders in their own session may survive (no cgroup for this run: ") {
			t.Errorf("Stopped does not say that only the process group was killed: %s", re.Stopped)
		}
		if !alive(child) {
			t.Errorf("the builder's child %d did not survive the process group kill; is it in nix's session after all?", child)
		}
		cl.requireGone(t, 0)
		return
	}
	waitGone(t, builder, "the IFD builder")
	waitGone(t, child, "the IFD builder's child")
	cl.requireGone(t, 1)
	kind := "cgroup "
	if mode == cgroupV1Freezer {
		kind = "freezer cgroup "
	}
	if want := "nix and every process it started (all of " + kind + cl.dirs[0] + ") were killed"; re.Stopped != want {
		t.Errorf("Stopped = %q, want %q", re.Stopped, want)
	}
}

// What nix leaves behind after it succeeded is killed with its cgroup.
func TestNixRunKillsWhatASuccessfulRunLeftBehind(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	for _, m := range modes[:2] {
		t.Run(m.name, func(t *testing.T) {
			requireCgroup(t, m.mode)
			t.Parallel()
			dir := t.TempDir()
			nix, strayFile := filepath.Join(dir, "nix"), filepath.Join(dir, "stray")
			script := "#!/bin/sh\n" +
				"setsid /bin/sh -c 'echo $$ > " + strayFile + "; exec /bin/sleep 1000' >/dev/null 2>&1 </dev/null &\n" +
				"while [ ! -s " + strayFile + " ]; do /bin/sleep 0.01; done\n" +
				"exec " + realNix + ` "$@"` + "\n"
			if err := os.WriteFile(nix, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			r, cl := testRunner(t, nix, m.mode)
			out, err := r.Run(context.Background(), Command{Args: []string{"eval", "--expr", "1"}, ExtraConfig: testConfig})
			if err != nil || strings.TrimSpace(string(out)) != "1" {
				t.Fatalf("Run = %q, %v", out, err)
			}
			waitGone(t, readPID(t, strayFile), "the stray process")
			cl.requireGone(t, 1)
		})
	}
}

func TestNixConfigMerge(t *testing.T) {
	const eval = "sandbox = false\nsubstituters ="
	const agent = "extra-experimental-features = nix-command flakes"
	tests := []struct {
		name    string
		environ []string
		extra   string
		want    []string // the NIX_CONFIG entries of the result
	}{
		{"no NIX_CONFIG", []string{"A=1"}, eval, []string{eval}},
		{"user NIX_CONFIG comes first", []string{"NIX_CONFIG=cores = 2\n", "A=1"}, eval, []string{"cores = 2\n" + eval}},
		{"several NIX_CONFIG entries are joined in order", []string{"NIX_CONFIG=a = 1", "NIX_CONFIG=b = 2"}, eval, []string{"a = 1\nb = 2\n" + eval}},
		{"the agent's config leaves substituters alone", []string{"NIX_CONFIG=substituters = https://cache.example"}, agent,
			[]string{"substituters = https://cache.example\n" + agent}},
		{"no extra config", []string{"NIX_CONFIG=a = 1", "B=2"}, "", []string{"a = 1"}},
		{"nothing at all", []string{"B=2", "NIX_CONFIG="}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := nixEnv(tt.environ, tt.extra)
			var cfgs, others, wantOthers []string
			for _, kv := range env {
				if v, ok := strings.CutPrefix(kv, "NIX_CONFIG="); ok {
					cfgs = append(cfgs, v)
				} else {
					others = append(others, kv)
				}
			}
			for _, kv := range tt.environ {
				if !strings.HasPrefix(kv, "NIX_CONFIG=") {
					wantOthers = append(wantOthers, kv)
				}
			}
			if strings.Join(cfgs, "|") != strings.Join(tt.want, "|") || len(cfgs) != len(tt.want) {
				t.Fatalf("NIX_CONFIG entries %q, want exactly %q", cfgs, tt.want)
			}
			if strings.Join(others, "|") != strings.Join(wantOthers, "|") {
				t.Fatalf("environment %q lost or gained other entries than NIX_CONFIG", env)
			}
		})
	}
}

func TestCleanMessage(t *testing.T) {
	in := "warning: Git tree '/src/repo' is dirty\n" +
		"GC Warning: Failed to expand heap by 8388608 bytes\n" +
		"GC Warning: Repeated allocation of very large block (appr. size 1052672):\n" +
		"\tMay lead to memory leak and poor GC performance\n" +
		"error (ignored): error: end of string reached\n" +
		"\x1b[35;1mwarning:\x1b[0m unknown setting 'foo'\n" +
		"\x1b[31;1merror:\x1b[0m syntax error, unexpected '}', expecting ';'\n" +
		"\n" +
		"       at \x1b[35;1m/nix/store/abc-source/flake.nix\x1b[0m:3:34:\n" +
		"\n" +
		"            3|     blixard = { cluster = \"test\" };\n" +
		"(use '--show-trace' to show detailed location information)\n"
	want := "error: syntax error, unexpected '}', expecting ';'\n" +
		"\n" +
		"       at /nix/store/abc-source/flake.nix:3:34:\n" +
		"\n" +
		"            3|     blixard = { cluster = \"test\" };"
	if got := cleanMessage(in); got != want {
		t.Fatalf("cleanMessage:\n%s\nwant:\n%s", got, want)
	}
	// git's own complaint, printed before nix's error, is kept.
	git := "fatal: couldn't find remote ref refs/heads/master\nerror: program 'git' failed with exit code 128\n"
	if got := cleanMessage(git); got != strings.TrimSpace(git) {
		t.Fatalf("cleanMessage dropped git's message: %q", got)
	}
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	b := &tailBuffer{max: 20}
	for i := range 100 {
		b.Write([]byte(strings.Repeat("x", i%7) + "\n"))
	}
	b.Write([]byte("error: end\n"))
	got := b.String()
	if !strings.HasPrefix(got, "(earlier output dropped)\n") || !strings.HasSuffix(got, "error: end\n") || len(got) > 20+len("(earlier output dropped)\n") {
		t.Fatalf("tailBuffer = %q", got)
	}
}

// Running out of memory under Command.MaxMemory is a MemoryLimit error, not
// a temporary one; the run's cgroup is gone as after any run.
func TestNixRunMemoryLimit(t *testing.T) {
	nix := requireNix(t)
	t.Parallel()
	r, cl := testRunner(t, nix, cgroupAny)
	// Unbounded, this takes about 7 GiB and 30 s here.
	_, err := r.Run(context.Background(), Command{Args: []string{"eval", "--expr", "builtins.length (builtins.genList (x: x) 100000000)"},
		MaxMemory: 256 << 20, ExtraConfig: testConfig})
	re := runErr(t, err, MemoryLimit)
	if re.Temporary() {
		t.Error("a memory limit error is Temporary; the same command needs as much memory again")
	}
	if want := "ran out of memory under its limit of 256 MiB"; !strings.HasPrefix(re.Message, want) {
		t.Errorf("message %q does not start with %q", re.Message, want)
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Errorf("error %v does not wrap nix's exit status", err)
	}
	cl.requireGone(t, 0)

	// Under the limit, nix works as ever.
	out, err := r.Run(context.Background(), Command{Args: []string{"eval", "--expr", "builtins.length (builtins.genList (x: x) 1000)"},
		MaxMemory: 256 << 20, ExtraConfig: testConfig})
	if err != nil || strings.TrimSpace(string(out)) != "1000" {
		t.Fatalf("a small evaluation under the limit = %q, %v", out, err)
	}
}

// The limit is RLIMIT_AS, soft and hard (the program cannot raise it), and
// the program still runs with its own pid: the shell execs it.
func TestRunMemoryLimitIsAddressSpaceLimit(t *testing.T) {
	t.Parallel()
	var r Runner
	out, err := r.Run(context.Background(), Command{Program: "/bin/sh",
		Args:      []string{"-c", `ulimit -Sv; ulimit -Hv; [ "$$" = "$(cut -d' ' -f4 /proc/self/stat)" ] && echo exec`},
		MaxMemory: 100 << 20})
	if err != nil || strings.Fields(string(out))[0] != "102400" || strings.Join(strings.Fields(string(out)), " ") != "102400 102400 exec" {
		t.Fatalf("ulimit under MaxMemory 100 MiB = %q, %v; want soft and hard 102400 KiB, and the program exec'd by the shell", out, err)
	}
	// Without MaxMemory the program has this process's limit.
	var own syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_AS, &own); err != nil {
		t.Fatal(err)
	}
	want := "unlimited"
	if own.Cur != ^uint64(0) {
		want = strconv.FormatUint(own.Cur/1024, 10)
	}
	out, err = r.Run(context.Background(), Command{Program: "/bin/sh", Args: []string{"-c", "ulimit -v"}})
	if err != nil || strings.TrimSpace(string(out)) != want {
		t.Fatalf("ulimit without MaxMemory = %q, %v; want this process's %s", out, err, want)
	}
}

// A run as another user gets that user's uid, groups and HOME, runs in /,
// and sees only the kept part of this process's environment plus Env.
func TestRunAsUser(t *testing.T) {
	t.Setenv("NIXRUN_TEST_SECRET", "s3cret")
	t.Setenv("NIX_CONFIG", "cores = 1")
	u, err := user.Lookup(testUser)
	if err != nil {
		t.Fatalf("user %s: %v", testUser, err)
	}
	r := Runner{User: testUser, Env: []string{"EXTRA=1"}}
	out, err := r.Run(context.Background(), Command{Program: "/bin/sh",
		Args: []string{"-c", `id -u; id -g; id -G; pwd; echo "home=$HOME user=$USER"; env`}, ExtraConfig: "substituters ="})
	if os.Geteuid() != 0 && !canSwitchUser() && strconv.Itoa(os.Geteuid()) != u.Uid {
		re := runErr(t, err, NotFound)
		if !strings.Contains(re.Message, "needs root or CAP_SETUID and CAP_SETGID") {
			t.Fatalf("as uid %d, running as %s: %v; want an error saying it needs root", os.Geteuid(), testUser, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(out), "\n")
	if lines[0] != u.Uid || lines[1] != u.Gid || lines[3] != "/" || lines[4] != "home="+u.HomeDir+" user="+testUser {
		t.Errorf("uid, gid, directory, HOME and USER = %q, want %s, %s, /, home=%s user=%s", lines[:5], u.Uid, u.Gid, u.HomeDir, testUser)
	}
	if slices.Contains(strings.Fields(lines[2]), "0") {
		t.Errorf("the run kept root's group: groups %s", lines[2])
	}
	env := lines[5:]
	if slices.ContainsFunc(env, func(kv string) bool { return strings.Contains(kv, "s3cret") }) {
		t.Errorf("this process's environment reached the other user: %q", env)
	}
	for _, want := range []string{"EXTRA=1", "NIX_CONFIG=cores = 1", "substituters =", "PATH=" + os.Getenv("PATH")} {
		if !slices.Contains(env, want) {
			t.Errorf("environment lacks %q: %q", want, env)
		}
	}
}

func TestRunAsUnknownUser(t *testing.T) {
	t.Parallel()
	r := Runner{User: "no-such-user-nixrun"}
	_, err := r.Run(context.Background(), Command{Program: "/bin/true"})
	re := runErr(t, err, NotFound)
	if !strings.Contains(re.Message, `no user "no-such-user-nixrun"`) {
		t.Fatalf("message %q does not name the missing user", re.Message)
	}
}

func TestOutOfMemory(t *testing.T) {
	for stderr, want := range map[string]bool{
		"GC Warning: Failed to expand heap by 8388608 bytes\nGC Warning: Out of Memory! Heap size: 1805 MiB. Returning NULL!\nerror: out of memory\n": true,
		"error: out of memory\n": true,
		"error: std::bad_alloc\n(use '--show-trace' to show detailed location information)\n": true,
		"error: boom\n": false,
		"error: out of memory in the flake's own words, at flake.nix:3\n": false,
		"trace: error: out of memory\nerror: attribute 'x' missing\n":     false,
	} {
		if got := outOfMemory(stderr); got != want {
			t.Errorf("outOfMemory(%q) = %v, want %v", stderr, got, want)
		}
	}
}
