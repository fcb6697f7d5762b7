//! The source side: connect, check, pre-copy, stop, hand over.
//!
//! [`Session::start`] connects and has the destination accept the stream
//! header and the VM's shape, then turns dirty logging on. [`Session::precopy`]
//! runs while the guest runs: a first pass over all memory (boot RAM and the
//! plugged virtio-mem runs; all-zero pages are skipped, the destination's
//! memory starts zeroed), then passes over what was dirtied meanwhile, until
//! the rest fits the downtime budget at the measured throughput or the pass
//! limit is reached. [`Session::finish`] runs on the paused VM: the last
//! dirty pages, then the state; the destination answers once the guest runs
//! there. Every error leaves the VM as it was (the caller resumes it), with
//! dirty logging off again.

use std::io::Write;
use std::time::{Duration, Instant};

use api::types::{MigrationInfo, MigrationPhase};
use vm_memory::{Bytes, GuestAddress};

use super::dirty::PageSet;
use super::stream::{self, Hello, Kind, Reply};
use super::{Conn, Endpoint};
use crate::config::VmConfig;
use crate::snapshot::files::SavedConfig;
use crate::vm::Vm;
use crate::{Error, Result};

/// Default pause budget.
pub const DEFAULT_DOWNTIME: Duration = Duration::from_millis(300);
/// Default pass limit.
pub const DEFAULT_MAX_ITERATIONS: u32 = 30;
/// Passes without a smaller dirty set after which pre-copy gives up
/// converging and pauses the guest.
const STALLED_PASSES: u32 = 5;
/// How long the source waits for the destination to listen, and for any
/// read or write to make progress.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// What `vm.send-migration` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    /// Where the destination listens.
    pub to: Endpoint,
    /// Hand memory over as file descriptors (same host, shared=on memory).
    pub local: bool,
    /// The longest pause the guest should see.
    pub downtime: Duration,
    /// Most passes over memory before pausing anyway.
    pub max_iterations: u32,
}

/// Reports progress (the VMM puts it into `vm.info`).
pub type Progress<'a> = &'a dyn Fn(&MigrationInfo);

/// A migration in progress on the source.
pub struct Session {
    conn: Conn,
    opts: SendOptions,
    info: MigrationInfo,
    started: Instant,
    /// Pages to send next.
    pending: PageSet,
    /// The device view's generation when its bitmaps were last read.
    view_generation: u64,
    buf: Vec<u8>,
}

fn fail(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Migration(format!("{what}: {e}"))
}

impl Session {
    /// Connects to the destination, which checks the stream header and the
    /// VM's configuration (and maps its memory), then starts tracking dirty
    /// pages. A VM with passed-through devices is refused by their names.
    pub fn start(vm: &Vm, cfg: &VmConfig, opts: SendOptions, progress: Progress) -> Result<Self> {
        let vfio = vm.vfio_names();
        if !vfio.is_empty() {
            return Err(Error::Migration(format!(
                "the VM has passed-through devices ({}): their state cannot move with it",
                vfio.join(", ")
            )));
        }
        if let Some(n) = cfg.net.iter().find(|n| n.tap.is_none()) {
            // The destination opens each card's TAP by name (its queues
            // parked until the guest runs there); descriptors the user
            // passed to this process cannot be opened there.
            return Err(Error::Migration(format!(
                "the virtio-net device {} uses TAP descriptors passed with fd=, which the \
                 destination cannot open: name the TAP (tap=NAME) to migrate it",
                n.id.as_deref().unwrap_or("without an id")
            )));
        }
        if cfg.vsock.is_some() {
            // The destination binds the same socket path, which the source
            // holds until it exits.
            return Err(Error::Migration(
                "the VM has a virtio-vsock device, which cannot migrate yet (snapshot and \
                 restore carry it; its connections end)"
                    .into(),
            ));
        }
        if opts.local {
            if !matches!(opts.to, Endpoint::Unix(_)) {
                return Err(Error::Migration(
                    "local=true hands guest memory over as file descriptors, which travel \
                     only over a Unix socket: use a unix:/path URL"
                        .into(),
                ));
            }
            if !(cfg.memory.shared || cfg.memory.hugepages) {
                return Err(Error::Migration(
                    "local=true hands guest memory over as memfds: start the VM with \
                     --memory ...,shared=on (or hugepages=on); private memory can only be \
                     copied (migrate without --local)"
                        .into(),
                ));
            }
        }
        let started = Instant::now();
        let mut info = super::empty_info("source");
        progress(&info);
        let conn = Conn::connect(&opts.to, CONNECT_WAIT)
            .map_err(fail("cannot connect to the destination"))?;
        conn.set_timeout(Some(IO_TIMEOUT))
            .map_err(fail("socket timeout"))?;
        let mut s = Self {
            conn,
            opts,
            pending: PageSet::new(super::page_size(), &[]),
            view_generation: 0,
            info: info.clone(),
            started,
            buf: Vec::new(),
        };
        s.request_json(Kind::Hello, &Hello::ours(s.opts.local), "the stream header")?;
        s.request_json(
            Kind::Config,
            &SavedConfig::of(cfg),
            "the VM's configuration",
        )?;
        if s.opts.local {
            s.send_memory_files(vm)?;
            info.phase = MigrationPhase::Precopy;
            s.info = info;
            return Ok(s);
        }
        vm.ram_slots().set_logging(true).map_err(Error::Migration)?;
        // From here on, every write is tracked: drop what devices wrote
        // before (the first pass sends everything anyway).
        s.view_generation = vm.device_view().generation();
        vm.device_view().take_dirty(|_, _| ());
        info.phase = MigrationPhase::Precopy;
        s.info = info;
        Ok(s)
    }

    /// Sends a request frame and waits for its answer.
    fn request_json<T: serde::Serialize>(&mut self, kind: Kind, v: &T, what: &str) -> Result<()> {
        let body = serde_json::to_vec(v)
            .map_err(|e| Error::Migration(format!("cannot encode {what}: {e}")))?;
        self.request(kind, &body, what)
    }

    fn request(&mut self, kind: Kind, body: &[u8], what: &str) -> Result<()> {
        stream::write_frame(&mut self.conn, kind, &[body])
            .map_err(fail(&format!("sending {what}")))?;
        self.info.stream_bytes += 16 + body.len() as u64;
        self.await_reply(what)
    }

    /// Local migration: the memfds behind guest memory (boot RAM ranges,
    /// then the hotplug region), sizes in a `MemoryFds` frame and the files
    /// right after it.
    fn send_memory_files(&mut self, vm: &Vm) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mappings = vm.ram().mappings();
        let fds = mappings
            .iter()
            .map(|m| m.file().map(|f| f.as_raw_fd()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Migration("guest memory is not backed by memfds".into()))?;
        let sizes: Vec<u64> = mappings.iter().map(|m| m.len() as u64).collect();
        let body = serde_json::to_vec(&sizes)
            .map_err(|e| Error::Migration(format!("cannot encode the memory sizes: {e}")))?;
        stream::write_frame(&mut self.conn, Kind::MemoryFds, &[&body])
            .map_err(fail("sending the memory files"))?;
        let sock = self
            .conn
            .unix()
            .ok_or_else(|| Error::Migration("local migration needs a Unix socket".into()))?;
        super::send_fds(sock, &fds).map_err(fail("sending the memory files"))?;
        self.await_reply("the memory files")
    }

    fn await_reply(&mut self, what: &str) -> Result<()> {
        let frame = stream::read_frame(&mut self.conn)
            .map_err(|e| Error::Migration(format!("waiting for the answer to {what}: {e}")))?
            .expect(Kind::Reply, &format!("after {what}"))
            .map_err(Error::Migration)?;
        let reply: Reply = frame.json().map_err(Error::Migration)?;
        match reply.error {
            None => Ok(()),
            Some(e) => Err(Error::Migration(format!(
                "the destination refused {what}: {e}"
            ))),
        }
    }

    /// The memory to send now: boot RAM and the plugged virtio-mem runs.
    fn ranges(vm: &Vm) -> Vec<(u64, u64)> {
        let boot = vm
            .ram()
            .boot_mappings()
            .map(|(gpa, m)| (gpa, m.len() as u64));
        boot.chain(vm.device_view().plugged_runs()).collect()
    }

    /// Adds what vCPUs and devices wrote since the last call to `pending`.
    /// A plug or an unplug rebuilds the device view (new, clean bitmaps,
    /// and maybe a new run): then all memory is added, which also covers
    /// any run plugged since.
    fn collect_dirty(&mut self, vm: &Vm) -> Result<()> {
        // The generation before the ranges: a plug after this read shows up
        // as a new generation in the next call.
        let generation = vm.device_view().generation();
        let ranges = Self::ranges(vm);
        if ranges != self.pending.ranges() {
            let mut next = PageSet::new(super::page_size(), &ranges);
            for (gpa, len) in self.pending.runs(u64::MAX) {
                next.add_range(gpa, len);
            }
            self.pending = next;
        }
        let pending = &mut self.pending;
        vm.ram_slots()
            .take_dirty(|gpa, bits| pending.add_bitmap(gpa, bits))
            .map_err(Error::Migration)?;
        vm.device_view()
            .take_dirty(|gpa, bits| pending.add_bitmap(gpa, bits));
        if generation != self.view_generation {
            for &(gpa, len) in &ranges {
                self.pending.add_range(gpa, len);
            }
            self.view_generation = generation;
        }
        Ok(())
    }

    /// Sends the pages in `pending` (skipping all-zero ones if `skip_zero`)
    /// and empties it; returns guest bytes sent.
    fn send_pending(&mut self, vm: &Vm, skip_zero: bool) -> Result<u64> {
        let page = super::page_size() as usize;
        let mut sent = 0;
        for (gpa, len) in self.pending.runs(stream::MAX_MEMORY_RUN) {
            self.buf.resize(len as usize, 0);
            vm.ram()
                .memory
                .read_slice(&mut self.buf, GuestAddress(gpa))
                .map_err(|e| Error::Migration(format!("reading guest memory at {gpa:#x}: {e}")))?;
            // Runs of non-zero pages (or the whole run).
            let mut at = 0;
            while at < self.buf.len() {
                let zero = |p: usize| skip_zero && is_zero(&self.buf[p..p + page]);
                if zero(at) {
                    at += page;
                    continue;
                }
                let mut end = at + page;
                while end < self.buf.len() && !zero(end) {
                    end += page;
                }
                let addr = (gpa + at as u64).to_le_bytes();
                stream::write_frame(&mut self.conn, Kind::Memory, &[&addr, &self.buf[at..end]])
                    .map_err(fail("sending guest memory"))?;
                sent += (end - at) as u64;
                self.info.stream_bytes += 24 + (end - at) as u64;
                at = end;
            }
        }
        self.pending.clear();
        self.info.memory_bytes += sent;
        Ok(sent)
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Pre-copy while the guest runs. Returns when what is left to send
    /// fits the downtime budget or after the pass limit; fails early if
    /// the guest stops on its own.
    pub fn precopy(&mut self, vm: &Vm, progress: Progress) -> Result<()> {
        if self.opts.local {
            // The destination maps the same memory: nothing to copy.
            return Ok(());
        }
        self.pending = PageSet::new(super::page_size(), &Self::ranges(vm));
        self.pending.fill();
        let mut first = true;
        // The smallest dirty set seen and the pass that saw it.
        let mut least = (u64::MAX, 0);
        loop {
            if let Some(r) = vm.exit_reason() {
                return Err(Error::Migration(format!(
                    "the guest stopped during the migration ({r:?})"
                )));
            }
            let pass = Instant::now();
            let sent = self.send_pending(vm, first)?;
            first = false;
            // The answer says the destination has stored the pass.
            self.request(Kind::MemoryDone, b"", "a pass over memory")?;
            let took = pass.elapsed().as_secs_f64().max(1e-3);
            self.info.iterations += 1;
            self.info.throughput = (sent as f64 / took) as u64;
            self.collect_dirty(vm)?;
            let dirty = self.pending.bytes();
            self.info.dirty_bytes = dirty;
            self.info.dirty_rate = (dirty as f64 / took) as u64;
            self.info.total_ms = self.elapsed_ms();
            progress(&self.info);
            log::info!(
                "migration pass {}: sent {} KiB in {:.0} ms, {} KiB dirtied meanwhile",
                self.info.iterations,
                sent >> 10,
                took * 1e3,
                dirty >> 10
            );
            // At the last pass's throughput, would the rest fit the budget?
            let throughput = self.info.throughput.max(1) as f64;
            let fits = dirty as f64 / throughput <= self.opts.downtime.as_secs_f64();
            // A guest that dirties as fast as the link sends never fits:
            // once the dirty set has stopped shrinking for a while, more
            // passes only cost time.
            if dirty < least.0 {
                least = (dirty, self.info.iterations);
            }
            let stuck = self.info.iterations - least.1 >= STALLED_PASSES;
            if fits || stuck || self.info.iterations >= self.opts.max_iterations {
                return Ok(());
            }
        }
    }

    /// Finishes on the paused VM: the last dirty pages, then the state
    /// (disk locks are given up for the destination just before). On an
    /// error the disk locks are taken back; the caller resumes the guest.
    pub fn finish(
        &mut self,
        vm: &Vm,
        paused_at: Instant,
        progress: Progress,
    ) -> Result<MigrationInfo> {
        self.info.phase = MigrationPhase::Stopped;
        progress(&self.info);
        // The state first: saving the ITS writes its tables into guest
        // memory (through KVM, so the dirty log sees them).
        let state = vm.snapshot().map_err(|e| Error::Migration(e.to_string()))?;
        if !self.opts.local {
            self.collect_dirty(vm)?;
            self.send_pending(vm, false)?;
            self.request(Kind::MemoryDone, b"", "the last pages")?;
        }
        let body = serde_json::to_vec(&state)
            .map_err(|e| Error::Migration(format!("cannot encode the state: {e}")))?;
        vm.release_disks();
        if let Err(e) = self.request(Kind::State, &body, "the VM's state") {
            if let Err(l) = vm.lock_disks() {
                log::error!("migration failed and the disk locks cannot be taken back: {l}");
            }
            return Err(e);
        }
        let _ = self.conn.flush();
        self.info.phase = MigrationPhase::Completed;
        self.info.downtime_ms = Some(paused_at.elapsed().as_millis() as u64);
        self.info.total_ms = self.elapsed_ms();
        self.info.dirty_bytes = 0;
        progress(&self.info);
        Ok(self.info.clone())
    }

    /// Gives up: tells the destination (if it still listens), stops dirty
    /// logging and reports the failure.
    pub fn abandon(mut self, vm: &Vm, why: &Error, progress: Progress) -> MigrationInfo {
        let _ = self.conn.set_timeout(Some(Duration::from_secs(1)));
        let _ = stream::write_frame(&mut self.conn, Kind::Abandon, &[why.to_string().as_bytes()]);
        if let Err(e) = vm.ram_slots().set_logging(false) {
            log::warn!("migration: {e}");
        }
        self.info.phase = MigrationPhase::Failed;
        self.info.error = Some(why.to_string());
        self.info.total_ms = self.elapsed_ms();
        progress(&self.info);
        self.info
    }
}

/// Whether a page is all zero bytes.
fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(8);
    words
        .by_ref()
        .all(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_recognised_whatever_their_alignment() {
        let mut buf = vec![0u8; 8200];
        assert!(is_zero(&buf[1..4097]));
        buf[4096] = 1;
        assert!(!is_zero(&buf[1..4097]));
        assert!(is_zero(&buf[4097..8193]));
        buf[8192] = 1;
        assert!(!is_zero(&buf[4097..8193]));
    }
}
