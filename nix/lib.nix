# Blixard's Nix library: the `lib` output of Blixard's flake.
#
# Builtins only, no inputs (no nixpkgs): a cluster flake, and offline tests,
# can use it as `import ./nix/lib.nix` without fetching anything.
#
#   mkCluster { cluster; vms; functions ? { }; }
#       The value of a cluster flake's `blixard` output: schema v1, exactly
#       the attributes the daemon reads, runners as derivations. Each VM (and
#       function) entry is either a schema-v1 attrset, checked and passed
#       through, or `{ nixosConfiguration = …; replicas; placement; volumes;
#       autostart; health; instanceRunners ? true; }`, from which vcpu and memMiB
#       are read (config.microvm.{vcpu,mem}). Wrong input throws a message
#       naming the VM and the attribute.
#
#       One runner per instance. For a nixosConfiguration VM, mkCluster
#       builds each instance (NAME, or NAME-0 … NAME-(replicas-1)) its own
#       runner: the configuration extended (extendModules, so pass the
#       result of nixpkgs.lib.nixosSystem) with the instance's identity,
#         microvm.interfaces = [ { type = "tap"; id = TAP; mac = MAC; } ];
#         networking.hostName = HOSTNAME;   (forced: replicas differ)
#         networking.useDHCP = true;        (a default: the node answers
#                                            DHCP for its own instances)
#       and writes `instances.INSTANCE = { runner; mac; tap; hostname; }`
#       (runner = that configuration's config.microvm.declaredRunner)
#       instead of one shared `runner`. MAC, TAP and HOSTNAME are
#       instanceIdentity's, the daemon's own derivation, so the identity
#       the cluster commits for the instance is the one in its runner.
#       Every instance is a NixOS evaluation of its own: with many replicas
#       the leader's evaluation takes as much longer. instanceRunners =
#       false keeps one shared runner (config.microvm.declaredRunner,
#       unchanged) and lets the daemon derive identities the guest does not
#       know; the tap NIC is then the configuration's business.
#
#       A schema-v1 entry may carry `instances` itself (runner, mac, tap,
#       hostname per instance, each optional; the daemon checks them); with
#       it, `runner` may be left out when every instance names one.
#
#   instanceIdentity cluster instance
#       { mac; tap; hostname; } of an instance as the daemon derives it
#       (replicated.DeriveMAC, DeriveTap and DeriveHostname, attempt 0):
#       h = builtins.hashString "sha256" "CLUSTER/INSTANCE"; mac is "02:"
#       and h's first ten hex digits in pairs (locally administered
#       unicast); tap is "bx" and h's digits 10 to 22 (15 characters, Linux's
#       limit); hostname is the instance name when it is a DNS label, else
#       the name without trailing '-' (cut to 56 characters), '-' and h's
#       digits 23 to 28.
#   instanceNames name replicas
#       [ name ] for replicas <= 1, else [ "name-0" … "name-(replicas-1)" ].
#   instanceModule cluster instance
#       The NixOS module mkCluster adds to an instance's configuration (its
#       tap NIC, hostname and DHCP, above), for building one by hand.
#
#   volumeModule { name; volumes; }
#       A NixOS module for a microvm.nix guest: one `microvm.volumes` entry
#       per Blixard volume, at the stable attach path (volumePath) with
#       autoCreate = false (the node agent creates and maps the RBD image;
#       microvm.nix must not create a file there). mkCluster cannot change an
#       already evaluated nixosConfiguration, so add this module to the VM's
#       `modules` and give mkCluster the same `volumes`; mkCluster checks that
#       the configuration carries the expected paths.
#
#       The contract with the node agent (`blixard serve
#       --volume-attach=kernel`, the production path; `auto` picks it when
#       the host kernel has its rbd driver: boot.kernelModules = [ "rbd" ]):
#       before it starts the VM, the agent maps the RBD image with the
#       kernel client (`rbd device map --exclusive`, which takes the image's
#       exclusive lock for this host) and makes volumePath NAME VOL a symlink
#       to the mapped block device /dev/rbdN, which it gives the owner and
#       group of the VM's state directory (microvm:kvm, the user the runner
#       runs as). microvm.nix's qemu runner opens `image` as a raw drive
#       (-drive file=IMAGE,format=raw) and qemu follows the link to the
#       device. The link and the mapping stay while the VM is assigned to
#       the host, across restarts of blixard; after the VM stopped the agent
#       unmaps the image and removes the link. (`--volume-attach=daemon`,
#       for kernels without rbd, puts a unix socket at the same path, served
#       over NBD by a qemu-storage-daemon: a runner must open it with qemu's
#       nbd driver, as examples/demo's does; a raw `image` cannot.)
#
#   volumePath name vol    "/var/lib/microvms/NAME/volumes/VOL" (while
#                          attached, a link to /dev/rbdN)
#   isValidName s          whether s matches ^[a-z][a-z0-9-]{0,62}$
#   schemaVersion          1
let
  schemaVersion = 1;

  # The daemon's name rule: names become systemd unit names, directory names
  # and RBD image names.
  namePattern = "[a-z][a-z0-9-]{0,62}";
  isValidName = s: builtins.isString s && builtins.match namePattern s != null;

  # spec.IsDNSLabel: 1–63 of [a-z0-9-], not starting or ending with '-'.
  isDNSLabel = s: builtins.match "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" s != null;

  instanceNames = name: replicas:
    if replicas <= 1 then [ name ]
    else builtins.genList (i: "${name}-${toString i}") replicas;

  # The daemon's derivation at attempt 0 (replicated.DeriveMAC, DeriveTap,
  # DeriveHostname); tests/nixlib checks that both agree.
  instanceIdentity = cluster: instance:
    let
      h = builtins.hashString "sha256" "${cluster}/${instance}";
      hex = from: len: builtins.substring from len h;
      trimDashes = s: let m = builtins.match "(.*[^-])-*" s; in if m == null then "" else builtins.head m;
      base =
        let b = trimDashes instance;
        in if builtins.stringLength b > 56 then trimDashes (builtins.substring 0 56 b) else b;
    in
    {
      mac = "02:" + builtins.concatStringsSep ":" (builtins.genList (i: hex (2 * i) 2) 5);
      tap = "bx" + hex 10 13;
      hostname =
        if isDNSLabel instance then instance
        else (if base == "" then "vm" else base) + "-" + hex 23 6;
    };

  # lib.mkOverride without nixpkgs: the module system's own marker.
  mkOverride = priority: content: { _type = "override"; inherit priority content; };

  # What an instance's configuration gets on top of the VM's: its tap NIC,
  # its hostname (forced over the configuration's, which all replicas
  # share) and DHCP unless the configuration says otherwise.
  identityModule = id: {
    microvm.interfaces = [{ type = "tap"; id = id.tap; mac = id.mac; }];
    networking.hostName = mkOverride 50 id.hostname; # mkForce
    networking.useDHCP = mkOverride 1000 true; # mkDefault
  };
  instanceModule = cluster: instance: identityModule (instanceIdentity cluster instance);

  # microvm.nix's state directory (microvm.host's stateDir default); the node
  # agent attaches VOL of VM NAME here (see volumeModule for the contract).
  stateDir = "/var/lib/microvms";
  volumePath = name: vol: "${stateDir}/${name}/volumes/${vol}";

  defaultPool = "rbd";

  fail = where: msg: throw "blixard.lib.mkCluster: ${where}: ${msg}";

  isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";

  describe = v:
    if isDerivation v then "a derivation"
    else if builtins.isString v then "the string \"${v}\""
    else if builtins.isInt v || builtins.isFloat v then "the number ${toString v}"
    else if builtins.isBool v then (if v then "true" else "false")
    else if v == null then "null"
    else builtins.typeOf v;

  quoted = names: builtins.concatStringsSep ", " names;

  # Throws when attrs has a key outside allowed; otherwise returns attrs.
  onlyKeys = where: allowed: hint: attrs:
    let
      unknown = builtins.filter (k: !(builtins.elem k allowed)) (builtins.attrNames attrs);
    in
    if unknown == [ ] then attrs
    else fail where "unknown attribute${if builtins.length unknown > 1 then "s" else ""} ${quoted unknown}; allowed: ${quoted allowed}${hint}";

  requireAttrs = where: v:
    if builtins.isAttrs v && !(isDerivation v) then v
    else fail where "want an attribute set, got ${describe v}";

  positiveInt = where: v:
    if builtins.isInt v && v > 0 then v
    else fail where "want a positive integer, got ${describe v}";

  nonNegativeInt = where: v:
    if builtins.isInt v && v >= 0 then v
    else fail where "want an integer >= 0, got ${describe v}";

  bool = where: v:
    if builtins.isBool v then v
    else fail where "want true or false, got ${describe v}";

  string = where: v:
    if builtins.isString v then v
    else fail where "want a string, got ${describe v}";

  runnerOf = where: v:
    if isDerivation v then v
    else fail where "want a derivation (microvm.nix: config.microvm.declaredRunner, or any derivation with bin/microvm-run), got ${describe v}";

  checkName = what: name:
    if isValidName name then name
    else throw "blixard.lib.mkCluster: ${what} name \"${name}\" is invalid: names must match ^${namePattern}$ (they become systemd unit, directory and RBD image names)";

  listOf = where: check: v:
    if builtins.isList v
    then builtins.genList (i: check "${where}[${toString i}]" (builtins.elemAt v i)) (builtins.length v)
    else fail where "want a list, got ${describe v}";

  mapAttrsChecked = where: check: v:
    builtins.mapAttrs (k: x: check "${where}.${k}" x) (requireAttrs where v);

  # placement = { nodes = [ ID ]; labels = { K = "V"; }; antiAffinity = [ NAME ];
  #               spreadBy = K; prefer.labels = { K = "V"; }; }
  # (the daemon checks that spreadBy and prefer.labels' names are label keys)
  checkPlacement = where: p:
    let
      p' = onlyKeys where [ "nodes" "labels" "antiAffinity" "spreadBy" "prefer" ] "" (requireAttrs where p);
    in
    builtins.mapAttrs
      (k: v:
        if k == "nodes" then listOf "${where}.nodes" positiveInt v
        else if k == "labels" then mapAttrsChecked "${where}.labels" string v
        else if k == "spreadBy" then string "${where}.spreadBy" v
        else if k == "prefer" then
          builtins.mapAttrs (_: l: mapAttrsChecked "${where}.prefer.labels" string l)
            (onlyKeys "${where}.prefer" [ "labels" ] "" (requireAttrs "${where}.prefer" v))
        else listOf "${where}.antiAffinity" (w: n: if isValidName n then n else fail w "want a VM name matching ^${namePattern}$, got ${describe n}") v)
      p';

  # Attributes a Blixard volume may carry in a nixosConfiguration entry that
  # only matter inside the guest (volumeModule reads them); mkCluster drops
  # them from its output.
  guestVolumeKeys = [ "mountPoint" "fsType" "label" "serial" "readOnly" "autoFormat" ];

  # volumes.VOL = { sizeMiB; pool ? "rbd"; }
  checkVolume = extraKeys: where: vol:
    let
      v = onlyKeys where ([ "sizeMiB" "pool" ] ++ extraKeys)
        (if extraKeys == [ ] then "" else " (the guest-side ones are read by volumeModule)")
        (requireAttrs where vol);
    in
    {
      sizeMiB = if v ? sizeMiB then positiveInt "${where}.sizeMiB" v.sizeMiB else fail where "sizeMiB is missing";
      pool = if v ? pool then string "${where}.pool" v.pool else defaultPool;
    };

  checkVolumes = extraKeys: where: vols:
    builtins.mapAttrs
      (vol: v: builtins.seq (checkName "volume" vol) (checkVolume extraKeys "${where}.${vol}" v))
      (requireAttrs where vols);

  vmKeys = [ "runner" "vcpu" "memMiB" "replicas" "placement" "volumes" "autostart" "instances" "health" "update" ];
  configVMKeys = [ "nixosConfiguration" "replicas" "placement" "volumes" "autostart" "instanceRunners" "health" "update" ];

  # instances.INSTANCE = { runner; mac; tap; hostname; } of a schema-v1
  # entry, each part optional; the daemon checks the names and values.
  checkInstances = where: v:
    mapAttrsChecked where
      (w: e:
        builtins.mapAttrs
          (k: x: if k == "runner" then runnerOf "${w}.runner" x else string "${w}.${k}" x)
          (onlyKeys w [ "runner" "mac" "tap" "hostname" ] "" (requireAttrs w e)))
      v;

  # The attributes both kinds of VM entry share, with the defaults the daemon
  # applies anyway written out: replicas = 1, autostart = true.
  commonVM = where: e: volumes:
    {
      replicas = if e ? replicas then positiveInt "${where}.replicas" e.replicas else 1;
      autostart = if e ? autostart then bool "${where}.autostart" e.autostart else true;
    }
    // (if e ? placement then { placement = checkPlacement "${where}.placement" e.placement; } else { })
    # health = { http = { port; path; }; or tcp.port; interval; … }: the
    # daemon checks it (schema v1, durations as strings such as "5s").
    // (if e ? health then { health = requireAttrs "${where}.health" e.health; } else { })
    # update = { maxUnavailable; canary; minHealthySeconds; progressDeadline;
    # autoRevert; }: rolling updates, checked by the daemon like health.
    // (if e ? update then { update = requireAttrs "${where}.update" e.update; } else { })
    // (if volumes != { } || e ? volumes then { inherit volumes; } else { });

  plainVM = where: e:
    let
      e' = onlyKeys where vmKeys " (or give nixosConfiguration = … instead of runner, vcpu and memMiB)" e;
    in
    {
      vcpu = if e' ? vcpu then positiveInt "${where}.vcpu" e'.vcpu else fail where "vcpu is missing";
      memMiB = if e' ? memMiB then positiveInt "${where}.memMiB" e'.memMiB else fail where "memMiB is missing";
    }
    // (if e' ? runner then { runner = runnerOf "${where}.runner" e'.runner; }
      else if e' ? instances then { }
      else fail where "runner is missing: set runner to a derivation (microvm.nix: config.microvm.declaredRunner), or give nixosConfiguration = …")
    // (if e' ? instances then { instances = checkInstances "${where}.instances" e'.instances; } else { })
    // commonVM where e' (if e' ? volumes then checkVolumes [ ] "${where}.volumes" e'.volumes else { });

  # The `config.microvm` of a microvm.nix nixosConfiguration, or a throw.
  microvmOf = where: nc:
    let
      cfg = (requireAttrs "${where}.nixosConfiguration" nc).config or
        (fail "${where}.nixosConfiguration" "has no `config`: pass the result of nixpkgs.lib.nixosSystem (e.g. self.nixosConfigurations.NAME)");
    in
    cfg.microvm or (fail "${where}.nixosConfiguration" "config.microvm is missing: add microvm.nixosModules.microvm to its modules");

  # Checks that the guest's microvm.volumes attach each Blixard volume at its
  # stable path with autoCreate = false.
  checkWiring = where: name: microvm: volumes:
    let
      declared = microvm.volumes or [ ];
      images = map (v: v.image or null) declared;
      missing = builtins.filter (vol: !(builtins.elem (volumePath name vol) images)) (builtins.attrNames volumes);
      autoCreated = builtins.filter
        (v: builtins.elem (v.image or null) (map (volumePath name) (builtins.attrNames volumes)) && (v.autoCreate or true))
        declared;
      add = "add (blixard.lib.volumeModule { name = \"${name}\"; volumes = …; }) to the VM's modules, with the same volumes you give mkCluster";
    in
    if missing != [ ] then
      fail "${where}.volumes" "the nixosConfiguration does not attach ${quoted missing}: config.microvm.volumes has no entry with image = ${quoted (map (vol: "\"${volumePath name vol}\"") missing)}; ${add}"
    else if autoCreated != [ ] then
      fail "${where}.volumes" "config.microvm.volumes entry ${quoted (map (v: "\"${v.image}\"") autoCreated)} has autoCreate = true; the node agent attaches the RBD image there, so microvm.nix must not create it: set autoCreate = false (volumeModule does)"
    else volumes;

  declaredRunnerOf = where: microvm:
    if microvm ? declaredRunner
    then runnerOf "${where}: config.microvm.declaredRunner" microvm.declaredRunner
    else fail where "config.microvm.declaredRunner is missing: is it a microvm.nix guest (microvm.nixosModules.microvm)?";

  # instances.INSTANCE of a nixosConfiguration VM: the configuration
  # extended with the instance's identity, and that identity.
  configInstances = where: cluster: name: nc: replicas:
    let
      extend =
        if nc ? extendModules then nc.extendModules
        else fail "${where}.nixosConfiguration" "has no extendModules, which mkCluster needs to build each instance a runner with its own tap, MAC and hostname: pass the result of nixpkgs.lib.nixosSystem, or set instanceRunners = false for one shared runner";
      instance = inst:
        let
          id = instanceIdentity cluster inst;
          iw = "${where}.instances.${inst}";
        in
        {
          name = inst;
          value = {
            runner = declaredRunnerOf "${iw}: the nixosConfiguration with the instance's identity"
              (microvmOf iw (extend { modules = [ (instanceModule cluster inst) ]; }));
            inherit (id) mac tap hostname;
          };
        };
    in
    builtins.listToAttrs (map instance (instanceNames name replicas));

  configVM = where: cluster: name: e:
    let
      e' = onlyKeys where configVMKeys
        " (runner, vcpu and memMiB come from the nixosConfiguration: set microvm.vcpu and microvm.mem there)" e;
      microvm = microvmOf where e'.nixosConfiguration;
      volumes = if e' ? volumes then checkVolumes guestVolumeKeys "${where}.volumes" e'.volumes else { };
      replicas = if e' ? replicas then positiveInt "${where}.replicas" e'.replicas else 1;
      perInstance = if e' ? instanceRunners then bool "${where}.instanceRunners" e'.instanceRunners else true;
      wired =
        if volumes != { } && replicas > 1
        then fail where "volumes with replicas = ${toString replicas} are not supported for a nixosConfiguration: volumeModule attaches ${volumePath name "VOL"}, the path of the instance named ${name}, and each replica has its own; declare one VM per volume owner instead"
        else checkWiring where name microvm volumes;
    in
    {
      vcpu = positiveInt "${where}.nixosConfiguration: config.microvm.vcpu" (microvm.vcpu or null);
      memMiB = positiveInt "${where}.nixosConfiguration: config.microvm.mem" (microvm.mem or null);
    }
    // (if perInstance
    then { instances = builtins.seq microvm (configInstances where cluster name e'.nixosConfiguration replicas); }
    else { runner = declaredRunnerOf "${where}.nixosConfiguration" microvm; })
    // commonVM where e' wired;

  checkVM = cluster: name: entry:
    let
      where = "vms.${name}";
      e = requireAttrs where entry;
    in
    builtins.seq (checkName "VM" name) (if e ? nixosConfiguration then configVM where cluster name e else plainVM where e);

  # functions.NAME = { runner; vcpu; memMiB; http = { host; path; port; };
  #   minInstances; maxInstances; concurrency; idleTimeout; snapshot; restoreAhead; prefetch; placement; }
  # or { nixosConfiguration; http; minInstances; … }, from which runner, vcpu
  # and memMiB are read (config.microvm.{declaredRunner,vcpu,mem}). The
  # daemon checks the values (host names, bounds, idleTimeout as a duration
  # string such as "60s", host and path unique across functions and ingress).
  functionOptionalKeys = [ "minInstances" "maxInstances" "concurrency" "idleTimeout" "snapshot" "restoreAhead" "prefetch" "placement" ];
  functionKeys = [ "runner" "vcpu" "memMiB" "http" ] ++ functionOptionalKeys;
  configFunctionKeys = [ "nixosConfiguration" "http" ] ++ functionOptionalKeys;

  checkFunction = name: entry:
    let
      where = "functions.${name}";
      e = requireAttrs where entry;
      fromConfig = e ? nixosConfiguration;
      e' = onlyKeys where (if fromConfig then configFunctionKeys else functionKeys)
        (if fromConfig then " (runner, vcpu and memMiB come from the nixosConfiguration: set microvm.vcpu and microvm.mem there)" else "") e;
      microvm = microvmOf where e'.nixosConfiguration;
      base =
        if fromConfig then {
          runner = runnerOf "${where}.nixosConfiguration: config.microvm.declaredRunner" (microvm.declaredRunner or null);
          vcpu = positiveInt "${where}.nixosConfiguration: config.microvm.vcpu" (microvm.vcpu or null);
          memMiB = positiveInt "${where}.nixosConfiguration: config.microvm.mem" (microvm.mem or null);
        } else {
          runner = if e' ? runner then runnerOf "${where}.runner" e'.runner else fail where "runner is missing";
          vcpu = if e' ? vcpu then positiveInt "${where}.vcpu" e'.vcpu else fail where "vcpu is missing";
          memMiB = if e' ? memMiB then positiveInt "${where}.memMiB" e'.memMiB else fail where "memMiB is missing";
        };
      http = onlyKeys "${where}.http" [ "host" "path" "port" ] ""
        (requireAttrs "${where}.http" (e'.http or (fail where "http is missing: set http = { host = \"fn.example.org\"; path = \"/…\"; port = 8080; }, where the function answers")));
      httpPath =
        let p = string "${where}.http.path" http.path;
        in if builtins.substring 0 1 p == "/" then p else fail "${where}.http.path" "want a path starting with \"/\", got \"${p}\"";
      optional = key: check: if e' ? ${key} then { ${key} = check "${where}.${key}" e'.${key}; } else { };
    in
    builtins.seq (checkName "function" name) base
    // {
      http = {
        host = if http ? host then string "${where}.http.host" http.host else fail "${where}.http" "host is missing";
        path = if http ? path then httpPath else fail "${where}.http" "path is missing";
        port = if http ? port then positiveInt "${where}.http.port" http.port else fail "${where}.http" "port is missing";
      };
    }
    // optional "minInstances" nonNegativeInt
    // optional "maxInstances" positiveInt
    // optional "concurrency" positiveInt
    // optional "idleTimeout" string
    // optional "snapshot" bool
    // optional "restoreAhead" nonNegativeInt
    // optional "prefetch" bool
    // optional "placement" checkPlacement;

  mkCluster = args:
    let
      a = onlyKeys "arguments" [ "cluster" "vms" "functions" ] "" (requireAttrs "arguments" args);
      cluster =
        if !(a ? cluster) then ""
        else if a.cluster == "" || isValidName a.cluster then a.cluster
        else fail "cluster" "\"${toString a.cluster}\" is invalid: the cluster name must match ^${namePattern}$ (it is part of RBD image names)";
      functions = requireAttrs "functions" (a.functions or { });
    in
    {
      inherit cluster;
      vms = builtins.mapAttrs (checkVM cluster) (requireAttrs "vms" (a.vms or { }));
    }
    // (if functions != { } then { functions = builtins.mapAttrs checkFunction functions; } else { });

  # A NixOS module (for a microvm.nix guest) attaching each Blixard volume at
  # its stable path. Guest-side attributes per volume: mountPoint (null: not
  # mounted), fsType (microvm.nix's default: ext4), label, serial, readOnly,
  # and autoFormat (default true when mounted): a new RBD image is blank, so
  # the guest formats it at first boot with fsType (NixOS
  # fileSystems.<mountPoint>.autoFormat only formats a device that holds no
  # file system).
  volumeModule = { name, volumes }:
    let
      where = "blixard.lib.volumeModule { name = \"${name}\"; }";
      checkedName =
        if isValidName name then name
        else throw "${where}: name must match ^${namePattern}$";
      entry = vol: v:
        {
          image = volumePath checkedName
            (if isValidName vol then vol else throw "${where}: volume name \"${vol}\" must match ^${namePattern}$");
          size = v.sizeMiB or (throw "${where}: volumes.${vol}.sizeMiB is missing");
          autoCreate = false;
          mountPoint = v.mountPoint or null;
        }
        // builtins.intersectAttrs { fsType = null; label = null; serial = null; readOnly = null; } v;
      mounted = builtins.filter (vol: (volumes.${vol}.mountPoint or null) != null && (volumes.${vol}.autoFormat or true))
        (builtins.attrNames volumes);
    in
    {
      microvm.volumes = map (vol: entry vol volumes.${vol}) (builtins.attrNames volumes);
    }
    // (if mounted == [ ] then { } else {
      fileSystems = builtins.listToAttrs (map
        (vol: { name = volumes.${vol}.mountPoint; value.autoFormat = true; })
        mounted);
    });
in
{
  inherit schemaVersion mkCluster volumeModule volumePath isValidName instanceIdentity instanceNames instanceModule;
}
