# microvm.nix's real host module (nixos-modules/host), evaluated with
# nixpkgs' real lib.evalModules on the stub NixOS of ./nixos-stub/nixos.nix
# (stub option declarations and stub pkgs: see that file for what is and is
# not modelled), and the systemd units, tmpfiles lines and users it yields,
# as JSON-able attributes. tests/nixlib checks the units' facts
# (TestNixMicrovmHostUnits); tests that run a real systemd can write
# `units.<NAME>.text` into unit files.
#
#   nix eval --json --impure --expr 'import tests/nixlib/testdata/microvm-host-units.nix {
#     nixpkgs = /var/cache/blixard/third-party/nixpkgs-lib-<commit>;
#     microvm = /var/cache/blixard/third-party/microvm.nix-<commit>; }'
#
# Arguments:
#   nixpkgs  a directory holding nixpkgs' lib/ (path or absolute string)
#   microvm  a microvm.nix checkout (path or absolute string)
#   modules  more host modules, e.g. { microvm.stateDir = "/srv/vms"; } or
#            Blixard's nixos-modules/blixard.nix and its settings
#
# Result:
#   services  config.systemd.services as NixOS's options hold them (scripts
#             already turned into ExecStart… like NixOS does)
#   units     "NAME.service"/"NAME.target" -> { Unit, Service, Install, text }:
#             the sections (KEY -> value or list of values) and the unit
#             file's text, rendered as NixOS renders them (plus [Install])
#   tmpfiles  tmpfiles.d lines; users, groups: users.users and users.groups
#   stateDir, kernelModules, systemPackages (store paths)
#   build     a derivation depending on everything the units run (unit
#             scripts, programs, PATH entries): realise it before starting
#             them (nix-build microvm-host-units.nix --arg … -A build)
# Evaluating any of these checks the host's assertions first.
{ nixpkgs, microvm, modules ? [ ] }:
let
  asPath = p: if builtins.isPath p then p else /. + p;
  lib = import (asPath nixpkgs + "/lib");
  nixos = import ./nixos-stub/nixos.nix { inherit lib; };
  sys = nixos.nixosSystem {
    modules = [ (asPath microvm + "/nixos-modules/host") ] ++ modules;
  };
  inherit (sys) config;

  checked = builtins.seq config.system.build.toplevel.drvPath;

  # Every store path the units refer to (unit scripts, programs, PATH
  # entries) is in the string context of their rendered text.
  unitTexts = lib.mapAttrsToList (_: u: u.text) config.system.build.units;
in
checked {
  inherit (config.systemd) services;
  inherit (config.system.build) units tmpfiles;
  inherit (config.users) users groups;
  inherit (config.microvm) stateDir;
  inherit (config.boot) kernelModules;
  systemPackages = map toString config.environment.systemPackages;
  build = builtins.derivation {
    name = "microvm-host-units-closure";
    system = "x86_64-linux";
    builder = "/bin/sh";
    texts = builtins.concatStringsSep "\n" unitTexts;
    passAsFile = [ "texts" ];
    args = [ "-c" "/bin/cp \"$textsPath\" $out" ];
  };
}
