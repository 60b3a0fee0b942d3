package gitsync

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// gitEnv makes the git CLI independent of the user's and the system's config.
var gitEnv = []string{
	"GIT_CONFIG_NOSYSTEM=1",
	"GIT_CONFIG_GLOBAL=/dev/null",
	"GIT_AUTHOR_NAME=Blixard Test",
	"GIT_AUTHOR_EMAIL=test@blixard.invalid",
	"GIT_COMMITTER_NAME=Blixard Test",
	"GIT_COMMITTER_EMAIL=test@blixard.invalid",
	"GIT_TERMINAL_PROMPT=0",
}

func requireGit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git not found: run scripts/setup.sh (%v)", err)
	}
}

// runGit runs the real git CLI in dir and returns its trimmed stdout.
func runGit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), gitEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// upstream is a "remote" bare repository plus a work clone that pushes into
// it over file://.
type upstream struct {
	t      *testing.T
	remote string // bare repo path
	work   string // work tree path
	n      int    // commits made, for unique content
}

func newUpstream(t *testing.T, branch string) *upstream {
	t.Helper()
	requireGit(t)
	root := t.TempDir()
	u := &upstream{t: t, remote: filepath.Join(root, "remote.git"), work: filepath.Join(root, "work")}
	runGit(t, root, "init", "--quiet", "--bare", "--initial-branch="+branch, u.remote)
	runGit(t, root, "init", "--quiet", "--initial-branch="+branch, u.work)
	runGit(t, u.work, "remote", "add", "origin", u.fileURL())
	return u
}

func (u *upstream) fileURL() string { return "file://" + u.remote }

// commit makes a new commit in the work tree and returns its SHA.
func (u *upstream) commit(msg string) string {
	u.t.Helper()
	u.n++
	if err := os.WriteFile(filepath.Join(u.work, "flake.nix"), []byte(msg+"\n"), 0o644); err != nil {
		u.t.Fatal(err)
	}
	runGit(u.t, u.work, "add", "flake.nix")
	runGit(u.t, u.work, "commit", "--quiet", "-m", msg)
	return runGit(u.t, u.work, "rev-parse", "HEAD")
}

func (u *upstream) push(args ...string) {
	u.t.Helper()
	runGit(u.t, u.work, append([]string{"push", "--quiet", "origin"}, args...)...)
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newMirror(t *testing.T, o Options) *Mirror {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	m, err := New(o)
	if err != nil {
		t.Fatalf("New(%+v): %v", o, err)
	}
	return m
}

func fetch(t *testing.T, m *Mirror) Update {
	t.Helper()
	u, err := m.Fetch(context.Background())
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return u
}

func TestGitFetchFollowsNewCommits(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")

	m := newMirror(t, Options{URL: up.fileURL(), Dir: filepath.Join(t.TempDir(), "mirror")})

	got := fetch(t, m)
	if want := (Update{Commit: c1, Changed: true}); got != want {
		t.Fatalf("first fetch = %+v, want %+v", got, want)
	}
	if m.Last() != c1 {
		t.Fatalf("Last() = %q, want %q", m.Last(), c1)
	}

	c2 := up.commit("two")
	up.push("main")
	got = fetch(t, m)
	if want := (Update{Commit: c2, Previous: c1, Changed: true}); got != want {
		t.Fatalf("fetch after push = %+v, want %+v", got, want)
	}

	got = fetch(t, m)
	if want := (Update{Commit: c2, Previous: c2}); got != want {
		t.Fatalf("fetch with nothing new = %+v, want %+v", got, want)
	}

	// The real git CLI reads the mirror: object, branch, HEAD, and a clone
	// (what nix does with git+file://DIR?rev=SHA).
	if typ := runGit(t, m.Dir(), "cat-file", "-t", c2); typ != "commit" {
		t.Fatalf("git cat-file -t %s = %q, want commit", c2, typ)
	}
	if ref := runGit(t, m.Dir(), "rev-parse", "refs/heads/main"); ref != c2 {
		t.Fatalf("mirror refs/heads/main = %s, want %s", ref, c2)
	}
	if head := runGit(t, m.Dir(), "symbolic-ref", "HEAD"); head != "refs/heads/main" {
		t.Fatalf("mirror HEAD -> %s, want refs/heads/main", head)
	}
	if bare := runGit(t, m.Dir(), "rev-parse", "--is-bare-repository"); bare != "true" {
		t.Fatalf("mirror is not bare (rev-parse --is-bare-repository = %s)", bare)
	}
	wantURL := "git+file://" + m.Dir() + "?ref=refs/heads/main&rev=" + c2
	if got := m.FlakeURL(c2); got != wantURL {
		t.Fatalf("FlakeURL = %s, want %s", got, wantURL)
	}
	clone := filepath.Join(t.TempDir(), "clone")
	runGit(t, t.TempDir(), "clone", "--quiet", "file://"+m.Dir(), clone)
	if head := runGit(t, clone, "rev-parse", "HEAD"); head != c2 {
		t.Fatalf("clone of mirror at %s, want %s", head, c2)
	}
}

func TestGitFetchFollowsForcePush(t *testing.T) {
	up := newUpstream(t, "main")
	up.commit("base")
	c1 := up.commit("to be rewritten")
	up.push("main")

	m := newMirror(t, Options{URL: up.fileURL(), Dir: t.TempDir()})
	fetch(t, m)

	runGit(t, up.work, "reset", "--quiet", "--hard", "HEAD~1")
	c2 := up.commit("rewritten")
	up.push("--force", "main")

	got := fetch(t, m)
	if want := (Update{Commit: c2, Previous: c1, Changed: true, Rewritten: true}); got != want {
		t.Fatalf("fetch after force-push = %+v, want %+v", got, want)
	}
	if m.Last() != c2 {
		t.Fatalf("Last() = %q, want %q", m.Last(), c2)
	}

	// A fast-forward after the rewrite is not a rewrite.
	c3 := up.commit("after rewrite")
	up.push("main")
	if got := fetch(t, m); got.Rewritten || got.Commit != c3 || got.Previous != c2 {
		t.Fatalf("fast-forward after rewrite = %+v, want commit %s from %s, not rewritten", got, c3, c2)
	}

	for _, c := range []string{c1, c2, c3} {
		if typ := runGit(t, m.Dir(), "cat-file", "-t", c); typ != "commit" {
			t.Fatalf("git cat-file -t %s = %q, want commit", c, typ)
		}
	}
	runGit(t, m.Dir(), "fsck", "--no-dangling", "--no-progress")
}

func TestGitFetchDeletedBranchKeepsLastCommit(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	runGit(t, up.remote, "config", "receive.denyDeleteCurrent", "ignore")

	m := newMirror(t, Options{URL: up.fileURL(), Dir: t.TempDir()})
	fetch(t, m)

	up.push("--delete", "main")
	for i := range 2 { // stays failed and stays put on retry
		_, err := m.Fetch(context.Background())
		if !errors.Is(err, ErrRefNotFound) {
			t.Fatalf("fetch %d after branch deletion: err = %v, want ErrRefNotFound", i, err)
		}
		for _, want := range []string{"main", up.fileURL(), "--ref"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		if m.Last() != c1 {
			t.Fatalf("Last() after failed fetch = %q, want %q", m.Last(), c1)
		}
	}
	if ref := runGit(t, m.Dir(), "rev-parse", "refs/heads/main"); ref != c1 {
		t.Fatalf("mirror branch moved to %s after deletion, want %s", ref, c1)
	}

	// The branch comes back: followed again.
	c2 := up.commit("two")
	up.push("main")
	if got := fetch(t, m); got.Commit != c2 || got.Previous != c1 {
		t.Fatalf("fetch after re-push = %+v, want %s from %s", got, c2, c1)
	}
}

func TestGitFetchEmptyRemoteIsRefNotFound(t *testing.T) {
	up := newUpstream(t, "main") // nothing pushed
	m := newMirror(t, Options{URL: up.fileURL(), Dir: t.TempDir()})
	if _, err := m.Fetch(context.Background()); !errors.Is(err, ErrRefNotFound) {
		t.Fatalf("fetch from empty remote: err = %v, want ErrRefNotFound", err)
	}
	if m.Last() != "" {
		t.Fatalf("Last() = %q, want empty", m.Last())
	}
	if _, err := os.Stat(filepath.Join(m.Dir(), "HEAD")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed first fetch initialised the mirror (stat HEAD: %v)", err)
	}
}

func TestGitFetchBadURL(t *testing.T) {
	requireGit(t)
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	dir := t.TempDir()
	fetch(t, newMirror(t, Options{URL: up.fileURL(), Dir: dir}))

	for _, tc := range []struct {
		name string
		url  string
	}{
		{"nonexistent path", filepath.Join(t.TempDir(), "does-not-exist")},
		{"file URL to a non-repo", "file://" + t.TempDir()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A fresh mirror stays empty: nothing is created on disk.
			freshDir := filepath.Join(t.TempDir(), "mirror")
			fresh := newMirror(t, Options{URL: tc.url, Dir: freshDir})
			_, err := fresh.Fetch(context.Background())
			if err == nil {
				t.Fatalf("Fetch(%s) succeeded", tc.url)
			}
			if !strings.Contains(err.Error(), tc.url) {
				t.Errorf("error %q does not contain the URL %q", err, tc.url)
			}
			if errors.Is(err, ErrRefNotFound) {
				t.Errorf("bad URL reported as ErrRefNotFound: %v", err)
			}
			if fresh.Last() != "" {
				t.Errorf("Last() = %q after failed first fetch, want empty", fresh.Last())
			}
			if _, err := os.Stat(freshDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed first fetch created the mirror directory (stat: %v)", err)
			}

			// A mirror with a known commit keeps it.
			m := newMirror(t, Options{URL: tc.url, Dir: dir})
			if _, err := m.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), tc.url) {
				t.Fatalf("Fetch(%s) on existing mirror: err = %v, want an error naming the URL", tc.url, err)
			}
			if m.Last() != c1 {
				t.Errorf("Last() = %q, want the known commit %q", m.Last(), c1)
			}
			if ref := runGit(t, dir, "rev-parse", "refs/heads/main"); ref != c1 {
				t.Errorf("mirror branch = %s, want unchanged %s", ref, c1)
			}
		})
	}
}

func TestGitMirrorReusedAcrossRestart(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	dir := filepath.Join(t.TempDir(), "mirror")

	fetch(t, newMirror(t, Options{URL: up.fileURL(), Dir: dir}))

	// A restart with nothing new: the mirror on disk is the previous state.
	m2 := newMirror(t, Options{URL: up.fileURL(), Dir: dir})
	if got, want := fetch(t, m2), (Update{Commit: c1, Previous: c1}); got != want {
		t.Fatalf("fetch after restart = %+v, want %+v", got, want)
	}

	// A restart after a push: Previous comes from the mirror on disk.
	c2 := up.commit("two")
	up.push("main")
	m3 := newMirror(t, Options{URL: up.fileURL(), Dir: dir})
	if got, want := fetch(t, m3), (Update{Commit: c2, Previous: c1, Changed: true}); got != want {
		t.Fatalf("fetch after restart and push = %+v, want %+v", got, want)
	}
}

func TestGitMirrorDirNotARepo(t *testing.T) {
	up := newUpstream(t, "main")
	up.commit("one")
	up.push("main")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "precious.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newMirror(t, Options{URL: up.fileURL(), Dir: dir})
	_, err := m.Fetch(context.Background())
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Fetch into a non-empty non-repo dir: err = %v, want an error naming %s", err, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "HEAD")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mirror initialised a repo over existing files (HEAD: %v)", err)
	}
}

func TestGitTracksNonDefaultBranch(t *testing.T) {
	up := newUpstream(t, "main")
	up.commit("on main")
	up.push("main")
	runGit(t, up.work, "checkout", "--quiet", "-b", "deploy")
	d1 := up.commit("on deploy")
	up.push("deploy")

	// A plain local path URL, not file://.
	m := newMirror(t, Options{URL: up.remote, Dir: t.TempDir(), Ref: "deploy"})
	if got := fetch(t, m); got.Commit != d1 {
		t.Fatalf("fetch of deploy = %+v, want %s", got, d1)
	}

	// A push to main does not move the tracked branch.
	runGit(t, up.work, "checkout", "--quiet", "main")
	up.commit("main moves")
	up.push("main")
	if got := fetch(t, m); got.Changed || got.Commit != d1 {
		t.Fatalf("fetch after push to main = %+v, want deploy unchanged at %s", got, d1)
	}

	runGit(t, up.work, "checkout", "--quiet", "deploy")
	d2 := up.commit("deploy moves")
	up.push("deploy")
	if got := fetch(t, m); !got.Changed || got.Commit != d2 {
		t.Fatalf("fetch after push to deploy = %+v, want %s", got, d2)
	}
	if ref := runGit(t, m.Dir(), "rev-parse", "refs/heads/deploy"); ref != d2 {
		t.Fatalf("mirror refs/heads/deploy = %s, want %s", ref, d2)
	}
	if head := runGit(t, m.Dir(), "symbolic-ref", "HEAD"); head != "refs/heads/deploy" {
		t.Fatalf("mirror HEAD -> %s, want refs/heads/deploy", head)
	}
}

func TestGitConcurrentFetch(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	m := newMirror(t, Options{URL: up.fileURL(), Dir: t.TempDir()})

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	changed := make(chan bool, 8)
	for range 8 {
		wg.Go(func() {
			u, err := m.Fetch(context.Background())
			if err != nil {
				errs <- err
				return
			}
			if u.Commit != c1 {
				errs <- errors.New("resolved " + u.Commit + ", want " + c1)
			}
			changed <- u.Changed
		})
	}
	wg.Wait()
	close(errs)
	close(changed)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	for c := range changed {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d concurrent fetches reported Changed, want exactly 1", n)
	}
}

// The caller owns the schedule (no Run loop): a failed fetch leaves the
// mirror usable, and the next Fetch succeeds once the remote is back.
func TestGitFetchRecoversWhenTheRemoteComesBack(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	m := newMirror(t, Options{URL: up.fileURL(), Dir: t.TempDir()})
	fetch(t, m)

	moved := up.remote + ".away"
	if err := os.Rename(up.remote, moved); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		_, err := m.Fetch(context.Background())
		if err == nil || !strings.Contains(err.Error(), up.fileURL()) {
			t.Fatalf("fetch %d with the remote gone: err = %v, want an error naming %s", i, err, up.fileURL())
		}
		if m.Last() != c1 {
			t.Fatalf("Last() = %q after a failed fetch, want %q", m.Last(), c1)
		}
	}
	if err := os.Rename(moved, up.remote); err != nil {
		t.Fatal(err)
	}
	c2 := up.commit("two")
	up.push("main")
	if got, want := fetch(t, m), (Update{Commit: c2, Previous: c1, Changed: true}); got != want {
		t.Fatalf("fetch after the remote came back = %+v, want %+v", got, want)
	}
}

// A cancelled context (the leader stepping down, shutdown) ends a fetch
// with an error and moves nothing.
func TestGitFetchWithCancelledContextKeepsLastCommit(t *testing.T) {
	up := newUpstream(t, "main")
	c1 := up.commit("one")
	up.push("main")
	m := newMirror(t, Options{URL: up.fileURL(), Dir: t.TempDir()})
	fetch(t, m)
	up.commit("two")
	up.push("main")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Fetch(ctx); err == nil {
		t.Fatal("Fetch with a cancelled context succeeded")
	}
	if m.Last() != c1 {
		t.Fatalf("Last() = %q after a cancelled fetch, want %q", m.Last(), c1)
	}
	if ref := runGit(t, m.Dir(), "rev-parse", "refs/heads/main"); ref != c1 {
		t.Fatalf("mirror branch = %s after a cancelled fetch, want %s", ref, c1)
	}
}

func TestNewValidatesOptions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"empty URL is rejected", Options{Dir: "m"}, "no repository URL"},
		{"empty Dir is rejected", Options{URL: "file:///srv/repo.git"}, "no mirror directory"},
		{"invalid branch is rejected", Options{URL: "file:///srv/repo.git", Dir: "m", Ref: "a..b"}, "--ref"},
		{"non-branch ref is rejected", Options{URL: "file:///srv/repo.git", Dir: "m", Ref: "refs/tags/v1"}, "--ref"},
		{"https URL is accepted", Options{URL: "https://example.invalid/cluster.git", Dir: "m"}, ""},
		{"ssh URL is accepted", Options{URL: "ssh://git@example.invalid/cluster.git", Dir: "m", Ref: "refs/heads/deploy",
			SSHKeyFile: "id_ed25519", SSHKnownHostsFile: "known_hosts"}, ""},
		{"local path is accepted", Options{URL: "../cluster", Dir: "m"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(tc.o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New: err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if !filepath.IsAbs(m.Dir()) {
				t.Errorf("Dir() = %q, want an absolute path", m.Dir())
			}
			if m.Last() != "" {
				t.Errorf("Last() = %q before any fetch", m.Last())
			}
		})
	}
}

func TestRedactURLHidesPassword(t *testing.T) {
	got := redactURL("https://bot:s3cret@git.example.invalid/c.git")
	if strings.Contains(got, "s3cret") {
		t.Fatalf("redactURL kept the password: %s", got)
	}
}

// A remote that accepts the request and never answers (a stalled HTTP
// server) is given up when the fetch's context ends: the leader's fetch
// timeout relies on it.
func TestGitFetchFromAStalledRemoteEndsWithItsContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	m := newMirror(t, Options{URL: srv.URL + "/cluster.git", Dir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := m.Fetch(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), srv.URL) {
			t.Fatalf("fetch from a stalled remote: err = %v, want an error naming %s", err, srv.URL)
		}
	case <-time.After(30 * time.Second): // a hang guard, not a timing assertion
		t.Fatal("a fetch from a stalled remote did not end with its context")
	}
}
