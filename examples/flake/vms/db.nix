# The db microVM: PostgreSQL with its data on a Ceph RBD volume. The volume
# itself (attach path, mount point, first-boot format) comes from
# blixard.lib.volumeModule in flake.nix; when Blixard moves db to another
# host, the volume follows it.
{
  microvm = {
    hypervisor = "qemu";
    vcpu = 2;
    mem = 2048;
    interfaces = [{ type = "user"; id = "db"; mac = "02:00:00:00:02:01"; }];
  };

  services.postgresql.enable = true;
  networking.firewall.allowedTCPPorts = [ 5432 ];
  system.stateVersion = "25.11";
}
