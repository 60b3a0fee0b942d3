# nixeval applies this function to a cluster flake's `blixard` output before
# `nix eval --json` prints it.
#
# `nix eval --json` prints any attribute set with an outPath (a derivation)
# as just its out path, which loses the .drv. So each VM's and function's
# `runner` that is a derivation becomes { drv = drvPath; out = outPath; },
# and so does the `runner` of each entry of a VM's `instances`.
#
# Everything else passes through unchanged, and this function never throws
# on a value of the wrong shape: the Go decoder (package spec) reports it
# with its attribute path ("vms.web.runner: must be a derivation, …").
spec:
let
  isDerivation = r: builtins.isAttrs r && r ? drvPath;
  runner = r: if isDerivation r then { drv = r.drvPath; out = r.outPath; } else r;
  withRunner = _: e: if builtins.isAttrs e && e ? runner then e // { runner = runner e.runner; } else e;
  entry = name: e:
    if builtins.isAttrs e && builtins.isAttrs (e.instances or null)
    then withRunner name e // { instances = builtins.mapAttrs withRunner e.instances; }
    else withRunner name e;
  entries = s: if builtins.isAttrs s then builtins.mapAttrs entry s else s;
in
if builtins.isAttrs spec then
  spec
  // (if spec ? vms then { vms = entries spec.vms; } else { })
  // (if spec ? functions then { functions = entries spec.functions; } else { })
else
  spec
