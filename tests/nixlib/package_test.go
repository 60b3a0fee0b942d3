package nixlib

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// packageExpr is nix/package.nix called with nixpkgs' lib and a
// buildGoModule that returns its arguments; args are more arguments.
func packageExpr(args string) string {
	return fmt.Sprintf(`import %s ({ lib = import %s; buildGoModule = a: a;
		ceph = { dev = fx.drv "ceph-dev"; lib = fx.drv "ceph-lib"; out = fx.drv "ceph"; }; } // %s)`,
		nixString(filepath.Join(repoRoot, "nix", "package.nix")), nixString(filepath.Join(nixpkgsLib, "lib")), args)
}

// TestNixVendorHashMatchesGoMod recomputes nix/package.nix's vendorHash the
// way buildGoModule does and fails with the new value when it is stale.
//
// buildGoModule (nixpkgs' pkgs/build-support/go/module.nix) builds a
// fixed-output derivation, goModules, that runs `go mod vendor` in the
// package's src and copies the resulting vendor/ (modules.txt included) to
// $out, with outputHashMode = "recursive": vendorHash is the NAR hash of
// that directory, which `nix hash path` prints. This test takes the same
// src (package.nix's own filter, evaluated with the pinned nixpkgs lib;
// only the files `go mod vendor` reads: *.go, go.mod and go.sum), runs
// `go mod vendor` on a copy and hashes vendor/.
//
// Assumptions: the Go that nixpkgs builds with (buildGo126Module) writes the
// same vendor/ as this machine's Go 1.26 (vendor/modules.txt's format is
// decided by the go.mod `go` line, which both read); and the working tree
// is what gets built (a flake build sees only files tracked by git, so an
// untracked package importing a new module changes the hash here first).
func TestNixVendorHashMatchesGoMod(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	var pkg struct {
		Src        string `json:"src"`
		VendorHash string `json:"vendorHash"`
	}
	got := evalJSON(t, `let
		lib = import `+nixString(filepath.Join(nixpkgsLib, "lib"))+`;
		pkg = `+packageExpr("{ }")+`;
		goFiles = lib.cleanSourceWith {
			src = pkg.src;
			filter = path: type: type == "directory" || lib.hasSuffix ".go" path
				|| builtins.elem (baseNameOf path) [ "go.mod" "go.sum" ];
		};
	in { src = "${goFiles}"; inherit (pkg) vendorHash; }`)
	if err := json.Unmarshal(got, &pkg); err != nil {
		t.Fatal(err)
	}

	// The store copy is read-only; go mod vendor writes next to go.mod.
	dir := t.TempDir()
	if err := copyFiles(pkg.Src, dir, "."); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vendor := exec.CommandContext(ctx, "go", "mod", "vendor")
	vendor.Dir = dir
	// As in goModules: modules on, the local toolchain; no workspace and no
	// flags from the environment.
	vendor.Env = append(os.Environ(), "GO111MODULE=on", "GOTOOLCHAIN=local", "GOWORK=off", "GOFLAGS=")
	if out, err := vendor.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor in a copy of the package's source: %v\n%s", err, out)
	}
	stdout, stderr, err := runNix(t, "nix", "hash", "path", filepath.Join(dir, "vendor"))
	if err != nil {
		t.Fatalf("nix hash path: %v\n%s", err, stderr)
	}
	want := strings.TrimSpace(stdout)
	if pkg.VendorHash != want {
		t.Errorf("nix/package.nix has vendorHash = %q, but the vendor directory buildGoModule makes of go.mod, go.sum and the "+
			"imported packages has NAR hash %s: set vendorHash = \"%s\"; in nix/package.nix", pkg.VendorHash, want, want)
	}
}

// TestNixPackageCeph evaluates nix/package.nix's arguments to buildGoModule
// with and without withCeph.
func TestNixPackageCeph(t *testing.T) {
	requireThirdParty(t)
	t.Parallel()
	type build struct {
		Pname       string            `json:"pname"`
		Tags        []string          `json:"tags"`
		Env         map[string]string `json:"env"`
		BuildInputs []string          `json:"buildInputs"`
		VendorHash  string            `json:"vendorHash"`
		SubPackages []string          `json:"subPackages"`
	}
	var got struct{ Plain, Ceph build }
	out := evalJSON(t, `let
		view = p: { inherit (p) pname tags env vendorHash subPackages; buildInputs = map (i: i.name) p.buildInputs; };
	in { plain = view (`+packageExpr("{ }")+`); ceph = view (`+packageExpr("{ withCeph = true; }")+`); }`)
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	want := struct{ Plain, Ceph build }{
		Plain: build{Pname: "blixard", Tags: []string{}, Env: map[string]string{"CGO_ENABLED": "0"}, BuildInputs: []string{},
			VendorHash: got.Plain.VendorHash, SubPackages: []string{"cmd/blixard"}},
		Ceph: build{Pname: "blixard-ceph", Tags: []string{"ceph", "pacific"}, Env: map[string]string{"CGO_ENABLED": "1"},
			BuildInputs: []string{"ceph-dev", "ceph-lib"}, VendorHash: got.Plain.VendorHash, SubPackages: []string{"cmd/blixard"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("buildGoModule arguments\ngot:  %+v\nwant: %+v", got, want)
	}
	if strings.Contains(got.Plain.VendorHash, "AAAAAAAAAAAAAAAAAAAA") {
		t.Errorf("vendorHash is lib.fakeHash: %s", got.Plain.VendorHash)
	}
}
