//! Blocking client for the API socket (used by `caravel-remote` and tests).

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::http::{self, HttpError, Method, Response};

/// Why a request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source} (is caravel running with --api-socket {path}?)")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing the request failed.
    #[error("cannot send request: {0}")]
    Send(std::io::Error),
    /// The response was malformed or incomplete.
    #[error("bad response from caravel: {0}")]
    Receive(HttpError),
}

/// Sends one request and returns the response. `timeout` bounds each read and write.
pub fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ClientError::Send)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(ClientError::Send)?;
    let mut w = &stream;
    http::write_request(&mut w, method, path, body).map_err(ClientError::Send)?;
    http::read_response(&mut BufReader::new(&stream)).map_err(ClientError::Receive)
}
