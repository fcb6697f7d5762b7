//! CPUID as each vCPU sees it: KVM's supported set, adjusted for the VM's topology.
//!
//! The input is `KVM_GET_SUPPORTED_CPUID` (which also carries KVM's paravirtual
//! leaves 0x4000_0000/1). Per vCPU we set its APIC ID, the logical CPU count,
//! the hypervisor bit and TSC-deadline, and describe N single-threaded cores in
//! one socket through leaves 0xB/0x1F (Intel) and 0x8000_0008/0x8000_001E (AMD).
//! Leaves that KVM does not report are not invented: under nesting the
//! supported set can be sparse, and a guest copes with a missing leaf better
//! than with an inconsistent one.

use kvm_bindings::kvm_cpuid_entry2;

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry depends on ECX.
pub const FLAG_SIGNIFICANT_INDEX: u32 = 1;

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Per-vCPU CPUID choices.
#[derive(Debug, Clone, Copy)]
pub struct CpuidConfig {
    /// This vCPU's index, which is also its APIC ID.
    pub cpu_id: u8,
    /// vCPUs in the VM (all in one socket, one thread per core).
    pub nr_vcpus: u8,
    /// Advertise the TSC-deadline timer (needs an in-kernel LAPIC).
    pub tsc_deadline: bool,
}

/// Bits needed to number `n` items (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn max_leaf(entries: &[kvm_cpuid_entry2], base: u32) -> Option<u32> {
    entries.iter().find(|e| e.function == base).map(|e| e.eax)
}

/// Replaces every entry of `function` with the topology subleaves 0..=2.
fn set_topology_leaf(entries: &mut Vec<kvm_cpuid_entry2>, function: u32, cfg: &CpuidConfig) {
    let Some(template) = entries.iter().position(|e| e.function == function) else {
        return;
    };
    let flags = entries[template].flags | FLAG_SIGNIFICANT_INDEX;
    entries.retain(|e| e.function != function);
    let nr = u32::from(cfg.nr_vcpus);
    let apic = u32::from(cfg.cpu_id);
    let levels = [
        // SMT level: one thread per core.
        (0u32, 1u32, 1u32),
        // Core level: all vCPUs in the package.
        (id_bits(nr), nr, 2),
    ];
    for (index, (shift, count, kind)) in levels.iter().enumerate() {
        entries.push(kvm_cpuid_entry2 {
            function,
            index: index as u32,
            flags,
            eax: *shift,
            ebx: *count,
            ecx: (kind << 8) | index as u32,
            edx: apic,
            ..Default::default()
        });
    }
    // Terminating (invalid) level.
    entries.push(kvm_cpuid_entry2 {
        function,
        index: 2,
        flags,
        ecx: 2,
        edx: apic,
        ..Default::default()
    });
}

/// Adjusts `entries` (a copy of the supported CPUID) for one vCPU.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, cfg: &CpuidConfig) {
    let nr = u32::from(cfg.nr_vcpus.max(1));
    let basic_max = max_leaf(entries, 0).unwrap_or(0);

    for e in entries.iter_mut() {
        match e.function {
            1 => {
                let logical = if nr > 1 { nr.next_power_of_two() } else { 1 };
                e.ebx = (u32::from(cfg.cpu_id) << 24) | (logical.min(255) << 16) | (8 << 8);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if cfg.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if nr > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; caches are per core.
                e.eax = (e.eax & 0x03ff_ffff) | ((nr - 1).min(63) << 26);
                e.eax &= !(0xfff << 14);
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(nr) << 12) | (nr - 1);
            }
            0x8000_001e => {
                e.eax = u32::from(cfg.cpu_id);
                e.ebx = u32::from(cfg.cpu_id) & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    if basic_max >= 0xb {
        set_topology_leaf(entries, 0xb, cfg);
    }
    if basic_max >= 0x1f {
        set_topology_leaf(entries, 0x1f, cfg);
    }
}

/// Finds the entry for `function`/`index`.
pub fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == function && (e.flags & FLAG_SIGNIFICANT_INDEX == 0 || e.index == index)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if function == 0xb {
                FLAG_SIGNIFICANT_INDEX
            } else {
                0
            },
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A plausible supported set: max basic leaf 0xd, AMD extended leaves, KVM PV leaves.
    fn supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            entry(1, 0, 0x0083_0f10, 0xff_ff_ff_ff, 0x0000_2000, 0x0078_93ff),
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 16, 0x201, 7),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            entry(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0xffff, 0),
        ]
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = supported();
        normalize(
            &mut e,
            &CpuidConfig {
                cpu_id: 2,
                nr_vcpus: 3,
                tsc_deadline: true,
            },
        );
        let l1 = find(&e, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 2, "initial APIC ID");
        assert_eq!(
            (l1.ebx >> 16) & 0xff,
            4,
            "logical count rounded to a power of two"
        );
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH line size in 8-byte units");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & 0x2000, 0x2000, "supported bits are kept");
    }

    #[test]
    fn single_vcpu_has_no_htt_and_optional_deadline() {
        let mut e = supported();
        normalize(
            &mut e,
            &CpuidConfig {
                cpu_id: 0,
                nr_vcpus: 1,
                tsc_deadline: false,
            },
        );
        let l1 = find(&e, 1, 0).unwrap();
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn topology_leaves_describe_cores() {
        let mut e = supported();
        normalize(
            &mut e,
            &CpuidConfig {
                cpu_id: 1,
                nr_vcpus: 2,
                tsc_deadline: true,
            },
        );
        // The max basic leaf is 0xd, so leaf 0xB is rewritten.
        let smt = find(&e, 0xb, 0).unwrap();
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 1));
        let core = find(&e, 0xb, 1).unwrap();
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (1, 2, 2, 1));
        let end = find(&e, 0xb, 2).unwrap();
        assert_eq!(end.ecx >> 8, 0);
        assert_eq!(e.iter().filter(|x| x.function == 0xb).count(), 3);
        let amd = find(&e, 0x8000_0008, 0).unwrap();
        assert_eq!(amd.ecx & 0xff, 1, "NC = cores - 1");
        assert_eq!((amd.ecx >> 12) & 0xf, 1, "ApicIdCoreIdSize");
    }

    #[test]
    fn missing_leaves_are_not_invented() {
        let mut e = vec![entry(0, 0, 1, 0, 0, 0), entry(1, 0, 0, 0, 0, 0)];
        normalize(
            &mut e,
            &CpuidConfig {
                cpu_id: 0,
                nr_vcpus: 4,
                tsc_deadline: true,
            },
        );
        assert_eq!(e.len(), 2);
        assert!(find(&e, 0xb, 0).is_none());
    }

    #[test]
    fn pv_leaves_are_kept() {
        let mut e = supported();
        normalize(
            &mut e,
            &CpuidConfig {
                cpu_id: 0,
                nr_vcpus: 1,
                tsc_deadline: true,
            },
        );
        let kvm = find(&e, 0x4000_0000, 0).unwrap();
        let sig: Vec<u8> = [kvm.ebx, kvm.ecx, kvm.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig[..9], b"KVMKVMKVM");
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
