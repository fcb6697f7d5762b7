#!/bin/bash
# Builds the bare-metal ITS test guest (guests/its) for
# aarch64-unknown-none-softfloat and flattens it into an arm64 Image.
# Prints the Image's path on the last line.
source "$(dirname "$0")/lib.sh"
TARGET=aarch64-unknown-none-softfloat
rustup target list --installed 2>/dev/null | grep -qx $TARGET \
  || die "the Rust target $TARGET is missing: rustup target add $TARGET"
command -v aarch64-linux-gnu-objcopy >/dev/null || die "aarch64-linux-gnu-objcopy missing: apt-get install binutils-aarch64-linux-gnu"
OUT=$REPO_DIR/target/guest-its
(cd "$REPO_DIR/guests/its" && cargo build --quiet --release --target $TARGET --target-dir "$OUT")
aarch64-linux-gnu-objcopy -O binary "$OUT/$TARGET/release/its-tests" "$OUT/its-tests.img"
echo "$OUT/its-tests.img"
