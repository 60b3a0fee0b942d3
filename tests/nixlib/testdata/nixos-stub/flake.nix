# A stand-in nixpkgs flake for offline tests: nixpkgs' lib with the stub
# NixOS of ./nixos.nix. nixpkgs' lib is not part of this repository: the
# tests (TestMain in tests/nixlib) copy this directory and the lib/ directory
# of the pinned nixpkgs lib (unpacked by scripts/setup-nixlib.sh), or of the
# nixpkgs checkout named by BLIXARD_NIXPKGS, into a temporary directory and
# use that as the `nixpkgs` input.
{
  outputs = { self }:
    let
      nixpkgsLib = import ./lib;
      nixos = import ./nixos.nix { lib = nixpkgsLib; };
    in
    {
      lib = nixpkgsLib.extend (final: prev: { inherit (nixos) nixosSystem; });
      legacyPackages.x86_64-linux = nixos.pkgs;
    };
}
