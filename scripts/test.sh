#!/usr/bin/env bash
# Runs Blixard's whole test suite: formatting, vet, staticcheck, and every Go
# test against the real nix, git and Dragonboat (installed by setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH

scripts/setup.sh

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
if ! command -v staticcheck >/dev/null; then
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
staticcheck ./...

echo "== go test"
go test -count=1 -timeout 20m "$@" ./...

echo "== fuzz (short)"
go test -run '^$' -fuzz '^FuzzDecodeCommand$' -fuzztime 10s -fuzzminimizetime 3s ./replicated
go test -run '^$' -fuzz '^FuzzDecode$' -fuzztime 10s -fuzzminimizetime 3s ./spec
