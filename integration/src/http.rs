//! A minimal HTTP/1.1 client (enough for keep-alive tests over plain or TLS streams) and a tiny
//! loopback file server (an operator's dependency mirror for uncached staging).

use crate::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A parsed response. Header names are lower-cased.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// Sends one request on `stream` (keeping the connection open) and reads one response.
pub fn request<S: Read + Write>(
    stream: &mut S,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .context("cannot send the request")?;
    stream.flush()?;
    read_response(stream)
}

/// One HTTP/2 request with a body and trailers, written frame by frame over an established
/// `h2` stream (a TLS stream that negotiated ALPN `h2`): the client preface, `HEADERS`, one
/// `DATA`, and the trailers as a second `HEADERS` with `END_STREAM`. Header names go as given
/// (HTTP/2 wants them lower case), HPACK-coded as literals without indexing. Returns the
/// response's status (from HPACK's static table; 0 for one it does not hold) and its body.
///
/// A client library would not let a test send what an attacker sends (it would drop or
/// normalise trailer names such as `x-forwarded-client-cert`); frames do exactly what they say.
pub fn h2_request_with_trailers<S: Read + Write>(
    stream: &mut S,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>)> {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    push_frame(&mut out, SETTINGS, 0, 0, &[]);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ]
    .into_iter()
    .chain(headers.iter().copied())
    {
        hpack_literal(&mut block, name, value);
    }
    push_frame(&mut out, HEADERS, END_HEADERS, 1, &block);
    push_frame(&mut out, DATA, 0, 1, body);
    let mut block = Vec::new();
    for (name, value) in trailers {
        hpack_literal(&mut block, name, value);
    }
    push_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 1, &block);
    stream
        .write_all(&out)
        .context("cannot send the HTTP/2 request")?;
    stream.flush()?;

    let (mut status, mut response) = (0u16, Vec::new());
    loop {
        let mut head = [0u8; 9];
        stream
            .read_exact(&mut head)
            .context("the HTTP/2 connection ended before the response did")?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;
        let mut content = &payload[..];
        if matches!(kind, DATA | HEADERS) && flags & PADDED != 0 && !content.is_empty() {
            let pad = usize::from(content[0]);
            content = &content[1..content.len().saturating_sub(pad)];
        }
        if kind == HEADERS && flags & PRIORITY != 0 {
            content = content.get(5..).unwrap_or_default();
        }
        let mut reply = Vec::new();
        match kind {
            SETTINGS if flags & ACK == 0 => push_frame(&mut reply, SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => push_frame(&mut reply, PING, ACK, 0, content),
            GOAWAY => bail!("the server sent GOAWAY: {payload:02x?}"),
            RST_STREAM if id == 1 => bail!("the server reset the stream: {payload:02x?}"),
            HEADERS if id == 1 && status == 0 => {
                // The first field of a response is :status; hyper sends the common ones as an
                // indexed static-table entry.
                status = match content.first() {
                    Some(0x88) => 200,
                    Some(0x89) => 204,
                    Some(0x8a) => 206,
                    Some(0x8b) => 304,
                    Some(0x8c) => 400,
                    Some(0x8d) => 404,
                    Some(0x8e) => 500,
                    _ => 0,
                };
            }
            DATA if id == 1 => response.extend_from_slice(content),
            _ => {}
        }
        if !reply.is_empty() {
            stream.write_all(&reply)?;
            stream.flush()?;
        }
        if id == 1 && matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 {
            return Ok((status, response));
        }
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2), no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    hpack_string(out, name.as_bytes());
    hpack_string(out, value.as_bytes());
}

/// A string literal: 7-bit-prefix length (RFC 7541 §5.1), then the bytes.
fn hpack_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(bytes);
}

/// Reads only a response's status line and headers (e.g. a `101 Switching Protocols`, after
/// which the connection carries another protocol); nothing past the blank line is consumed.
pub fn read_head<S: Read>(stream: &mut S) -> Result<Response> {
    let mut reader = BufReader::with_capacity(1, stream);
    let (status, headers) = read_status_and_headers(&mut reader)?;
    Ok(Response {
        status,
        headers,
        body: Vec::new(),
    })
}

fn read_status_and_headers<R: BufRead>(reader: &mut R) -> Result<(u16, BTreeMap<String, String>)> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("cannot read the status line")?;
    if line.is_empty() {
        bail!("connection closed before a response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok((status, headers))
}

/// Reads one response: status line, headers, then a `Content-Length` or chunked body.
pub fn read_response<S: Read>(stream: &mut S) -> Result<Response> {
    // Byte-at-a-time reads through a small wrapper so nothing past this response is consumed.
    let mut reader = BufReader::with_capacity(1, stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("cannot read the status line")?;
    if line.is_empty() {
        bail!("connection closed before a response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if status != 204 && status != 304 {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A loopback HTTP server that serves files by name (`GET /<name>`) until dropped, counting
/// requests: an operator's dependency mirror for uncached staging.
#[derive(Debug)]
pub struct FileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    pub fn start(files: BTreeMap<String, PathBuf>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = serve_one(conn, &files);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(FileServer {
            addr,
            stop,
            hits,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve_one(mut conn: TcpStream, files: &BTreeMap<String, PathBuf>) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    match files.get(&path).map(std::fs::read) {
        Some(Ok(body)) => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)?;
        }
        _ => {
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    conn.flush()?;
    Ok(())
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
