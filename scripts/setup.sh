#!/usr/bin/env bash
# Installs what Blixard's build, demo and tests need on a Debian 12 machine,
# idempotently, and writes the Nix settings the project needs into their own
# file without touching the rest of the user's nix.conf.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		log "must run as root (it installs Debian packages): sudo $0"
		exit 1
	fi
}

# gnupg and openssh-client: gitsync's tests sign commits with gpg and
# ssh-keygen, as people pushing to a cluster with --trust do.
# dnsmasq-base: the DHCP and DNS server netdns runs on every node's bridge.
# chromium: tests/ui drives it headless (chromedp) against the status page.
apt_packages=(nix-bin git ca-certificates gnupg openssh-client iproute2 procps dnsmasq-base chromium)   # ip, sysctl: tests/fault
missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	need_root
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Nix: flakes on; no sandbox (no user namespaces for the builder here); no
# substituters by default, so builds do not wait on an unreachable cache.
# The settings live in their own file, included from nix.conf.
nix_conf_dir=/etc/nix
if [ -w "$nix_conf_dir" ] || [ "$(id -u)" -eq 0 ]; then
	mkdir -p "$nix_conf_dir"
	cat >"$nix_conf_dir/blixard.conf" <<'CONF'
# Written by Blixard's scripts/setup.sh; remove the include line in nix.conf to undo.
experimental-features = nix-command flakes
sandbox = false
substituters =
# Debian's nix-bin creates no nixbld group: build as the calling user
# (single-user root builds) instead of failing on a missing group.
build-users-group =
CONF
	touch "$nix_conf_dir/nix.conf"
	grep -qx '!include blixard.conf' "$nix_conf_dir/nix.conf" ||
		printf '\n!include blixard.conf\n' >>"$nix_conf_dir/nix.conf"
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { log "Go is missing: install Go 1.26 (https://go.dev/doc/install)"; exit 1; }

# Check the result instead of trusting it: nix must evaluate and build a
# trivial derivation, as every Nix test does (a machine set up by hand once
# can hide a missing setting).
check_dir=$(mktemp -d)
trap 'rm -rf "$check_dir"' EXIT
nonce="$(date +%s%N)-$$"
if ! out=$(nix build --no-link --json --impure --expr \
	"builtins.derivation { name = \"blixard-setup-check\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo $nonce > \$out\" ]; }" 2>&1); then
	log "nix cannot build a trivial derivation: $out"
	log "check /etc/nix/nix.conf and /etc/nix/blixard.conf"
	exit 1
fi
git -C "$check_dir" init -q || { log "git cannot create a repository"; exit 1; }
# dnsmasq lives in /usr/sbin, which a user's PATH may lack.
dnsmasq=$(PATH=$PATH:/usr/sbin command -v dnsmasq) &&
	"$dnsmasq" --test --conf-file=/dev/null >/dev/null 2>&1 ||
	{ log "dnsmasq (dnsmasq-base) is missing or does not run: netdns's DHCP and DNS need it"; exit 1; }

# chromium must render a page headless, as tests/ui makes it (--no-sandbox:
# the tests run as root, which chromium's sandbox refuses).
chromium_profile=$(mktemp -d)
if ! dom=$(timeout 60 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$chromium_profile" \
	--dump-dom 'data:text/html,<p>blixard-setup-check</p>' 2>/dev/null) || [[ $dom != *blixard-setup-check* ]]; then
	rm -rf "$chromium_profile"
	log "chromium is missing or cannot render a page headless: tests/ui needs it (apt-get install chromium)"
	exit 1
fi
rm -rf "$chromium_profile"

log "ok: $(nix --version), $(git --version), $(go version), $("$dnsmasq" --version | head -n1), $(chromium --version 2>/dev/null | head -n1); nix builds"
