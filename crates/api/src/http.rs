//! A small, bounded HTTP/1.1 request/response codec.
//!
//! Every limit is explicit so that a hostile or broken client cannot make the
//! server allocate without bound or wait forever: the request line and headers
//! together are at most [`MAX_HEADER_BYTES`], at most [`MAX_HEADERS`] headers,
//! and bodies at most [`MAX_BODY_BYTES`] (declared with `Content-Length`;
//! chunked transfer is refused with 501).

use std::io::{BufRead, Read, Write};

/// Longest request line plus headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers accepted.
pub const MAX_HEADERS: usize = 64;
/// Largest body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Request methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// POST
    Post,
    /// DELETE
    Delete,
}

impl Method {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "GET" => Self::Get,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "POST" => Self::Post,
            "DELETE" => Self::Delete,
            _ => return None,
        })
    }

    /// The token on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Post => "POST",
            Self::Delete => "DELETE",
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path without query string.
    pub path: String,
    /// Body (empty when none).
    pub body: Vec<u8>,
}

/// A request that cannot be served, with the status it maps to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Syntax error (400).
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// Headers or body too large (431 / 413).
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// Unknown method or transfer coding (501).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The peer closed or timed out before a full request arrived.
    #[error("connection closed or timed out")]
    Incomplete,
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::Incomplete => 400,
            Self::TooLarge("headers") => 431,
            Self::TooLarge(_) => 413,
            Self::NotImplemented(_) => 501,
        }
    }
}

/// Reads one line (ending in CRLF or LF) of at most `budget` bytes.
fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<String, HttpError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().map_err(|_| HttpError::Incomplete)?;
        if buf.is_empty() {
            return Err(HttpError::Incomplete);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if chunk.len() > *budget {
            return Err(HttpError::TooLarge("headers"));
        }
        *budget -= chunk.len();
        line.extend_from_slice(chunk);
        let n = chunk.len();
        r.consume(n);
        if done {
            break;
        }
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| HttpError::BadRequest("non-UTF-8 header"))
}

/// Reads one request.
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request, HttpError> {
    let mut budget = MAX_HEADER_BYTES;
    let line = read_line(r, &mut budget)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequest("request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::BadRequest("HTTP version"));
    }
    let method = Method::parse(method).ok_or(HttpError::NotImplemented("method"))?;
    if !target.starts_with('/') {
        return Err(HttpError::BadRequest("request target"));
    }
    let path = target.split('?').next().unwrap_or(target).to_string();

    let mut content_length: Option<usize> = None;
    for n in 0.. {
        let header = read_line(r, &mut budget)?;
        if header.is_empty() {
            break;
        }
        if n >= MAX_HEADERS {
            return Err(HttpError::TooLarge("headers"));
        }
        let (name, value) = header
            .split_once(':')
            .ok_or(HttpError::BadRequest("header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| HttpError::BadRequest("Content-Length"))?;
            if content_length.is_some_and(|l| l != len) {
                return Err(HttpError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::NotImplemented("Transfer-Encoding"));
        }
    }
    let len = content_length.unwrap_or(0);
    if len > MAX_BODY_BYTES {
        return Err(HttpError::TooLarge("body"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|_| HttpError::Incomplete)?;
    Ok(Request { method, path, body })
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<Vec<u8>>,
}

impl Response {
    /// 200 with a JSON body.
    pub fn json(body: Vec<u8>) -> Self {
        Self {
            status: 200,
            body: Some(body),
        }
    }

    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// An error status with a JSON `{"error": message}` body.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        Self {
            status,
            body: Some(body),
        }
    }
}

/// Reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes `resp` and asks the client to close.
pub fn write_response<W: Write>(w: &mut W, resp: &Response) -> std::io::Result<()> {
    let body = resp.body.as_deref().unwrap_or(&[]);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: caravel\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status)
    );
    if resp.body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Writes a request (client side).
pub fn write_request<W: Write>(
    w: &mut W,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<()> {
    let body = body.unwrap_or(&[]);
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n",
        method.as_str(),
        path
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Reads a response (client side): status and body.
pub fn read_response<R: BufRead>(r: &mut R) -> Result<Response, HttpError> {
    let mut budget = MAX_HEADER_BYTES;
    let line = read_line(r, &mut budget)?;
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::BadRequest("status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::BadRequest("HTTP version"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| HttpError::BadRequest("status code"))?;
    let mut len = None;
    loop {
        let h = read_line(r, &mut budget)?;
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                len = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| HttpError::BadRequest("Content-Length"))?,
                );
            }
        }
    }
    let body = match len {
        Some(n) if n > MAX_BODY_BYTES * 16 => return Err(HttpError::TooLarge("body")),
        Some(n) => {
            let mut b = vec![0; n];
            r.read_exact(&mut b).map_err(|_| HttpError::Incomplete)?;
            b
        }
        None => {
            let mut b = Vec::new();
            r.take((MAX_BODY_BYTES * 16) as u64)
                .read_to_end(&mut b)
                .map_err(|_| HttpError::Incomplete)?;
            b
        }
    };
    Ok(Response {
        status,
        body: (!body.is_empty()).then_some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(s: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut BufReader::new(s))
    }

    #[test]
    fn parses_get_and_put_with_body() {
        let r = parse(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.body.len()),
            (Method::Get, "/api/v1/vmm.ping", 0)
        );
        let r = parse(b"PUT /api/v1/vm.resize?x=1 HTTP/1.1\r\ncontent-length: 7\r\n\r\n{\"a\":1}")
            .unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.body.as_slice()),
            (Method::Put, "/api/v1/vm.resize", &b"{\"a\":1}"[..])
        );
        let r = parse(b"GET / HTTP/1.0\n\n").unwrap();
        assert_eq!(r.path, "/");
    }

    #[test]
    fn malformed_requests_map_to_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"", 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET / HTTP/2\r\n\r\n", 400),
            (b"BREW / HTTP/1.1\r\n\r\n", 501),
            (b"GET x HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            (b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        ];
        for (input, status) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(
                e.status(),
                *status,
                "{:?} -> {e:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn header_limits_hold() {
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&long).unwrap_err(), HttpError::TooLarge("headers"));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), HttpError::TooLarge("headers"));
    }

    #[test]
    fn response_round_trip() {
        let mut wire = Vec::new();
        write_response(&mut wire, &Response::json(b"{\"ok\":true}".to_vec())).unwrap();
        assert!(wire.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let r = read_response(&mut BufReader::new(&wire[..])).unwrap();
        assert_eq!(r, Response::json(b"{\"ok\":true}".to_vec()));
        let mut wire = Vec::new();
        write_response(&mut wire, &Response::no_content()).unwrap();
        assert_eq!(
            read_response(&mut BufReader::new(&wire[..])).unwrap(),
            Response::no_content()
        );
    }

    #[test]
    fn request_round_trip() {
        let mut wire = Vec::new();
        write_request(&mut wire, Method::Put, "/api/v1/vm.shutdown", Some(b"{}")).unwrap();
        let r = parse(&wire).unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.body.as_slice()),
            (Method::Put, "/api/v1/vm.shutdown", &b"{}"[..])
        );
    }
}
