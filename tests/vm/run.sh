#!/bin/bash
# The real-guest rig: boots an outer VM under QEMU TCG with nested AMD SVM
# (real KVM inside it), runs Caravel's scenarios there with caravel-rig and
# relays their TAP. See tests/vm/README.md.
#
# Usage: tests/vm/run.sh [SCENARIO...]   run scenarios (default: all; caravel-rig --list shows them)
#        tests/vm/run.sh --demo          boot a guest with Caravel and attach its console to this terminal
#                                        (installs what it needs first: scripts/setup rig)
#        tests/vm/run.sh --demo-shell    a second shell in the running demo's outer VM (caravel-remote)
#        tests/vm/run.sh --bench [RUNS]  Caravel vs QEMU (microvm, q35) boot benchmark, Markdown table
#        tests/vm/run.sh --bench-blk [S] Caravel vs QEMU q35 virtio-blk throughput/IOPS (S seconds per test)
#        tests/vm/run.sh --bench-mem     Caravel vs QEMU virtio-mem-pci resize latency and RSS reclaim
#        tests/vm/run.sh --bench-balloon Caravel vs QEMU free page reporting; the memory autopilot's RSS over a ramp
#        tests/vm/run.sh --bench-snapshot  Caravel vs QEMU save to a file and restore in a new process
#        tests/vm/run.sh --bench-migration Caravel vs QEMU live migration to a second process (unix socket)
#        tests/vm/run.sh --bench-net [ONLY]  Caravel vs QEMU virtio-net (vhost=off and on) TCP throughput,
#                                        latency, VMM CPU per GiB over a TAP (ONLY: Caravel, vhost=off, vhost=on)
#        tests/vm/run.sh --selftests [ARGS]  caravel-selftests ARGS against the outer VM's real KVM (TAP)
#        tests/vm/run.sh --vfio [SCENARIO...] SR-IOV + VF tokens through vfio-pci: the outer VM is a q35
#                                        with emulated VT-d and an igb NIC (QEMU 10 from bookworm-backports)
#        tests/vm/run.sh --exec 'CMDS'   run shell commands in the outer VM (debugging; /bin and /guest as
#                                        usual; CMDS may span lines: they travel in a file, not on the cmdline)
# Env:   CARAVEL_CACHE (default ~/.cache/caravel), RIG_TIMEOUT (seconds, default 1800),
#        RIG_IDLE_TIMEOUT (seconds without console output that mean a wedge, default 240),
#        RIG_CPU (outer -cpu, default EPYC,+svm,+npt), RIG_SMP (default 1), RIG_MEM (MiB, default 4096),
#        RIG_ACCEL (outer -accel, default tcg; tcg,thread=single runs all outer vCPUs on one host thread),
#        RIG_KICK (default 1: a byte every 2 s on the outer VM's ttyS1, which wakes a CPU that
#        QEMU left asleep with a timer interrupt pending; 0 turns it off),
#        RIG_APPEND (more outer kernel arguments, e.g. softlockup_all_cpu_backtrace=1 loglevel=7),
#        RIG_MONITOR (a Unix socket path for the outer QEMU's monitor, default a temporary one:
#        info cpus, info registers -a; on a wedge run.sh saves them and info lapic in
#        $CARAVEL_CACHE/logs/rig-wedge-*.txt and prints each CPU's RIP and the LAPIC's IRR),
#        RIG_REBOOTS (guest reboots of reboot-loop-leaves-fds-threads-rss-flat, default 30;
#        the issue's figure is 200, ~5.5 min),
#        RIG_EXTRA_DIR (a directory copied to /extra in the outer VM, e.g. the kernel's KVM
#        selftests for --exec; see docs/selftests.md)
source "$(dirname "$0")/lib.sh"
RIG_TIMEOUT=${RIG_TIMEOUT:-1800}
RIG_IDLE_TIMEOUT=${RIG_IDLE_TIMEOUT:-240}
RIG_CPU=${RIG_CPU:-EPYC,+svm,+npt}
RIG_SMP=${RIG_SMP:-1}
RIG_ACCEL=${RIG_ACCEL:-tcg}
RIG_MEM=${RIG_MEM:-4096}
TARGET=x86_64-unknown-linux-gnu
DEMO_SHELL_SOCK=$CACHE/demo-shell.sock
case "${1:-}" in
  --demo-shell)
    [ -S "$DEMO_SHELL_SOCK" ] || die "no demo running (no $DEMO_SHELL_SOCK): start tests/vm/run.sh --demo first"
    require_setup rig
    log "attached to the demo's outer VM (a root shell; Ctrl-] leaves it)"
    exec socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:"$DEMO_SHELL_SOCK" ;;
  --demo) "$REPO_DIR/scripts/setup" rig >&2 ;;
esac
# Every tool and file the steps below need, checked before anything is built.
require_setup rig

log "building static caravel binaries"
(cd "$REPO_DIR" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --target $TARGET \
   -p caravel -p rig -p guest-tools -p selftests)
BIN=$REPO_DIR/target/$TARGET/release

KDIR=$("$RIG_DIR/build-kernel.sh" x86_64 | tail -n1)
INITRD=$("$RIG_DIR/build-initramfs.sh" "$BIN/caravel-blkbench" "$BIN/caravel-netbench" "$BIN/caravel-vsock" "$BIN/caravel-memhog" | tail -n1)
L1=$("$RIG_DIR/fetch-l1-kernel.sh" | tail -n1)

ROOT=$(mktemp -d)
RUN_LOG=$(mktemp)
trap 'rm -rf "$ROOT" "$RUN_LOG"' EXIT
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,mod,guest}
cp /bin/busybox "$ROOT/bin/"
for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"; done
cp "$BIN/caravel" "$BIN/caravel-remote" "$BIN/caravel-rig" "$BIN/caravel-selftests" "$BIN/caravel-sriov" "$ROOT/bin/"
cp "$L1"/mod/*.ko "$ROOT/mod/"
cp "$KDIR/vmlinux" "$KDIR/bzImage" "$ROOT/guest/"
cp "$INITRD" "$ROOT/guest/initrd.cpio.gz"
cp "$RIG_DIR/l1-init.sh" "$ROOT/init"; chmod +x "$ROOT/init"
mknod -m 600 "$ROOT/dev/console" c 5 1
if [ -n "${RIG_EXTRA_DIR:-}" ]; then
  cp -r "$RIG_EXTRA_DIR" "$ROOT/extra"
fi
if [ "${1:-}" = --exec ]; then
  printf '%s\n' "$2" > "$ROOT/rig-exec.sh"
fi
if [ "${1:-}" = --selftests ]; then
  shift
  printf '%s\n' "$*" > "$ROOT/rig-selftests"
  set -- --selftests
fi
if [ "${1:-}" = --bench ] || [ "${1:-}" = --bench-blk ] || [ "${1:-}" = --bench-mem ] || [ "${1:-}" = --bench-snapshot ] || [ "${1:-}" = --bench-migration ] || [ "${1:-}" = --bench-net ] || [ "${1:-}" = --bench-balloon ]; then
  # QEMU, its libraries and firmware, to boot the same guest side by side.
  mkdir -p "$ROOT/usr/bin" "$ROOT/usr/share"
  cp /usr/bin/qemu-system-x86_64 "$ROOT/usr/bin/"
  for l in $(ldd /usr/bin/qemu-system-x86_64 | grep -o '/[^ ]*'); do mkdir -p "$ROOT$(dirname "$l")"; cp -L "$l" "$ROOT$l"; done
  cp -rL /usr/share/qemu /usr/share/seabios "$ROOT/usr/share/"
fi
(cd "$ROOT" && find . | cpio --quiet -o -H newc) > "$ROOT.cpio" || die "packing the outer VM's initramfs failed"
# The outer VM's whole console stays in $CARAVEL_CACHE/logs/rig-console.log
# (kernel messages of a wedge included) until the next run.
trap 'mkdir -p "$CACHE/logs"; cp "$RUN_LOG" "$CACHE/logs/rig-console.log" 2>/dev/null; rm -rf "$ROOT" "$ROOT.cpio" "$RUN_LOG" "$RUN_LOG.monitor" "$RUN_LOG.kick".*; jobs -p | xargs -r kill 2>/dev/null || true' EXIT
# The outer QEMU's monitor is always on a socket, so a wedge leaves evidence.
RIG_MONITOR=${RIG_MONITOR:-$RUN_LOG.monitor}

if [ "${1:-}" = --demo ]; then
  log "booting the outer VM; Caravel's guest console follows (guest: poweroff -f; QEMU: Ctrl-A x)"
  # The guest's firmware-less boot leaves line wrapping off (ESC[?7l) and the
  # terminal may be raw: put both back however the demo ends.
  restore_tty() { printf '\033[?7h'; [ -t 0 ] && stty sane 2>/dev/null; rm -f "$DEMO_SHELL_SOCK"; }
  trap 'restore_tty; rm -rf "$ROOT" "$ROOT.cpio" "$RUN_LOG"' EXIT
  rm -f "$DEMO_SHELL_SOCK"
  rc=0
  qemu-system-x86_64 -accel "$RIG_ACCEL" -cpu "$RIG_CPU" -m "$RIG_MEM" -smp "$RIG_SMP" -nographic -no-reboot \
    -serial mon:stdio -serial unix:"$DEMO_SHELL_SOCK",server=on,wait=off \
    -kernel "$L1/vmlinux" -initrd "$ROOT.cpio" -append "console=ttyS0 panic=-1 quiet rig.demo" || rc=$?
  exit $rc
fi
QEMU=qemu-system-x86_64
MACHINE=()
APPEND_EXTRA="${RIG_APPEND:+ $RIG_APPEND}"
if [ "${1:-}" = --vfio ]; then
  Q=$("$RIG_DIR/fetch-qemu.sh" | tail -n1)
  QEMU=$Q/usr/bin/qemu-system-x86_64
  MACHINE=(-L "$Q/usr/share/qemu" -M q35 -device intel-iommu,intremap=on,caching-mode=on
           -netdev user,id=n0 -device igb,netdev=n0,addr=0x3)
  APPEND_EXTRA="$APPEND_EXTRA intel_iommu=on"
fi
case "${1:-}" in
  --bench) ARGS="--bench,${2:-5},--bench-vcpus,${BENCH_VCPUS:-1}" ;;
  --bench-blk) ARGS="--bench-blk,${2:-5}" ;;
  --bench-mem) ARGS="--bench-mem" ;;
  --bench-balloon) ARGS="--bench-balloon" ;;
  --bench-snapshot) ARGS="--bench-snapshot" ;;
  --bench-migration) ARGS="--bench-migration" ;;
  --bench-net) ARGS="--bench-net${2:+,--bench-net-only,$2}" ;;
  --exec) ARGS="--exec" ;;   # the commands are in /rig-exec.sh: the kernel command line holds no script
  *) ARGS=$(IFS=,; echo "$*") ;;
esac
# With RIG_MONITOR, what the outer vCPUs were doing when the console went
# silent: $CARAVEL_CACHE/logs/rig-wedge-N.txt (info cpus, info registers -a,
# info lapic, twice a second apart, so a spinning CPU shows a moving RIP).
dump_outer_state() {
  mkdir -p "$CACHE/logs"
  local out=$CACHE/logs/rig-wedge-$(date +%s).txt
  { for _ in 1 2; do
      printf 'info cpus\ninfo registers -a\ninfo lapic\n' | timeout 10 socat - UNIX-CONNECT:"$RIG_MONITOR" 2>&1
      sleep 1
    done; } > "$out" || true
  cp "$RUN_LOG" "$out.console" 2>/dev/null || true
  # The lines that tell a spin from a stop, for logs that keep only stderr.
  grep -aE '^(CPU#|RIP=|IRR|ISR|APR)' "$out" | tr -d '\r' | head -n 16 >&2 || true
  log "outer vCPU state at the wedge: $out (console: $out.console)"
}
boot_outer() {
  # The outer VM's console goes to RUN_LOG (line-buffered); a watchdog treats
  # RIG_IDLE_TIMEOUT seconds without output as a wedge and kills it.
  : > "$RUN_LOG"
  # The kick: a byte every 2 s on the outer VM's second serial port (its
  # /init reads ttyS1 and drops what comes). QEMU 7.2's TCG x86 sometimes
  # leaves the outer kernel's LAPIC timer vector in IRR without waking the
  # CPU; any other interrupt makes QEMU re-evaluate the LAPIC and deliver
  # it (tests/vm/README.md, "Pitfalls"). RIG_KICK=0 turns it off.
  local kick=$RUN_LOG.kick kicker=
  local kick_serial=()
  if [ "${RIG_KICK:-1}" != 0 ]; then
    rm -f "$kick.in" "$kick.out"
    mkfifo "$kick.in" "$kick.out"
    kick_serial=(-serial "pipe:$kick")
    # QEMU opens both ends read-write: neither open blocks; the output side
    # is drained so that nothing the outer VM writes there can fill it.
    # Neither helper keeps this script's stdout or stderr: a reader of them
    # (scripts/test's tee) would otherwise wait for a helper left behind.
    ( exec 3<>"$kick.out"; exec cat <&3 ) < /dev/null > /dev/null 2>&1 &
    local drain=$!
    ( exec 3<>"$kick.in"; while sleep 2; do printf k >&3 || break; done ) < /dev/null > /dev/null 2>&1 &
    kicker="$! $drain"
  fi
  ( timeout --foreground -k 10 "$RIG_TIMEOUT" "$QEMU" -accel "$RIG_ACCEL" -cpu "$RIG_CPU" -m "$RIG_MEM" -smp "$RIG_SMP" \
      "${MACHINE[@]}" ${RIG_MONITOR:+-monitor unix:$RIG_MONITOR,server=on,wait=off} \
      -nographic -no-reboot -nodefaults -serial stdio "${kick_serial[@]}" -kernel "$L1/vmlinux" -initrd "$ROOT.cpio" \
      -append "console=ttyS0 panic=-1 quiet rig.args=$ARGS rig.reboots=${RIG_REBOOTS:-30}$APPEND_EXTRA" 2>&1 | stdbuf -oL tr -d '\r' >> "$RUN_LOG" ) &
  local vm=$!
  tail -n +1 -f --pid=$vm "$RUN_LOG" | stdbuf -oL sed -n 's/^RIG| //p' &
  local relay=$! last=-1 idle=0
  while kill -0 $vm 2>/dev/null; do
    sleep 5
    local size
    size=$(stat -c %s "$RUN_LOG")
    if [ "$size" = "$last" ]; then idle=$((idle + 5)); else idle=0; last=$size; fi
    if [ "$idle" -ge "$RIG_IDLE_TIMEOUT" ]; then
      log "no console output for ${idle}s: treating the outer VM as wedged"
      dump_outer_state
      pkill -f -- "-initrd $ROOT.cpio" || true
      break
    fi
  done
  wait $vm 2>/dev/null || true
  sleep 0.5
  kill $relay $kicker 2>/dev/null || true
  rm -f "$kick.in" "$kick.out"
}

# Names of the scenarios the last outer VM reported "not ok" / "ok".
failed_scenarios() { sed -n 's/^RIG| not ok [0-9]* \([^ ]*\).*/\1/p' "$RUN_LOG"; }
passed_scenarios() { sed -n 's/^RIG| ok [0-9]* \([^ ]*\).*/\1/p' "$RUN_LOG"; }
commas() { tr '\n' ',' | sed 's/,$//'; }
# A scenario run (not --selftests, --bench..., --vfio, --exec) survives the
# TCG outer VM's hazards: after a wedge the next outer VM runs only the
# scenarios that have not passed yet, and scenarios that failed get one more
# outer VM for just them (a timing-bound step can miss once in the slow,
# noisy outer VM). Both are printed ("FLAKY:" lines, the first failure's
# lines), and scripts/test repeats them in its summary, so they stay seen.
# At most 3 outer VMs per run; a scenario that fails twice fails the run.
scenario_run=0
case "${ARGS:-}" in --*) ;; *) scenario_run=1 ;; esac
todo=${ARGS:-}
if [ "$scenario_run" = 1 ] && [ -z "$todo" ]; then
  todo=$("$BIN/caravel-rig" --list-default | commas)
fi
passed=""
flaky=""
first_failure=""
reran_failures=0
wedges=0
for attempt in 1 2 3; do
  log "booting the outer VM (attempt $attempt, -cpu $RIG_CPU -smp $RIG_SMP, timeout ${RIG_TIMEOUT}s)"
  boot_outer
  passed=$( (printf '%s\n' "$passed" | tr ',' '\n'; passed_scenarios) | sed '/^$/d' | sort -u | commas)
  if grep -q '^RIG-END rc=0' "$RUN_LOG"; then
    if [ -n "$flaky" ]; then
      printf 'FLAKY: %s failed once and passed on the rerun; the first failure:\n%s\n' "$flaky" "$first_failure" >&2
    fi
    [ "$wedges" = 0 ] || log "passed after $wedges outer-VM wedge(s), resumed with the scenarios not yet passed"
    exit 0
  fi
  if grep -q '^RIG-END' "$RUN_LOG"; then
    failed=$(failed_scenarios | commas)
    if [ "$scenario_run" = 1 ] && [ -n "$failed" ] && [ "$reran_failures" = 0 ] && [ "$attempt" -lt 3 ]; then
      reran_failures=1
      flaky=$failed
      first_failure=$(grep -A 12 '^RIG| not ok' "$RUN_LOG" | sed 's/^RIG| //')
      log "failed: $failed; running them once more in a fresh outer VM"
      ARGS=$failed
      continue
    fi
    [ -z "$failed" ] || log "failed: $failed"
    exit 1
  fi
  # A panic of the outer kernel is reported as one (with its reason), not as a wedge.
  if grep -q 'Kernel panic - not syncing' "$RUN_LOG"; then
    log "the outer VM's kernel panicked:"
    grep -A 12 'Kernel panic - not syncing' "$RUN_LOG" | head -n 20 >&2
    die "outer kernel panic (see above); not retried"
  fi
  # No end marker: the outer VM wedged or timed out (a known TCG + nested-KVM
  # hazard, see tests/vm/README.md). That is not a Caravel result: retry,
  # with only what has not passed yet.
  wedges=$((wedges + 1))
  log "the outer VM did not finish (wedge or timeout); last output:"
  tail -n "${RIG_WEDGE_TAIL:-20}" "$RUN_LOG" >&2
  if [ "$scenario_run" = 0 ] && [ "$attempt" -ge 2 ]; then
    break
  fi
  if [ "$scenario_run" = 1 ]; then
    ARGS=$( (printf '%s\n' "${ARGS:-$todo}" | tr ',' '\n') | grep -vxF -f <(printf '%s\n' "$passed" | tr ',' '\n' | sed '/^$/d') | commas)
    [ -n "$ARGS" ] || { log "every scenario passed before the wedge"; exit 0; }
    log "resuming with the scenarios not yet passed: $ARGS"
  fi
done
die "the outer VM did not finish ($attempt outer VMs)"
