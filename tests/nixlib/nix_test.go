package nixlib

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nixpkgsEnv names the nixpkgs checkout (a directory holding nixpkgs' lib/)
// that the tests of the NixOS module and of the flakes evaluate against.
// nixpkgs' lib is not part of this repository and cannot be fetched here.
const nixpkgsEnv = "BLIXARD_NIXPKGS"

// skipNoNixpkgs is the message of the tests skipped without nixpkgsEnv.
const skipNoNixpkgs = "needs nixpkgs' lib (unavailable offline on CI machines): set " + nixpkgsEnv + "=/path/to/nixpkgs to run"

// Paths set once by TestMain.
var (
	blixardBin string // the daemon, built from ../../cmd/blixard
	repoRoot   string // absolute path of the repository
	testdata   string // absolute path of ./testdata
	// nixpkgsStub is the stand-in nixpkgs flake (testdata/nixos-stub with
	// lib/ copied from $BLIXARD_NIXPKGS), or "" when BLIXARD_NIXPKGS is unset.
	nixpkgsStub string
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
	blixardBin = filepath.Join(dir, "blixard")
	build := exec.Command("go", "build", "-o", blixardBin, "../../cmd/blixard")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building blixard:", err)
		return 1
	}
	if src := os.Getenv(nixpkgsEnv); src != "" {
		nixpkgsStub = filepath.Join(dir, "nixpkgs")
		if err := assembleNixpkgsStub(src, nixpkgsStub); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	} else {
		fmt.Fprintf(os.Stderr, "tests/nixlib: %s is unset: the NixOS module and flake tests are SKIPPED (%s)\n", nixpkgsEnv, skipNoNixpkgs)
	}
	return m.Run()
}

// assembleNixpkgsStub makes the stand-in nixpkgs flake in dst: the files of
// testdata/nixos-stub and a copy of src/lib (src is a nixpkgs checkout).
func assembleNixpkgsStub(src, dst string) error {
	if !filepath.IsAbs(src) {
		return fmt.Errorf("%s=%s: want an absolute path to a nixpkgs checkout", nixpkgsEnv, src)
	}
	if _, err := os.Stat(filepath.Join(src, "lib", "default.nix")); err != nil {
		return fmt.Errorf("%s=%s has no lib/default.nix: point it at a nixpkgs checkout: %w", nixpkgsEnv, src, err)
	}
	if err := copyFiles(filepath.Join(testdata, "nixos-stub"), dst, "."); err != nil {
		return fmt.Errorf("assembling the stand-in nixpkgs: %w", err)
	}
	if err := copyFiles(src, dst, "lib"); err != nil {
		return fmt.Errorf("copying nixpkgs' lib from %s=%s: %w", nixpkgsEnv, src, err)
	}
	return nil
}

// requireNixpkgs skips the test, saying so loudly, when BLIXARD_NIXPKGS is
// unset: nixpkgs' module system is not available offline.
func requireNixpkgs(t *testing.T) {
	t.Helper()
	if nixpkgsStub == "" {
		t.Skip(skipNoNixpkgs)
	}
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
// the stand-in nixpkgs, if any), to be followed by `in EXPR`.
func fixtures() string {
	nixpkgs := "null"
	if nixpkgsStub != "" {
		nixpkgs = nixString(nixpkgsStub)
	}
	return fmt.Sprintf("let fx = import %s { nixpkgs = %s; }; ", filepath.Join(testdata, "fixtures.nix"), nixpkgs)
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
// a copy of Blixard's flake. The caller has called requireNixpkgs.
func flakeOverrides(blixardDir string) []string {
	nixpkgs := "path:" + nixpkgsStub
	return []string{
		"--no-write-lock-file",
		"--override-input", "nixpkgs", nixpkgs,
		"--override-input", "microvm", "path:" + filepath.Join(testdata, "fake-microvm"),
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
