# Stand-in for microvm.nix in offline tests. Its host module is microvm.nix's
# own: tests/nixlib's TestMain copies this file next to the nixos-modules/
# and pkgs/ directories of the pinned microvm.nix (unpacked by
# scripts/setup-nixlib.sh) and uses that directory as the `microvm` input.
# Its guest module is a fake, written for Blixard and modelled on
# microvm.nix's option names: the real one needs the whole of NixOS. The
# fake declares only what Blixard's lib and examples/flake read or set, with
# the loosest types that still catch a misspelt or mistyped value. It builds
# and boots nothing.
#
# nixosModules.microvm (guest):
#   vcpu, mem        read by mkCluster
#   volumes          entries written by lib.volumeModule and read by mkCluster
#                    (image, autoCreate); only the fields volumeModule writes
#   declaredRunner   read by mkCluster: a /bin/sh derivation whose output path
#                    changes when vcpu, mem, volumes, interfaces or the
#                    hostname change, as a real runner's would
#   interfaces       set by examples/flake's VMs and by mkCluster (each
#                    instance's tap NIC)
#   hypervisor       set by examples/flake's VMs, not read by Blixard
# nixosModules.host: microvm.nix's nixos-modules/host (host.enable, read by
#   Blixard's module for the systemd backend, is on by default once it is
#   imported; stateDir is where VM state lives, Blixard's lib assumes the
#   default /var/lib/microvms).
{
  outputs = { self }: {
    nixosModules.microvm = { config, lib, ... }:
      let
        inherit (lib) mkOption types;
        optionalStr = mkOption { type = types.nullOr types.str; default = null; };
        vm = config.microvm;
      in
      {
        options.microvm = {
          vcpu = mkOption { type = types.ints.positive; default = 1; };
          mem = mkOption { type = types.ints.positive; default = 512; };

          volumes = mkOption {
            type = types.listOf (types.submodule {
              options = {
                image = mkOption { type = types.str; };
                size = mkOption { type = types.ints.positive; };
                autoCreate = mkOption { type = types.bool; default = true; };
                mountPoint = optionalStr;
                fsType = mkOption { type = types.str; default = "ext4"; };
                label = optionalStr;
                serial = optionalStr;
                readOnly = mkOption { type = types.bool; default = false; };
              };
            });
            default = [ ];
          };

          declaredRunner = mkOption {
            type = types.package;
            default = builtins.derivation {
              name = "runner-${config.networking.hostName}";
              system = "x86_64-linux";
              builder = "/bin/sh";
              settings = builtins.toJSON { inherit (vm) vcpu mem volumes interfaces; };
              args = [ "-c" "/bin/mkdir -p $out/bin && echo '#!/bin/sh' > $out/bin/microvm-run" ];
            };
          };

          hypervisor = mkOption { type = types.str; default = "qemu"; };
          interfaces = mkOption { type = types.listOf (types.attrsOf types.str); default = [ ]; };
        };
      };

    nixosModules.host = ./nixos-modules/host;
  };
}
