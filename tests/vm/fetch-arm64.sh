#!/bin/bash
# Fetches the arm64 pieces of the aarch64 rig from Debian with a private apt
# configuration (arm64 architecture, the system's suites; nothing installed):
# the cloud kernel the outer VM boots (KVM built in; its vmlinuz is a plain
# arm64 Image), its tun module, and a static busybox for the outer VM and the guest.
# Usage: fetch-arm64.sh -> prints a directory with Image and busybox
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/apt/lists/partial" "$TMP/apt/cache/archives/partial" "$TMP/debs"
cat > "$TMP/apt/sources.list" <<LIST
deb [arch=arm64] http://deb.debian.org/debian bookworm main
deb [arch=arm64] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64] http://deb.debian.org/debian-security bookworm-security main
LIST
APT=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
     -o Dir::Etc::SourceList="$TMP/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::Lists="$TMP/apt/lists" -o Dir::Cache="$TMP/apt/cache"
     -o Dir::State::status=/dev/null -o Debug::NoLocking=1)
[ "$(id -u)" = 0 ] && APT+=(-o APT::Sandbox::User=root)
run_logged apt-arm64-update apt-get "${APT[@]}" update
# The kernel linux-image-cloud-arm64 depends on (its ABI number moves), unless given.
PKG=${L1_ARM64_KERNEL_PKG:-$(kernel_pkg_of linux-image-cloud-arm64 'linux-image-6\.1\.0-[0-9]*-cloud-arm64' \
      linux-image-6.1.0-57-cloud-arm64 "${APT[@]}")}
OUT=$CACHE/arm64-$PKG
if [ -f "$OUT/Image" ] && [ -x "$OUT/busybox" ] && [ -d "$OUT/mod" ]; then echo "$OUT"; exit 0; fi
log "fetching $PKG and busybox-static for arm64"
(cd "$TMP/debs" && run_logged apt-arm64-download apt-get "${APT[@]}" download "$PKG" busybox-static)
for d in "$TMP"/debs/*.deb; do dpkg-deb -x "$d" "$TMP/x"; done
mkdir -p "$OUT.tmp"
cp "$TMP"/x/boot/vmlinuz-* "$OUT.tmp/Image"
cp "$TMP/x/bin/busybox" "$OUT.tmp/busybox"
# tun, for virtio-net's TAPs (when the kernel has it as a module).
mkdir -p "$OUT.tmp/mod"
for m in "$TMP"/x/lib/modules/*/kernel/drivers/net/tun.ko; do [ -f "$m" ] && cp "$m" "$OUT.tmp/mod/"; done
file "$OUT.tmp/Image" | grep -q 'ARM64' || log "warning: $(file "$OUT.tmp/Image")"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "$OUT"
