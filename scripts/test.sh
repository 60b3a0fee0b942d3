#!/usr/bin/env bash
# Runs Blixard's whole test suite: formatting, vet, staticcheck, and every Go
# test against the real nix, git and Dragonboat (installed by setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH

scripts/setup.sh
scripts/setup-nixlib.sh    # pinned nixpkgs lib + microvm.nix for tests/nixlib (from ../shared/third-party, else GitHub)
scripts/setup-ceph.sh      # Ceph daemons + librados/librbd for -tags ceph,pacific (tests/ceph)
scripts/setup-microvm.sh   # qemu, busybox and a Debian cloud kernel (tests/qemu, the demo)
scripts/setup-systemd.sh   # debootstrap + systemd-nspawn and a cached Debian rootfs with systemd (TestSystemd…)

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
go vet -tags ceph,pacific ./...
go vet -tags load ./tests/bench   # the load measurements (run by hand, see docs/benchmarks.md)
go vet -tags chaos ./tests/fault  # the long fault runs (scripts/chaos.sh)
echo "== staticcheck"
if ! command -v staticcheck >/dev/null; then
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
staticcheck ./...
staticcheck -tags ceph,pacific ./...
staticcheck -tags chaos ./tests/fault

echo "== go test"
go test -tags ceph,pacific -count=1 -timeout 20m "$@" ./...

# What a user gets without Ceph: the packages whose build differs without
# the tags (they link the volumes package, or have tag-specific tests).
# tests/ceph is left out: without the tags it only fails on purpose, so that
# nobody runs the Ceph tests by mistake without Ceph.
echo "== go test, the build without Ceph"
no_ceph=()
for pkg in $(go list ./... | grep -v '/tests/ceph$'); do
	if go list -deps "$pkg" | grep -qx 'github.com/blixard/blixard/volumes' ||
		grep -lqs '^//go:build' "$(go list -f '{{.Dir}}' "$pkg")"/*.go; then
		no_ceph+=("$pkg")
	fi
done
go test -count=1 -timeout 20m "$@" "${no_ceph[@]}"

echo "== fuzz (short)"
go test -run '^$' -fuzz '^FuzzDecodeCommand$' -fuzztime 20000x -fuzzminimizetime 3s ./replicated
go test -run '^$' -fuzz '^FuzzDecode$' -fuzztime 20000x -fuzzminimizetime 3s ./spec
go test -run '^$' -fuzz '^FuzzDecodeRequest$' -fuzztime 20000x -fuzzminimizetime 3s ./api
