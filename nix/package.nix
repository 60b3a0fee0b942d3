# Blixard's package: the `blixard` binary (daemon and CLI), built with
# buildGoModule. Called from ../flake.nix (packages, overlays.default).
#
# Ceph: built WITHOUT Ceph support for now, as a pure-Go static binary
# (CGO_ENABLED=0): go-ceph is not a dependency yet. When it is, add
# `ceph` (librados, librbd) to buildInputs, set CGO_ENABLED = 1 and
# tags = [ "pacific" ] (go-ceph needs the tag naming the Ceph release whose
# headers it compiles against).
#
# vendorHash: the hash of the Go module dependencies (go.mod/go.sum). It can
# only be computed with network access, so it is lib.fakeHash here. To pin it:
#   nix build .#blixard
# fails with "hash mismatch … got: sha256-…"; paste that value below. Update it
# the same way whenever go.mod or go.sum changes.
{ lib, buildGoModule, version ? "0.1.0-dev" }:

buildGoModule {
  pname = "blixard";
  inherit version;

  # The repository without what cannot change the binary (Nix files, docs,
  # examples), so editing those does not rebuild it.
  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    filter = path: type:
      let
        rel = lib.removePrefix (toString ../. + "/") (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      !(builtins.elem top [ "examples" "docs" "nix" "nixos-modules" "flake.nix" "flake.lock" ]);
  };

  vendorHash = lib.fakeHash;

  subPackages = [ "cmd/blixard" ];
  env.CGO_ENABLED = "0";
  ldflags = [ "-s" "-w" ];

  # The tests run the real nix, git and Raft on loopback, which the build
  # sandbox does not allow; they run in CI (scripts/test.sh) instead.
  doCheck = false;

  meta = {
    description = "GitOps reconciler for microVMs on a cluster of NixOS hosts";
    mainProgram = "blixard";
    platforms = lib.platforms.linux;
  };
}
