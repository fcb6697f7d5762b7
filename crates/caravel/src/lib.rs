//! Command-line parsing for `caravel` and `caravel-remote`, kept in a library
//! so that its error messages are unit-tested.

pub mod cli;
pub mod options;
pub mod remote;
