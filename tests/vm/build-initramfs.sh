#!/bin/bash
# Builds the guest initramfs (static busybox + guest/init.sh), cached by content.
# Usage: build-initramfs.sh [EXTRA_BINARY...] -> prints the path of initrd.cpio.gz
# Extra (static) binaries are copied to /bin (guest-side tools such as caravel-blkbench).
source "$(dirname "$0")/lib.sh"
BUSYBOX=${BUSYBOX:-/bin/busybox}
for tool in cpio gzip file; do
  command -v $tool >/dev/null || die "$tool missing (the initramfs needs it): scripts/setup rig"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: scripts/setup rig (Debian package busybox-static)"
file -L "$BUSYBOX" | grep -q 'statically linked' || die "$BUSYBOX is not static: scripts/setup rig (Debian package busybox-static)"
# A foreign busybox (arm64) lists its applets under qemu-user.
applets() { "$BUSYBOX" --list 2>/dev/null || qemu-aarch64 "$BUSYBOX" --list; }
KEY=$(hash_of "$RIG_DIR/guest/init.sh" "$0" "$BUSYBOX" "$@")
OUT=$CACHE/initrd-$KEY.cpio.gz
if [ -f "$OUT" ]; then echo "$OUT"; exit 0; fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $(applets); do [ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"; done
cp "$RIG_DIR/guest/init.sh" "$ROOT/init"; chmod +x "$ROOT/init"
for extra in "$@"; do cp "$extra" "$ROOT/bin/"; done
# Without /dev/console the output of /init is lost (devtmpfs is not mounted yet).
mknod -m 600 "$ROOT/dev/console" c 5 1
(cd "$ROOT" && find . | cpio --quiet -o -H newc | gzip -9) > "$OUT.tmp" || die "packing the initramfs with cpio failed"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
