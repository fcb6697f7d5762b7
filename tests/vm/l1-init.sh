#!/bin/busybox sh
# /init of the outer (L1) VM: load KVM, run caravel-rig, report, power off.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
$B mount -t tmpfs tmp /tmp
$B mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# Loopback, for the live-migration scenarios' tcp:127.0.0.1 streams.
$B ip link set lo up 2>/dev/null || $B ifconfig lo 127.0.0.1 up
export PATH=/bin
for m in irqbypass ccp kvm kvm-amd tun tap vhost_iotlb vhost vhost_net vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
  [ -f /mod/$m.ko ] && { $B insmod /mod/$m.ko || echo "RIG| # insmod $m failed"; }
done
args=$($B sed -n 's/.*rig\.args=\([^ ]*\).*/\1/p' /proc/cmdline)
# run.sh's kick: a byte every 2 s arrives on ttyS1 (its interrupt wakes a CPU
# that QEMU left asleep with a timer pending); read and dropped, never echoed.
if [ -c /dev/ttyS1 ] && ! $B grep -q 'rig.demo' /proc/cmdline; then
  $B stty -F /dev/ttyS1 raw -echo 2>/dev/null
  $B cat /dev/ttyS1 > /dev/null 2>&1 &
fi
if [ -c /dev/kvm ] && [ -f /rig-exec.sh ]; then
  echo; echo "RIG| --- rig-exec.sh:"
  sh /rig-exec.sh 2>&1 | $B sed 's/^/RIG| /'
  echo "RIG-END rc=0"
elif [ -c /dev/kvm ] && [ -f /rig-selftests ]; then
  echo
  ( /bin/caravel-selftests $($B cat /rig-selftests); echo "$?" > /tmp/selftests.rc ) 2>&1 | $B sed 's/^/RIG| /'
  echo "RIG-END rc=$($B cat /tmp/selftests.rc)"
elif [ -c /dev/kvm ] && $B grep -q 'rig.demo' /proc/cmdline; then
  # A second shell of the outer VM on its second serial port, which run.sh
  # puts on a Unix socket (tests/vm/run.sh --demo-shell attaches to it).
  [ -c /dev/ttyS1 ] && $B setsid sh -c 'exec /bin/sh -i </dev/ttyS1 >/dev/ttyS1 2>&1' &
  $B dd if=/dev/zero of=/tmp/disk.img bs=1M count=64 2>/dev/null
  set -- --kernel /guest/bzImage --initramfs /guest/initrd.cpio.gz --cpus boot=2 \
    --memory size=256M,hotplug_size=1G --disk path=/tmp/disk.img --serial off --console tty \
    --api-socket /tmp/caravel.sock \
    --cmdline "console=hvc0 quiet memhp_default_state=online_movable caravel.test=shell"
  echo "Outer VM up; starting: caravel $*"
  echo "The guest's console (hvc0) follows. For a second shell in the outer VM, run"
  echo "  tests/vm/run.sh --demo-shell"
  echo "in another terminal of this machine, and there try:"
  echo "  caravel-remote --api-socket /tmp/caravel.sock info"
  echo "  caravel-remote --api-socket /tmp/caravel.sock resize --memory 768M --wait"
  echo "  caravel-remote --api-socket /tmp/caravel.sock counters"
  echo "  caravel-remote --api-socket /tmp/caravel.sock shutdown"
  echo "The guest's disk is /dev/vda. In the guest, 'poweroff -f' ends the demo."
  /bin/caravel "$@"
  echo "caravel exited with status $?"
elif [ -c /dev/kvm ]; then
  echo
  /bin/caravel-rig --prefix "RIG| " $(echo "$args" | $B tr ',' ' ')
  echo "RIG-END rc=$?"
else
  echo "RIG| Bail out! the outer VM has no /dev/kvm (kvm-amd did not load: is SVM enabled in -cpu?)"
  echo "RIG-END rc=1"
fi
$B poweroff -f
