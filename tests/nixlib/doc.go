// Package nixlib tests the Nix side of Blixard with the real `nix`: that
// every .nix file of the repository parses; that nix/lib.nix's mkCluster
// yields exactly schema v1 (decoded strictly into spec.Cluster) and throws
// clear messages on bad input; that the NixOS module's pure rendering
// (nixos-modules/render.nix) produces the daemon's config file and that the
// real daemon accepts it (`blixard serve --check-config`); and that the
// flake's lib needs none of its inputs.
//
// The NixOS module, Blixard's flake outputs and examples/flake need nixpkgs'
// module system, which is not part of this repository and cannot be fetched
// here. Those tests run when BLIXARD_NIXPKGS names a nixpkgs checkout (any
// directory holding nixpkgs' lib/, as an absolute path):
//
//	BLIXARD_NIXPKGS=/path/to/nixpkgs go test ./tests/nixlib
//
// TestMain then copies that lib/ next to the project's stub NixOS
// (testdata/nixos-stub: stub NixOS options and pkgs) to stand in for
// nixpkgs, and testdata/fake-microvm stands in for microvm.nix. Without
// BLIXARD_NIXPKGS those tests are skipped with a message saying so.
//
// It holds tests only. It must not fetch anything: every flake it evaluates
// has its inputs overridden with local path: flakes.
package nixlib
