//! Command-line parsing for `caravel`, `caravel-remote`, `caravel-its` and
//! `caravel-sriov`,
//! kept in a library so that its error messages are unit-tested.

pub mod cli;
pub mod its_dump;
pub mod options;
pub mod remote;
pub mod sriov_cli;
