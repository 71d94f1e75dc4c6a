//! A minimal HTTP/1.1 client for the benchmark: GET, Content-Length bodies only (every peer
//! passes the upstream's Content-Length through). It is hand-rolled, not hyper, so that the
//! generator's share of CPU 1 stays small next to the terminator's on CPU 0.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

pub fn request(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: {connection}\r\n\r\n").into_bytes()
}

/// The response header the bench upstream adds when the request carried
/// X-Forwarded-Client-Cert: how the probe sees that a peer forwarded the caller's identity.
pub const XFCC_SEEN: &str = "x-bench-xfcc";

pub struct HttpConn<S> {
    pub io: S,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Whether the last response carried [`XFCC_SEEN`].
    pub xfcc_seen: bool,
}

/// What the generator needs from a response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    length: u64,
    xfcc_seen: bool,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status code, Content-Length and the upstream's XFCC marker from a response head.
fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut xfcc_seen = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case(XFCC_SEEN) {
                xfcc_seen = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid(
                    "chunked responses are not supported by the generator",
                ));
            }
        }
    }
    let length = length.ok_or_else(|| invalid("response without Content-Length"))?;
    Ok(Head {
        status,
        length,
        xfcc_seen,
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpConn<S> {
    pub fn new(io: S, buffer: usize) -> Self {
        HttpConn {
            io,
            buf: vec![0; buffer.max(MAX_HEAD)],
            pos: 0,
            len: 0,
            xfcc_seen: false,
        }
    }

    /// Sends `req` and reads the whole response; returns the body length. Non-200 is an error.
    pub async fn get(&mut self, req: &[u8]) -> io::Result<u64> {
        self.io.write_all(req).await?;
        self.io.flush().await?;
        self.read_response(None).await
    }

    /// Like [`get`](Self::get), and keeps the body (the probe reads the echoed XFCC value).
    pub async fn get_body(&mut self, req: &[u8]) -> io::Result<Vec<u8>> {
        self.io.write_all(req).await?;
        self.io.flush().await?;
        let mut body = Vec::new();
        self.read_response(Some(&mut body)).await?;
        Ok(body)
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        let n = self.io.read(&mut self.buf[self.len..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        self.len += n;
        Ok(())
    }

    async fn read_response(&mut self, mut keep: Option<&mut Vec<u8>>) -> io::Result<u64> {
        let Head {
            status,
            length,
            xfcc_seen,
        } = loop {
            if let Some(end) = find(&self.buf[self.pos..self.len], b"\r\n\r\n") {
                let parsed = parse_head(&self.buf[self.pos..self.pos + end])?;
                self.pos += end + 4;
                break parsed;
            }
            if self.len - self.pos >= MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        };
        let mut remaining = length;
        loop {
            let avail = (self.len - self.pos) as u64;
            let take = avail.min(remaining);
            if let Some(keep) = keep.as_deref_mut() {
                keep.extend_from_slice(&self.buf[self.pos..self.pos + take as usize]);
            }
            self.pos += take as usize;
            remaining -= take;
            if remaining == 0 {
                break;
            }
            self.fill().await?;
        }
        self.xfcc_seen = xfcc_seen;
        if status != 200 {
            return Err(invalid(format!("HTTP status {status}")));
        }
        Ok(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head() {
        let head = b"HTTP/1.1 200 OK\r\nServer: x\r\ncontent-length: 1024";
        let want = Head {
            status: 200,
            length: 1024,
            xfcc_seen: false,
        };
        assert_eq!(parse_head(head).ok(), Some(want));
        let head = b"HTTP/1.1 200 OK\r\nX-Bench-XFCC: 1\r\ncontent-length: 3";
        assert_eq!(parse_head(head).map(|h| h.xfcc_seen).ok(), Some(true));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_back_to_back_responses() {
        let (client, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            let mut req = [0u8; 256];
            for _ in 0..2 {
                let _ = server.read(&mut req).await;
                let body = vec![b'x'; 300];
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n".to_vec();
                out.extend_from_slice(&body);
                let _ = server.write_all(&out).await;
            }
        });
        let mut conn = HttpConn::new(client, 1024);
        let req = request("/1k", false);
        assert_eq!(conn.get(&req).await.ok(), Some(300));
        assert_eq!(conn.get(&req).await.ok(), Some(300));
        let _ = task.await;
    }
}
