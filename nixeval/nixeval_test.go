package nixeval

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/spec"
)

func evalErr(t *testing.T, err error, kind ErrorKind) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("Eval succeeded, want a %s error", kind)
	}
	var ee *Error
	if !errors.As(err, &ee) {
		t.Fatalf("Eval error %v (%T) is not a *nixeval.Error", err, err)
	}
	if ee.Kind != kind {
		t.Fatalf("Eval error kind %s, want %s:\n%v", ee.Kind, kind, err)
	}
	return ee
}

var storePathRE = regexp.MustCompile(`^/nix/store/[0-9a-z]{32}-`)

func TestNixEvalValidSpec(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "valid")
	ev := newEvaluator(t, Options{})
	refs := map[string]string{"git": gitsync.GitFlakeURL(dir, "", commit), "path": gitsync.PathFlakeURL(dir)}
	hashes := map[string]string{}
	for name, ref := range refs {
		res, err := ev.Eval(context.Background(), ref, "blixard", "")
		if err != nil {
			t.Fatalf("%s: Eval(%s): %v", name, ref, err)
		}
		c := res.Spec
		if c.Name != "test" || len(c.VMs) != 2 || len(c.Functions) != 1 {
			t.Fatalf("%s: got cluster %q with %d VMs and %d functions, want test, 2, 1: %s", name, c.Name, len(c.VMs), len(c.Functions), res.JSON)
		}
		web, db := c.VMs["web"], c.VMs["db"]
		if web.VCPU != 2 || web.MemMiB != 512 || web.Replicas != 2 || !web.Autostart ||
			!reflect.DeepEqual(web.Placement.AntiAffinity, []string{"web"}) {
			t.Errorf("%s: web = %+v", name, web)
		}
		if db.Replicas != 1 || db.Autostart || !reflect.DeepEqual(db.Volumes, map[string]spec.Volume{"data": {SizeMiB: 64, Pool: "rbd"}}) {
			t.Errorf("%s: db = %+v (want defaults replicas 1, pool rbd; autostart false as declared)", name, db)
		}
		for vm, r := range map[string]spec.Runner{"web": web.Runner, "db": db.Runner, "hello": c.Functions["hello"].Runner} {
			if !storePathRE.MatchString(r.Drv) || !strings.HasSuffix(r.Drv, "-"+vm+"-runner.drv") ||
				!storePathRE.MatchString(r.Out) || !strings.HasSuffix(r.Out, "-"+vm+"-runner") {
				t.Errorf("%s: %s runner = %+v, want its .drv and out store paths", name, vm, r)
			}
		}
		var instances []string
		for _, in := range c.Instances() {
			instances = append(instances, in.Name)
		}
		if want := []string{"db", "web-0", "web-1"}; !reflect.DeepEqual(instances, want) {
			t.Errorf("%s: instances %v, want %v", name, instances, want)
		}
		sum := sha256.Sum256(res.JSON)
		if res.Hash != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: Hash %s is not the SHA-256 of JSON", name, res.Hash)
		}
		if again, err := spec.Decode(res.JSON); err != nil || !reflect.DeepEqual(again, c) {
			t.Errorf("%s: JSON does not decode back to Spec (%v)", name, err)
		}
		if res.Cached || res.Duration <= 0 {
			t.Errorf("%s: Cached=%t Duration=%v, want a fresh run", name, res.Cached, res.Duration)
		}
		hashes[name] = res.Hash
	}
	if hashes["git"] != hashes["path"] {
		t.Errorf("the same tree hashed differently through git (%s) and path (%s)", hashes["git"], hashes["path"])
	}
}

func TestNixPathFlakeRefSeesUncommittedAndUntrackedEdits(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "valid")
	replaceInFile(t, dir, "flake.nix", `cluster = "test";`, `cluster = "edited";`)
	writeFile(t, dir, "extra.nix", `runner: { cache = { runner = runner "cache-runner"; vcpu = 1; memMiB = 64; }; }`)
	ev := newEvaluator(t, Options{})

	res, err := ev.Eval(context.Background(), gitsync.PathFlakeURL(dir), "blixard", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Spec.VMs["cache"]; res.Spec.Name != "edited" || !ok {
		t.Fatalf("path: cluster %q with VMs %v, want the uncommitted name \"edited\" and the untracked VM cache", res.Spec.Name, keys(res.Spec.VMs))
	}
	res, err = ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), "blixard", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Spec.VMs["cache"]; res.Spec.Name != "test" || ok {
		t.Fatalf("git at %s: cluster %q with VMs %v, want the committed tree only", commit, res.Spec.Name, keys(res.Spec.VMs))
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestNixEvalErrors(t *testing.T) {
	requireNix(t)
	t.Parallel()
	errorsDir, errorsCommit := fixtureRepo(t, "errors")
	syntaxDir, syntaxCommit := fixtureRepo(t, "syntax")
	validDir, validCommit := fixtureRepo(t, "valid")
	ev := newEvaluator(t, Options{})
	tests := []struct {
		name           string
		dir, commit    string
		attr           string
		want           []string // substrings of Error.Message
		wantLineRegexp string
	}{
		{"syntax error names flake.nix and the line", syntaxDir, syntaxCommit, "blixard",
			[]string{"error: syntax error, unexpected '}', expecting ';'", "blixard = { cluster = \"test\" };"}, `-source/flake\.nix:3:\d+`},
		{"throw shows its message", errorsDir, errorsCommit, "throws", []string{"error: boom"}, ""},
		{"infinite recursion names the place", errorsDir, errorsCommit, "infiniteRecursion",
			[]string{"error: infinite recursion encountered"}, `-source/flake\.nix:\d+:\d+`},
		{"stack overflow is reported", errorsDir, errorsCommit, "stackOverflow", []string{"stack overflow"}, ""},
		{"function in the output cannot become JSON", errorsDir, errorsCommit, "notJSON",
			[]string{"cannot convert a function to JSON"}, `-source/flake\.nix:\d+:\d+`},
		{"missing attribute is named", validDir, validCommit, "nope", []string{"does not provide attribute", "'nope'"}, ""},
	}
	for _, tt := range tests {
		for refName, ref := range map[string]string{"git": gitsync.GitFlakeURL(tt.dir, "", tt.commit), "path": gitsync.PathFlakeURL(tt.dir)} {
			t.Run(tt.name+" via "+refName, func(t *testing.T) {
				t.Parallel()
				_, err := ev.Eval(context.Background(), ref, tt.attr, "")
				ee := evalErr(t, err, EvalFailed)
				for _, w := range tt.want {
					if !strings.Contains(ee.Message, w) {
						t.Errorf("message does not contain %q:\n%s", w, ee.Message)
					}
				}
				if tt.wantLineRegexp != "" && !regexp.MustCompile(tt.wantLineRegexp).MatchString(ee.Message) {
					t.Errorf("message has no file:line matching %s:\n%s", tt.wantLineRegexp, ee.Message)
				}
				for _, noise := range []string{"--show-trace", "\x1b[", "warning:"} {
					if strings.Contains(ee.Message, noise) {
						t.Errorf("message contains noise %q:\n%s", noise, ee.Message)
					}
				}
				if ee.FlakeRef != ref || ee.Attr != tt.attr || !strings.Contains(err.Error(), ref+"#"+tt.attr) {
					t.Errorf("error does not name %s#%s: %v", ref, tt.attr, err)
				}
			})
		}
	}
}

func TestNixEvalSchemaViolations(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "invalid")
	ev := newEvaluator(t, Options{})
	tests := []struct {
		attr string
		want string // one whole line of the problem list
	}{
		{"unknownField", `vms.web.placment: unknown field "placment"; did you mean "placement"?`},
		{"wrongType", `vms.web.vcpu: expected an integer, got string "2"`},
		{"badName", `vms.Web: invalid name "Web": names must match ^[a-z][a-z0-9-]{0,62}$`},
		{"zeroMemory", `vms.web.memMiB: must be > 0, got 0`},
		{"duplicateReplica", `vms.web-0: instance name "web-0" collides with replica 0 of vms.web (replicas = 2); rename one of them`},
		{"runnerOutPath", `vms.web.runner: must be a derivation, got string "/nix/store/`},
		{"runnerPlainSet", `vms.web.runner: must be a derivation, got an attribute set without drvPath (attributes: name)`},
		{"runnerMissing", `vms.web.runner: missing required field (a derivation)`},
		{"vmNotAttrs", `vms.web: expected an attribute set, got integer 3`},
		{"vmIsDerivation", `vms.web: expected an attribute set, got string "/nix/store/`},
		{"notAttrs", `expected an attribute set, got list of 1 elements`},
		{"unknownAntiAffinity", `vms.web.placement.antiAffinity[0]: "db" is not a VM declared in vms`},
	}
	for _, tt := range tests {
		t.Run(tt.attr, func(t *testing.T) {
			t.Parallel()
			_, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), tt.attr, commit)
			ee := evalErr(t, err, InvalidSpec)
			var se *spec.Error
			if !errors.As(err, &se) {
				t.Fatalf("InvalidSpec error does not wrap a *spec.Error: %v", err)
			}
			found := false
			for _, line := range strings.Split(ee.Message, "\n") {
				found = found || strings.HasPrefix(line, tt.want)
			}
			if !found {
				t.Fatalf("no problem line starts with\n  %s\ngot:\n%s", tt.want, ee.Message)
			}
		})
	}
}

func TestNixEvalCache(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "valid")
	errorsDir, errorsCommit := fixtureRepo(t, "errors")
	nix, pidLog := wrapNix(t, realNix)
	ev := newEvaluator(t, Options{Nix: nix})
	ctx := context.Background()
	ref := gitsync.GitFlakeURL(dir, "", commit)
	runs := func() int { return len(readPIDs(t, pidLog)) }

	first, err := ev.Eval(ctx, ref, "blixard", commit)
	if err != nil {
		t.Fatal(err)
	}
	second, err := ev.Eval(ctx, ref, "blixard", commit)
	if err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 1 {
		t.Fatalf("nix ran %d times for the same commit, want 1", n)
	}
	if first.Cached || !second.Cached || first.Hash != second.Hash || first.Duration != second.Duration {
		t.Fatalf("first (cached=%t hash=%s) and second (cached=%t hash=%s) differ", first.Cached, first.Hash, second.Cached, second.Hash)
	}
	if !reflect.DeepEqual(first.Spec, second.Spec) || first.Spec == second.Spec {
		t.Fatal("cached Spec is not an equal, separate copy")
	}
	delete(first.Spec.VMs, "web") // a caller changing its copy changes no other
	third, err := ev.Eval(ctx, ref, "blixard", commit)
	if err != nil || len(third.Spec.VMs) != 2 {
		t.Fatalf("after a caller changed its copy, the cache gives %v, %v", third, err)
	}

	if _, err := ev.Eval(ctx, ref, "blixard", ""); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 2 {
		t.Fatalf("nix ran %d times, want 2: an empty cacheKey must always evaluate", n)
	}

	// Concurrent calls for a new key share one run.
	var wg sync.WaitGroup
	results := make([]*Result, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = ev.Eval(ctx, ref, "blixard", "concurrent")
		}()
	}
	wg.Wait()
	fresh := 0
	for i := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !results[i].Cached {
			fresh++
		}
	}
	if n := runs(); n != 3 || fresh != 1 {
		t.Fatalf("4 concurrent Evals of one key: nix ran %d times in all (want 3) and %d results were fresh (want 1)", n, fresh)
	}

	// An evaluation failure of a commit is remembered too.
	eref := gitsync.GitFlakeURL(errorsDir, "", errorsCommit)
	for range 2 {
		_, err := ev.Eval(ctx, eref, "throws", errorsCommit)
		evalErr(t, err, EvalFailed)
	}
	if n := runs(); n != 4 {
		t.Fatalf("nix ran %d times, want 4: a failed commit must not be evaluated twice", n)
	}
	// Another attribute of the same commit is another evaluation.
	if _, err := ev.Eval(ctx, eref, "infiniteRecursion", errorsCommit); err == nil {
		t.Fatal("infiniteRecursion evaluated")
	}
	if n := runs(); n != 5 {
		t.Fatalf("nix ran %d times, want 5", n)
	}
}

func TestNixEvalCacheForgetsOldest(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "valid")
	nix, pidLog := wrapNix(t, realNix)
	ev := newEvaluator(t, Options{Nix: nix, CacheSize: 2})
	ref := gitsync.GitFlakeURL(dir, "", commit)
	for _, key := range []string{"a", "b", "c", "c", "b", "a"} {
		if _, err := ev.Eval(context.Background(), ref, "blixard", key); err != nil {
			t.Fatal(err)
		}
	}
	// a, b, c run; c and b are remembered; a was forgotten when c came.
	if n := len(readPIDs(t, pidLog)); n != 4 {
		t.Fatalf("nix ran %d times, want 4", n)
	}
}

func TestNixEvalTimeoutKillsProcessGroup(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "errors")
	// The wrapper leaves a child of its own behind in nix's process group:
	// the kill must reach it too.
	nix, pidLog := wrapNix(t, realNix, "sleep 600 &")
	ev := newEvaluator(t, Options{Nix: nix, Timeout: 2 * time.Second})
	ref := gitsync.GitFlakeURL(dir, "", commit)

	_, err := ev.Eval(context.Background(), ref, "hang", commit)
	ee := evalErr(t, err, Timeout)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(ee.Message, "did not finish within 2s") {
		t.Fatalf("timeout error %v does not say what happened", err)
	}
	if strings.Contains(ee.Message, "cgroup") {
		t.Errorf("the message shows the host's cgroups to whoever reads the status: %s", ee.Message)
	}
	pids := readPIDs(t, pidLog)
	if len(pids) != 1 {
		t.Fatalf("nix ran %d times, want 1", len(pids))
	}
	waitGroupGone(t, pids[0])

	// A timeout is not remembered: the same commit is evaluated again.
	_, err = ev.Eval(context.Background(), ref, "hang", commit)
	evalErr(t, err, Timeout)
	pids = readPIDs(t, pidLog)
	if len(pids) != 2 {
		t.Fatalf("nix ran %d times, want 2: a timeout must not be cached", len(pids))
	}
	waitGroupGone(t, pids[1])
}

func TestNixEvalCancelKillsProcessGroup(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "errors")
	nix, pidLog := wrapNix(t, realNix, "sleep 600 &")
	ev := newEvaluator(t, Options{Nix: nix})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Cancel once nix runs (poll for its pid; no sleeping on a guess).
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if data, _ := os.ReadFile(pidLog); len(data) > 0 {
				break
			}
		}
		cancel()
	}()
	_, err := ev.Eval(ctx, gitsync.GitFlakeURL(dir, "", commit), "hang", commit)
	evalErr(t, err, Canceled)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v does not wrap context.Canceled", err)
	}
	pids := readPIDs(t, pidLog)
	if len(pids) != 1 {
		t.Fatalf("nix ran %d times, want 1", len(pids))
	}
	waitGroupGone(t, pids[0])
}

// waitGroupGone polls until no live process is left in process group pgid.
func waitGroupGone(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		live := liveInGroup(t, pgid)
		if len(live) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v of nix's process group %d are still alive", live, pgid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNixEvalCanceledBeforeStart(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	nix, pidLog := wrapNix(t, realNix)
	ev := newEvaluator(t, Options{Nix: nix})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := ev.Eval(ctx, gitsync.PathFlakeURL(t.TempDir()), "blixard", "k")
	evalErr(t, err, Canceled)
	if n := len(readPIDs(t, pidLog)); n != 0 {
		t.Fatalf("nix ran %d times for a canceled context", n)
	}
}

func TestNixEvalOutputTooLarge(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "valid")
	ev := newEvaluator(t, Options{MaxOutput: 100})
	_, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), "blixard", commit)
	ee := evalErr(t, err, OutputTooLarge)
	if !strings.Contains(ee.Message, "more than 100 bytes") {
		t.Fatalf("message %q does not state the limit", ee.Message)
	}
}

func TestNixBareRepoAtNonHeadCommit(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, first := fixtureRepo(t, "valid")
	replaceInFile(t, dir, "flake.nix", `cluster = "test";`, `cluster = "second";`)
	second := commitAll(t, dir, "second on main")
	runGit(t, dir, "checkout", "--quiet", "-b", "feature", first)
	replaceInFile(t, dir, "flake.nix", `cluster = "test";`, `cluster = "feature";`)
	feature := commitAll(t, dir, "on feature")
	runGit(t, dir, "checkout", "--quiet", "main")
	bare := filepath.Join(t.TempDir(), "mirror.git")
	runGit(t, dir, "clone", "--quiet", "--bare", dir, bare)
	if got := runGit(t, bare, "rev-parse", "--is-bare-repository"); got != "true" {
		t.Fatalf("%s is not bare", bare)
	}

	ev := newEvaluator(t, Options{})
	tests := []struct {
		name, ref, commit, want string
	}{
		{"HEAD commit without a ref", "", second, "second"},
		{"older commit of main", "refs/heads/main", first, "test"},
		{"commit of another branch by full ref", "refs/heads/feature", feature, "feature"},
		{"commit of another branch by short name", "feature", feature, "feature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := gitsync.GitFlakeURL(bare, tt.ref, tt.commit)
			res, err := ev.Eval(context.Background(), ref, "blixard", tt.commit)
			if err != nil {
				t.Fatalf("Eval(%s): %v", ref, err)
			}
			if res.Spec.Name != tt.want {
				t.Fatalf("Eval(%s) gave cluster %q, want %q", ref, res.Spec.Name, tt.want)
			}
		})
	}
}

func TestEvalNixNotFound(t *testing.T) {
	t.Parallel()
	ev := New(Options{Nix: filepath.Join(t.TempDir(), "no-such-nix")})
	for range 2 { // not cached: the binary may appear
		_, err := ev.Eval(context.Background(), "path:/nonexistent", "blixard", "k")
		ee := evalErr(t, err, NixNotFound)
		if !strings.Contains(ee.Message, "install Nix") {
			t.Fatalf("message %q does not say what to do", ee.Message)
		}
	}
}

func TestEvalAsUnknownUser(t *testing.T) {
	t.Parallel()
	ev := New(Options{User: "no-such-user-nixeval"})
	for range 2 { // not cached: the user may be created
		_, err := ev.Eval(context.Background(), "path:/nonexistent", "blixard", "k")
		ee := evalErr(t, err, NixNotFound)
		if !strings.HasPrefix(ee.Message, "cannot evaluate as user no-such-user-nixeval (") || !ee.Temporary() {
			t.Fatalf("message %q does not name the user, or the error is not Temporary", ee.Message)
		}
	}
}

// A caller waiting on another caller's evaluation of the same key does not
// inherit that caller's cancellation: it evaluates itself.
func TestNixEvalWaiterOutlivesCanceledRunner(t *testing.T) {
	realNix := requireNix(t)
	t.Parallel()
	dir, commit := fixtureRepo(t, "errors")
	nix, pidLog := wrapNix(t, realNix)
	ev := newEvaluator(t, Options{Nix: nix, Timeout: 2 * time.Second})
	ref := gitsync.GitFlakeURL(dir, "", commit)
	waitPIDs := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); len(readPIDs(t, pidLog)) < n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("nix did not start %d times", n)
			}
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runnerErr := make(chan error, 1)
	go func() {
		_, err := ev.Eval(ctx, ref, "hang", commit)
		runnerErr <- err
	}()
	waitPIDs(1) // the first caller's nix runs: its cache entry is in flight
	waiterErr := make(chan error, 1)
	go func() {
		_, err := ev.Eval(context.Background(), ref, "hang", commit)
		waiterErr <- err
	}()
	cancel()
	evalErr(t, <-runnerErr, Canceled)
	evalErr(t, <-waiterErr, Timeout) // it ran nix itself, until its own timeout
	if n := len(readPIDs(t, pidLog)); n != 2 {
		t.Fatalf("nix ran %d times, want 2", n)
	}
}

// TestNixCommitNotFetchedYetIsTemporaryAndNotCached: asking about a commit
// the mirror does not have yet (`blixard plan --commit` before the push)
// must not become a verdict: the error is temporary, nothing is cached, and
// once the commit arrives the same Eval succeeds.
func TestNixCommitNotFetchedYetIsTemporaryAndNotCached(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, _ := fixtureRepo(t, "valid")
	bare := filepath.Join(t.TempDir(), "mirror.git")
	runGit(t, dir, "clone", "--quiet", "--bare", dir, bare)
	replaceInFile(t, dir, "flake.nix", `cluster = "test";`, `cluster = "pushed-later";`)
	later := commitAll(t, dir, "not in the mirror yet")

	ev := newEvaluator(t, Options{})
	ref := gitsync.GitFlakeURL(bare, "refs/heads/main", later)
	_, err := ev.Eval(context.Background(), ref, "blixard", later)
	e := evalErr(t, err, EvalFailed)
	if !e.Temporary() || !strings.Contains(e.Message, "Cannot find Git revision") {
		t.Fatalf("a commit not fetched yet: Temporary() = %v, message %q; want a temporary fetch failure", e.Temporary(), e.Message)
	}

	runGit(t, bare, "fetch", "--quiet", dir, "main:main")
	res, err := ev.Eval(context.Background(), ref, "blixard", later)
	if err != nil {
		t.Fatalf("after the commit arrived: %v (a cached failure?)", err)
	}
	if res.Spec.Name != "pushed-later" {
		t.Fatalf("cluster %q, want pushed-later", res.Spec.Name)
	}
}

// TestNixUnreachableInputIsTemporary: a flake input that cannot be fetched
// (network down) is not a verdict on the commit.
func TestNixUnreachableInputIsTemporary(t *testing.T) {
	requireNix(t)
	t.Parallel()
	dir, _ := fixtureRepo(t, "valid")
	// A closed loopback port stands for a network that is down.
	replaceInFile(t, dir, "flake.nix", "outputs = ", `inputs.dep.url = "git+http://127.0.0.1:1/dep.git"; outputs = `)
	commit := commitAll(t, dir, "unreachable input")
	ev := newEvaluator(t, Options{})
	_, err := ev.Eval(context.Background(), gitsync.GitFlakeURL(dir, "", commit), "blixard", commit)
	e := evalErr(t, err, EvalFailed)
	if !e.Temporary() {
		t.Fatalf("an unreachable input: Temporary() = false, message %q", e.Message)
	}
}

func TestFetchFailureWords(t *testing.T) {
	for msg, want := range map[string]bool{
		"error: Cannot find Git revision 'abc' in ref 'main' of repository '/m'!":           true,
		"fatal: unable to access 'http://h/x.git/': Failed to connect to h port 1":          true,
		"error: unable to download 'https://h/y.tar.gz': Couldn't resolve host name (6)":    true,
		"error: syntax error, unexpected '}'\n       at /nix/store/…-source/flake.nix:3:5:": false,
		"error: attribute 'vms' missing":                                                    false,
	} {
		if got := fetchFailure(msg); got != want {
			t.Errorf("fetchFailure(%q) = %v, want %v", msg, got, want)
		}
	}
}
