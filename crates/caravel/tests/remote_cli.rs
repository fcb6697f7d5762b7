//! `caravel-remote` against a fake API server: a reader that goes away
//! (`caravel-remote info | head -1`) is not a panic.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let sock =
        std::env::temp_dir().join(format!("caravel-remote-pipe-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        // A large JSON body: far more than a closed pipe takes.
        let body = format!("{{\"devices\": [{}]}}", vec!["\"x\""; 100_000].join(","));
        let mut w = &s;
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_caravel-remote"))
        .arg("--api-socket")
        .arg(&sock)
        .arg("info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(
        out.status.code(),
        Some(101),
        "a panic's exit status: {stderr}"
    );
}
