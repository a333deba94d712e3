#!/usr/bin/env bash
# Installs what the chaos harness's netns mode uses (iproute2: ip, tc; nftables: nft;
# iptables, for the NFQUEUE packet delay on kernels without sch_netem), with apt, when
# missing and running as root. Idempotent: does nothing when all are present. Without
# root or apt it only reports; waddle-chaos then falls back (loopback mode without `ip`,
# link-down partitions without `nft`, loss without delay without `iptables`).
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chaos-setup: missing ${missing[*]}; not root or no apt-get: not installing (waddle-chaos falls back)" >&2
    exit 0
fi
echo "chaos-setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
