# The cluster of node/network_qemu_test.go: the demo's qemu microVMs
# (examples/demo; the test copies microvm.nix, build-runner.sh and
# guest-init.sh beside this file) on the cluster network. The test writes
# settings.nix too: { kernelDir; vms; } — the guest kernel's directory and
# which of the VMs below the commit declares.
#
# front and back avoid each other, so they run on different nodes; spare
# (front's runner, never started: autostart = false) is there to take an
# address. Health is probed at the guests' cluster addresses. The ports are the user-mode forwards the runners use only
# without cluster networking.
{
  outputs = { self }:
    let
      microvm = import ./microvm.nix;
      settings = import ./settings.nix;
      vm = name: port: microvm.vm { inherit name port; inherit (settings) kernelDir; };
      all = {
        # antiAffinity may name declared VMs only.
        # front's health check answers (its index page); back's asks for a
        # page the guest does not have, so the node judges it unhealthy.
        front = vm "front" 18180 // { health.http = { port = 80; path = "/"; }; health.interval = "3s"; }
          // (if declared ? back then { placement.antiAffinity = [ "back" ]; } else { });
        back = vm "back" 18181 // { health.http = { port = 80; path = "/no-such-page"; }; health.interval = "3s"; };
        spare = { inherit (all.front) runner vcpu memMiB; autostart = false; };
      };
      declared = builtins.listToAttrs (map (name: { inherit name; value = null; }) settings.vms);
    in
    {
      blixard = {
        cluster = "qlab";
        network.cidr = "10.124.0.0/24";
        vms = builtins.intersectAttrs declared all;
        ingress = if declared ? back then { back = { host = "back.qlab.test"; to = "back"; port = 80; }; } else { };
      };
    };
}
