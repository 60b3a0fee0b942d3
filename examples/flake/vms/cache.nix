# The cache microVM: a small nginx cache in front of web, kept off db's host.
{
  microvm = {
    hypervisor = "qemu";
    vcpu = 1;
    mem = 256;
    interfaces = [{ type = "user"; id = "cache"; mac = "02:00:00:00:03:01"; }];
  };

  services.nginx = {
    enable = true;
    virtualHosts.default.locations."/".return = "200 'cache\\n'";
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
  system.stateVersion = "25.11";
}
