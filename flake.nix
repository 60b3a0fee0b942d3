# Blixard's flake: the package, the NixOS module and the Nix library a
# cluster flake uses. See examples/flake for a cluster flake that uses all
# three.
{
  description = "Blixard: GitOps reconciler for microVMs on a cluster of NixOS hosts";

  # Only nixpkgs: the module asserts microvm.nix's host module is enabled but
  # does not import it, so Blixard does not pin microvm.nix for its users.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0-${self.shortRev or "dirty"}";

      # go.mod asks for Go 1.26; use nixpkgs' Go 1.26 builder when the default
      # Go is older.
      package = pkgs: pkgs.callPackage ./nix/package.nix {
        inherit version;
        buildGoModule = pkgs.buildGo126Module or pkgs.buildGoModule;
      };
    in
    {
      # Builtins only and no inputs: usable offline, and by flakes that do not
      # follow our nixpkgs. blixard.lib.mkCluster, blixard.lib.volumeModule, …
      lib = import ./nix/lib.nix;

      packages = forAllSystems (pkgs: rec {
        blixard = package pkgs;
        default = blixard;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.blixard}/bin/blixard";
        };
      });

      overlays.default = final: prev: { blixard = package final; };

      # services.blixard, with the package defaulting to this flake's.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nixos-modules/blixard.nix ];
        services.blixard.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.blixard;
      };
      nixosModules.blixard = self.nixosModules.default;
    };
}
