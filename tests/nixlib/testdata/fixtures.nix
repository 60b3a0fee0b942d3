# Fixtures for the tests in tests/nixlib: runner derivations built from
# builtins.derivation with /bin/sh, microvm.nix-shaped configurations, and
# services.blixard option values as the module's defaults fill them.
#
# nixpkgs: a directory holding nixpkgs' lib/ (the tests pass their stand-in
# nixpkgs, made of the pinned nixpkgs lib that scripts/setup-nixlib.sh
# unpacks), or null. microvm: the stand-in microvm.nix flake (fake-microvm/
# with microvm.nix's real nixos-modules/ and pkgs/), or null. Only
# nixpkgsLib, nixosStub, microvm, microvmConfig, host and inspect need them.
{ nixpkgs ? null, microvm ? null }:
let
  blixardLib = import ../../../nix/lib.nix;

  drv = name: builtins.derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\n' > $out/bin/microvm-run" ];
  };

  runners = {
    web = drv "microvm-web";
    db = drv "microvm-db";
    hello = drv "fn-hello";
  };

  # A microvm.nix guest as nixpkgs.lib.nixosSystem makes it: the NixOS
  # stand-in with the stand-in microvm.nix's guest module (so it has
  # extendModules, and mkCluster's instance modules merge for real). With
  # runner, that is its declaredRunner whatever the instance; without, the
  # guest module's own, which follows the hostname and the interfaces.
  microvmConfig = { runner ? null, vcpu ? 2, mem ? 512, volumes ? [ ], hostName ? "vm", modules ? [ ] }:
    nixosStub.nixosSystem {
      modules = [
        microvmFlake.nixosModules.microvm
        { networking.hostName = hostName; microvm = { inherit vcpu mem volumes; }; }
      ]
      ++ (if runner == null then [ ] else [{ microvm.declaredRunner = runner; }])
      ++ modules;
    };

  # The part of a nixosSystem result mkCluster reads, as plain values with
  # no module system: for mkCluster's own checks of values a module system
  # would have refused first (a zero mem, a declaredRunner that is no
  # derivation). Its extendModules ignores the modules.
  rawConfig = microvm: { config.microvm = microvm; extendModules = _: rawConfig microvm; };

  toRunner = r: { drv = r.drvPath; out = r.outPath; };
  # What the daemon's nixeval applies before `nix eval --json` prints a
  # cluster (runners become { drv, out }): its own file, not a copy.
  toDaemon = import ../../../nixeval/apply.nix;

  # config.services.blixard with every option at the module's default, plus
  # the options that have none.
  serviceDefaults = {
    enable = true;
    package = drv "blixard";
    nodeId = 1;
    raftAddress = null;
    apiAddress = "127.0.0.1:7070";
    members = { };
    repository = {
      url = null;
      ref = "main";
      attr = "blixard";
      pollInterval = "5s";
      webhookSecretFile = null;
    };
    dataDir = "/var/lib/blixard";
    backend = "systemd";
    capacity = { vcpu = 0; memMiB = 0; };
    labels = { };
    ceph = {
      enable = false;
      user = "admin";
      keyringFile = null;
      configFile = "/etc/ceph/ceph.conf";
    };
    network = {
      enable = false;
      bridge = "blixard0";
      vxlanId = 4242;
      vxlanPort = 4789;
      underlayAddress = null;
      ingressAddress = null;
      masquerade = true;
    };
    openFirewall = false;
    insecure = false;
    extraArgs = [ ];
    settings = { };
  };

  # The module's defaults of the tls files, which follow dataDir and nodeId.
  tlsDefaults = s: {
    caFile = "${s.dataDir}/tls/ca.crt";
    certFile = "${s.dataDir}/tls/node-${toString s.nodeId}.crt";
    keyFile = "${s.dataDir}/tls/node-${toString s.nodeId}.key";
  };

  # serviceDefaults with overrides merged one level deep (repository,
  # capacity, ceph, network and tls are merged, everything else replaced).
  service = overrides:
    let
      s = serviceDefaults // overrides // builtins.mapAttrs
        (k: v: serviceDefaults.${k} // v)
        (builtins.intersectAttrs { repository = null; capacity = null; ceph = null; network = null; } overrides);
    in
    s // { tls = tlsDefaults s // (overrides.tls or { }); };

  render = import ../../../nixos-modules/render.nix;
  ports = import ../../../nixos-modules/ports.nix;

  # nixpkgs' lib, the NixOS stand-in (nixos-stub/nixos.nix) and the
  # microvm.nix stand-in (its nixosModules.host is microvm.nix's own).
  needs = what: throw "needs ${what}: run scripts/setup-nixlib.sh";
  nixpkgsLib = if nixpkgs == null then needs "nixpkgs' lib" else import "${nixpkgs}/lib";
  nixosStub = import ./nixos-stub/nixos.nix { lib = nixpkgsLib; };
  microvmFlake =
    if microvm == null then needs "microvm.nix"
    else (import "${microvm}/flake.nix").outputs { self = microvmFlake; };

  # A host with Blixard's module and the given modules.
  host = modules: nixosStub.nixosSystem {
    modules = [ ../../../nixos-modules/blixard.nix ] ++ modules;
  };

  # What the module tests look at on a host.
  inspect = sys:
    let
      service = sys.config.systemd.services.blixard;
      exec = service.serviceConfig.ExecStart;
      configPath = builtins.head (builtins.match ".* --config ([^ ]+).*" "${exec} ");
    in
    {
      inherit service;
      toplevel = sys.config.system.build.toplevel.drvPath;
      configFile = builtins.fromJSON (builtins.readFile configPath);
      rendered = render sys.config.services.blixard;
      firewall = sys.config.networking.firewall.allowedTCPPorts;
      firewallUDP = sys.config.networking.firewall.allowedUDPPorts;
      firewallInterfaces = sys.config.networking.firewall.interfaces;
      sysctl = sys.config.boot.kernel.sysctl;
      users = builtins.attrNames sys.config.users.users;
      kernelModules = sys.config.boot.kernelModules;
      tmpfiles = sys.config.systemd.tmpfiles.rules;
      path = map (p: p.name) service.path;
      systemPackages = map (p: p.name) sys.config.environment.systemPackages;
    };
in
{
  inherit blixardLib drv runners microvmConfig rawConfig toRunner toDaemon service render ports;
  inherit nixpkgsLib nixosStub host inspect;
  microvm = microvmFlake;
}
