#!/bin/bash
# Fetches Debian's 6.1 kernel package for the outer VM: its vmlinux (extracted
# from the bzImage, which boots about 2 s faster under TCG), the KVM modules and
# tun (virtio-net's TAPs) and vhost-net, the VFIO modules (for the VFIO rig, tests/vm/run.sh --vfio).
# Usage: fetch-l1-kernel.sh -> prints a directory with vmlinux and mod/*.ko
source "$(dirname "$0")/lib.sh"
# The kernel linux-image-amd64 depends on (its ABI number moves), unless given.
L1_KERNEL_PKG=${L1_KERNEL_PKG:-$(kernel_pkg_of linux-image-amd64 'linux-image-6\.1\.0-[0-9]*-amd64' linux-image-6.1.0-57-amd64)}
OUT=$CACHE/l1-$L1_KERNEL_PKG
if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/mod/kvm-amd.ko" ] && [ -f "$OUT/mod/vfio-pci.ko" ] && [ -f "$OUT/mod/tun.ko" ] && [ -f "$OUT/mod/vhost_net.ko" ]; then echo "$OUT"; exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
log "downloading $L1_KERNEL_PKG"
(cd "$TMP" && apt-get download "$L1_KERNEL_PKG" > "$TMP/apt.log" 2>&1) \
  || { cat "$TMP/apt.log" >&2; die "apt-get download $L1_KERNEL_PKG failed (run apt-get update?)"; }
dpkg-deb -x "$TMP"/*.deb "$TMP/x"
KSRC=$CACHE/kbuild-x86_64/linux-source-6.1
[ -x "$KSRC/scripts/extract-vmlinux" ] || { mkdir -p "$TMP/src"; tar -C "$TMP/src" -xJf "$LINUX_SRC_TARBALL" linux-source-6.1/scripts; KSRC=$TMP/src/linux-source-6.1; }
mkdir -p "$OUT.tmp/mod"
"$KSRC/scripts/extract-vmlinux" "$TMP"/x/boot/vmlinuz-* > "$OUT.tmp/vmlinux"
M=$(echo "$TMP"/x/lib/modules/*/kernel)
cp "$M/virt/lib/irqbypass.ko" "$M/drivers/crypto/ccp/ccp.ko" "$M/arch/x86/kvm/kvm.ko" "$M/arch/x86/kvm/kvm-amd.ko" "$M/drivers/net/tun.ko" "$OUT.tmp/mod/"
# vhost-net, for QEMU's vhost=on in the network benchmark (tests/vm/run.sh --bench-net).
for m in net/tap.ko vhost/vhost_iotlb.ko vhost/vhost.ko vhost/vhost_net.ko; do
  [ -f "$M/drivers/$m" ] && cp "$M/drivers/$m" "$OUT.tmp/mod/"
done
# VFIO, in load order: vfio, its type-1 IOMMU backend, virqfd, vfio-pci.
for m in vfio/vfio.ko vfio/vfio_iommu_type1.ko vfio/vfio_virqfd.ko vfio/pci/vfio-pci-core.ko vfio/pci/vfio-pci.ko; do
  [ -f "$M/drivers/$m" ] && cp "$M/drivers/$m" "$OUT.tmp/mod/"
done
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "$OUT"
