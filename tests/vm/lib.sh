# Shared settings of the real-guest rig scripts (sourced, not run).
# CARAVEL_CACHE holds everything slow to make (kernels, Debian packages,
# images) across runs; keys are content hashes, so a stale entry is never used.
set -euo pipefail
RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$RIG_DIR/../.." && pwd)
CACHE=${CARAVEL_CACHE:-$HOME/.cache/caravel}
mkdir -p "$CACHE"
LINUX_SRC_TARBALL=${LINUX_SRC_TARBALL:-/usr/src/linux-source-6.1.tar.xz}

log() { printf '[rig %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Fails early, before anything is built, when a tool or Rust target of the
# setup groups given (scripts/setup --help) is missing, naming the one command
# that installs it.
require_setup() {
  "$REPO_DIR/scripts/setup" --check "$@" >&2 \
    || die "missing tools (above); install them with: scripts/setup $*"
}

# Runs a command with its output in a log file; on failure prints the log's
# tail and the command, so no step fails silently.
# Usage: run_logged NAME CMD [ARG...]
run_logged() {
  local name=$1; shift
  local logf=$CACHE/logs/$name.log
  mkdir -p "$CACHE/logs"
  if ! "$@" > "$logf" 2>&1; then
    local rc=$?
    log "error: '$*' failed (exit $rc) in $PWD; last lines of $logf:"
    tail -n 30 "$logf" >&2
    exit 1
  fi
}

# The newest 6.1 kernel package that a Debian metapackage depends on (the
# archive drops old ABIs, so nothing is pinned), or FALLBACK when apt has no
# answer. Usage: kernel_pkg_of METAPACKAGE REGEX FALLBACK [APT_OPTION...]
kernel_pkg_of() {
  local meta=$1 re=$2 fallback=$3; shift 3
  local pkg
  pkg=$(apt-cache "$@" depends "$meta" 2>/dev/null | sed -n "s/^ *Depends: \($re\)\$/\1/p" | head -n1)
  echo "${pkg:-$fallback}"
}

# Content hash of files (and strings), for cache keys.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
