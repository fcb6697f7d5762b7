#!/bin/bash
# Builds the tiny test guest kernel from Debian's linux-source-6.1 and the
# fragment in guest/, caching the result by content hash.
# Usage: build-kernel.sh [x86_64]   -> prints the directory holding vmlinux and bzImage
#        build-kernel.sh aarch64    -> prints the directory holding Image (cross-built)
source "$(dirname "$0")/lib.sh"
ARCH_NAME=${1:-x86_64}
FRAG=$RIG_DIR/guest/$ARCH_NAME.fragment
[ -f "$FRAG" ] || die "no fragment $FRAG"
[ -f "$LINUX_SRC_TARBALL" ] || die "$LINUX_SRC_TARBALL missing: scripts/setup rig (Debian package linux-source-6.1)"
for tool in make gcc flex bison bc; do
  command -v $tool >/dev/null || die "$tool missing (the kernel build needs it): scripts/setup rig"
done
# Bump RECIPE when the build steps below change in a way that changes the output.
RECIPE=1
KEY=$(hash_of "$FRAG" <(echo "$RECIPE") <(ls -l "$LINUX_SRC_TARBALL"))
OUT=$CACHE/kernel-$ARCH_NAME-$KEY
case $ARCH_NAME in
  x86_64) MAKE_ARCH=(ARCH=x86_64); TARGET=bzImage; PRODUCTS=(vmlinux arch/x86/boot/bzImage) ;;
  aarch64) MAKE_ARCH=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-); TARGET=Image; PRODUCTS=(arch/arm64/boot/Image)
           command -v aarch64-linux-gnu-gcc >/dev/null || die "aarch64-linux-gnu-gcc missing: apt-get install gcc-aarch64-linux-gnu" ;;
  *) die "unknown architecture $ARCH_NAME" ;;
esac
done=1; for p in "${PRODUCTS[@]}"; do [ -f "$OUT/$(basename "$p")" ] || done=0; done
if [ $done = 1 ]; then echo "$OUT"; exit 0; fi

WORK=$CACHE/kbuild-$ARCH_NAME
mkdir -p "$WORK"
if [ ! -d "$WORK/linux-source-6.1" ]; then
  log "unpacking $LINUX_SRC_TARBALL"
  tar -C "$WORK" -xJf "$LINUX_SRC_TARBALL"
fi
cd "$WORK/linux-source-6.1"
# ARCH=x86_64 matters: without it x86 tinyconfig is an i386 kernel.
run_logged "kernel-$ARCH_NAME-tinyconfig" make -s "${MAKE_ARCH[@]}" tinyconfig
grep -E '^CONFIG_[A-Z0-9_]+=[yn]$' "$FRAG" | while IFS== read -r sym val; do
  if [ "$val" = y ]; then scripts/config -e "${sym#CONFIG_}"; else scripts/config -d "${sym#CONFIG_}"; fi
done
run_logged "kernel-$ARCH_NAME-olddefconfig" make -s "${MAKE_ARCH[@]}" olddefconfig
# olddefconfig silently drops options whose dependencies are unmet: check each.
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$FRAG" | while read -r line; do grep -qx "$line" .config || echo "$line"; done)
[ -z "$missing" ] || die "options that did not stick: $missing"
log "building the $ARCH_NAME guest kernel ($(nproc) jobs, about 4 minutes on 2 busy cores)"
run_logged "kernel-$ARCH_NAME-build" make -s -j"$(nproc)" "${MAKE_ARCH[@]}" $TARGET
if [ $ARCH_NAME = x86_64 ]; then
  readelf -n vmlinux | grep -q 'Unknown note type: (0x00000012)' || die "vmlinux has no PVH entry note"
fi
mkdir -p "$OUT.tmp"
cp "${PRODUCTS[@]}" .config "$OUT.tmp/"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "$OUT"
