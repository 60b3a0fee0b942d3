# The cluster of node/functions_snapshot_lab_test.go: two functions served
# by the demo's real qemu microVM (examples/demo; the test copies
# microvm.nix, build-runner.sh, guest-init.sh and blixard's guest agent
# beside this file and writes settings.nix: { kernelDir; guestAgent; }). snap restores its cold starts from a
# memory snapshot, up to two instances at once, each with its own identity;
# plain, the same guest under another name, boots every time (the
# comparison). snap keeps its next two instances restored ahead
# (restoreAhead = 2; node 1 runs --restore-pool 2), so a burst's second
# instance finds one too. snap2 is snap's runner under another route,
# restoring from the same snapshot with restoreAhead = 0: its cold starts
# restore into a runner spawned at the request (the other comparison).
# Concurrency 1, so a held request makes a second one scale out. The ports are the user-mode forwards the runners use only without
# cluster networking.
{
  outputs = { self }:
    let
      microvm = import ./microvm.nix;
      settings = import ./settings.nix;
      fn = name: port: snapshot: maxInstances: {
        inherit (microvm.vm { inherit name port; inherit (settings) kernelDir guestAgent; }) runner vcpu memMiB;
        http = { host = "${name}.lab.test"; path = "/"; port = 80; };
        inherit maxInstances;
        concurrency = 1;
        idleTimeout = "3s";
        inherit snapshot;
      };
    in
    {
      blixard = {
        cluster = "snaplab";
        network.cidr = "10.125.0.0/24";
        functions.snap = fn "snap" 18190 true 2 // { restoreAhead = 2; };
        functions.snap2 = fn "snap" 18190 true 1 // { http = { host = "snap2.lab.test"; path = "/"; port = 80; }; restoreAhead = 0; };
        functions.plain = fn "plain" 18191 false 1;
      };
    };
}
