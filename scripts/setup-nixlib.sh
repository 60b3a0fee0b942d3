#!/usr/bin/env bash
# Unpacks the pinned third-party Nix sources that the tests in tests/nixlib
# evaluate (nixpkgs' lib and microvm.nix) into a verified cache,
# idempotently:
#   $BLIXARD_THIRD_PARTY_CACHE (default /var/cache/blixard/third-party)/
#     nixpkgs-lib-<commit>/   nixpkgs' lib/ and its flake.nix
#     microvm.nix-<commit>/   microvm.nix
#
# Where the sources come from, in order:
#   1. a cache entry whose NAR hash (`nix hash path`) is the pinned one below:
#      kept as it is ("already verified");
#   2. the archive in $BLIXARD_THIRD_PARTY (default ../shared/third-party
#      next to the repository), checked against the sha256 pinned below;
#   3. GitHub's archive of the same commit (curl), whose unpacked tree is
#      checked against the pinned NAR hash (GitHub's tarballs are not
#      byte-identical to the `git archive` ones in ../shared, their trees are).
# A tree is unpacked into a temporary directory next to its cache entry,
# checked, and renamed into place, so a cache entry is always complete.
# Nothing else a previous run left is trusted. When no source works it exits
# with 1 and says what is missing and what to do. At the end it checks every
# cache entry again and evaluates nixpkgs' lib and microvm.nix's host module
# file with nix.
set -euo pipefail

log() { printf 'setup-nixlib: %s\n' "$*" >&2; }
die() {
	log "$@"
	exit 1
}

here=$(cd "$(dirname "$0")/.." && pwd)
repo_top=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || echo "$here")
cache=${BLIXARD_THIRD_PARTY_CACHE:-/var/cache/blixard/third-party}

# The pins, from ../shared/third-party/README.md:
#   name | GitHub owner/repo | commit | archive in ../shared/third-party | sha256 of that archive | NAR hash of the unpacked tree
# The NAR hashes were computed on 2026-12-01 from the pinned archives above
# (whose sha256 matched): `tar -xzf ARCHIVE --strip-components=1 -C DIR`
# then `nix hash path DIR` (nix 2.8; SRI, sha256 of the tree's NAR
# serialisation: contents, executable bits and symbolic links only, so
# independent of owners, times and umask). tests/nixlib reads the commits
# from these lines: keep their shape.
pins=(
	"nixpkgs-lib|nix-community/nixpkgs.lib|de42d44212d207476489bce163375d8306a26d59|nixpkgs-lib-de42d442.tar.gz|7c5eebae2beb1ddfcfc3c86e432dd5e39cf858e2a8d9706ebafc7d6cc5a8c9cd|sha256-0iaTCZDEORJeWamOjfDZaoZZx686f7QO5oL3ynmj+ew="
	"microvm.nix|microvm-nix/microvm.nix|71beea0076cd46dafcee97a5a2e7d00cbba5bd2f|microvm.nix-71beea00.tar.gz|75a1c2a381424e71c5f6996c571da4e03c24ed05444e2d71885059e2bd08fef0|sha256-4UFJOVGpaYtHW5yasSv80MaJxTBYdk2zyf3jhKtt0wA="
)

# An explicitly named archive directory that does not exist is a mistake, not
# a reason to fall back to the network.
if [ -n "${BLIXARD_THIRD_PARTY:-}" ]; then
	archives=$BLIXARD_THIRD_PARTY
	[ -d "$archives" ] || die "BLIXARD_THIRD_PARTY=$archives is not a directory: point it at the directory holding the pinned archives (see ../shared/third-party/README.md), or unset it to use ../shared/third-party or GitHub"
else
	archives=$(cd "$repo_top/.." && pwd)/shared/third-party
fi

command -v nix >/dev/null 2>&1 || die "nix is missing: run scripts/setup.sh first"
command -v tar >/dev/null 2>&1 || die "tar is missing: apt-get install tar"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing: apt-get install coreutils"

# nix's own settings for this script: `nix hash path` and the final check need
# the nix-command feature; nothing is fetched or substituted.
export NIX_CONFIG="${NIX_CONFIG:+$NIX_CONFIG
}experimental-features = nix-command flakes
substituters ="

# prepare_cache makes the cache writable for this run, once, when an entry
# has to be (re)made: a verified cache needs no write access. One run at a
# time: another run's temporary directories are its own until it ends; after
# that, whatever a killed run left behind is removed.
prepared=no
prepare_cache() {
	[ "$prepared" = no ] || return 0
	if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
		die "cannot write $cache: run as root (sudo $0), or set BLIXARD_THIRD_PARTY_CACHE to a writable directory (the tests read the same variable)"
	fi
	exec 9>"$cache/.lock"
	if command -v flock >/dev/null 2>&1; then
		flock 9
	fi
	rm -rf "$cache"/.tmp.* "$cache"/.old.*
	prepared=yes
}

tmp_dirs=()
cleanup() {
	local d
	for d in "${tmp_dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# nar_ok DIR WANT: whether DIR's NAR hash is WANT.
nar_ok() {
	[ -d "$1" ] && [ "$(nix hash path "$1" 2>/dev/null)" = "$2" ]
}

# unpack ARCHIVE DIR: unpacks a tarball with one top directory into DIR.
unpack() {
	mkdir -p "$2"
	tar -xzf "$1" --strip-components=1 --no-same-owner -C "$2"
}

# install_tree TMP DEST: makes TMP readable by all (the runners' nix builds
# and unprivileged users read it) and renames it to DEST. A stale DEST is
# moved aside first; rename(2) cannot replace a non-empty directory.
install_tree() {
	chmod -R a+rX,go-w "$1"
	if [ -e "$2" ]; then
		local old
		old=$(mktemp -d "$cache/.old.XXXXXX")
		tmp_dirs+=("$old")
		mv -T "$2" "$old/tree"
	fi
	mv -T "$1" "$2"
}

declare -A dirs
for pin in "${pins[@]}"; do
	IFS='|' read -r name repo commit archive sha nar <<<"$pin"
	dest=$cache/$name-$commit
	dirs[$name]=$dest
	if nar_ok "$dest" "$nar"; then
		log "$name: already verified: $dest ($nar)"
		continue
	fi
	prepare_cache
	# Another run may have made it while this one waited for the lock.
	if nar_ok "$dest" "$nar"; then
		log "$name: made by another run meanwhile, verified: $dest ($nar)"
		continue
	fi
	if [ -e "$dest" ]; then
		log "$name: $dest does not hold commit $commit (NAR hash differs): replacing it"
	fi

	work=$(mktemp -d "$cache/.tmp.$name.XXXXXX")
	tmp_dirs+=("$work")
	local_archive=$archives/$archive
	if [ -f "$local_archive" ]; then
		got=$(sha256sum "$local_archive" | cut -d' ' -f1)
		[ "$got" = "$sha" ] || die "$name: $local_archive has sha256 $got, want $sha: the archive is not the pinned commit $commit; restore it from ../shared/third-party (see its README.md) or remove it to download from GitHub"
		unpack "$local_archive" "$work/tree"
		from="$local_archive (sha256 $sha)"
	else
		url=https://github.com/$repo/archive/$commit.tar.gz
		log "$name: no $local_archive: downloading $url"
		command -v curl >/dev/null 2>&1 || die "$name: no archive at $local_archive and curl is missing to download $url: apt-get install curl, or set BLIXARD_THIRD_PARTY to the directory holding $archive"
		if ! curl -fsSL --connect-timeout 10 --max-time 300 -o "$work/src.tar.gz" "$url"; then
			die "$name: cannot get commit $commit: no archive at $local_archive and downloading $url failed. Either put the pinned archives ($archive, see ../shared/third-party/README.md) in ../shared/third-party next to the repository or in the directory named by BLIXARD_THIRD_PARTY, or run this script on a machine that reaches github.com; then run scripts/setup-nixlib.sh again"
		fi
		unpack "$work/src.tar.gz" "$work/tree"
		from=$url
	fi
	got=$(nix hash path "$work/tree")
	[ "$got" = "$nar" ] || die "$name: the tree unpacked from $from has NAR hash $got, want $nar: it is not commit $commit; check the archive or the download"
	install_tree "$work/tree" "$dest"
	log "$name: unpacked $from into $dest ($nar)"
done
[ "$prepared" = no ] || chmod a+rx "$cache"

# Check the result, not the steps: every entry has its pinned NAR hash, and
# nix reads nixpkgs' lib and microvm.nix's host module from it.
for pin in "${pins[@]}"; do
	IFS='|' read -r name _ _ _ _ nar <<<"$pin"
	nar_ok "${dirs[$name]}" "$nar" || die "$name: ${dirs[$name]} does not have NAR hash $nar after setup: remove it and run scripts/setup-nixlib.sh again"
done
lib_dir=${dirs[nixpkgs-lib]}
microvm_dir=${dirs[microvm.nix]}
if ! out=$(nix-instantiate --eval --strict --expr "
	let lib = import $lib_dir/lib; host = import $microvm_dir/nixos-modules/host; in
	[ lib.version (builtins.isFunction host) (lib.evalModules { modules = [ ]; }).config ]" 2>&1); then
	die "nix cannot evaluate nixpkgs' lib or microvm.nix's host module from $cache: $out"
fi
log "ok: nixpkgs lib $lib_dir, microvm.nix $microvm_dir (nix says $out)"
