//! Initial vCPU state for the arm64 Linux boot protocol: the boot vCPU
//! starts at the kernel's entry in EL1h with interrupts masked and x0 =
//! the DTB's address; the others start powered off (PSCI CPU_ON brings them
//! up). Registers are set with `KVM_SET_ONE_REG`; their IDs are computed here.

/// `KVM_REG_ARM64`
const REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`
const REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE`
const REG_ARM_CORE: u64 = 0x0010 << 16;
/// `KVM_REG_ARM64_SYSREG`
const REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// PSTATE: EL1h (SP_EL1), D, A, I and F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// The ID of a 64-bit core register at byte `offset` of `struct kvm_regs`.
pub const fn core_reg(offset: u64) -> u64 {
    REG_ARM64 | REG_SIZE_U64 | REG_ARM_CORE | (offset / 4)
}

/// `xN`
pub const fn x(n: u64) -> u64 {
    core_reg(8 * n)
}

/// `pc`
pub const PC: u64 = core_reg(8 * 32);
/// `pstate`
pub const PSTATE: u64 = core_reg(8 * 33);

/// The ID of system register (op0, op1, CRn, CRm, op2).
pub const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    REG_ARM64
        | REG_SIZE_U64
        | REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// `MPIDR_EL1`
pub const MPIDR_EL1: u64 = sysreg(3, 0, 0, 0, 5);

/// The registers the boot vCPU starts with: `(id, value)`.
pub fn boot_regs(entry: u64, fdt: u64) -> [(u64, u64); 4] {
    [
        (PSTATE, PSTATE_EL1H_MASKED),
        (PC, entry),
        (x(0), fdt),
        (x(1), 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kernel_abi() {
        // As KVM documents (and QEMU/kvmtool compute them).
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(boot_regs(0x4008_0000, 0x5fe0_0000)[1], (PC, 0x4008_0000));
    }
}
