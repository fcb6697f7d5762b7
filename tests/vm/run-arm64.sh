#!/bin/bash
# The aarch64 rig: an arm64 outer VM under qemu-system-aarch64 TCG at EL2
# (virt, GICv3, -cpu max) runs Debian's cloud kernel, whose KVM has the
# in-kernel vGICv3 and vITS; Caravel's static aarch64 build runs inside and
# boots the tiny arm64 guest. Prints caravel-rig --arm64's TAP.
# Usage: tests/vm/run-arm64.sh [SCENARIO...]
#        tests/vm/run-arm64.sh -g its          the ITS group (kvm-unit-tests' name): the
#                                              guest ITS tests and the ITS save/restore
#        tests/vm/run-arm64.sh --exec 'CMDS'   run shell commands in the outer VM
# Env:   CARAVEL_CACHE, RIG_TIMEOUT (default 1200), RIG_MEM (MiB, default 2048)
source "$(dirname "$0")/lib.sh"
RIG_TIMEOUT=${RIG_TIMEOUT:-1200}
RIG_MEM=${RIG_MEM:-2048}
TARGET=aarch64-unknown-linux-gnu
# Every tool, file and Rust target the steps below need (the guest kernel's
# cross compiler, aarch64-unknown-none-softfloat for the ITS guest, ...),
# checked before anything is built.
require_setup arm64

log "building static aarch64 caravel binaries"
(cd "$REPO_DIR" && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
   RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --target $TARGET -p caravel -p rig -p guest-tools)
BIN=$REPO_DIR/target/$TARGET/release

KDIR=$("$RIG_DIR/build-kernel.sh" aarch64 | tail -n1)
A=$("$RIG_DIR/fetch-arm64.sh" | tail -n1)
INITRD=$(BUSYBOX=$A/busybox "$RIG_DIR/build-initramfs.sh" "$BIN/caravel-netbench" "$BIN/caravel-vsock" "$BIN/caravel-memhog" | tail -n1)
ITS_GUEST=$("$RIG_DIR/build-guest-its.sh" | tail -n1)

ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT" "$ROOT.cpio"' EXIT
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,guest,mod}
cp "$A/busybox" "$ROOT/bin/"
cp "$A"/mod/*.ko "$ROOT/mod/" 2>/dev/null || true
for applet in $(qemu-aarch64 "$A/busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"; done
cp "$BIN/caravel" "$BIN/caravel-remote" "$BIN/caravel-rig" "$ROOT/bin/"
cp "$KDIR/Image" "$ROOT/guest/"
cp "$INITRD" "$ROOT/guest/initrd.cpio.gz"
cp "$ITS_GUEST" "$ROOT/guest/its-tests.img"
cp "$RIG_DIR/l1-init.sh" "$ROOT/init"; chmod +x "$ROOT/init"
mknod -m 600 "$ROOT/dev/console" c 5 1
ARGS=--arm64
if [ "${1:-}" = -g ]; then
  [ "${2:-}" = its ] || die "unknown group '${2:-}' (known: its)"
  set -- arm64-its-save-decode-restore arm64-its-introspection arm64-its-trigger \
    arm64-its-migration arm64-its-pending-migration arm64-its-migrate-unmapped-collection
fi
if [ "${1:-}" = --exec ]; then
  printf '%s\n' "$2" > "$ROOT/rig-exec.sh"
elif [ $# -gt 0 ]; then
  ARGS="--arm64,$(IFS=,; echo "$*")"
fi
(cd "$ROOT" && find . | cpio --quiet -o -H newc) > "$ROOT.cpio" || die "packing the outer VM's initramfs failed"

LOG=$(mktemp)
trap 'rm -rf "$ROOT" "$ROOT.cpio" "$LOG"' EXIT
log "booting the arm64 outer VM (-M virt,virtualization=on,gic-version=3 -cpu max, timeout ${RIG_TIMEOUT}s)"
timeout --foreground -k 10 "$RIG_TIMEOUT" qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 \
  -cpu max -smp 2 -m "$RIG_MEM" -accel tcg,thread=multi -nographic -no-reboot -nodefaults -serial stdio \
  -kernel "$A/Image" -initrd "$ROOT.cpio" -append "console=ttyAMA0 panic=-1 quiet rig.args=$ARGS" 2>&1 \
  | stdbuf -oL tr -d '\r' | tee "$LOG" | stdbuf -oL sed -n 's/^RIG| //p'
grep -q '^RIG-END rc=0' "$LOG" && exit 0
grep -q 'Kernel panic - not syncing' "$LOG" && { grep -A 12 'Kernel panic - not syncing' "$LOG" | head -n 20 >&2; die "the arm64 outer kernel panicked (see above)"; }
grep -q '^RIG-END' "$LOG" || { log "the arm64 outer VM did not finish; last output:"; tail -n 30 "$LOG" >&2; }
exit 1
