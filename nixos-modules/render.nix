# The pure half of the services.blixard module: maps the module's evaluated
# options (config.services.blixard) to the settings object `blixard serve
# --config FILE` reads. Builtins only, so tests evaluate it with plain
# `nix eval` and no nixpkgs.
#
# The daemon's contract: a JSON object whose keys are `blixard serve` flag
# names without the leading dashes and whose values are strings, numbers or
# booleans (lists of strings for repeatable flags such as "trust"); unknown
# keys are an error; flags given on the command line win.
#
# cfg.settings is merged last, so it can set any other flag (e.g.
# "raft-logdb", "heartbeat", "eval-timeout", "join") or override a rendered
# one; a setting of null removes the key, leaving the daemon's default.
cfg:
let
  optional = cond: attrs: if cond then attrs else { };
  nonNull = name: value: optional (value != null) { ${name} = value; };

  # "1=10.0.0.1:7001,2=…", ordered by numeric id so every node renders the
  # same string.
  renderMembers = members:
    if builtins.isList members then builtins.concatStringsSep "," members
    else
      let
        ids = builtins.sort (a: b: builtins.fromJSON a < builtins.fromJSON b) (builtins.attrNames members);
      in
      builtins.concatStringsSep "," (map (id: "${id}=${members.${id}}") ids);

  renderLabels = labels:
    builtins.concatStringsSep "," (map (k: "${k}=${labels.${k}}") (builtins.attrNames labels));

  repo = cfg.repository;
  tls = cfg.tls or { };
  # TLS for the API and Raft, or plain and unauthenticated when asked for.
  transport =
    if cfg.insecure or false then { insecure = true; }
    else
      nonNull "tls-ca" (tls.caFile or null)
      // nonNull "tls-cert" (tls.certFile or null)
      // nonNull "tls-key" (tls.keyFile or null);
  members = renderMembers (cfg.members or { });
  labels = renderLabels (cfg.labels or { });
  net = cfg.network or { };
  notify = cfg.notify or { };
  cache = cfg.cache or { };

  rendered =
    {
      "node-id" = cfg.nodeId;
      "data-dir" = toString cfg.dataDir;
      "api-addr" = cfg.apiAddress;
      "ref" = repo.ref;
      "attr" = repo.attr;
      "poll" = repo.pollInterval;
      "backend" = cfg.backend;
      "capacity-vcpu" = cfg.capacity.vcpu;
      "capacity-mem-mib" = cfg.capacity.memMiB;
    }
    // transport
    // nonNull "raft-addr" (cfg.raftAddress or null)
    // optional (cfg.agentOnly or false) { "agent-only" = true; servers = builtins.concatStringsSep "," (cfg.servers or [ ]); }
    // nonNull "repo" (repo.url or null)
    // nonNull "webhook-secret-file" (repo.webhookSecretFile or null)
    // optional (members != "") { inherit members; }
    // optional (labels != "") { inherit labels; }
    // optional ((repo.trust or [ ]) != [ ]) { trust = repo.trust; }
    // nonNull "git-ssh-key" (repo.sshKeyFile or null)
    // nonNull "git-known-hosts" (repo.knownHostsFile or null)
    // nonNull "git-token-file" (repo.tokenFile or null)
    // nonNull "git-username" (repo.username or null)
    // nonNull "eval-max-memory-mib" ((cfg.evaluation or { }).maxMemoryMiB or null)
    // nonNull "eval-user" ((cfg.evaluation or { }).user or null)
    // optional ((notify.urls or [ ]) != [ ]) { "notify-url" = notify.urls; }
    // nonNull "notify-url-file" (notify.urlFile or null)
    // nonNull "notify-secret-file" (notify.secretFile or null)
    // optional ((notify.kinds or [ ]) != [ ]) { "notify-kind" = notify.kinds; }
    // nonNull "cache-addr" (cache.address or null)
    // nonNull "cache-url" (cache.url or null)
    // nonNull "cache-key-file" (cache.keyFile or null)
    // optional (cache.builder or false) { builder = true; }
    // optional ((cache.substituters or [ ]) != [ ]) { substituter = cache.substituters; }
    // optional ((cache.trustedKeys or [ ]) != [ ]) { "trusted-key" = cache.trustedKeys; }
    // nonNull "push-to" (cache.pushTo or null)
    // optional (net.enable or false) (
      {
        network = true;
        bridge = net.bridge or "blixard0";
        "vxlan-id" = net.vxlanId or 4242;
        "vxlan-port" = net.vxlanPort or 4789;
        "dns-dir" = "/run/blixard-netdns";
        masquerade = net.masquerade or true;
        "restore-pool" = net.restorePool or 4;
      }
      // nonNull "underlay-addr" (net.underlayAddress or null)
      // nonNull "ingress-addr" (net.ingressAddress or null)
    )
    // optional (cfg.ceph.enable or false) (
      { "ceph-user" = cfg.ceph.user; "volume-attach" = cfg.ceph.volumeAttach or "auto"; }
      // nonNull "ceph-keyring-file" (cfg.ceph.keyringFile or null)
      // nonNull "ceph-config-file" (cfg.ceph.configFile or null)
    );

  merged = rendered // (cfg.settings or { });
in
builtins.removeAttrs merged (builtins.filter (k: merged.${k} == null) (builtins.attrNames merged))
