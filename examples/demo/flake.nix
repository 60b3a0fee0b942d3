# A cluster flake that needs no nixpkgs and no network: its runners are tiny
# /bin/sh derivations standing in for microvm.nix runners (they provide
# bin/microvm-run). Edit a VM here, commit and push, and watch the plan change.
{
  outputs = { self }:
    let
      runner = name: version: builtins.derivation {
        name = "microvm-${name}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" ''
          /bin/mkdir -p $out/bin
          printf '#!/bin/sh\nexec /bin/sleep infinity # ${name} ${version}\n' > $out/bin/microvm-run
          /bin/chmod +x $out/bin/microvm-run
        '' ];
      };
    in {
      blixard = {
        cluster = "demo";
        vms = {
          web = { runner = runner "web" "1"; vcpu = 1; memMiB = 256; replicas = 2; };
          api = { runner = runner "api" "1"; vcpu = 2; memMiB = 512; };
          db = {
            runner = runner "db" "1";
            vcpu = 2;
            memMiB = 1024;
            placement.labels = { disk = "ssd"; };
          };
        };
      };
    };
}
