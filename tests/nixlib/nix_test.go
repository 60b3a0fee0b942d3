package nixlib

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// nixpkgsEnv names a nixpkgs checkout (a directory holding nixpkgs' lib/)
// to evaluate against instead of the pinned nixpkgs lib.
const nixpkgsEnv = "BLIXARD_NIXPKGS"

// thirdPartyCacheEnv names the directory scripts/setup-nixlib.sh unpacks the
// pinned third-party sources into (default defaultThirdPartyCache); the
// script reads the same variable.
const (
	thirdPartyCacheEnv     = "BLIXARD_THIRD_PARTY_CACHE"
	defaultThirdPartyCache = "/var/cache/blixard/third-party"
	setupNixlibScript      = "scripts/setup-nixlib.sh"
)

// Paths set once by TestMain.
var (
	blixardBin string // the daemon, built from ../../cmd/blixard
	binDir     string // where TestMain builds binaries
	repoRoot   string // absolute path of the repository
	testdata   string // absolute path of ./testdata

	// The pinned third-party sources (see thirdParty), or "" with
	// thirdPartyErr saying why and what to run.
	nixpkgsLib    string // a directory holding nixpkgs' lib/: the cache, or $BLIXARD_NIXPKGS
	microvmSrc    string // the microvm.nix checkout in the cache
	nixpkgsStub   string // stand-in nixpkgs flake: testdata/nixos-stub with nixpkgsLib's lib/
	microvmStub   string // stand-in microvm.nix flake: testdata/fake-microvm with microvmSrc's host module
	thirdPartyErr error
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var err error
	if repoRoot, err = filepath.Abs("../.."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if testdata, err = filepath.Abs("testdata"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "blixard-nixlib-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	blixardBin = filepath.Join(dir, "blixard")
	build := exec.Command("go", "build", "-o", blixardBin, "../../cmd/blixard")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building blixard:", err)
		return 1
	}
	if err := setUpThirdParty(dir); err != nil {
		thirdPartyErr = err
		fmt.Fprintf(os.Stderr, "tests/nixlib: the tests of the NixOS module, the flakes and microvm.nix will FAIL: %v\n", err)
	}
	return m.Run()
}

// setUpThirdParty finds the pinned nixpkgs lib and microvm.nix that
// scripts/setup-nixlib.sh unpacked and assembles the stand-in flakes in dir.
func setUpThirdParty(dir string) error {
	pins, err := readPins()
	if err != nil {
		return err
	}
	cache := os.Getenv(thirdPartyCacheEnv)
	if cache == "" {
		cache = defaultThirdPartyCache
	}
	if src := os.Getenv(nixpkgsEnv); src != "" {
		if !filepath.IsAbs(src) {
			return fmt.Errorf("%s=%s: want an absolute path to a nixpkgs checkout", nixpkgsEnv, src)
		}
		if _, err := os.Stat(filepath.Join(src, "lib", "default.nix")); err != nil {
			return fmt.Errorf("%s=%s has no lib/default.nix: point it at a nixpkgs checkout: %w", nixpkgsEnv, src, err)
		}
		nixpkgsLib = src
	} else if nixpkgsLib, err = thirdParty(cache, pins["nixpkgs-lib"]); err != nil {
		return err
	}
	if microvmSrc, err = thirdParty(cache, pins["microvm.nix"]); err != nil {
		return err
	}
	nixpkgsStub = filepath.Join(dir, "nixpkgs")
	if err := copyFiles(filepath.Join(testdata, "nixos-stub"), nixpkgsStub, "."); err != nil {
		return fmt.Errorf("assembling the stand-in nixpkgs: %w", err)
	}
	if err := copyFiles(nixpkgsLib, nixpkgsStub, "lib"); err != nil {
		return fmt.Errorf("copying nixpkgs' lib from %s: %w", nixpkgsLib, err)
	}
	// microvm.nix's host module imports ../../pkgs/microvm-command.nix.
	microvmStub = filepath.Join(dir, "microvm")
	if err := copyFiles(filepath.Join(testdata, "fake-microvm"), microvmStub, "."); err != nil {
		return fmt.Errorf("assembling the stand-in microvm.nix: %w", err)
	}
	if err := copyFiles(microvmSrc, microvmStub, "nixos-modules", "pkgs"); err != nil {
		return fmt.Errorf("copying microvm.nix's modules from %s: %w", microvmSrc, err)
	}
	return nil
}

// thirdPartyPin is one pinned source, as scripts/setup-nixlib.sh lists it.
type thirdPartyPin struct {
	name, commit, nar string
}

// pinLine matches an entry of the script's pins array:
// "NAME|OWNER/REPO|COMMIT|ARCHIVE|ARCHIVE-SHA256|NAR-HASH".
var pinLine = regexp.MustCompile(`"([^"|]+)\|[^"|]+\|([0-9a-f]{40})\|[^"|]+\|[0-9a-f]{64}\|(sha256-[A-Za-z0-9+/]+=*)"`)

// readPins reads the pinned commits and NAR hashes from the setup script, so
// that the tests use exactly what it unpacks.
func readPins() (map[string]thirdPartyPin, error) {
	script := filepath.Join(repoRoot, setupNixlibScript)
	data, err := os.ReadFile(script)
	if err != nil {
		return nil, fmt.Errorf("reading the pins: %w", err)
	}
	pins := map[string]thirdPartyPin{}
	for _, m := range pinLine.FindAllStringSubmatch(string(data), -1) {
		pins[m[1]] = thirdPartyPin{name: m[1], commit: m[2], nar: m[3]}
	}
	for _, name := range []string{"nixpkgs-lib", "microvm.nix"} {
		if _, ok := pins[name]; !ok {
			return nil, fmt.Errorf("%s pins no %s (want a line \"%s|OWNER/REPO|COMMIT|ARCHIVE|SHA256|NAR-HASH\")", script, name, name)
		}
	}
	return pins, nil
}

// thirdParty returns the cache directory of a pinned source after checking
// that it holds exactly the pinned tree (its NAR hash).
func thirdParty(cache string, pin thirdPartyPin) (string, error) {
	dir := filepath.Join(cache, pin.name+"-"+pin.commit)
	fix := fmt.Sprintf("run %s (it unpacks the pinned archives from ../shared/third-party, or downloads them)", setupNixlibScript)
	if cache != defaultThirdPartyCache {
		fix = fmt.Sprintf("run %s=%s %s (it unpacks the pinned archives from ../shared/third-party, or downloads them)", thirdPartyCacheEnv, cache, setupNixlibScript)
	}
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("%s %s is not unpacked in %s: %s", pin.name, pin.commit, dir, fix)
	}
	cmd := exec.Command("nix", "hash", "path", dir)
	cmd.Env = nixEnv()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("nix hash path %s: %v: run scripts/setup.sh, then %s", dir, err, fix)
	}
	if got := strings.TrimSpace(string(out)); got != pin.nar {
		return "", fmt.Errorf("%s has NAR hash %s, want %s (commit %s): remove it and %s", dir, got, pin.nar, pin.commit, fix)
	}
	return dir, nil
}

// requireThirdParty fails the test (never skips) when the pinned nixpkgs lib
// or microvm.nix is missing, with the command that unpacks them.
func requireThirdParty(t *testing.T) {
	t.Helper()
	requireNix(t)
	if thirdPartyErr != nil {
		t.Fatal(thirdPartyErr)
	}
}

// cephBin is the daemon built with Ceph support, as packages.blixard-ceph
// builds it; built once, on first use.
var cephBin struct {
	once sync.Once
	path string
	err  error
}

// blixardCeph returns the daemon built with `-tags ceph,pacific` (what
// services.blixard runs with ceph.enable), failing the test when it cannot
// be built.
func blixardCeph(t *testing.T) string {
	t.Helper()
	cephBin.once.Do(func() {
		path := filepath.Join(binDir, "blixard-ceph")
		out, err := exec.Command("go", "build", "-tags", "ceph,pacific", "-o", path, "../../cmd/blixard").CombinedOutput()
		if err != nil {
			cephBin.err = fmt.Errorf("building blixard with -tags ceph,pacific: %v\n%s\nrun scripts/setup-ceph.sh (librados-dev, librbd-dev)", err, out)
			return
		}
		cephBin.path = path
	})
	if cephBin.err != nil {
		t.Fatal(cephBin.err)
	}
	return cephBin.path
}

// requireNix fails the test (never skips) when nix is missing.
func requireNix(t *testing.T) {
	t.Helper()
	for _, name := range []string{"nix", "nix-instantiate"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh", name)
		}
	}
}

// nixEnv is the environment nix runs with: flakes on, no sandbox (no user
// namespaces for builders here) and no substituters (nothing is reachable).
func nixEnv() []string {
	conf := "experimental-features = nix-command flakes\nsandbox = false\nsubstituters ="
	if old := os.Getenv("NIX_CONFIG"); old != "" {
		conf = old + "\n" + conf
	}
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_CONFIG=") {
			env = append(env, kv)
		}
	}
	return append(env, "NIX_CONFIG="+conf)
}

// runNix runs a nix program and returns its stdout and stderr.
func runNix(t *testing.T, program string, args ...string) (string, string, error) {
	t.Helper()
	requireNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Env = nixEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// fixtures is a Nix expression binding `fx` to testdata/fixtures.nix (given
// the stand-in nixpkgs and microvm.nix, if set up), to be followed by
// `in EXPR`.
func fixtures() string {
	nixpkgs, microvm := "null", "null"
	if nixpkgsStub != "" {
		nixpkgs, microvm = nixString(nixpkgsStub), nixString(microvmStub)
	}
	return fmt.Sprintf("let fx = import %s { nixpkgs = %s; microvm = %s; }; ", filepath.Join(testdata, "fixtures.nix"), nixpkgs, microvm)
}

// nixString quotes s as a Nix string literal.
func nixString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`).Replace(s) + `"`
}

// evalJSON evaluates expr (with `fx` in scope) and returns its JSON.
func evalJSON(t *testing.T, expr string) []byte {
	t.Helper()
	stdout, stderr, err := runNix(t, "nix", "eval", "--json", "--impure", "--expr", fixtures()+"in "+expr)
	if err != nil {
		t.Fatalf("nix eval failed: %v\n%s\nexpression: %s", err, stderr, expr)
	}
	return []byte(stdout)
}

// evalError evaluates expr (with `fx` in scope), which must fail, and
// returns nix's error output.
func evalError(t *testing.T, expr string) string {
	t.Helper()
	stdout, stderr, err := runNix(t, "nix", "eval", "--json", "--impure", "--expr", fixtures()+"in "+expr)
	if err == nil {
		t.Fatalf("nix eval succeeded, want an error\noutput: %s\nexpression: %s", stdout, expr)
	}
	return stderr
}

// flakeOverrides are the --override-input flags that replace the inputs of
// Blixard's flake and of examples/flake with local stand-ins; blixardDir is
// a copy of Blixard's flake. The caller has called requireThirdParty.
func flakeOverrides(blixardDir string) []string {
	nixpkgs := "path:" + nixpkgsStub
	return []string{
		"--no-write-lock-file",
		"--override-input", "nixpkgs", nixpkgs,
		"--override-input", "microvm", "path:" + microvmStub,
		"--override-input", "blixard", "path:" + blixardDir,
		"--override-input", "blixard/nixpkgs", nixpkgs,
	}
}

// copyTree copies the files and directories under src named by names into dst.
func copyTree(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	if err := copyFiles(src, dst, names...); err != nil {
		t.Fatal(err)
	}
}

// copyFiles copies the files and directories under src named by names into
// dst, following symbolic links to files.
func copyFiles(src, dst string, names ...string) error {
	for _, name := range names {
		root := filepath.Join(src, name)
		err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(src, path)
			if err != nil {
				return err
			}
			target := filepath.Join(dst, rel)
			if info.IsDir() {
				return os.MkdirAll(target, 0o755)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, 0o644)
		})
		if err != nil {
			return fmt.Errorf("copying %s: %w", root, err)
		}
	}
	return nil
}

// blixardFlake copies Blixard's flake (flake.nix and the Nix files it
// reads) into a temporary directory and returns it.
func blixardFlake(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	copyTree(t, repoRoot, dir, "flake.nix", "nix", "nixos-modules", "go.mod")
	return dir
}

// jsonEqual reports whether two JSON documents hold the same value.
func jsonEqual(t *testing.T, got, want []byte) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("decoding %s: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("decoding want %s: %v", want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	return bytes.Equal(gb, wb)
}

// indent pretty-prints JSON for failure messages.
func indent(b []byte) string {
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return string(b)
	}
	return out.String()
}
