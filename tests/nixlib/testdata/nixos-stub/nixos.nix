# A stand-in for NixOS, for offline tests: nixpkgs' real module system
# (`lib`, passed in: nixpkgs' lib is not part of this repository, see
# flake.nix) with stub declarations of only the NixOS options that Blixard's
# module and the example flake set, and a stub `pkgs`.
#
# What it checks: option names and types of services.blixard, the module's
# definitions merging with the stubs, assertions (evaluating
# config.system.build.toplevel throws "Failed assertions" like NixOS), and the
# config file and ExecStart the module produces.
# What it does not model: any real NixOS option's semantics, systemd itself,
# pkgs.formats.json's jq-based generator (here builtins.toFile), packages
# (every package is an empty /bin/sh derivation; buildGoModule builds nothing).
{ lib }:
let
  inherit (lib) mkOption types;

  fakeDrv = name: builtins.derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin" ];
  };

  pkgs = {
    inherit lib;
    callPackage = lib.callPackageWith pkgs;
    # Checks the arguments a real buildGoModule needs and returns a fake drv.
    buildGoModule = args:
      assert builtins.isString args.pname && builtins.isString args.version;
      assert args ? vendorHash && args ? src;
      fakeDrv "${args.pname}-${args.version}" // { passthru = args.passthru or { }; meta = args.meta or { }; };
    system = "x86_64-linux";
    stdenv.hostPlatform.system = "x86_64-linux";
    git = fakeDrv "git";
    ceph-client = fakeDrv "ceph-client";
    nix = fakeDrv "nix";
    formats.json = { }: {
      type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.int types.bool types.float ]));
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
  };

  any = mkOption { type = types.anything; default = { }; };
  list = elem: mkOption { type = types.listOf elem; default = [ ]; };

  stubs = { config, ... }: {
    options = {
      assertions = list (types.submodule {
        options.assertion = mkOption { type = types.bool; };
        options.message = mkOption { type = types.str; };
      });
      warnings = list types.str;
      environment.systemPackages = list types.package;
      boot.kernelModules = list types.str;
      boot.loader = any;
      fileSystems = any;
      networking.hostName = mkOption { type = types.str; default = "nixos"; };
      networking.firewall.allowedTCPPorts = list types.port;
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          freeformType = types.attrsOf types.anything;
          options.extraGroups = list types.str;
        });
        default = { };
      };
      users.groups = mkOption { type = types.attrsOf types.anything; default = { }; };
      nix.package = mkOption { type = types.package; default = pkgs.nix; };
      nix.settings = any;
      services.openssh = any;
      services.nginx = any;
      services.postgresql = any;
      system.stateVersion = mkOption { type = types.str; default = "25.11"; };
      system.build = mkOption { type = types.lazyAttrsOf types.unspecified; default = { }; };
      systemd.tmpfiles.rules = list types.str;
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            description = mkOption { type = types.str; default = ""; };
            wantedBy = list types.str;
            wants = list types.str;
            after = list types.str;
            path = list types.package;
            environment = mkOption { type = types.attrsOf types.str; default = { }; };
            serviceConfig = mkOption {
              type = types.attrsOf (types.oneOf [ types.str types.int types.bool (types.listOf types.str) ]);
              default = { };
            };
          };
        });
        default = { };
      };
    };

    config.system.build.toplevel =
      let
        failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      in
      if failed != [ ]
      then throw "\nFailed assertions:\n${builtins.concatStringsSep "\n" (map (m: "- ${m}") failed)}"
      else fakeDrv "nixos-system-${config.networking.hostName}" // {
        # Like a real system build, depend on every unit and setting the
        # modules produced, so their option types are checked.
        drvPath = builtins.seq (builtins.toJSON {
          inherit (config.systemd) services tmpfiles;
          inherit (config.environment) systemPackages;
          inherit (config.networking) firewall;
          inherit (config.users) users groups;
          inherit (config.boot) kernelModules;
        }) (fakeDrv "nixos-system-${config.networking.hostName}").drvPath;
      };
  };

  nixosSystem = { system ? "x86_64-linux", modules, specialArgs ? { } }:
    let
      result = lib.evalModules {
        inherit specialArgs;
        modules = modules ++ [ stubs { _module.args.pkgs = pkgs; } ];
      };
    in
    result // { inherit pkgs; };
in
{
  inherit nixosSystem pkgs;
}
