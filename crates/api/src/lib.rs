//! The control API shared by the VMM (server) and `caravel-remote` (client).
//!
//! Paths and bodies follow Cloud Hypervisor's REST API where the feature is the
//! same (`/api/v1/vmm.ping`, `/api/v1/vm.info`, `/api/v1/vm.shutdown`, ...).
//! The transport is HTTP/1.1 over a Unix socket, one request per connection.

pub mod client;
pub mod http;
pub mod types;

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1/";
