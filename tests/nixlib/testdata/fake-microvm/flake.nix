# Stand-in for microvm.nix in offline tests, written for Blixard and modelled
# on microvm.nix's option names. It declares only what Blixard's lib, its
# NixOS module and examples/flake read or set, with the loosest types that
# still catch a misspelt or mistyped value. It builds and boots nothing.
#
# nixosModules.microvm (guest):
#   vcpu, mem        read by mkCluster
#   volumes          entries written by lib.volumeModule and read by mkCluster
#                    (image, autoCreate); only the fields volumeModule writes
#   declaredRunner   read by mkCluster: a /bin/sh derivation whose output path
#                    changes when vcpu, mem or volumes change, as a real
#                    runner's would
#   hypervisor, interfaces
#                    set by examples/flake's VMs, not read by Blixard
# nixosModules.host:
#   host.enable      read by Blixard's module (systemd backend); on by
#                    default once the host module is imported
#   stateDir         where VM state lives; Blixard's lib assumes the default
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
              settings = builtins.toJSON { inherit (vm) vcpu mem volumes; };
              args = [ "-c" "/bin/mkdir -p $out/bin && echo '#!/bin/sh' > $out/bin/microvm-run" ];
            };
          };

          hypervisor = mkOption { type = types.str; default = "qemu"; };
          interfaces = mkOption { type = types.listOf (types.attrsOf types.str); default = [ ]; };
        };
      };

    nixosModules.host = { lib, ... }: {
      options.microvm = {
        host.enable = lib.mkOption { type = lib.types.bool; default = true; };
        stateDir = lib.mkOption { type = lib.types.str; default = "/var/lib/microvms"; };
      };
    };
  };
}
