# Real microVMs without nixpkgs and without network: a runner is a
# builtins.derivation whose out path has bin/microvm-run and
# bin/microvm-shutdown, the contract of microvm.nix's runners.
#
# The guest is a Debian cloud kernel and a busybox initramfs that answers
# HTTP on port 80, forwarded by qemu's user-mode network to 127.0.0.1:port;
# on a node with cluster networking (blixard serve --network writes
# network.env into the VM's state directory) its NIC is on the instance's
# tap instead and it takes its address by DHCP (see README.md, Networking).
# Either way is chosen when microvm-run starts, so one runner (one out
# path, whatever the machine) serves every replica and both kinds of node.
# Host tools (qemu, socat, busybox-static, cpio) and the kernel come from
# scripts/setup-microvm.sh; the build reads them by absolute path, so the
# nix sandbox must be off (as blixard's setup configures it).
#
#   let microvm = import ./microvm.nix; in
#   microvm.vm { name = "web"; port = 18080; version = "1"; }
#     → { runner = <derivation>; vcpu = 1; memMiB = 128; }  (a blixard VM entry)
#
# Volumes: `vm { …; volumes.data = { sizeMiB = 64; }; }` declares a Ceph RBD
# volume (the entry gets `volumes`) and gives the runner a virtio-blk disk
# per volume, read over NBD from the unix socket volumes/VOL in the VM's
# state directory, where blixard's agent attaches the locked image before
# it starts the VM. In the guest the disk is /dev/volumes/VOL, and its HTTP
# server writes and reads a marker on it:
#   GET /cgi-bin/write?VOL=MARKER   writes "MARKER\n" at the start of the disk
#   GET /cgi-bin/read?VOL           answers its first line
# (`runner { …; volumes = [ "data" ]; }` takes just the names.)
#
# Changing any argument (version is there for that) changes the out path,
# so blixard restarts exactly that VM.
let
  runner =
    { name
    , port
    , version ? "1"
    , memMiB ? 128
    , vcpu ? 1
      # Where scripts/setup-microvm.sh unpacks the kernel (links vmlinuz, modules).
    , kernelDir ? "/var/cache/blixard/kernel"
      # Names of the VM's volumes: one virtio-blk disk each, in this order.
    , volumes ? [ ]
      # blixard's guest agent (a static cmd/blixard-guest, a path): the
      # identity agent of the snapshot modes. null: the shell's (slower
      # under emulation: it starts four programs per restore).
    , guestAgent ? null
    }:
    builtins.derivation ({
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ ./build-runner.sh ];
      guestInit = ./guest-init.sh;
      vmName = name;
      inherit version kernelDir;
      port = toString port;
      memMiB = toString memMiB;
      vcpu = toString vcpu;
    } // (if volumes == [ ] then { } else {
      # A list becomes its elements separated by spaces.
      inherit volumes;
    }) // (if guestAgent == null then { } else {
      # A path: copied into the store, so the runner changes with it.
      inherit guestAgent;
    }));
in
{
  inherit runner;

  # vm: a blixard VM entry (schema v1) whose runner gets the same memory,
  # vCPUs and volumes (volumes.<vol> = { sizeMiB; pool ? "rbd"; }).
  vm = { name, port, version ? "1", memMiB ? 128, vcpu ? 1, kernelDir ? "/var/cache/blixard/kernel", volumes ? { }, guestAgent ? null }: {
    runner = runner {
      inherit name port version memMiB vcpu kernelDir guestAgent;
      volumes = builtins.attrNames volumes;
    };
    inherit vcpu memMiB;
  } // (if volumes == { } then { } else { inherit volumes; });
}
