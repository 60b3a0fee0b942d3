# services.blixard: runs `blixard serve` on a NixOS host.
#
# The options are rendered to the daemon's JSON config file by the pure
# function in ./render.nix (tested with plain `nix eval`); this file only
# declares the options and wires the systemd unit, the firewall and the
# assertions. Blixard's flake exposes it as nixosModules.default, which also
# sets services.blixard.package to the flake's own package.
#
# Privileges. With backend = "systemd" (the production backend) the daemon
# runs as root, because its node agent must:
#   * start, stop and restart microvm.nix's `microvm@NAME` units over D-Bus
#     (systemd only lets root, or a polkit rule, manage other units);
#   * write the state of every VM under /var/lib/microvms (owned by the
#     `microvm` user) and GC roots for the runners it realises;
#   * map Ceph RBD images (`rbd device map`, CAP_SYS_ADMIN) and take their
#     exclusive locks when ceph.enable is set.
# What is hardened regardless: no access to /home, a private /tmp, no new
# privileges, read-only /usr, /boot and /etc, no kernel module loading or
# kernel log access, native system calls only. With backend = "process",
# Ceph off and no microvm.nix host module (whose /var/lib/microvms belongs
# to the `microvm` user) the daemon supervises `microvm-run` itself and
# needs none of the above: it runs as the unprivileged `blixard` user (in
# the kvm group, for /dev/kvm), owning /var/lib/microvms.
{ config, lib, pkgs, options, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  cfg = config.services.blixard;
  settingsFormat = pkgs.formats.json { };
  configFile = settingsFormat.generate "blixard.json" (import ./render.nix cfg);
  ports = import ./ports.nix cfg;

  # The cluster network programs links and nftables (CAP_NET_ADMIN).
  runsAsRoot = cfg.backend == "systemd" || cfg.ceph.enable || microvmHostEnabled || cfg.network.enable;
  serviceUser = if runsAsRoot then "root" else "blixard";
  microvmHostEnabled = options ? microvm && (config.microvm.host.enable or false);

  # HOST:PORT, IPv6 hosts in brackets.
  address = types.strMatching ".+:[0-9]+";
  # Label keys and values are rendered as k=v,… for the daemon.
  labelPart = types.strMatching "[^,=]*";

  memberIds = if builtins.isList cfg.members
    then map (m: builtins.head (builtins.match "([^=]*)=.*" m)) cfg.members
    else builtins.attrNames cfg.members;
  raftKnown = cfg.raftAddress != null || builtins.elem (toString cfg.nodeId) memberIds;
  # The Raft address's host: the default underlay address must be an IP.
  raftAddress = if cfg.raftAddress != null then cfg.raftAddress else
    let mine = builtins.filter (m: builtins.match "${toString cfg.nodeId}=.*" m != null) (if builtins.isList cfg.members then cfg.members else [ ]);
    in if builtins.isList cfg.members then (if mine == [ ] then null else builtins.head (builtins.match "[^=]*=(.*)" (builtins.head mine)))
    else cfg.members.${toString cfg.nodeId} or null;
  raftHost = if raftAddress == null then null else builtins.head (builtins.match "[[]?([^]]*)[]]?:[0-9]+" raftAddress);
  isIP = h: builtins.match "[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*" h != null;
  apiLoopback = builtins.match "(127[.][0-9.]+|[[]::1]|localhost):[0-9]+" cfg.apiAddress != null;
  # A file the daemon reads: an absolute path as a string, never a Nix path,
  # which would copy the file (a key) into the world-readable store.
  secretPath = types.strMatching "/.*";
in
{
  options.services.blixard = {
    enable = mkEnableOption "Blixard, the GitOps reconciler for microVMs, on this host";

    package = mkOption {
      type = types.package;
      # With ceph.enable, the build with Ceph support (cgo, librados, librbd);
      # the default build refuses Ceph settings.
      default =
        let name = if cfg.ceph.enable then "blixard-ceph" else "blixard"; in
        pkgs.${name} or (throw "services.blixard.package: pkgs has no `${name}`${lib.optionalString cfg.ceph.enable " (Blixard built with Ceph support, for ceph.enable)"}; import blixard.nixosModules.default (it sets the package) or add blixard.overlays.default to nixpkgs.overlays");
      defaultText = literalExpression "if config.services.blixard.ceph.enable then blixard.packages.\${system}.blixard-ceph else blixard.packages.\${system}.blixard";
      description = "The Blixard package to run. The default follows ceph.enable: Blixard built with Ceph support when it is set.";
    };

    nodeId = mkOption {
      type = types.ints.positive;
      example = 1;
      description = "This node's Raft id, unique in the cluster (`--node-id`).";
    };

    raftAddress = mkOption {
      type = types.nullOr address;
      default = null;
      example = "10.0.0.1:7001";
      description = "HOST:PORT for Raft traffic (`--raft-addr`); null takes this node's address from `members`.";
    };

    apiAddress = mkOption {
      type = address;
      default = "127.0.0.1:7070";
      example = "10.0.0.1:7070";
      description = ''
        HOST:PORT of the API (`--api-addr`) used by `blixard status`, `plan` and webhooks. It serves HTTPS with the
        `tls` files: clients present a certificate from the cluster CA or a bearer token, and each needs the role of
        what it does (see docs/security.md). Its certificate must name this host.
      '';
    };

    tls = {
      caFile = mkOption {
        type = secretPath;
        default = "${cfg.dataDir}/tls/ca.crt";
        defaultText = literalExpression ''"''${config.services.blixard.dataDir}/tls/ca.crt"'';
        description = ''
          The cluster CA's certificate (`--tls-ca`; from `blixard ca init`). With `certFile` and `keyFile` it makes the
          API HTTPS with client certificates or tokens, and Raft mutual TLS. A string, read when the daemon starts.
        '';
      };
      certFile = mkOption {
        type = secretPath;
        default = "${cfg.dataDir}/tls/node-${toString cfg.nodeId}.crt";
        defaultText = literalExpression ''"''${config.services.blixard.dataDir}/tls/node-''${toString config.services.blixard.nodeId}.crt"'';
        description = ''
          This node's certificate (`--tls-cert`; `blixard cert issue --node ID --host …`), naming the hosts of the Raft
          and API addresses.
        '';
      };
      keyFile = mkOption {
        type = secretPath;
        default = "${cfg.dataDir}/tls/node-${toString cfg.nodeId}.key";
        defaultText = literalExpression ''"''${config.services.blixard.dataDir}/tls/node-''${toString config.services.blixard.nodeId}.key"'';
        example = "/run/secrets/blixard-node-1.key";
        description = ''
          The key of `certFile` (`--tls-key`), mode 0600, owned by the daemon's user. A string, not a Nix path: a path
          literal would copy the key into the world-readable Nix store (use agenix, sops-nix or a file put there by hand).
        '';
      };
    };

    insecure = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Serve the API over plain HTTP without any authentication (every client may drain nodes, stop VMs and add
        Raft members) and Raft over plain TCP, instead of using the `tls` files (`--insecure`). Only for an apiAddress
        on loopback; elsewhere the daemon also wants `settings."insecure-i-know" = true`.
      '';
    };

    agentOnly = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run no Raft replica on this host (`--agent-only`): its agent registers, heartbeats and reads its work through
        the `servers`' APIs with this node's certificate (`tls`), failing over between them. For the many VM hosts of a
        big cluster; 3 or 5 nodes are servers. `members` and `repository.url` are for the servers (with `network.enable`
        set `network.underlayAddress`).
      '';
    };

    servers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "https://10.0.0.1:7070" "https://10.0.0.2:7070" "https://10.0.0.3:7070" ];
      description = "With `agentOnly`: the servers' API addresses (`--servers`).";
    };

    members = mkOption {
      type = types.either (types.attrsOf address) (types.listOf (types.strMatching "[0-9]+=.+:[0-9]+"));
      default = { };
      example = literalExpression ''{ "1" = "10.0.0.1:7001"; "2" = "10.0.0.2:7001"; "3" = "10.0.0.3:7001"; }'';
      description = ''
        The initial voters, the same on every node (`--members`): an attribute set from node id to raft HOST:PORT, or a
        list of "ID=HOST:PORT" strings.
      '';
    };

    repository = {
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://git.example.org/infra/cluster.git";
        description = ''
          The cluster repository holding the cluster flake (`--repo`; file://, https:// or ssh://). null: this node
          replicates state but never proposes plans.
        '';
      };
      ref = mkOption {
        type = types.str;
        default = "main";
        description = "Branch of the repository to follow (`--ref`).";
      };
      attr = mkOption {
        type = types.str;
        default = "blixard";
        description = "Flake output attribute holding the cluster (`--attr`).";
      };
      pollInterval = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h)([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))*";
        default = "5s";
        example = "1m";
        description = "How often the leader fetches the repository (`--poll`), as a Go duration.";
      };
      webhookSecretFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "/run/secrets/blixard-webhook";
        description = ''
          File holding the HMAC secret for push webhooks (`--webhook-secret-file`). A string, not a Nix path, so the
          secret never enters the Nix store.
        '';
      };
      trust = mkOption {
        type = types.listOf (types.strMatching "/.*");
        default = [ ];
        example = [ "/etc/blixard/allowed_signers" "/etc/blixard/release-keys.asc" ];
        description = ''
          OpenPGP keyrings and SSH allowed_signers files (`--trust`): when set, the leader evaluates only commits
          signed by one of their keys; any other commit is refused before `nix eval` runs.
        '';
      };
      sshKeyFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        description = "Private key for an ssh:// repository (`--git-ssh-key`); needs `knownHostsFile`. A string: it stays out of the store.";
      };
      knownHostsFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        description = "known_hosts file with the git server's host key (`--git-known-hosts`).";
      };
      tokenFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        description = "File holding an access token for an https:// repository (`--git-token-file`). A string: it stays out of the store.";
      };
      username = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "User name sent with the token (`--git-username`).";
      };
    };

    evaluation = {
      maxMemoryMiB = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 8192;
        description = "Memory limit of one nix evaluation in MiB (`--eval-max-memory-mib`); null: the daemon's default (4096).";
      };
      user = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "blixard-eval";
        description = ''
          Evaluate the cluster flake as this unprivileged user (`--eval-user`), so a flake's inputs cannot read host
          files the daemon can. The user must be able to read the git mirror under `dataDir`; see docs/security.md.
        '';
      };
    };

    dataDir = mkOption {
      type = types.strMatching "/.*";
      default = "/var/lib/blixard";
      description = "Directory for the Raft log, snapshots and the git mirror (`--data-dir`).";
    };

    backend = mkOption {
      type = types.enum [ "systemd" "process" ];
      default = "systemd";
      description = ''
        How VMs are run: "systemd" starts microvm.nix's `microvm@NAME` units (needs microvm.nixosModules.host);
        "process" makes the daemon supervise `microvm-run` itself.
      '';
    };

    capacity = {
      vcpu = mkOption {
        type = types.ints.unsigned;
        example = 16;
        description = "vCPUs this node offers to VMs (`--capacity-vcpu`); 0 places no VM here.";
      };
      memMiB = mkOption {
        type = types.ints.unsigned;
        example = 65536;
        description = "Memory in MiB this node offers to VMs (`--capacity-mem-mib`); 0 places no VM here.";
      };
    };

    labels = mkOption {
      type = types.attrsOf labelPart;
      default = { };
      example = { zone = "a"; disk = "ssd"; };
      description = "Node labels matched by a VM's `placement.labels` (`--labels`).";
    };

    ceph = {
      enable = mkEnableOption "Ceph RBD volumes for VMs on this node";
      # Removed (the daemon's --ceph-pool too): each volume's pool comes from
      # the cluster flake, as a pool per host would let one flake name
      # different RBD images on different nodes. Kept hidden so that an old
      # configuration fails with what to do (see the assertion).
      pool = mkOption {
        type = types.nullOr types.str;
        default = null;
        visible = false;
        description = "Removed: each volume's Ceph pool comes from the cluster flake.";
      };
      user = mkOption {
        type = types.str;
        default = "admin";
        description = "Ceph client name without the `client.` prefix.";
      };
      keyringFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "/etc/ceph/ceph.client.blixard.keyring";
        description = "Keyring of the Ceph client; null uses Ceph's default search path. A string, so it stays out of the store.";
      };
      configFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = "/etc/ceph/ceph.conf";
        description = "ceph.conf naming the monitors.";
      };
      volumeAttach = mkOption {
        type = types.enum [ "auto" "kernel" "daemon" ];
        default = "auto";
        description = ''
          How RBD volumes reach the VMs (`--volume-attach`): kernel (`rbd device map --exclusive`; needs the rbd
          kernel module), daemon (a qemu-storage-daemon per volume) or auto (kernel when the module is loaded).
        '';
      };
    };

    network = {
      enable = mkEnableOption ''
        the cluster network on this node (`--network`): the overlay bridge with the cluster's gateway address, a VXLAN
        device to the other nodes, the instances' taps, DHCP and DNS for them (dnsmasq), the masquerade of the cluster
        network out of the host's uplink and, with `ingressAddress`, the ingress proxy. Every node of the cluster
        should enable it'';
      bridge = mkOption {
        type = types.strMatching "[^/: \t\n]{1,15}";
        default = "blixard0";
        description = "The overlay bridge (`--bridge`), at most 15 characters; it carries the cluster's gateway address (network.cidr in the cluster flake).";
      };
      vxlanId = mkOption {
        type = types.ints.between 1 16777215;
        default = 4242;
        description = "The VXLAN network identifier (`--vxlan-id`), the same on every node; no other VXLAN on the underlay may use it.";
      };
      vxlanPort = mkOption {
        type = types.port;
        default = 4789;
        description = "The UDP port of the VXLAN (`--vxlan-port`), open between the nodes (openFirewall opens it).";
      };
      underlayAddress = mkOption {
        type = types.nullOr (types.strMatching "[0-9a-fA-F.:]+");
        default = null;
        example = "100.64.0.1";
        description = ''
          This node's IP address on the network between the nodes (`--underlay-addr`): a LAN, a routed WAN or a tailnet
          (a Tailscale address). null: the host of the Raft address, which is where the other nodes send this node's
          overlay traffic; set it when that host is a name. VXLAN does not encrypt: over an untrusted network use a tailnet.
        '';
      };
      ingressAddress = mkOption {
        # HOST:PORT, where an empty HOST is every address (":80").
        type = types.nullOr (types.strMatching ".*:[0-9]+");
        default = null;
        example = ":80";
        description = ''
          HOST:PORT of the ingress HTTP proxy (`--ingress-addr`), which routes the cluster flake's `ingress` entries to
          the running instances from any node; TCP entries listen on HOST and their listenPort. null: no ingress here.
        '';
      };
      restorePool = mkOption {
        type = types.ints.unsigned;
        default = 4;
        description = ''
          Guests of snapshot functions this node keeps restored ahead and warmed up, frozen until they take an identity,
          for the next instances of those functions (`--restore-pool`; needs `backend = "process"`): a cold start that
          finds one is only the identity exchange. Each function asks for its `restoreAhead` (default 1); every
          function's next instance is served before any function's second. Each costs a qemu, the guest memory it
          touched and an idle vCPU. 0: none.
        '';
      };
      masquerade = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Masquerade the cluster network out of the host's uplink (`--masquerade`, an nftables table `ip blixard` the
          daemon keeps and removes when it stops), so instances reach the outside world. false: leave outbound NAT to
          the host, e.g. networking.nat with internalIPs = [ the cluster CIDR ].
        '';
      };
    };

    notify = {
      urls = mkOption {
        type = types.listOf (types.strMatching "https?://.+");
        default = [ ];
        example = [ "https://alerts.example.org/blixard" ];
        description = ''
          Webhook receivers of the cluster's notable events (`--notify-url`): whichever node leads POSTs one JSON object
          per event (id, cluster, kind, index, at, message, actor, revision and commit, node and state), retried with
          backoff up to 5 times, at most 1000 queued per receiver. These URLs land in the world-readable Nix store: put
          URLs that carry a token (Slack's, for one) in `urlFile` instead.
        '';
      };
      urlFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "/run/secrets/blixard-notify-urls";
        description = "File of more receivers, one URL per line (`--notify-url-file`), read when the daemon starts. A string, so it stays out of the store.";
      };
      secretFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "/run/secrets/blixard-notify-hmac";
        description = ''
          File holding the HMAC secret that signs every notification (`--notify-secret-file`): the header
          X-Blixard-Signature is "sha256=" and the hex HMAC-SHA256 of the body. A string, so it stays out of the store.
        '';
      };
      kinds = mkOption {
        type = types.listOf (types.strMatching "[A-Z][A-Za-z0-9]*");
        default = [ ];
        example = [ "PlanCommitted" "NodeDown" "EvalFailed" ];
        description = ''
          Event kinds to send (`--notify-kind`; see `blixard events`); NodeDown is a NodeStateChanged to down. Empty: the
          daemon's default, PlanCommitted, NodeDown, RolloutFailed and RolloutReverted.
        '';
      };
    };

    cache = {
      address = mkOption {
        type = types.nullOr (types.strMatching ".+:[0-9]+");
        default = null;
        example = "10.0.0.1:7080";
        description = ''
          HOST:PORT of this node's binary cache (`--cache-addr`): plain HTTP serving the closures of the runners assigned
          in the cluster that this node's store holds, signed with the node's own key, so the other nodes copy a runner
          instead of building it. Integrity comes from the signatures; keep the port to the nodes (openFirewall opens it).
        '';
      };
      url = mkOption {
        type = types.nullOr (types.strMatching "https?://.+");
        default = null;
        description = "How the other nodes reach this node's cache (`--cache-url`; default http://HOST:PORT of address).";
      };
      keyFile = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        description = "This node's signing key in nix's format (`--cache-key-file`; default DATA/nix-cache/secret-key, generated when missing). A string, so it stays out of the store.";
      };
      builder = mkOption {
        type = types.bool;
        default = false;
        description = "Realise every runner assigned in the cluster, not only this node's, so the others copy it (`--builder`; the leader does while it leads).";
      };
      substituters = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "https://cache.example.org" ];
        description = "Further binary caches every realisation substitutes from (`--substituter`), e.g. an existing harmonia or attic.";
      };
      trustedKeys = mkOption {
        type = types.listOf (types.strMatching "[^:]+:.+");
        default = [ ];
        description = "Public keys (NAME:BASE64) the paths of `substituters` are signed with (`--trusted-key`).";
      };
      pushTo = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "s3://nix-cache?region=eu-west-1";
        description = "nix store URL every runner this node builds is copied to (`--push-to`, `nix copy --to`).";
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the Raft and API ports (taken from raftAddress or members, and apiAddress) in the firewall.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--log-level" "debug" ];
      description = "Extra command-line arguments of `blixard serve`; they override the config file.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = { "raft-logdb" = "small"; heartbeat = "1s"; };
      description = ''
        Freeform settings written to the daemon's config file after the options above, keyed by `blixard serve` flag
        name without dashes (see `blixard serve --help`). A value of null removes a rendered key. The daemon rejects
        unknown keys at start.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.backend != "systemd" || microvmHostEnabled;
        message = "services.blixard.backend = \"systemd\" runs VMs as microvm.nix's microvm@NAME units, but microvm.nix's host module is not enabled on this host: add microvm.nixosModules.host to this host's modules (with microvm.nix as a flake input: inputs.microvm.nixosModules.host) and leave microvm.host.enable = true, or set services.blixard.backend = \"process\".";
      }
      {
        assertion = raftKnown || cfg.agentOnly;
        message = "services.blixard: node ${toString cfg.nodeId} has no Raft address: set services.blixard.raftAddress, or list this node in services.blixard.members (\"${toString cfg.nodeId}\" = \"HOST:PORT\").";
      }
      {
        assertion = !cfg.agentOnly || cfg.servers != [ ];
        message = "services.blixard.agentOnly needs services.blixard.servers: the API addresses of the Raft nodes (https://HOST:PORT).";
      }
      {
        assertion = builtins.all (id: builtins.match "[1-9][0-9]*" id != null) memberIds;
        message = "services.blixard.members: node ids must be positive integers without leading zeros, got ${builtins.concatStringsSep ", " memberIds}.";
      }
      {
        assertion = cfg.ceph.pool == null;
        message = "services.blixard.ceph.pool is gone: each volume's Ceph pool comes from the cluster flake, vms.<vm>.volumes.<name>.pool (default \"rbd\"); remove the setting.";
      }
      {
        assertion = !cfg.insecure || apiLoopback || (cfg.settings."insecure-i-know" or false);
        message = "services.blixard.insecure serves the API without authentication, but apiAddress ${cfg.apiAddress} is not loopback: anyone who reaches it could drain nodes, stop VMs and add Raft members. Leave insecure off and give services.blixard.tls.* (see docs/security.md), bind apiAddress to 127.0.0.1, or set services.blixard.settings.\"insecure-i-know\" = true.";
      }
      {
        assertion = !cfg.network.enable || cfg.network.underlayAddress != null || raftHost == null || isIP raftHost;
        message = "services.blixard.network: the host of this node's Raft address (${toString raftAddress}) is not an IP address, so it cannot be the node's underlay address: set services.blixard.network.underlayAddress to the IP address the other nodes reach this node at.";
      }
      {
        assertion = cfg.network.enable || cfg.network.ingressAddress == null;
        message = "services.blixard.network.ingressAddress needs services.blixard.network.enable = true: the ingress proxy reaches instances over the cluster network.";
      }
      {
        assertion = cfg.notify.urls != [ ] || cfg.notify.urlFile != null || (cfg.notify.secretFile == null && cfg.notify.kinds == [ ]);
        message = "services.blixard.notify.secretFile and notify.kinds need a receiver: set services.blixard.notify.urls or notify.urlFile.";
      }
      {
        assertion = builtins.all (k: builtins.match "[^,=]+" k != null) (builtins.attrNames cfg.labels);
        message = "services.blixard.labels: label names must be non-empty and contain neither ',' nor '='.";
      }
    ];

    warnings = lib.optional (cfg.repository.url == null)
      "services.blixard.repository.url is null: this node replicates the cluster's state but never proposes plans.";

    users = mkIf (!runsAsRoot) {
      users.blixard = {
        isSystemUser = true;
        group = "blixard";
        extraGroups = [ "kvm" ];
        home = cfg.dataDir;
      };
      groups.blixard = { };
    };

    # The CLI (`blixard status`, `plan`, `nodes`) next to the daemon.
    environment.systemPackages = [ cfg.package ];

    # `rbd device map` cannot load the module itself under ProtectKernelModules.
    boot.kernelModules = lib.optional cfg.ceph.enable "rbd";

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall
      (builtins.filter (p: p != null) [ ports.raft ports.api (ports.ingress or null) (ports.cache or null) ]);
    # VXLAN between the nodes. The NixOS firewall cannot restrict it to the
    # other nodes' addresses: do that at the network's edge, or carry the
    # underlay over a tailnet.
    networking.firewall.allowedUDPPorts = mkIf (cfg.openFirewall && cfg.network.enable) [ ports.vxlan ];
    # The instances' DHCP and DNS reach dnsmasq on the bridge (only
    # instances are on it), whether or not openFirewall opens the rest.
    networking.firewall.interfaces = mkIf cfg.network.enable {
      ${cfg.network.bridge} = { allowedUDPPorts = ports.bridgeUDP; allowedTCPPorts = ports.bridgeTCP; };
    };
    # Outbound traffic of the instances is routed from the bridge to the
    # uplink (and masqueraded there).
    boot.kernel.sysctl = mkIf cfg.network.enable { "net.ipv4.ip_forward" = 1; };

    # A dataDir outside /var/lib is not a StateDirectory: create it here. The
    # unprivileged process backend also needs its own VM state directory
    # (microvm.nix's layout; without microvm.nix's host module nobody else
    # creates it).
    systemd.tmpfiles.rules = lib.optional (cfg.dataDir != "/var/lib/blixard")
      "d ${cfg.dataDir} 0750 ${serviceUser} ${serviceUser} -"
    ++ lib.optional (!runsAsRoot) "d /var/lib/microvms 0750 blixard kvm -";

    systemd.services.blixard = {
      description = "Blixard microVM reconciler (node ${toString cfg.nodeId})";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # nix evaluates and realises the cluster flake; nix's git fetcher needs git.
      path = [ config.nix.package pkgs.git ] ++ lib.optional cfg.ceph.enable pkgs.ceph-client
        ++ lib.optional cfg.network.enable pkgs.dnsmasq;
      environment = {
        NIX_CONFIG = "extra-experimental-features = nix-command flakes";
        # Builds and GC roots go through nix-daemon, so the store can stay read-only here.
        NIX_REMOTE = "daemon";
      };
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = lib.concatStringsSep " " ([ "${cfg.package}/bin/blixard" "serve" "--config" "${configFile}" ]
          ++ map lib.escapeShellArg cfg.extraArgs);
        Restart = "on-failure";
        RestartSec = "2s";
        # Exit 3: this node's Raft data is lost or corrupt; restarting cannot help (docs/reliability.md).
        RestartPreventExitStatus = 3;
        User = serviceUser;
        Group = serviceUser;
        # What the daemon starts must outlive a daemon restart, so the restarted agent adopts it instead of rebooting
        # every VM or cutting it off its disk: the VMs (process backend) and the volume daemons (qemu-storage-daemon,
        # both backends). Nix runs are the daemon's to stop: it kills their cgroups when it shuts down.
        KillMode = "process";
        LimitNOFILE = 65536;
        # Each nix evaluation or build runs in its own child cgroup, so a timeout kills every builder it started
        # (import-from-derivation builders run in their own session): the daemon needs its subtree delegated.
        Delegate = true;

        ProtectHome = true;
        PrivateTmp = true;
        NoNewPrivileges = true;
        ProtectSystem = "full";
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictSUIDSGID = true;
        RestrictRealtime = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
      } // lib.optionalAttrs cfg.network.enable {
        # dnsmasq rereads its files as nobody, and dataDir is 0750: its
        # files (--dns-dir) live in a runtime directory kept across
        # restarts, so leases survive a daemon restart.
        RuntimeDirectory = "blixard-netdns";
        RuntimeDirectoryMode = "0755";
        RuntimeDirectoryPreserve = "yes";
      } // (if cfg.dataDir == "/var/lib/blixard" then {
        StateDirectory = "blixard";
        StateDirectoryMode = "0750";
      } else {
        ReadWritePaths = [ cfg.dataDir ];
      });
    };
  };
}
