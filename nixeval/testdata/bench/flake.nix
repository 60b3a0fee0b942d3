{
  description = "nixeval benchmark fixture: a cluster of 20 VMs";

  outputs = { self }:
    let
      runner = name: builtins.derivation {
        inherit name;
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "echo ${name} > $out" ];
      };
      vm = i: {
        name = "vm-${toString i}";
        value = {
          runner = runner "vm-${toString i}-runner";
          vcpu = 1 + builtins.div i 10;
          memMiB = 256 * (1 + i);
          placement.labels.zone = if i < 10 then "a" else "b";
          volumes.data.sizeMiB = 1024;
        };
      };
    in
    {
      blixard = {
        cluster = "bench";
        vms = builtins.listToAttrs (builtins.genList vm 20);
      };
    };
}
