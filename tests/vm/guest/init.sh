#!/bin/busybox sh
# /init of the rig's guest initramfs. The scenario comes from the kernel
# command line (caravel.test=NAME); each prints markers the rig waits for.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
export PATH=/bin
test=$(sed -n 's/.*caravel\.test=\([^ ]*\).*/\1/p' /proc/cmdline)
marker() { echo "CARAVEL-MARKER test=$test cpus=$(nproc) uptime=$(cut -d' ' -f1 /proc/uptime)"; }
case "$test" in
  marker)
    marker
    poweroff -f ;;
  timeline)
    # The guest kernel's own timestamps (printk.time) of its boot phases, one
    # line: the first (or, for the -last names, the last) log line of each.
    marker
    dmesg > /tmp/dmesg
    at() { v=$(grep -E "$2" /tmp/dmesg | sed -n "${3:-1}"'s/^\[ *\([0-9.]*\)\].*/\1/p'); printf ' %s=%s' "$1" "${v:--}"; }
    {
      printf 'CARAVEL-TIMELINE'
      at tsc 'tsc: (Detected|Fast TSC|Using PIT)'
      at delay-loop 'Calibrating delay|lpj='
      at smp-up 'smp: Brought up'
      at acpi 'ACPI: Interpreter enabled'
      at pci-root 'PCI host bridge to bus|PCI Root Bridge'
      at clocksource 'clocksource: Switched to'
      at pci-last 'pci 0000:|pci_bus 0000:' '$'
      at serial 'Serial: 8250'
      at initramfs-done 'Freeing initrd memory'
      at kernel-done 'Freeing unused kernel'
      at run-init 'Run /init'
      echo " marker=$(cut -d' ' -f1 /proc/uptime)"
    }
    poweroff -f ;;
  interactive)
    # Boot, then obey one command per line from the console (the rig types them).
    marker
    while echo "CARAVEL-READY"; read -r cmd; do
      echo "CARAVEL-GOT $cmd"
      case "$cmd" in
        reboot) reboot -f ;;
        poweroff) poweroff -f ;;
        *) sh -c "$cmd" 2>&1; echo "CARAVEL-DONE rc=$?" ;;
      esac
    done ;;
  shell)
    marker
    echo "Caravel demo guest: a busybox shell on the console. 'poweroff -f' ends the VM."
    exec setsid cttyhack sh ;;
  reboot-loop)
    # Up, then straight back down: Caravel builds a fresh VM each time.
    marker
    reboot -f ;;
  idle)
    marker
    while true; do sleep 3600; done ;;
  *)
    echo "CARAVEL-UNKNOWN-TEST '$test'"
    exec sh ;;
esac
