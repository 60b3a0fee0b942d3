# A microvm.nix guest module for the NixOS stand-in whose runner carries
# microvm.nix's own qemu command line, computed without building anything.
#
# microvm.nix's whole guest module needs all of NixOS, but two of its parts
# evaluate on the stand-in: nixos-modules/microvm/options.nix (every
# microvm.* option with its real type and default; interfaces is a list of
# submodules with type, id, mac…) and interfaces.nix (the tap-up and
# tap-down scripts). microvm.nix's default.nix, which is not imported, sets
# microvm.runner.HYPERVISOR = lib/runner.nix of the configuration; runner.nix
# builds the microvm-run script around hypervisorConfig.command, which
# lib/runners/qemu.nix computes from config.microvm and the hostname. Here
# microvm.runner.qemu is a /bin/sh derivation (nothing is built) holding
# that real command as its `command` attribute, so its .drv changes exactly
# when qemu's command line does, as the real runner's would.
#
# Test-only settings, none of which touch the network part of the command:
# the kernel and the initrd are placeholders (boot.kernelPackages and
# system.build.initialRamdisk are not modelled), storeOnDisk = false (the
# store disk needs system.build), kernelParams = [ ] (system.nix, which sets
# it from boot.kernelParams, is not imported), and vmHostPackages is the
# stand-in's pkgs with a placeholder qemu.
#
# Arguments: microvm, the unpacked microvm.nix at the pinned commit.
{ microvm }:
{ config, lib, pkgs, ... }:
let
  fake = name: attrs: builtins.derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out" ];
  } // attrs);

  # A qemu package: overriding it (microvm.optimize) changes nothing.
  qemuPkg = fake "qemu" { } // { configureFlags = [ ]; override = _: qemuPkg; };

  hostPkgs = pkgs // {
    _type = "pkgs"; # what types.pkgs checks
    stdenv = pkgs.stdenv // { hostPlatform = pkgs.stdenv.hostPlatform // { isLinux = true; isDarwin = false; }; };
    buildPackages = hostPkgs;
    qemu_kvm = qemuPkg;
    netcat = fake "netcat" { };
    socat = fake "socat" { };
    iproute2 = fake "iproute2" { };
  };

  microvmLib = import "${microvm}/lib" { inherit lib; };

  qemu = import "${microvm}/lib/runners/qemu.nix" {
    pkgs = hostPkgs;
    # As microvm.nix's default.nix passes it to lib/runner.nix.
    microvmConfig = config.microvm // {
      inherit (config.networking) hostName;
      hypervisor = "qemu";
    };
    macvtapFds = { };
    inherit (microvmLib) withDriveLetters extractOptValues extractParamValue;
    linuxTarget = "bzImage";
  };
in
{
  imports = [
    "${microvm}/nixos-modules/microvm/options.nix"
    "${microvm}/nixos-modules/microvm/interfaces.nix"
  ];

  microvm = {
    kernel = fake "linux" { };
    initrdPath = "/nix/store/00000000000000000000000000000000-initrd/initrd";
    storeOnDisk = false;
    kernelParams = [ ];
    vmHostPackages = hostPkgs;
    runner.qemu = fake "microvm-qemu-${config.networking.hostName}" { inherit (qemu) command; } // {
      inherit (qemu) command;
      passthru = { inherit (qemu) tapMultiQueue; };
    };
  };
}
