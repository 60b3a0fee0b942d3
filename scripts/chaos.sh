#!/usr/bin/env bash
# Long runs of the fault harness (tests/fault): a three-node cluster in
# network namespaces, faults from a seeded schedule, invariants checked
# while they happen and after they heal. Needs root, nix, git and iproute2
# (scripts/setup.sh).
#
#   scripts/chaos.sh                          # a random seed, 10 minutes
#   scripts/chaos.sh --seed 42 --duration 30m
#   scripts/chaos.sh --seed 42 --duration 2m --strict --keep
#
# It prints the run's summary (faults injected, invariant results, overlaps
# with their durations, convergence time) and, when the run fails, the
# commands that rerun the same schedule and where its logs are kept.
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: scripts/chaos.sh [--seed N] [--duration D] [--strict] [--keep]
                        [--overlap-grace D] [--node-timeout D] [--blixard-b PATH]
  --seed N           the schedule's seed (default: random, printed)
  --duration D       how long to inject faults, a Go duration (default 10m)
  --strict           any VM instance on two nodes at once fails the run
  --keep             keep the run's directory (logs, records) even when it passes
  --overlap-grace D  how long a healed node's stale copies may still run (default: node timeout + 10s)
  --node-timeout D   blixard serve --node-timeout (default 5s)
  --blixard-b PATH   the binary restart-new-binary switches to (default: a second build of this tree)
USAGE
}

seed=""
duration=10m
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--seed) seed=${2:?--seed needs a number}; shift 2 ;;
	--seed=*) seed=${1#*=}; shift ;;
	--duration) duration=${2:?--duration needs a value such as 10m}; shift 2 ;;
	--duration=*) duration=${1#*=}; shift ;;
	--strict) extra+=(-strict); shift ;;
	--keep) extra+=(-keep); shift ;;
	--overlap-grace) extra+=(-overlap-grace "${2:?}"); shift 2 ;;
	--node-timeout) extra+=(-node-timeout "${2:?}"); shift 2 ;;
	--blixard-b) extra+=(-blixard-b "$(realpath "${2:?}")"); shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "chaos.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done
if ! [[ $seed =~ ^[0-9]*$ ]]; then
	echo "chaos.sh: --seed $seed: want a positive number" >&2
	exit 2
fi
if [ -z "$seed" ] || [ "$seed" = 0 ]; then
	seed=$(($(od -An -N4 -tu4 /dev/urandom) % 1000000 + 1))
fi

# seconds parses a Go duration made of h, m and s parts (90s, 10m, 1h30m).
seconds() {
	local d=$1 total=0
	if ! [[ $d =~ ^([0-9]+h)?([0-9]+m)?([0-9]+s)?$ ]] || [ -z "$d" ]; then
		echo "chaos.sh: --duration $d: use hours, minutes and seconds such as 90s, 10m or 1h30m" >&2
		exit 2
	fi
	[[ $d =~ ([0-9]+)h ]] && total=$((total + BASH_REMATCH[1] * 3600))
	[[ $d =~ ([0-9]+)m ]] && total=$((total + BASH_REMATCH[1] * 60))
	[[ $d =~ ([0-9]+)s ]] && total=$((total + BASH_REMATCH[1]))
	echo "$total"
}
secs=$(seconds "$duration")
# The coverage round, convergence and the build come on top of the duration.
timeout=$((secs + 20 * 60))s

if [ "$(id -u)" -ne 0 ]; then
	echo "chaos.sh: network namespaces need root: sudo $0 $*" >&2
	exit 1
fi
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "chaos.sh: Go is missing: install Go 1.26 (https://go.dev/doc/install)" >&2; exit 1; }

work=$(mktemp -d /tmp/blixard-chaos-XXXXXX)
summary=$work/summary.txt
log=$work/test.log
echo "chaos: seed $seed, duration $duration; full log: $log" >&2
set +e
go test -tags chaos ./tests/fault -run '^TestFault$' -count=1 -v -timeout "$timeout" \
	-seed "$seed" -duration "$duration" -summary "$summary" "${extra[@]}" 2>&1 | tee "$log" |
	grep --line-buffered -E '^ +fault_test\.go:[0-9]+: \+[0-9.]+s ' >&2
status=${PIPESTATUS[0]}
set -e
echo >&2
if [ -s "$summary" ]; then
	cat "$summary"
else
	echo "chaos: the run produced no summary; the end of its log:" >&2
	tail -40 "$log" >&2
fi
if [ "$status" -ne 0 ]; then
	echo "chaos: FAILED (go test exit $status); rerun with: scripts/chaos.sh --seed $seed --duration $duration" >&2
	echo "chaos: full log kept in $log; the run's directory is named in it" >&2
	exit "$status"
fi
echo "chaos: passed (seed $seed, duration $duration)" >&2
rm -rf "$work"
