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
      # Deploy only commits signed by these keys (git's SSH signatures;
      # OpenPGP keyrings work too). Every other commit is refused before
      # nix evaluates it.
      trust = [ "/etc/blixard/allowed_signers" ];
      # An access token for the https:// repository, outside the Nix store.
      tokenFile = "/run/secrets/blixard-git-token";
    };
    # The cluster's certificates (`blixard ca init`, `blixard cert issue
    # --node ID --host 10.0.0.ID`), copied to each host: they secure Raft
    # and the API. Paths as strings, so keys never enter the Nix store.
    tls = {
      caFile = "/var/lib/blixard/tls/ca.crt";
      certFile = "/var/lib/blixard/tls/node.crt";
      keyFile = "/var/lib/blixard/tls/node.key";
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
