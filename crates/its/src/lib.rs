//! A GICv3 Interrupt Translation Service (ITS) model, without KVM.
//!
//! A device writes an EventID to GITS_TRANSLATER; the ITS looks up the
//! (DeviceID, EventID) pair in its tables and makes an LPI pending on the
//! collection's redistributor. This crate models that guest-visibly like
//! KVM's in-kernel vITS:
//!
//! * [`Its`]: the 128 KiB register frame, the command queue (every GICv3
//!   command), devices, ITTs and collections, with a log of why each ignored
//!   command was dropped ([`Its::dropped`]);
//! * [`Lpis`]: the redistributors' LPI side (configuration and pending tables,
//!   EnableLPIs) and the deliveries to each PE;
//! * [`tables`]: save and restore in KVM's table ABI revision 0, so one
//!   snapshot format serves this model and the in-kernel vITS, and a decoder
//!   for inspecting saved tables ([`tables::decode`]; its `Display` is the
//!   `caravel-its dump` report);
//! * [`kvm`]: the same operations on KVM's in-kernel vITS (the `DeviceFd`
//!   implementation is aarch64-only; the sequencing is tested everywhere).
//!
//! Guest memory is anything implementing vm-memory's `GuestMemory`.

pub mod cmd;
mod dump;
mod its;
pub mod kvm;
mod lpi;
pub mod regs;
pub mod tables;

pub use cmd::Command;
pub use its::{Device, DropReason, Dropped, Ite, Its, ItsRegs, RegsError, DROP_LOG_LEN};
pub use lpi::{Lpi, Lpis, Redistributor, LPI_PROP_ENABLED};
