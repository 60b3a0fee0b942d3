#!/usr/bin/env bash
# The one-command demo: installs what is missing (nix, git, qemu, busybox, a
# Debian cloud kernel), builds blixard and runs `blixard dev` on a copy of
# examples/demo — two real qemu microVMs answering HTTP on 127.0.0.1:18080
# and :18081. Edit the copy's flake.nix and watch exactly that VM restart.
# Ctrl-C stops every VM and leaves no process behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
scripts/setup.sh
scripts/setup-microvm.sh

work=${BLIXARD_DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blixard-demo}
mkdir -p "$work"
echo "demo: building blixard" >&2
go build -o "$work/blixard" ./cmd/blixard
if [ ! -f "$work/cluster/flake.nix" ]; then
	mkdir -p "$work/cluster"
	cp -r examples/demo/. "$work/cluster/"
fi
cat >&2 <<MSG
demo: the cluster flake is $work/cluster/flake.nix. In another shell:
  curl 127.0.0.1:18080                       # web (first boot takes ~5 s under software emulation)
  \$EDITOR $work/cluster/flake.nix           # change web's version: only web restarts
  $work/blixard status                       # or: logs web -f, diff, history
MSG
exec "$work/blixard" dev "$work/cluster" --data-dir "$work/data"
