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
      # Go is older. args: package.nix's own (withCeph).
      package = pkgs: args: pkgs.callPackage ./nix/package.nix ({
        inherit version;
        buildGoModule = pkgs.buildGo126Module or pkgs.buildGoModule;
      } // args);
    in
    {
      # Builtins only and no inputs: usable offline, and by flakes that do not
      # follow our nixpkgs. blixard.lib.mkCluster, blixard.lib.volumeModule, …
      lib = import ./nix/lib.nix;

      packages = forAllSystems (pkgs: rec {
        # Pure Go, no Ceph support.
        blixard = package pkgs { };
        # With Ceph RBD volumes (cgo, librados and librbd from nixpkgs' ceph).
        blixard-ceph = package pkgs { withCeph = true; };
        default = blixard;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.blixard}/bin/blixard";
        };
      });

      overlays.default = final: prev: {
        blixard = package final { };
        blixard-ceph = package final { withCeph = true; };
      };

      # services.blixard, with the package defaulting to this flake's: the
      # Ceph build when services.blixard.ceph.enable is set.
      nixosModules.default = { config, lib, pkgs, ... }: {
        imports = [ ./nixos-modules/blixard.nix ];
        services.blixard.package = lib.mkDefault
          self.packages.${pkgs.stdenv.hostPlatform.system}.${if config.services.blixard.ceph.enable then "blixard-ceph" else "blixard"};
      };
      nixosModules.blixard = self.nixosModules.default;
    };
}
