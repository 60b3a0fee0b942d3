#!/usr/bin/env bash
# Installs what is missing, builds blixard, and starts a local 3-node cluster
# on 127.0.0.1 that follows a git repository made from examples/demo (real
# qemu microVMs). Ctrl-C stops every node and then the VMs (a real node's
# VMs outlive its blixard; the demo cleans up after itself).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
scripts/setup.sh
scripts/setup-microvm.sh

work=${BLIXARD_DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blixard-demo-cluster}
mkdir -p "$work"
echo "demo: building blixard" >&2
go build -o "$work/blixard" ./cmd/blixard

# The "remote" repository and a work tree you can edit and push from.
if [ ! -d "$work/cluster.git" ]; then
	git init -q --bare -b main "$work/cluster.git"
	git init -q -b main "$work/cluster"
	cp -r examples/demo/. "$work/cluster/"
	git -C "$work/cluster" add .
	git -C "$work/cluster" -c user.name=demo -c user.email=demo@localhost commit -q -m "demo cluster"
	git -C "$work/cluster" remote add origin "$work/cluster.git"
	git -C "$work/cluster" push -q origin main
fi

members=1=127.0.0.1:17001,2=127.0.0.1:17002,3=127.0.0.1:17003
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	# A stopped blixard leaves its VMs running (they belong to the host); the
	# demo stops them too, through their recorded PIDs.
	for f in "$work"/node*/vms/*/pid; do
		[ -f "$f" ] && kill -TERM "$(cut -d' ' -f1 "$f")" 2>/dev/null || true
	done
}
trap cleanup EXIT INT TERM
for i in 1 2 3; do
	labels="zone=z$i"
	"$work/blixard" serve --node-id "$i" --data-dir "$work/node$i" \
		--raft-addr "127.0.0.1:1700$i" --api-addr "127.0.0.1:707$i" --members "$members" \
		--repo "file://$work/cluster.git" --ref main --poll 2s \
		--capacity-vcpu 4 --capacity-mem-mib 2048 --labels "$labels" --state-dir "$work/node$i/vms" \
		--insecure \
		>"$work/node$i.log" 2>&1 &
	pids+=($!)
done

export BLIXARD_SERVER=127.0.0.1:7071
for _ in $(seq 1 120); do
	if "$work/blixard" status --json 2>/dev/null | grep -q '"commit"'; then break; fi
	sleep 0.5
done
"$work/blixard" status
cat <<MSG

Three nodes run on 127.0.0.1 (API ports 7071-7073, logs in $work/node*.log).
Try, in another shell:
  export BLIXARD_SERVER=127.0.0.1:7071 PATH=$work:\$PATH
  curl 127.0.0.1:18080                        # the web VM (boots in ~5 s under emulation)
  cd $work/cluster && \$EDITOR flake.nix      # e.g. bump web's version
  blixard plan                                # what would change (exit 2 = changes)
  git commit -am change && git push           # the cluster commits a new plan
  blixard status; blixard history; blixard nodes
Press Ctrl-C to stop the cluster.
MSG
wait
