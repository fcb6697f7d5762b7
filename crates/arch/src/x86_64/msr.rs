//! Model-specific registers set before the first KVM_RUN.

/// IA32_TSC
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SFMASK
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// MISC_ENABLE: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRR default type: enabled (bit 11), write-back (6).
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// `(index, value)` pairs for a freshly booted vCPU: syscall/sysenter state
/// cleared, TSC at zero, fast strings on, all memory write-back.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_are_unique_and_include_mtrr_wb() {
        let m = boot_msrs();
        let mut idx: Vec<u32> = m.iter().map(|(i, _)| *i).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), m.len());
        assert!(m.contains(&(MSR_MTRR_DEF_TYPE, 0x806)));
    }
}
