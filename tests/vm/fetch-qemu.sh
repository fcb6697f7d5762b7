#!/bin/bash
# Fetches QEMU 10 from Debian bookworm-backports (igb, the SR-IOV NIC the VFIO
# rig needs, arrived in QEMU 8; bookworm has 7.2) with a private apt
# configuration, so the system's apt sources and installed QEMU are untouched.
# The binary runs unpacked: -L points at its firmware, and it loads no
# modules for the devices the rig uses.
# Usage: fetch-qemu.sh -> prints a directory with usr/bin/qemu-system-x86_64
source "$(dirname "$0")/lib.sh"
OUT=$CACHE/qemu-bookworm-backports
if [ -x "$OUT/usr/bin/qemu-system-x86_64" ]; then echo "$OUT"; exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/apt/lists/partial" "$TMP/apt/cache/archives/partial" "$TMP/debs"
echo "deb http://deb.debian.org/debian bookworm-backports main" > "$TMP/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$TMP/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::Lists="$TMP/apt/lists" -o Dir::Cache="$TMP/apt/cache" -o Debug::NoLocking=1)
[ "$(id -u)" = 0 ] && APT+=(-o APT::Sandbox::User=root)
log "fetching QEMU from bookworm-backports"
apt-get "${APT[@]}" update >/dev/null 2>&1 || die "apt-get update of bookworm-backports failed"
(cd "$TMP/debs" && apt-get "${APT[@]}" download qemu-system-x86/bookworm-backports \
   qemu-system-data/bookworm-backports qemu-system-common/bookworm-backports >/dev/null 2>&1) \
  || die "apt-get download of QEMU from bookworm-backports failed"
mkdir -p "$OUT.tmp"
for d in "$TMP"/debs/*.deb; do dpkg-deb -x "$d" "$OUT.tmp"; done
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
"$OUT/usr/bin/qemu-system-x86_64" --version | head -1 >&2
echo "$OUT"
