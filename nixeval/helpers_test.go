package nixeval

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// requireNix returns the path of the real nix, failing the test (not
// skipping it) when nix or git is missing.
func requireNix(t testing.TB) string {
	t.Helper()
	nix, err := exec.LookPath("nix")
	if err != nil {
		t.Fatalf("nix not found: run scripts/setup.sh (%v)", err)
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git not found: run scripts/setup.sh (%v)", err)
	}
	return nix
}

// newEvaluator is New with a test logger and nix caches in a temp dir, so
// tests leave nothing in the user's ~/.cache/nix.
func newEvaluator(t testing.TB, o Options) *Evaluator {
	t.Helper()
	o.Env = append(o.Env, "XDG_CACHE_HOME="+t.TempDir())
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return New(o)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runGit runs git in dir and returns its trimmed stdout.
func runGit(t testing.TB, dir string, args ...string) string {
	t.Helper()
	base := []string{"-c", "user.name=nixeval test", "-c", "user.email=test@example.invalid",
		"-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"}
	cmd := exec.Command("git", append(base, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// fixtureRepo copies testdata/NAME into a new git repository (branch main)
// in a temp dir and commits it; it returns the repository and the commit.
func fixtureRepo(t testing.TB, name string) (dir, commit string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("testdata", name))); err != nil {
		t.Fatal(err)
	}
	runGit(t, dir, "init", "--quiet")
	return dir, commitAll(t, dir, "fixture "+name)
}

// commitAll commits every change in dir and returns the new commit.
func commitAll(t testing.TB, dir, msg string) string {
	t.Helper()
	runGit(t, dir, "add", "--all")
	runGit(t, dir, "commit", "--quiet", "--allow-empty", "-m", msg)
	return runGit(t, dir, "rev-parse", "HEAD")
}

// writeFile writes content to dir/name.
func writeFile(t testing.TB, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceInFile replaces old (which must occur) with new in dir/name.
func replaceInFile(t testing.TB, dir, name, old, new string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", name, old)
	}
	writeFile(t, dir, name, strings.Replace(string(data), old, new, 1))
}

// wrapNix writes an executable shell script that runs the lines of
// prelude, then execs the real nix with its arguments; every run appends
// its pid (nix's pid and process group, thanks to exec) to the returned
// log file. It returns the script and the log file.
func wrapNix(t testing.TB, realNix string, prelude ...string) (script, pidLog string) {
	t.Helper()
	dir := t.TempDir()
	script, pidLog = filepath.Join(dir, "nix"), filepath.Join(dir, "pids")
	body := "#!/bin/sh\n" +
		"echo $$ >> " + shellQuote(pidLog) + "\n" +
		strings.Join(prelude, "\n") + "\n" +
		"exec " + shellQuote(realNix) + ` "$@"` + "\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, pidLog
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// readPIDs returns the pids in a file written by wrapNix (none when the
// file does not exist yet).
func readPIDs(t testing.TB, file string) []int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// liveInGroup returns the pids of processes in process group pgid that are
// not zombies (a zombie has exited; it waits only for its parent to reap it).
func liveInGroup(t testing.TB, pgid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var live []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp …; comm may contain spaces and ')'.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 3 {
			continue
		}
		if g, _ := strconv.Atoi(fields[2]); g == pgid && fields[0] != "Z" && fields[0] != "X" {
			live = append(live, pid)
		}
	}
	return live
}
