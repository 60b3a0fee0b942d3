# What every host of the cluster shares. Per-host values (node id, API
# address, labels) are set in flake.nix.
{
  # Replace with each host's hardware-configuration.nix (boot loader, disks).
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };

  services.openssh.enable = true;

  services.blixard = {
    enable = true;
    # The three voters, the same on every host. raftAddress defaults to this
    # host's entry.
    members = {
      "1" = "10.0.0.1:7001";
      "2" = "10.0.0.2:7001";
      "3" = "10.0.0.3:7001";
    };
    repository = {
      # This flake's own repository: a `git push` here deploys.
      url = "https://git.example.org/infra/cluster.git";
      ref = "main";
      # An HMAC secret shared with the git server's push webhook; keep it out
      # of the Nix store (agenix, sops-nix, or a file put there by hand).
      webhookSecretFile = "/run/secrets/blixard-webhook";
    };
    # What this host offers to VMs; keep some for the host itself.
    capacity = { vcpu = 8; memMiB = 16384; };
    ceph = {
      enable = true;
      user = "blixard";
      keyringFile = "/etc/ceph/ceph.client.blixard.keyring";
    };
    openFirewall = true;
  };

  system.stateVersion = "25.11";
}
