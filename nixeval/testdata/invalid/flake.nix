{
  description = "nixeval test fixture: schema-v1 violations, one per attribute";

  outputs = { self }:
    let
      runner = name: builtins.derivation {
        inherit name;
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "echo ${name} > $out" ];
      };
      web = { runner = runner "web-runner"; vcpu = 1; memMiB = 256; };
      cluster = vms: { cluster = "test"; inherit vms; };
    in
    {
      unknownField = cluster { web = web // { placment.nodes = [ 1 ]; }; };
      wrongType = cluster { web = web // { vcpu = "2"; }; };
      badName = cluster { Web = web; };
      zeroMemory = cluster { web = web // { memMiB = 0; }; };
      duplicateReplica = cluster { web = web // { replicas = 2; }; web-0 = web; };
      runnerOutPath = cluster { web = web // { runner = (runner "web-runner").outPath; }; };
      runnerPlainSet = cluster { web = web // { runner = { name = "web-runner"; }; }; };
      runnerMissing = cluster { web = removeAttrs web [ "runner" ]; };
      vmNotAttrs = cluster { web = 3; };
      vmIsDerivation = cluster { web = runner "web-runner"; };
      notAttrs = [ web ];
      unknownAntiAffinity = cluster { web = web // { placement.antiAffinity = [ "db" ]; }; };
    };
}
