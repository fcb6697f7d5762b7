//! The walker guest: it reads or writes each address of a list the host
//! puts at [`DATA_GPA`] (`[address, op]` pairs, op 0 = read, 1 = write the
//! address itself; address 0 ends the list), reporting each access with a
//! GUEST_SYNC of `[address, value]`. Memory that no slot backs turns into
//! MMIO exits, which [`step`] records and answers with [`MMIO_FILL`].

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::check::{Failure, IoctlContext};
use crate::harness::ucall::{decode, describe};
use crate::harness::{TestVm, Ucall, DATA_GPA, UCALL_PORT};

/// What an MMIO read returns.
pub const MMIO_FILL: u64 = 0x4d4d_4d4d_4d4d_4d4d;

guest_asm::guest_code!(
    walker,
    ".code64",
    "mov r13, 0x300000",
    "2: mov r12, [r13]",
    "test r12, r12",
    "jz 4f",
    "mov rax, [r13 + 8]",
    "test rax, rax",
    "jnz 3f",
    "mov rbx, [r12]",
    "jmp 5f",
    "3: mov [r12], r12",
    "mov rbx, r12",
    "5: mov edi, 1",
    "mov rsi, r12",
    "mov dx, 0x1000",
    "in al, dx",
    "add r13, 16",
    "jmp 2b",
    "4: mov edi, 4",
    "mov dx, 0x1000",
    "in al, dx",
    "6: hlt",
    "jmp 6b",
);

/// The walker's code.
pub fn code() -> &'static [u8] {
    walker::code()
}

/// One access of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read the u64 at the address.
    Read(u64),
    /// Write the address itself to it.
    Write(u64),
}

/// Puts the access list in guest memory.
pub fn set_list(vm: &TestVm, list: &[Access]) {
    for (i, a) in list.iter().enumerate() {
        let (addr, op) = match a {
            Access::Read(x) => (*x, 0),
            Access::Write(x) => (*x, 1),
        };
        vm.write_u64(DATA_GPA + 16 * i as u64, addr);
        vm.write_u64(DATA_GPA + 16 * i as u64 + 8, op);
    }
    vm.write_u64(DATA_GPA + 16 * list.len() as u64, 0);
}

/// What happened until the next GUEST_SYNC or GUEST_DONE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A read exit at this address.
    MmioRead(u64),
    /// A write exit: address and data.
    MmioWrite(u64, u64),
    /// GUEST_SYNC: address and the value the guest saw (or wrote).
    Sync(u64, u64),
    /// GUEST_DONE.
    Done,
}

/// Runs to the next ucall; returns the MMIO exits on the way and the ucall.
pub fn step(vcpu: &mut VcpuFd, vm: &TestVm) -> Result<Vec<Event>, Failure> {
    let mut events = Vec::new();
    for _ in 0..64 {
        match vcpu.run().ctx("KVM_RUN")? {
            VcpuExit::MmioRead(addr, data) => {
                let n = data.len().min(8);
                data[..n].copy_from_slice(&MMIO_FILL.to_le_bytes()[..n]);
                events.push(Event::MmioRead(addr));
            }
            VcpuExit::MmioWrite(addr, data) => {
                let mut b = [0u8; 8];
                let n = data.len().min(8);
                b[..n].copy_from_slice(&data[..n]);
                events.push(Event::MmioWrite(addr, u64::from_le_bytes(b)));
            }
            VcpuExit::IoIn(UCALL_PORT, data) => {
                data.fill(0);
                match decode(vcpu, &vm.mem)? {
                    Ucall::Sync([addr, value, _]) => events.push(Event::Sync(addr, value)),
                    Ucall::Done => events.push(Event::Done),
                    other => return Err(Failure::Fail(format!("walker: unexpected {other:?}"))),
                }
                return Ok(events);
            }
            other => {
                return Err(Failure::Fail(format!(
                    "walker: unexpected {} after {events:x?}",
                    describe(&other)
                )))
            }
        }
    }
    Err(Failure::Fail(format!(
        "walker: no ucall after 64 exits: {events:x?}"
    )))
}
