# A Blixard cluster flake: copy this directory into its own git repository,
# replace the addresses, keys and VMs, and point every host's
# services.blixard.repository.url at that repository. README.md walks
# through the first deploy.
#
# Two kinds of outputs live here:
#   nixosConfigurations.node1…3  the hosts: `nixos-rebuild switch --flake .#node1`
#   nixosConfigurations.web/db/cache and `blixard`
#                                the microVMs: Blixard's leader evaluates
#                                `blixard` at every commit and runs them.
{
  description = "A Blixard cluster: three NixOS hosts and the microVMs they run";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    microvm = {
      url = "github:microvm-nix/microvm.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    blixard = {
      url = "github:blixard/blixard";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, microvm, blixard }:
    let
      system = "x86_64-linux";

      # A microVM: an ordinary NixOS configuration with microvm.nix's guest module.
      vm = name: modules: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ microvm.nixosModules.microvm { networking.hostName = name; } ] ++ modules;
      };

      # db's Ceph RBD volume, given both to the guest (volumeModule attaches it at
      # /var/lib/microvms/db/volumes/data and mounts it) and to mkCluster (which
      # checks that wiring and tells Blixard to create and map the image).
      dbVolumes = {
        data = { sizeMiB = 10240; pool = "rbd"; mountPoint = "/var/lib/postgresql"; };
      };

      # A host running Blixard. Everything shared lives in hosts/common.nix.
      host = id: extra: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [
          microvm.nixosModules.host
          blixard.nixosModules.default
          ./hosts/common.nix
          {
            networking.hostName = "node${toString id}";
            services.blixard = {
              nodeId = id;
              apiAddress = "10.0.0.${toString id}:7070";
            };
          }
          extra
        ];
      };
    in
    {
      nixosConfigurations = {
        web = vm "web" [ ./vms/web.nix ];
        db = vm "db" [ ./vms/db.nix (blixard.lib.volumeModule { name = "db"; volumes = dbVolumes; }) ];
        cache = vm "cache" [ ./vms/cache.nix ];

        node1 = host 1 { services.blixard.labels = { zone = "a"; disk = "ssd"; }; };
        node2 = host 2 { services.blixard.labels = { zone = "b"; disk = "ssd"; }; };
        node3 = host 3 { services.blixard.labels = { zone = "c"; }; };
      };

      # What Blixard runs (schema v1). mkCluster reads each VM's runner, vCPUs
      # and memory from its configuration.
      blixard = blixard.lib.mkCluster {
        cluster = "prod";
        vms = {
          web = {
            nixosConfiguration = self.nixosConfigurations.web;
            replicas = 2; # web-0 and web-1 …
            placement.antiAffinity = [ "web" ]; # … on different hosts
          };
          db = {
            nixosConfiguration = self.nixosConfigurations.db;
            volumes = dbVolumes;
            placement.labels.disk = "ssd";
          };
          cache = {
            nixosConfiguration = self.nixosConfigurations.cache;
            placement.antiAffinity = [ "db" ];
          };
        };
      };
    };
}
