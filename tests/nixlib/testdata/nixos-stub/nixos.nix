# A stand-in for NixOS, for offline tests: nixpkgs' real module system
# (`lib`, passed in: nixpkgs' lib is not part of this repository; the tests
# take it from the cache scripts/setup-nixlib.sh fills) with stub
# declarations of only the NixOS options that Blixard's module, microvm.nix's
# host module and the example flake set, and a stub `pkgs`.
#
# What it checks: option names and types of services.blixard and of
# microvm.nix's host module, the modules' definitions merging with the stubs,
# assertions (evaluating config.system.build.toplevel throws "Failed
# assertions" like NixOS), and the config file, ExecStart and units the
# modules produce.
#
# What it models of NixOS's systemd module (nixos/lib/systemd-lib.nix,
# nixos/modules/system/boot/systemd.nix), so that real unit files can be
# rendered from it: a service's requires/wants/after/before/partOf/… and
# description become its unitConfig; script, preStart, postStart, preStop,
# postStop and reload become Exec* lines running a script derivation
# ("unit-script-NAME", `set -e` then the text, like makeJobScript); path
# (with NixOS's default coreutils, findutils, gnugrep, gnused and systemd
# appended) becomes Environment=PATH; restartIfChanged = false becomes
# X-RestartIfChanged=false. config.system.build.units holds each unit's
# sections and text, config.system.build.tmpfiles the tmpfiles.d lines.
#
# What it does not model: any other NixOS option's semantics; systemd itself;
# the [Install] section (NixOS makes .wants/.requires links instead; here
# wantedBy/requiredBy are rendered as [Install] lines, for a test systemd
# that enables units); restart/reload triggers (X-Restart-Triggers);
# pkgs.formats.json's jq-based generator (here builtins.toFile); packages:
# every package is an empty /bin/sh derivation, except that the few tools
# systemd units run (coreutils, findutils, grep, sed, systemd, bash) are
# derivations linking the build host's programs of those names, and
# writeShellScript(Bin) writes the script with #!/bin/sh (pkgs.runtimeShell).
# buildGoModule builds nothing: it checks its arguments and keeps them as
# attributes of a fake derivation.
{ lib }:
let
  inherit (lib) mkOption types;

  system = "x86_64-linux";

  fakeDrv = name: builtins.derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin" ];
  };

  # A package whose bin/ links the build host's programs of these names
  # (those it has): unit scripts run on a Debian test machine can use them.
  hostTools = name: programs: builtins.derivation {
    inherit name system;
    builder = "/bin/sh";
    PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    programs = builtins.concatStringsSep " " programs;
    args = [ "-c" ''
      mkdir -p $out/bin
      for p in $programs; do
        if f=$(command -v "$p"); then ln -s "$f" "$out/bin/$p"; fi
      done
    '' ];
  };

  # nixpkgs' writeShellScript (dest "") and writeShellScriptBin (dest
  # "/bin/NAME"), without shellcheck.
  writeScript = name: dest: text: builtins.derivation {
    inherit name system dest;
    builder = "/bin/sh";
    text = "#!${pkgs.runtimeShell}\n${text}";
    passAsFile = [ "text" ];
    args = [ "-c" ''
      target=$out$dest
      /bin/mkdir -p "''${target%/*}"
      /bin/cp "$textPath" "$target"
      /bin/chmod 0555 "$target"
    '' ];
  };

  pkgs = {
    inherit lib system;
    callPackage = lib.callPackageWith pkgs;
    # Checks the arguments a real buildGoModule needs and returns a fake drv
    # with the arguments the tests look at.
    buildGoModule = args:
      assert builtins.isString args.pname && builtins.isString args.version;
      assert args ? vendorHash && args ? src;
      fakeDrv "${args.pname}-${args.version}" // {
        inherit (args) pname version vendorHash;
        passthru = args.passthru or { };
        meta = args.meta or { };
        tags = args.tags or [ ];
        env = args.env or { };
        buildInputs = args.buildInputs or [ ];
        subPackages = args.subPackages or [ ];
      };
    stdenv.hostPlatform.system = system;
    path = /var/empty/nixpkgs-stub; # pkgs.path: a path that is never read
    runtimeShell = "/bin/sh";
    writeShellScript = name: writeScript name "";
    writeShellScriptBin = name: writeScript name "/bin/${name}";
    writeText = name: text: builtins.toFile name text;

    git = fakeDrv "git";
    ceph = fakeDrv "ceph";
    ceph-client = fakeDrv "ceph-client";
    nix = fakeDrv "nix";
    jq = fakeDrv "jq";
    openssh = fakeDrv "openssh";
    qemu-utils = fakeDrv "qemu-utils";
    iproute2 = fakeDrv "iproute2";
    dnsmasq = fakeDrv "dnsmasq";
    coreutils = hostTools "coreutils" [
      "basename" "cat" "chmod" "chown" "cp" "cut" "dirname" "echo" "env" "false" "head" "id" "ln" "ls" "mkdir"
      "mktemp" "mv" "printf" "readlink" "realpath" "rm" "rmdir" "sleep" "sort" "stat" "tail" "test" "touch" "tr"
      "true" "uniq" "wc"
    ];
    findutils = hostTools "findutils" [ "find" "xargs" ];
    gnugrep = hostTools "gnugrep" [ "grep" ];
    gnused = hostTools "gnused" [ "sed" ];
    systemd = hostTools "systemd" [ "systemctl" "systemd-notify" "systemd-run" "journalctl" ];
    bash = hostTools "bash" [ "bash" "sh" ];

    formats.json = { }: {
      type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.int types.bool types.float ]));
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
  };

  any = mkOption { type = types.anything; default = { }; };
  list = elem: mkOption { type = types.listOf elem; default = [ ]; };
  bool = default: mkOption { type = types.bool; inherit default; };
  str = default: mkOption { type = types.str; inherit default; };
  lines = mkOption { type = types.lines; default = ""; };

  # A value of unitConfig/serviceConfig, merged like NixOS's unitOption: lists
  # concatenate, a single value must be defined once or identically.
  atom = v: v == null || builtins.isBool v || builtins.isString v || builtins.isInt v || builtins.isFloat v
    || builtins.isPath v || lib.isDerivation v;
  unitOption = lib.mkOptionType {
    name = "systemd option";
    check = v: atom v || (builtins.isList v && builtins.all atom v);
    merge = loc: defs:
      if builtins.any (d: builtins.isList d.value) defs
      then lib.concatMap (d: lib.toList d.value) defs
      else lib.mergeEqualOption loc defs;
  };

  # nixos/lib/systemd-lib.nix's makeJobScript: the script as an executable.
  makeJobScript = name: text:
    let
      scriptName = builtins.replaceStrings [ "\\" "@" ] [ "-" "_" ] (builtins.replaceStrings [ "\\" ] [ "\\\\" ] name);
      out = writeScript "unit-script-${scriptName}" "/bin/${scriptName}" "set -e\n${text}\n";
    in
    "${out}/bin/${scriptName}";

  # The options every unit has, and the [Unit] settings NixOS derives from
  # them (systemd-lib.nix's unitConfig).
  commonUnit = { name, config, ... }: {
    options = {
      enable = bool true;
      description = str "";
      documentation = list types.str;
      requires = list types.str;
      wants = list types.str;
      upholds = list types.str;
      after = list types.str;
      before = list types.str;
      bindsTo = list types.str;
      partOf = list types.str;
      conflicts = list types.str;
      requisite = list types.str;
      onFailure = list types.str;
      onSuccess = list types.str;
      wantedBy = list types.str;
      requiredBy = list types.str;
      upheldBy = list types.str;
      aliases = list types.str;
      unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      restartTriggers = list types.unspecified;
      reloadTriggers = list types.unspecified;
      overrideStrategy = mkOption { type = types.enum [ "asDropinIfExists" "asDropin" ]; default = "asDropinIfExists"; };
    };
    config.unitConfig =
      let
        joined = opt: key: lib.optionalAttrs (config.${opt} != [ ]) { ${key} = toString config.${opt}; };
      in
      joined "requires" "Requires" // joined "wants" "Wants" // joined "upholds" "Upholds"
      // joined "after" "After" // joined "before" "Before" // joined "bindsTo" "BindsTo"
      // joined "partOf" "PartOf" // joined "conflicts" "Conflicts" // joined "requisite" "Requisite"
      // lib.optionalAttrs (config.description != "") { Description = config.description; }
      // joined "documentation" "Documentation" // joined "onFailure" "OnFailure" // joined "onSuccess" "OnSuccess";
  };

  service = { name, config, ... }: {
    imports = [ commonUnit ];
    options = {
      serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      environment = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ])); default = { }; };
      path = list (types.oneOf [ types.package types.str ]);
      script = lines;
      scriptArgs = str "";
      preStart = lines;
      postStart = lines;
      preStop = lines;
      postStop = lines;
      reload = lines;
      restartIfChanged = bool true;
      reloadIfChanged = bool false;
      stopIfChanged = bool true;
      startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
    };
    config = lib.mkMerge [
      {
        path = lib.mkAfter [ pkgs.coreutils pkgs.findutils pkgs.gnugrep pkgs.gnused pkgs.systemd ];
        environment.PATH = "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
      }
      (lib.mkIf (config.preStart != "") { serviceConfig.ExecStartPre = [ (makeJobScript "${name}-pre-start" config.preStart) ]; })
      (lib.mkIf (config.script != "") { serviceConfig.ExecStart = makeJobScript "${name}-start" config.script + " " + config.scriptArgs; })
      (lib.mkIf (config.postStart != "") { serviceConfig.ExecStartPost = [ (makeJobScript "${name}-post-start" config.postStart) ]; })
      (lib.mkIf (config.reload != "") { serviceConfig.ExecReload = makeJobScript "${name}-reload" config.reload; })
      (lib.mkIf (config.preStop != "") { serviceConfig.ExecStop = makeJobScript "${name}-pre-stop" config.preStop; })
      (lib.mkIf (config.postStop != "") { serviceConfig.ExecStopPost = makeJobScript "${name}-post-stop" config.postStop; })
    ];
  };

  # nixos/lib/systemd-lib.nix's attrsToSection: one KEY=VALUE line per value.
  toOption = x: if x == true then "true" else if x == false then "false" else toString x;
  attrsToSection = as: lib.concatStrings (lib.concatLists (lib.mapAttrsToList
    (k: v: map (x: "${k}=${toOption x}\n") (builtins.filter (x: x != null) (lib.toList v)))
    as));

  # A unit as sections (JSON-able) and as the text of its unit file.
  renderUnit = kind: def:
    let
      unit = def.unitConfig;
      section = if kind == "service" then
        let env = lib.filterAttrs (_: v: v != null) def.environment; in
        lib.optionalAttrs (env != { }) { Environment = lib.mapAttrsToList (k: v: "${k}=${toString v}") env; }
        // lib.optionalAttrs def.reloadIfChanged { X-ReloadIfChanged = true; }
        // lib.optionalAttrs (!def.reloadIfChanged && !def.restartIfChanged) { X-RestartIfChanged = false; }
        // lib.optionalAttrs (!def.stopIfChanged) { X-StopIfChanged = false; }
        // def.serviceConfig
      else { };
      install = lib.optionalAttrs (def.wantedBy != [ ]) { WantedBy = toString def.wantedBy; }
        // lib.optionalAttrs (def.requiredBy != [ ]) { RequiredBy = toString def.requiredBy; };
      # NixOS quotes Environment= values as JSON strings.
      serviceText = lib.concatMapStrings (e: "Environment=${builtins.toJSON e}\n") (section.Environment or [ ])
        + attrsToSection (removeAttrs section [ "Environment" ]);
    in
    {
      Unit = unit;
      ${if kind == "service" then "Service" else null} = section;
      Install = install;
      text = "[Unit]\n${attrsToSection unit}"
        + lib.optionalString (kind == "service") "\n[Service]\n${serviceText}"
        + lib.optionalString (install != { }) "\n[Install]\n${attrsToSection install}";
    };

  renderUnits = cfg:
    lib.mapAttrs' (n: def: lib.nameValuePair "${n}.service" (renderUnit "service" def))
      (lib.filterAttrs (_: d: d.enable) cfg.services)
    // lib.mapAttrs' (n: def: lib.nameValuePair "${n}.target" (renderUnit "target" def))
      (lib.filterAttrs (_: d: d.enable) cfg.targets);

  # tmpfiles.d lines from systemd.tmpfiles.rules and .settings (NixOS's
  # format: TYPE "PATH" MODE USER GROUP AGE ARGUMENT).
  renderTmpfiles = cfg: cfg.rules ++ lib.concatLists (lib.mapAttrsToList
    (_: paths: lib.concatLists (lib.mapAttrsToList
      (path: entries: lib.mapAttrsToList
        (type: e: "${type} \"${path}\" ${e.mode} ${e.user} ${e.group} ${e.age} ${e.argument}")
        entries)
      paths))
    cfg.settings);

  stubs = { config, ... }: {
    options = {
      assertions = list (types.submodule {
        options.assertion = mkOption { type = types.bool; };
        options.message = mkOption { type = types.str; };
      });
      warnings = list types.str;
      environment.systemPackages = list types.package;
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule {
          freeformType = types.attrsOf types.anything;
          options.text = mkOption { type = types.nullOr types.lines; default = null; };
        });
        default = { };
      };
      boot.kernelModules = list types.str;
      boot.loader = any;
      fileSystems = any;
      hardware.ksm.enable = bool false;
      networking.hostName = str "nixos";
      networking.useDHCP = bool true;
      networking.firewall.allowedTCPPorts = list types.port;
      networking.firewall.allowedUDPPorts = list types.port;
      networking.firewall.interfaces = mkOption {
        type = types.attrsOf (types.submodule {
          options.allowedTCPPorts = list types.port;
          options.allowedUDPPorts = list types.port;
        });
        default = { };
      };
      boot.kernel.sysctl = mkOption { type = types.attrsOf (types.oneOf [ types.bool types.str types.int ]); default = { }; };
      security.pam.loginLimits = list (types.attrsOf types.str);
      security.wrappers = mkOption { type = types.attrsOf (types.attrsOf types.str); default = { }; };
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          freeformType = types.attrsOf types.anything;
          options.extraGroups = list types.str;
        });
        default = { };
      };
      users.groups = mkOption { type = types.attrsOf types.anything; default = { }; };
      nix.package = mkOption { type = types.package; default = pkgs.nix; };
      nix.settings = any;
      services.openssh = any;
      services.nginx = any;
      services.postgresql = any;
      system.stateVersion = str "25.11";
      system.activationScripts = mkOption { type = types.attrsOf (types.either types.str types.attrs); default = { }; };
      system.build = mkOption { type = types.lazyAttrsOf types.unspecified; default = { }; };
      systemd.tmpfiles.rules = list types.str;
      systemd.tmpfiles.settings = mkOption {
        type = types.attrsOf (types.attrsOf (types.attrsOf (types.submodule {
          options = {
            mode = str "-";
            user = str "-";
            group = str "-";
            age = str "-";
            argument = str "";
          };
        })));
        default = { };
      };
      systemd.services = mkOption { type = types.attrsOf (types.submodule service); default = { }; };
      systemd.targets = mkOption { type = types.attrsOf (types.submodule commonUnit); default = { }; };
      virtualisation.libvirtd.enable = bool false;
    };

    config.system.build = {
      units = renderUnits config.systemd;
      tmpfiles = renderTmpfiles config.systemd.tmpfiles;
      toplevel =
        let
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
        in
        if failed != [ ]
        then throw "\nFailed assertions:\n${builtins.concatStringsSep "\n" (map (m: "- ${m}") failed)}"
        else fakeDrv "nixos-system-${config.networking.hostName}" // {
          # Like a real system build, depend on every unit and setting the
          # modules produced, so their option types are checked.
          drvPath = builtins.seq (builtins.toJSON {
            inherit (config.systemd) services targets tmpfiles;
            inherit (config.system.build) units;
            inherit (config.environment) systemPackages;
            inherit (config.networking) firewall;
            inherit (config.users) users groups;
            inherit (config.boot) kernelModules;
            inherit (config.boot.kernel) sysctl;
          }) (fakeDrv "nixos-system-${config.networking.hostName}").drvPath;
        };
    };
  };

  nixosSystem = { system ? "x86_64-linux", modules, specialArgs ? { } }:
    let
      result = lib.evalModules {
        inherit specialArgs;
        modules = modules ++ [ stubs { _module.args.pkgs = pkgs; } ];
      };
    in
    result // { inherit pkgs; };
in
{
  inherit nixosSystem pkgs;
}
