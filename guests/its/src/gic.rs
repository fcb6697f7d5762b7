//! The GICv3 distributor, redistributors, CPU interface and LPI tables, and
//! the per-CPU record of the LPIs each CPU took.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::hw::{self, read32, read64, write32, write64};
use crate::layout::{GIC_DIST_START, GIC_REDIST_SIZE, GIC_REDIST_START};
use crate::{read_sysreg, write_sysreg, MAX_CPUS};

/// The first LPI INTID.
pub const LPI_BASE: u32 = 8192;
/// INTID bits the LPI tables cover (KVM supports 16).
pub const LPI_ID_BITS: u32 = 16;
/// LPIs whose arrival is recorded one by one (8192..8192+TRACKED).
pub const TRACKED: u32 = 256;
/// Priority given to every enabled LPI (above the PMR).
const LPI_PRIORITY: u8 = 0xa0;

const GICD_CTLR: u64 = 0x0;
const GICD_TYPER: u64 = 0x4;
const GICR_CTLR: u64 = 0x0;
const GICR_TYPER: u64 = 0x8;
const GICR_WAKER: u64 = 0x14;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;
/// Inner-shareable, write-back cacheable table attributes (PROPBASER and
/// PENDBASER share the field layout).
const TABLE_ATTRS: u64 = (0b111 << 7) | (0b01 << 10);

/// A bump allocator over the RAM after the image, for GIC and ITS tables.
pub struct Heap {
    next: u64,
    end: u64,
}

unsafe extern "C" {
    static __heap_start: u8;
}

impl Heap {
    /// The first 8 MiB after the image.
    pub fn new() -> Self {
        let start = &raw const __heap_start as u64;
        Heap {
            next: start,
            end: start + (8 << 20),
        }
    }

    /// `size` zeroed bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> u64 {
        let at = (self.next + align - 1) & !(align - 1);
        assert!(at + size <= self.end, "guest table heap exhausted");
        self.next = at + size;
        // SAFETY: [at, at + size) is RAM after the image, handed out once.
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, size as usize) };
        at
    }
}

/// GICD_TYPER.
pub fn dist_typer() -> u32 {
    read32(GIC_DIST_START + GICD_TYPER)
}

/// Enables group 1 interrupts with affinity routing.
pub fn dist_init() {
    write32(GIC_DIST_START + GICD_CTLR, (1 << 4) | (1 << 1));
    wait_until(|| read32(GIC_DIST_START + GICD_CTLR) & (1 << 31) == 0);
}

fn redist(cpu: usize) -> u64 {
    GIC_REDIST_START + cpu as u64 * GIC_REDIST_SIZE
}

/// The vCPUs, found from the redistributors: each one's MPIDR affinity in
/// order, up to the one marked Last.
pub fn discover(mpidrs: &mut [u64; MAX_CPUS]) -> usize {
    for (i, m) in mpidrs.iter_mut().enumerate() {
        let typer = read64(redist(i) + GICR_TYPER);
        let aff = typer >> 32;
        *m = (aff & 0xff_ffff) | ((aff >> 24) << 32);
        if typer & (1 << 4) != 0 {
            return i + 1;
        }
    }
    MAX_CPUS
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = hw::now_us() + 1_000_000;
    while !f() {
        if hw::now_us() > end {
            return false;
        }
    }
    true
}

/// The LPI configuration table (shared) and each CPU's pending table.
pub struct LpiTables {
    prop: u64,
}

impl LpiTables {
    /// Allocates the tables, wakes each redistributor, points it at them
    /// and enables its LPIs. Every LPI starts disabled.
    pub fn init(heap: &mut Heap, cpus: usize) -> Self {
        let entries = (1u64 << LPI_ID_BITS) - u64::from(LPI_BASE);
        let prop = heap.alloc(entries, 0x1_0000);
        for cpu in 0..cpus {
            let rd = redist(cpu);
            write32(rd + GICR_WAKER, read32(rd + GICR_WAKER) & !2);
            wait_until(|| read32(rd + GICR_WAKER) & 4 == 0);
            let pend = heap.alloc(1 << (LPI_ID_BITS - 3), 0x1_0000);
            write64(
                rd + GICR_PROPBASER,
                prop | TABLE_ATTRS | u64::from(LPI_ID_BITS - 1),
            );
            write64(rd + GICR_PENDBASER, pend | TABLE_ATTRS);
            write32(rd + GICR_CTLR, read32(rd + GICR_CTLR) | 1);
        }
        LpiTables { prop }
    }

    /// Enables or disables `lpi` in the configuration table (the ITS sees
    /// it after an INV or INVALL).
    pub fn set(&self, lpi: u32, enabled: bool) {
        let at = self.prop + u64::from(lpi - LPI_BASE);
        // SAFETY: `lpi` < 2^LPI_ID_BITS, inside the table allocated above.
        unsafe { core::ptr::write_volatile(at as *mut u8, LPI_PRIORITY | u8::from(enabled)) };
        hw::dsb();
    }
}

/// Enables this CPU's interface for group 1 at any priority above 0xf0.
pub fn cpu_interface_init() {
    write_sysreg!("s3_0_c12_c12_5", read_sysreg!("s3_0_c12_c12_5") | 1); // ICC_SRE_EL1.SRE
    write_sysreg!("s3_0_c4_c6_0", 0xf0); // ICC_PMR_EL1
    write_sysreg!("s3_0_c12_c12_3", 0); // ICC_BPR1_EL1
    write_sysreg!("s3_0_c12_c12_7", 1); // ICC_IGRPEN1_EL1
}

/// What one CPU received.
pub struct CpuStats {
    /// Interrupts taken.
    pub count: AtomicU32,
    /// The last INTID.
    pub last: AtomicU32,
    /// Bitmap of the tracked LPIs taken.
    pub seen: [AtomicU32; (TRACKED / 32) as usize],
}

/// Per CPU.
pub static STATS: [CpuStats; MAX_CPUS] = [const {
    CpuStats {
        count: AtomicU32::new(0),
        last: AtomicU32::new(0),
        seen: [const { AtomicU32::new(0) }; (TRACKED / 32) as usize],
    }
}; MAX_CPUS];

/// Forgets what every CPU received.
pub fn reset_stats() {
    for s in &STATS {
        s.count.store(0, Ordering::SeqCst);
        s.last.store(0, Ordering::SeqCst);
        s.seen.iter().for_each(|w| w.store(0, Ordering::SeqCst));
    }
}

/// Acknowledges the interrupt, records it for this CPU, ends it.
#[unsafe(no_mangle)]
extern "C" fn irq_handler() {
    let iar = read_sysreg!("s3_0_c12_c12_0"); // ICC_IAR1_EL1
    let intid = (iar & 0xff_ffff) as u32;
    if (1020..1024).contains(&intid) {
        return;
    }
    if let Some(s) = STATS.get(hw::cpu_index()) {
        if let Some(off) = intid.checked_sub(LPI_BASE).filter(|&o| o < TRACKED) {
            s.seen[(off / 32) as usize].fetch_or(1 << (off % 32), Ordering::SeqCst);
        }
        s.last.store(intid, Ordering::SeqCst);
        s.count.fetch_add(1, Ordering::SeqCst);
    }
    write_sysreg!("s3_0_c12_c12_1", iar); // ICC_EOIR1_EL1
}
