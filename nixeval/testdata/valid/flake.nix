{
  description = "nixeval test fixture: a valid schema-v1 cluster";

  outputs = { self }:
    let
      runner = name: builtins.derivation {
        inherit name;
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "echo ${name} > $out" ];
      };
      # An untracked extra.nix (a function of `runner` returning VMs) is only
      # seen through a path: flake reference, never at a git commit.
      extra = if builtins.pathExists ./extra.nix then import ./extra.nix runner else { };
    in
    {
      blixard = {
        cluster = "test";
        vms = {
          web = {
            runner = runner "web-runner";
            vcpu = 2;
            memMiB = 512;
            replicas = 2;
            placement.antiAffinity = [ "web" ];
          };
          db = {
            runner = runner "db-runner";
            vcpu = 1;
            memMiB = 1024;
            volumes.data.sizeMiB = 64;
            autostart = false;
          };
        } // extra;
        functions.hello = {
          runner = runner "hello-runner";
          vcpu = 1;
          memMiB = 128;
          http = { host = "fn.example.org"; path = "/hello"; port = 8080; };
          maxInstances = 2;
        };
      };
    };
}
