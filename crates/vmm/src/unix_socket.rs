//! Unix socket paths Caravel listens on (the API socket, vsock's socket):
//! claimed from a Caravel that was killed, and removed when done.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Makes `path` free for a new socket: a socket left by a Caravel that was
/// killed (nobody accepts on it) is removed; a live one or any other file is
/// an error naming the flag.
pub fn claim_path(flag: &'static str, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::config(
            flag,
            format!(
                "{} exists and is not a socket; choose another path",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::config(
            flag,
            format!(
                "{} is in use by another process (a running caravel?); stop it or choose another path",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            log::warn!(
                "{flag}: removing the stale socket {} (nobody listens on it)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| {
                Error::config(
                    flag,
                    format!("cannot remove the stale socket {}: {e}", path.display()),
                )
            })
        }
        Err(e) => Err(Error::config(
            flag,
            format!("{} exists and cannot be checked ({e}); remove it or choose another path", path.display()),
        )),
    }
}

/// A socket file that is removed when this is dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Listens on `path` (claimed first, see [`claim_path`]); the socket file
/// goes away with the returned [`SocketFile`].
pub fn listen(flag: &'static str, path: &Path) -> Result<(UnixListener, SocketFile)> {
    claim_path(flag, path)?;
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::config(flag, format!("cannot listen on {}: {e}", path.display())))?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_refused_and_the_file_removed_at_the_end() {
        let dir = std::env::temp_dir().join(format!("crv-unix-socket-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        drop(UnixListener::bind(&path).unwrap());
        let (l, file) = listen("--vsock", &path).unwrap();
        let err = listen("--vsock", &path).unwrap_err().to_string();
        assert!(err.contains("--vsock") && err.contains("in use"), "{err}");
        drop(l);
        drop(file);
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        let err = listen("--vsock", &path).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
