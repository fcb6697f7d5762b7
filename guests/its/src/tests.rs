//! The test groups, named as in kvm-unit-tests (`-g its`).
//!
//! CPU 0 drives: it sets the GIC and ITS up, starts the other CPUs (which
//! only take interrupts) and checks which CPU received which LPI.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::gic::{self, Heap, LpiTables, LPI_BASE, STATS, TRACKED};
use crate::hw;
use crate::its::{self, Cmd, Its};
use crate::tap::Tap;
use crate::MAX_CPUS;

static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// A secondary CPU reports that its CPU interface is on.
pub fn secondary_online(cpu: usize) {
    if let Some(o) = ONLINE.get(cpu) {
        o.store(true, Ordering::SeqCst);
    }
}

unsafe extern "C" {
    fn secondary_entry();
}

/// The groups `run` knows, for the error message.
const GROUPS: &str = "its-introspection its-trigger its-migration its-pending-migration its-migrate-unmapped-collection its";

/// Runs the group named on the command line.
pub fn run(cmdline: &[u8]) {
    let group = cmdline
        .split(|&c| c == b' ')
        .find(|w| !w.is_empty())
        .unwrap_or(b"");
    let mut tap = Tap::new();
    let mut mpidrs = [0u64; MAX_CPUS];
    let cpus = gic::discover(&mut mpidrs);
    tap.diag(format_args!(
        "{} on {cpus} CPUs",
        core::str::from_utf8(group).unwrap_or("?")
    ));
    match group {
        b"its-introspection" => introspection(&mut tap),
        b"its" => {
            introspection(&mut tap);
            with_setup(&mut tap, cpus, &mpidrs, trigger);
        }
        b"its-trigger" => with_setup(&mut tap, cpus, &mpidrs, trigger),
        b"its-migration" => with_setup(&mut tap, cpus, &mpidrs, migration),
        b"its-pending-migration" => with_setup(&mut tap, cpus, &mpidrs, pending_migration),
        b"its-migrate-unmapped-collection" => {
            with_setup(&mut tap, cpus, &mpidrs, unmapped_collection)
        }
        _ => {
            tap.check(
                false,
                format_args!("a known test group on the command line (one of: {GROUPS})"),
            );
        }
    }
    tap.finish();
}

/// What a test works with.
struct Setup {
    heap: Heap,
    its: Its,
    lpis: LpiTables,
}

impl Setup {
    /// Sends `cmd`; a command the ITS does not consume is a failed check.
    fn cmd(&mut self, tap: &mut Tap, cmd: Cmd) {
        if !self.its.send(cmd) {
            tap.check(
                false,
                format_args!("the ITS consumed a command (GITS_CREADR)"),
            );
        }
    }

    /// Enables `lpi` and maps event `(device, event)` to it in collection
    /// `icid` (MAPTI).
    fn map_event(&mut self, tap: &mut Tap, (dev, event): (u32, u32), lpi: u32, icid: u16) {
        self.lpis.set(lpi, true);
        self.cmd(
            tap,
            Cmd::Mapti {
                dev,
                event,
                lpi,
                icid,
            },
        );
    }

    /// INT on `(device, event)`, then whether `want` (and nothing else)
    /// arrived.
    fn int(&mut self, tap: &mut Tap, (dev, event): (u32, u32), want: Option<(usize, u32)>) -> bool {
        self.cmd(tap, Cmd::Int { dev, event });
        lpis_seen(tap, want)
    }

    /// MAPD with a fresh ITT for 2^`bits` events.
    fn map_device(&mut self, tap: &mut Tap, dev: u32, bits: u32) {
        let itt = self.heap.alloc(8 << bits, 256);
        self.cmd(
            tap,
            Cmd::Mapd {
                dev,
                itt,
                bits,
                valid: true,
            },
        );
    }
}

fn with_setup(
    tap: &mut Tap,
    cpus: usize,
    mpidrs: &[u64; MAX_CPUS],
    test: fn(&mut Tap, &mut Setup),
) {
    if cpus < 4 {
        tap.diag(format_args!(
            "SKIP: the ITS tests need 4 CPUs, this VM has {cpus}"
        ));
        return;
    }
    let mut heap = Heap::new();
    gic::dist_init();
    let lpis = LpiTables::init(&mut heap, cpus);
    let its = match Its::init(&mut heap) {
        Ok(its) => its,
        Err(e) => {
            tap.check(false, format_args!("ITS set up: {e}"));
            return;
        }
    };
    gic::cpu_interface_init();
    hw::enable_irqs();
    for (cpu, &mpidr) in mpidrs.iter().enumerate().take(cpus).skip(1) {
        let r = hw::cpu_on(mpidr, secondary_entry as *const () as u64, cpu as u64);
        if r != 0 {
            tap.check(
                false,
                format_args!("PSCI CPU_ON of CPU {cpu} (MPIDR {mpidr:#x}): {r}"),
            );
            return;
        }
    }
    let end = hw::now_us() + 5_000_000;
    while !ONLINE[1..cpus].iter().all(|o| o.load(Ordering::SeqCst)) {
        if hw::now_us() > end {
            tap.check(false, format_args!("all CPUs online within 5 s"));
            return;
        }
    }
    test(tap, &mut Setup { heap, its, lpis });
}

/// Waits for `want` (an LPI on one CPU, or nothing) and checks that no
/// other CPU took anything.
fn lpis_seen(tap: &mut Tap, want: Option<(usize, u32)>) -> bool {
    let total = || {
        STATS
            .iter()
            .map(|s| s.count.load(Ordering::SeqCst))
            .sum::<u32>()
    };
    let end = hw::now_us() + if want.is_some() { 5_000_000 } else { 200_000 };
    while hw::now_us() < end && (want.is_none() || total() == 0) {
        hw::delay_us(1000);
    }
    hw::delay_us(20_000);
    let ok = match want {
        Some((cpu, lpi)) => {
            total() == 1
                && STATS[cpu].count.load(Ordering::SeqCst) == 1
                && STATS[cpu].last.load(Ordering::SeqCst) == lpi
        }
        None => total() == 0,
    };
    if !ok {
        for (cpu, s) in STATS.iter().enumerate() {
            let n = s.count.load(Ordering::SeqCst);
            if n > 0 {
                tap.diag(format_args!(
                    "CPU {cpu}: {n} interrupts, last {}",
                    s.last.load(Ordering::SeqCst)
                ));
            }
        }
    }
    gic::reset_stats();
    ok
}

fn migrate(tap: &mut Tap) {
    hw::println(format_args!(
        "Now migrate the VM, then press a key to continue..."
    ));
    hw::uart_getc();
    tap.diag(format_args!("running again after the migration"));
}

fn introspection(tap: &mut Tap) {
    let typer = its::typer();
    tap.diag(format_args!(
        "GITS_TYPER {typer:#018x} GITS_IIDR {:#010x}",
        its::iidr()
    ));
    tap.check(
        typer & 1 == 1,
        format_args!("its-introspection: GITS_TYPER.Physical: physical LPIs"),
    );
    tap.check(
        typer & 2 == 0,
        format_args!("its-introspection: GITS_TYPER.Virtual: no virtual LPIs"),
    );
    let ite = ((typer >> 4) & 0xf) + 1;
    tap.check(
        ite == 8,
        format_args!("its-introspection: ITT entry size {ite} bytes (KVM's ABI: 8)"),
    );
    let id_bits = ((typer >> 8) & 0x1f) + 1;
    tap.check(
        id_bits == 16,
        format_args!("its-introspection: {id_bits} EventID bits"),
    );
    let dev_bits = ((typer >> 13) & 0x1f) + 1;
    tap.check(
        dev_bits == 16,
        format_args!("its-introspection: {dev_bits} DeviceID bits"),
    );
    let coll_bits = if typer & (1 << 36) != 0 {
        ((typer >> 32) & 0xf) + 1
    } else {
        16
    };
    tap.check(
        coll_bits == 16,
        format_args!("its-introspection: {coll_bits} collection ID bits"),
    );
    tap.check(
        typer & (1 << 19) == 0,
        format_args!("its-introspection: GITS_TYPER.PTA = 0: collections target PE numbers"),
    );
    let implementer = its::iidr() & 0xfff;
    tap.check(
        implementer == 0x43b,
        format_args!("its-introspection: GITS_IIDR implementer {implementer:#x} (Arm)"),
    );
    let (dev, coll) = (its::baser(0), its::baser(1));
    tap.check(
        its::baser_type(dev) == its::TYPE_DEVICE && its::baser_entry_size(dev) == 8,
        format_args!(
            "its-introspection: GITS_BASER0 is the device table, {}-byte entries",
            its::baser_entry_size(dev)
        ),
    );
    tap.check(
        its::baser_type(coll) == its::TYPE_COLLECTION && its::baser_entry_size(coll) == 8,
        format_args!(
            "its-introspection: GITS_BASER1 is the collection table, {}-byte entries",
            its::baser_entry_size(coll)
        ),
    );
    tap.check(
        (2..8).all(|n| its::baser_type(its::baser(n)) == 0),
        format_args!("its-introspection: GITS_BASER2..7 not implemented"),
    );
    tap.check(
        gic::dist_typer() & (1 << 17) != 0,
        format_args!("its-introspection: GICD_TYPER.LPIS"),
    );
}

fn trigger(tap: &mut Tap, s: &mut Setup) {
    s.map_device(tap, 0, 8);
    s.map_device(tap, 2, 8);
    s.cmd(tap, Cmd::Mapc { icid: 3, pe: 3 });
    s.cmd(tap, Cmd::Mapc { icid: 2, pe: 2 });
    s.map_event(tap, (0, 20), 8195, 3);
    s.map_event(tap, (2, 20), 8196, 2);

    let ok = s.int(tap, (0, 20), Some((3, 8195)));
    tap.check(
        ok,
        format_args!("its-trigger: int: dev 0 event 20 -> LPI 8195 on CPU 3 only"),
    );
    let ok = s.int(tap, (2, 20), Some((2, 8196)));
    tap.check(
        ok,
        format_args!("its-trigger: int: dev 2 event 20 -> LPI 8196 on CPU 2 only"),
    );

    s.lpis.set(8195, false);
    s.cmd(tap, Cmd::Inv { dev: 0, event: 20 });
    let ok = s.int(tap, (0, 20), None);
    tap.check(
        ok,
        format_args!("its-trigger: inv: LPI 8195 disabled, then INV: INT delivers nothing"),
    );
    s.lpis.set(8195, true);
    s.cmd(tap, Cmd::Invall { icid: 3 });
    let ok = lpis_seen(tap, Some((3, 8195)));
    tap.check(
        ok,
        format_args!(
            "its-trigger: invall: LPI 8195 enabled, then INVALL: the pending LPI reaches CPU 3"
        ),
    );

    s.cmd(
        tap,
        Cmd::Movi {
            dev: 2,
            event: 20,
            icid: 3,
        },
    );
    let ok = s.int(tap, (2, 20), Some((3, 8196)));
    tap.check(
        ok,
        format_args!(
            "its-trigger: movi: dev 2 event 20 moved to collection 3 -> LPI 8196 on CPU 3 only"
        ),
    );

    let ok = s.int(tap, (0, 21), None);
    tap.check(
        ok,
        format_args!(
            "its-trigger: INT of an unmapped event delivers nothing (and the queue moves on)"
        ),
    );

    s.cmd(
        tap,
        Cmd::Mapd {
            dev: 0,
            itt: 0,
            bits: 8,
            valid: false,
        },
    );
    let ok = s.int(tap, (0, 20), None);
    tap.check(
        ok,
        format_args!("its-trigger: mapd valid=false: INT on the unmapped device delivers nothing"),
    );
}

fn migration(tap: &mut Tap, s: &mut Setup) {
    s.map_device(tap, 2, 8);
    s.map_device(tap, 7, 8);
    s.cmd(tap, Cmd::Mapc { icid: 2, pe: 2 });
    s.cmd(tap, Cmd::Mapc { icid: 3, pe: 3 });
    s.map_event(tap, (2, 20), 8192, 2);
    s.map_event(tap, (7, 255), 8193, 3);
    let regs = (its::cbaser(), its::baser(0), its::baser(1), its::ctlr());

    migrate(tap);
    let after = (its::cbaser(), its::baser(0), its::baser(1), its::ctlr());
    tap.check(
        after == regs,
        format_args!("its-migration: GITS_CBASER, BASER0, BASER1, CTLR read back the same"),
    );
    let ok = s.int(tap, (2, 20), Some((2, 8192)));
    tap.check(
        ok,
        format_args!("its-migration: dev 2 event 20 -> LPI 8192 on CPU 2 after migration"),
    );
    let ok = s.int(tap, (7, 255), Some((3, 8193)));
    tap.check(
        ok,
        format_args!("its-migration: dev 7 event 255 -> LPI 8193 on CPU 3 after migration"),
    );
}

fn pending_migration(tap: &mut Tap, s: &mut Setup) {
    s.map_device(tap, 0, 8);
    s.cmd(tap, Cmd::Mapc { icid: 0, pe: 2 });
    s.cmd(tap, Cmd::Mapc { icid: 1, pe: 3 });
    for event in 0..TRACKED {
        let icid = (event % 2) as u16;
        s.cmd(
            tap,
            Cmd::Mapti {
                dev: 0,
                event,
                lpi: LPI_BASE + event,
                icid,
            },
        );
    }
    for event in 0..TRACKED {
        s.cmd(tap, Cmd::Int { dev: 0, event });
    }
    let ok = lpis_seen(tap, None);
    tap.check(ok, format_args!("its-pending-migration: {TRACKED} INTs on disabled LPIs: nothing delivered, all pending"));

    migrate(tap);
    for event in 0..TRACKED {
        s.lpis.set(LPI_BASE + event, true);
    }
    s.cmd(tap, Cmd::Invall { icid: 0 });
    s.cmd(tap, Cmd::Invall { icid: 1 });
    let end = hw::now_us() + 10_000_000;
    let total = || {
        STATS
            .iter()
            .map(|c| c.count.load(Ordering::SeqCst))
            .sum::<u32>()
    };
    while total() < TRACKED && hw::now_us() < end {
        hw::delay_us(1000);
    }
    hw::delay_us(20_000);
    for (cpu, parity) in [(2usize, 0u32), (3, 1)] {
        let st = &STATS[cpu];
        let right = (0..TRACKED)
            .filter(|e| e % 2 == parity)
            .all(|e| st.seen[(e / 32) as usize].load(Ordering::SeqCst) & (1 << (e % 32)) != 0);
        let n = st.count.load(Ordering::SeqCst);
        tap.check(
            right && n == TRACKED / 2,
            format_args!("its-pending-migration: CPU {cpu} took its {} pending LPIs after migration, once each (got {n})", TRACKED / 2),
        );
    }
    let others: u32 = [0usize, 1]
        .iter()
        .map(|&c| STATS[c].count.load(Ordering::SeqCst))
        .sum();
    tap.check(
        others == 0,
        format_args!("its-pending-migration: CPUs 0 and 1 took nothing ({others})"),
    );
    gic::reset_stats();
}

fn unmapped_collection(tap: &mut Tap, s: &mut Setup) {
    s.map_device(tap, 2, 8);
    s.map_event(tap, (2, 20), 8192, 3);
    let ok = s.int(tap, (2, 20), None);
    tap.check(
        ok,
        format_args!(
            "its-migrate-unmapped-collection: INT with collection 3 unmapped delivers nothing"
        ),
    );

    migrate(tap);
    let ok = s.int(tap, (2, 20), None);
    tap.check(
        ok,
        format_args!("its-migrate-unmapped-collection: still nothing after migration"),
    );
    s.cmd(tap, Cmd::Mapc { icid: 3, pe: 3 });
    s.cmd(tap, Cmd::Sync { pe: 3 });
    let ok = s.int(tap, (2, 20), Some((3, 8192)));
    tap.check(ok, format_args!("its-migrate-unmapped-collection: collection 3 mapped after migration: LPI 8192 on CPU 3"));
}
