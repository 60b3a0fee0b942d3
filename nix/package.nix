# Blixard's package: the `blixard` binary (daemon and CLI), built with
# buildGoModule. Called from ../flake.nix (packages.blixard and
# packages.blixard-ceph, overlays.default).
#
# Ceph: by default built WITHOUT Ceph support, as a pure-Go static binary
# (CGO_ENABLED=0); it then refuses Ceph settings with a message saying so.
# withCeph = true builds the Ceph RBD volume support (packages.blixard-ceph,
# which services.blixard picks when ceph.enable is set): cgo on, the Go tags
# `ceph` (Blixard's Ceph code) and `pacific` (go-ceph compiles against the
# Ceph API of that release or newer), linked against librados and librbd
# from nixpkgs' ceph (headers from its dev output, libraries from its lib
# output).
#
# vendorHash: the NAR hash of the vendor directory buildGoModule makes with
# `go mod vendor` (its goModules derivation copies vendor/ to $out, hashed
# recursively). It depends on go.mod, go.sum and on which packages the Go
# sources import, not on build tags (go mod vendor ignores them), so both
# builds share it. tests/nixlib's TestNixVendorHashMatchesGoMod recomputes
# it offline (go mod vendor of this package's src, then `nix hash path`)
# and fails with the new value when it is stale: paste that value below.
{ lib
, buildGoModule
, ceph ? null
, version ? "0.1.0-dev"
, withCeph ? false
}:

assert withCeph -> ceph != null;

buildGoModule {
  pname = if withCeph then "blixard-ceph" else "blixard";
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

  vendorHash = "sha256-XYTT1xe40Ko4hOCYKxokp/T8ug9pcbFalp/CIT/lgOM=";

  subPackages = [ "cmd/blixard" ];
  env.CGO_ENABLED = if withCeph then "1" else "0";
  tags = lib.optionals withCeph [ "ceph" "pacific" ];
  buildInputs = lib.optionals withCeph [ (lib.getDev ceph) (lib.getLib ceph) ];
  ldflags = [ "-s" "-w" ];

  # The tests run the real nix, git and Raft on loopback, which the build
  # sandbox does not allow; they run in CI (scripts/test.sh) instead.
  doCheck = false;

  meta = {
    description = "GitOps reconciler for microVMs on a cluster of NixOS hosts"
      + lib.optionalString withCeph ", with Ceph RBD volumes";
    mainProgram = "blixard";
    platforms = lib.platforms.linux;
  };
}
