package nixlib

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestNixFilesParse checks that every .nix file of the repository parses with
// `nix-instantiate --parse`, except other packages' testdata (this package's
// own stand-ins are checked).
func TestNixFilesParse(t *testing.T) {
	requireNix(t)
	var files []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		// Other packages' test fixtures may be broken on purpose (nixeval
		// tests nix's syntax errors); this package's own are checked.
		if d.IsDir() && d.Name() == "testdata" && path != testdata {
			return filepath.SkipDir
		}
		if !d.IsDir() && filepath.Ext(path) == ".nix" {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The files this package exists for must be among them.
	for _, want := range []string{"flake.nix", "nix/lib.nix", "nix/package.nix", "nixos-modules/blixard.nix",
		"nixos-modules/render.nix", "nixos-modules/ports.nix", "examples/flake/flake.nix"} {
		if _, err := os.Stat(filepath.Join(repoRoot, want)); err != nil {
			t.Errorf("%s: %v", want, err)
		}
	}
	// One nix-instantiate for all files: it stops at the first that does
	// not parse and names it (file, line and column) in its error.
	if _, stderr, err := runNix(t, "nix-instantiate", append([]string{"--parse"}, files...)...); err != nil {
		t.Errorf("a .nix file does not parse: %v\n%s", err, stderr)
	}
	if len(files) < 10 {
		t.Errorf("found only %d .nix files under %s", len(files), repoRoot)
	}
}
