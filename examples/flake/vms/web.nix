# The web microVM: nginx. Blixard runs two replicas (see flake.nix).
{
  microvm = {
    hypervisor = "qemu";
    vcpu = 1;
    mem = 512;
    # qemu's user-mode network needs nothing on the host, so two replicas on
    # one host cannot collide on a tap name or MAC. For real traffic use a tap
    # or macvtap interface on a bridge (microvm.nix's docs: "Network interfaces").
    interfaces = [{ type = "user"; id = "web"; mac = "02:00:00:00:01:01"; }];
  };

  services.nginx = {
    enable = true;
    virtualHosts.default.locations."/".return = "200 'hello from a Blixard microVM\\n'";
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
  system.stateVersion = "25.11";
}
