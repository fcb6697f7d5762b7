//! The destination side: check the stream, map memory, store pages, then
//! build, restore and start the VM.
//!
//! Each request frame is answered; a failure is answered with its reason
//! (so the source resumes the guest and says why) and ends the receive.
//! Memory frames must land inside the guest memory the configuration
//! describes. The VM is built as soon as the configuration arrives (so the
//! guest's pause does not include building it) and receives memory into its
//! RAM; it takes its disk locks when the state arrives, once the source has
//! paused and given them up.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use api::types::{MigrationInfo, MigrationPhase};
use vm_memory::{Bytes, GuestAddress};

use super::stream::{self, Frame, Hello, Kind, Reply};
use super::Conn;
use crate::config::VmConfig;
use crate::memory::GuestRam;
use crate::snapshot::files::SavedConfig;
use crate::snapshot::VmState;
use crate::vm::{RunningVm, Vm};
use crate::{Error, Result};

/// How long the destination waits for the next frame.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets the timeouts a destination reads and writes with.
pub fn prepare(conn: &Conn) -> Result<()> {
    conn.set_timeout(Some(IO_TIMEOUT))
        .map_err(|e| Error::Migration(format!("socket timeout: {e}")))
}

/// The migrated VM, running.
pub struct Received {
    /// Its configuration: the source's shape and devices, this host's
    /// output, API socket and sandbox.
    pub config: VmConfig,
    /// The VM, its vCPUs started.
    pub vm: RunningVm,
    /// What was received.
    pub info: MigrationInfo,
}

/// Builds the VM for a configuration around its memory (which then
/// receives the source's), without disk locks: [`Vm::new_for_migration`].
pub type MakeVm<'a> = &'a mut dyn FnMut(&VmConfig, GuestRam) -> Result<Vm>;

/// Takes the `n` memory files a local migration's source sends after its
/// `MemoryFds` frame ([`super::recv_fds`] on the connection).
pub type FdSource<'a> = &'a mut dyn FnMut(usize) -> std::io::Result<Vec<std::fs::File>>;

/// Receives a VM on `conn`, accepted from the source (with [`prepare`]'s
/// timeouts). `host` is this process's configuration (output, API socket,
/// sandbox).
pub fn receive<S: Read + Write>(
    conn: &mut S,
    host: &VmConfig,
    make_vm: MakeVm,
    fds: FdSource,
    progress: super::send::Progress,
) -> Result<Received> {
    let mut r = Receiver {
        host,
        local: false,
        greeted: false,
        info: super::empty_info("destination"),
        started: Instant::now(),
        config: None,
        vm: None,
    };
    progress(&r.info);
    loop {
        let frame = stream::read_frame(conn)
            .map_err(|e| Error::Migration(format!("reading the stream: {e}")))?;
        r.info.stream_bytes += 16 + frame.payload.len() as u64;
        let answered = !matches!(frame.kind, Kind::Memory | Kind::Abandon);
        match r.handle(frame, make_vm, fds) {
            Ok(Step::More) => {
                if answered {
                    stream::write_json(conn, Kind::Reply, &Reply { error: None })
                        .map_err(|e| Error::Migration(format!("answering the source: {e}")))?;
                }
                r.info.total_ms = r.started.elapsed().as_millis() as u64;
                progress(&r.info);
            }
            Ok(Step::Done(vm)) => {
                // The guest runs here now; the source exits when it hears.
                let answer = stream::write_json(conn, Kind::Reply, &Reply { error: None });
                if let Err(e) = answer {
                    log::warn!("migration: the source did not hear that the VM runs here: {e}");
                }
                r.info.phase = MigrationPhase::Completed;
                r.info.total_ms = r.started.elapsed().as_millis() as u64;
                progress(&r.info);
                let config = r.config.take().ok_or_else(|| {
                    Error::Migration("the state came before the configuration".into())
                })?;
                return Ok(Received {
                    config,
                    vm: *vm,
                    info: r.info,
                });
            }
            Err(e) => {
                let _ = stream::write_json(
                    conn,
                    Kind::Reply,
                    &Reply {
                        error: Some(e.to_string()),
                    },
                );
                r.info.phase = MigrationPhase::Failed;
                r.info.error = Some(e.to_string());
                progress(&r.info);
                return Err(e);
            }
        }
    }
}

enum Step {
    More,
    Done(Box<RunningVm>),
}

struct Receiver<'a> {
    host: &'a VmConfig,
    /// Memory comes as the source's memfds, not as pages.
    local: bool,
    /// The Hello frame was accepted.
    greeted: bool,
    info: MigrationInfo,
    started: Instant,
    /// The configuration to build (and the source's, for checks).
    config: Option<VmConfig>,
    /// Built from the configuration, not started.
    vm: Option<Vm>,
}

fn bad(e: String) -> Error {
    Error::Migration(e)
}

impl Receiver<'_> {
    fn handle(&mut self, frame: Frame, make_vm: MakeVm, fds: FdSource) -> Result<Step> {
        if !self.greeted && frame.kind != Kind::Hello {
            return Err(bad(format!(
                "the stream must open with a Hello frame, not {:?}",
                frame.kind
            )));
        }
        match frame.kind {
            Kind::Hello => {
                let hello: Hello = frame.json().map_err(bad)?;
                if let Some(why) = hello.refusal() {
                    return Err(bad(why));
                }
                self.greeted = true;
                self.local = hello.local;
                Ok(Step::More)
            }
            Kind::Config => {
                if self.config.is_some() {
                    return Err(bad("a second configuration frame".into()));
                }
                let saved: SavedConfig = frame.json().map_err(bad)?;
                saved.check().map_err(bad)?;
                let cfg = saved.apply_to(self.host);
                // A local migration's memory comes with the next frame.
                if !self.local {
                    let ram = Vm::guest_ram(&cfg)?;
                    self.vm = Some(make_vm(&cfg, ram)?);
                }
                self.config = Some(cfg);
                self.info.phase = MigrationPhase::Precopy;
                Ok(Step::More)
            }
            Kind::MemoryFds => {
                let cfg = match (&self.config, &self.vm, self.local) {
                    (Some(cfg), None, true) => cfg,
                    _ => {
                        return Err(bad(
                            "memory files outside a local migration, or out of order".into(),
                        ))
                    }
                };
                let sizes: Vec<u64> = frame.json().map_err(bad)?;
                let files = fds(sizes.len())
                    .map_err(|e| bad(format!("receiving the memory files: {e}")))?;
                let ram = Vm::guest_ram_from_files(cfg, files)?;
                let expected: Vec<u64> = ram.mappings().iter().map(|m| m.len() as u64).collect();
                if sizes != expected {
                    return Err(bad(format!(
                        "memory files of {sizes:?} bytes for a VM of {expected:?}"
                    )));
                }
                self.vm = Some(make_vm(cfg, ram)?);
                self.info.phase = MigrationPhase::Precopy;
                Ok(Step::More)
            }
            Kind::Memory if self.local => Err(bad(
                "memory pages in a local migration (memory came as files)".into(),
            )),
            Kind::Memory => {
                let vm = self
                    .vm
                    .as_ref()
                    .ok_or_else(|| bad("memory before the configuration".into()))?;
                let (gpa, data) = frame.memory().map_err(bad)?;
                vm.memory()
                    .write_slice(data, GuestAddress(gpa))
                    .map_err(|e| {
                        bad(format!(
                            "{} bytes at {gpa:#x} are outside the VM's memory: {e}",
                            data.len()
                        ))
                    })?;
                self.info.memory_bytes += data.len() as u64;
                Ok(Step::More)
            }
            Kind::MemoryDone => {
                self.info.iterations += 1;
                Ok(Step::More)
            }
            Kind::State => {
                let Some(vm) = self.vm.take() else {
                    return Err(bad("the state came before the configuration".into()));
                };
                self.info.phase = MigrationPhase::Stopped;
                let state: VmState = frame.json().map_err(bad)?;
                state.check_version()?;
                vm.lock_disks()?;
                vm.attach_taps()?;
                vm.restore_state(&state)?;
                Ok(Step::Done(Box::new(vm.start()?)))
            }
            Kind::Abandon => Err(bad(format!(
                "the source gave up: {}",
                String::from_utf8_lossy(&frame.payload)
            ))),
            Kind::Reply => Err(bad(format!(
                "unexpected {:?} frame from the source",
                frame.kind
            ))),
        }
    }
}
