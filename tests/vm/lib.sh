# Shared settings of the real-guest rig scripts (sourced, not run).
# CARAVEL_CACHE holds everything slow to make (kernels, Debian packages,
# images) across runs; keys are content hashes, so a stale entry is never used.
set -euo pipefail
RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$RIG_DIR/../.." && pwd)
CACHE=${CARAVEL_CACHE:-$HOME/.cache/caravel}
mkdir -p "$CACHE"
LINUX_SRC_TARBALL=${LINUX_SRC_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
L1_KERNEL_PKG=${L1_KERNEL_PKG:-linux-image-6.1.0-56-amd64}

log() { printf '[rig %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Content hash of files (and strings), for cache keys.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
