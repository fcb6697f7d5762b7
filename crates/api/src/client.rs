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
    let sent = http::write_request(&mut w, method, path, body);
    // A server that refuses a connection (503 when it is busy) answers and
    // closes before reading the request, so the write can fail with EPIPE
    // while its answer is already waiting: read that before giving up.
    let received = http::read_response(&mut BufReader::new(&stream));
    match (sent, received) {
        (_, Ok(response)) => Ok(response),
        (Err(e), Err(_)) => Err(ClientError::Send(e)),
        (Ok(()), Err(e)) => Err(ClientError::Receive(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn socket(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("caravel-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn an_answer_sent_before_the_request_was_read_is_returned() {
        let path = socket("early");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
                .unwrap();
            // Closed without reading: the client's write may see EPIPE.
        });
        let big = vec![b'x'; 1 << 20];
        let r = request(&path, Method::Put, "/x", Some(&big), Duration::from_secs(5));
        server.join().unwrap();
        let r = r.unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(r.status, 503);
    }

    #[test]
    fn a_server_that_closes_without_answering_is_a_send_or_receive_error() {
        let path = socket("mute");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let big = vec![b'x'; 1 << 20];
        let err = request(&path, Method::Put, "/x", Some(&big), Duration::from_secs(5));
        server.join().unwrap();
        let err = err.unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, ClientError::Send(_) | ClientError::Receive(_)),
            "{err}"
        );
    }
}
