// Package nixlib tests the Nix side of Blixard with the real `nix`: that
// every .nix file of the repository parses; that nix/lib.nix's mkCluster
// yields exactly schema v1 (decoded strictly into spec.Cluster) and throws
// clear messages on bad input; that the NixOS module's pure rendering
// (nixos-modules/render.nix) produces the daemon's config file and that the
// real daemon accepts it (`blixard serve --check-config`); that the flake's
// lib needs none of its inputs; that nix/package.nix's vendorHash is the
// one buildGoModule computes from go.mod and go.sum (recomputed with
// `go mod vendor` and `nix hash path`) and that withCeph builds with cgo,
// the ceph and pacific tags and nixpkgs' ceph.
//
// Real third-party Nix code. The NixOS module, Blixard's flake outputs,
// examples/flake and microvm.nix's host module are evaluated with nixpkgs'
// real lib (lib.evalModules, types, lib.cleanSource…) and microvm.nix's real
// host module (nixos-modules/host), at the commits pinned in
// scripts/setup-nixlib.sh. That script unpacks them, checked, into
// $BLIXARD_THIRD_PARTY_CACHE (default /var/cache/blixard/third-party) from
// the archives in ../shared/third-party (or GitHub); TestMain checks their
// NAR hashes and the tests that need them FAIL, never skip, with the
// command to run when they are missing:
//
//	scripts/setup-nixlib.sh
//
// BLIXARD_NIXPKGS=/path/to/nixpkgs (an absolute path to any directory
// holding nixpkgs' lib/) replaces the pinned nixpkgs lib.
//
// What is stubbed, because only nixpkgs' lib/ is available (no package set,
// no nixos/ directory):
//   - NixOS: testdata/nixos-stub/nixos.nix declares only the NixOS options
//     Blixard's module, microvm.nix's host module and examples/flake set,
//     and models NixOS's systemd unit rendering (unitConfig, scripts as
//     unit-script derivations, PATH, X-RestartIfChanged) and assertions;
//     its file header lists what it does not model. TestMain copies it with
//     the real lib/ into a stand-in `nixpkgs` flake (lib, lib.nixosSystem,
//     legacyPackages).
//   - pkgs: every package is an empty /bin/sh derivation, except the
//     tools units run (coreutils, findutils, grep, sed, systemd, bash),
//     which link the build host's programs; buildGoModule builds nothing
//     and keeps its arguments; formats.json writes with builtins.toFile.
//   - microvm.nix's guest module (it needs all of NixOS):
//     testdata/fake-microvm/flake.nix fakes the options Blixard's lib and
//     examples/flake use. TestMain puts the real nixos-modules/ and pkgs/
//     next to it, so the stand-in `microvm` flake's nixosModules.host is
//     microvm.nix's own.
//
// testdata/microvm-host-units.nix evaluates microvm.nix's host module (plus
// any host modules, Blixard's included) and returns its systemd units as
// JSON-able sections and unit-file text, its tmpfiles lines and users; the
// systemd tests can render real unit files from it.
//
// It holds tests only. It must not fetch anything: every flake it evaluates
// has its inputs overridden with local path: flakes, and the third-party
// sources come from the cache.
package nixlib
