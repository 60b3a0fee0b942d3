# A cluster flake whose VMs are real qemu microVMs, with no nixpkgs and no
# network: see microvm.nix. Run it with `blixard dev examples/demo`, then
# `curl 127.0.0.1:18080`. Change a version below and save: only that VM
# restarts, on its new runner.
{
  outputs = { self }:
    let
      microvm = import ./microvm.nix;
    in
    {
      blixard = {
        cluster = "demo";
        vms = {
          web = microvm.vm { name = "web"; port = 18080; version = "1"; };
          api = microvm.vm { name = "api"; port = 18081; version = "1"; };
        };
      };

      # The same cluster plus `notes`, whose disk is a Ceph RBD image: run it
      # with `blixard dev examples/demo --attr blixard-volumes --ceph-config-file …`
      # (a blixard built with -tags ceph,pacific; see README.md). The guest
      # keeps a marker on the disk: `curl '127.0.0.1:18082/cgi-bin/write?data=hello'`,
      # then `curl 127.0.0.1:18082/cgi-bin/read?data` — also after the VM moved.
      blixard-volumes = {
        cluster = "demo";
        vms = {
          web = microvm.vm { name = "web"; port = 18080; version = "1"; };
          api = microvm.vm { name = "api"; port = 18081; version = "1"; };
          notes = microvm.vm { name = "notes"; port = 18082; volumes.data = { sizeMiB = 64; }; };
        };
      };
    };
}
