//! The loopback admin endpoint: `GET /live`, `GET /ready` and `GET /metrics` (Prometheus text
//! format 0.0.4), one request per connection.
//!
//! A deliberately tiny HTTP/1.1 server: it reads one request head (bounded in size and time),
//! answers, and closes. Enough for `curl`, CF health checks and the tests; HTTP mode brings a
//! real HTTP stack later.

use crate::accept::Door;
use crate::shared::Health;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tracing::{debug, warn};

/// Largest request head accepted; health checks send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Concurrent admin connections; more are closed at once. It is loopback-only, but a stuck
/// local client must not pile up tasks.
const MAX_CONNECTIONS: usize = 32;

/// The admin endpoint's [`Door`]: each connection gets one answer; beyond
/// [`MAX_CONNECTIONS`] at once, new ones are closed unanswered.
pub(crate) struct AdminDoor {
    health: Arc<Health>,
    permits: Arc<Semaphore>,
}

impl AdminDoor {
    pub(crate) fn new(health: Arc<Health>) -> Self {
        AdminDoor {
            health,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl Door for AdminDoor {
    type Slot = OwnedSemaphorePermit;

    fn admit(&mut self, _stream: &TcpStream) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    fn serve(&self, stream: TcpStream, _peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let health = self.health.clone();
        tokio::spawn(async move {
            answer(stream, &health).await;
            drop(permit);
        });
    }

    /// Closed unanswered: loopback only, nothing to count or say.
    fn refused(&self, _peer: SocketAddr, _held_back: Option<u64>) {}

    fn accept_failed(&self, error: &std::io::Error, _held_back: u64, _retry_ms: u64) {
        warn!(listener = "admin", error = %error, "accept failed");
    }
}

async fn answer(mut stream: TcpStream, health: &Health) {
    let response = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => match parse_head(&head) {
            Ok(Some(request)) => route(&request, health),
            Ok(None) => Response::text(400, "incomplete request"),
            Err(e) => e.response(),
        },
        Ok(Err(e)) => {
            debug!(error = %e, "admin request unreadable");
            return;
        }
        Err(_) => Response::text(408, "request head not received in time"),
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads until the end of the head, the size limit, or EOF.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        head.extend_from_slice(&chunk[..n]);
        if n == 0 || head.len() >= MAX_HEAD || find(&head, b"\r\n\r\n").is_some() {
            return Ok(head);
        }
    }
}

fn route(request: &RequestHead<'_>, health: &Health) -> Response {
    let known = matches!(request.path, "/live" | "/ready" | "/metrics");
    if !known {
        return Response::text(404, "not found");
    }
    if !matches!(request.method, "GET" | "HEAD") {
        return Response {
            allow: true,
            ..Response::text(405, "method not allowed (use GET)")
        };
    }
    let mut response = match request.path {
        "/live" => Response::text(200, "ok"),
        "/metrics" => Response {
            content_type: PROMETHEUS_TEXT,
            body: health.metrics.render(),
            ..Response::text(200, "")
        },
        _ => match health.readiness() {
            Ok(()) => Response::text(200, "ready"),
            Err(reason) => Response::text(503, &reason),
        },
    };
    response.head_only = request.method == "HEAD";
    response
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a str,
    /// The target without its query string.
    pub(crate) path: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    TooLarge,
    Malformed(&'static str),
    Version,
}

impl ParseError {
    fn response(&self) -> Response {
        match self {
            ParseError::TooLarge => Response::text(431, "request head too large"),
            ParseError::Malformed(why) => Response::text(400, why),
            ParseError::Version => Response::text(505, "only HTTP/1.0 and HTTP/1.1 are supported"),
        }
    }
}

/// Parses a request head. `Ok(None)`: incomplete (no blank line yet).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<RequestHead<'_>>, ParseError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| ParseError::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ParseError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(ParseError::Malformed("bad request target"));
    }
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(ParseError::Version);
    }
    for line in lines {
        let Some((name, _value)) = line.split_once(':') else {
            return Err(ParseError::Malformed("header line without ':'"));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ParseError::Malformed("bad header name"));
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Some(RequestHead { method, path }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            allow: false,
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        };
        let allow = if self.allow {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_head_and_drops_the_query() {
        let head =
            b"GET /ready?verbose=1 HTTP/1.1\r\nHost: 127.0.0.1:8444\r\nUser-Agent: curl/8\r\n\r\n";
        assert_eq!(
            parse_head(head),
            Ok(Some(RequestHead {
                method: "GET",
                path: "/ready"
            }))
        );
        assert_eq!(
            parse_head(b"GET /live HTTP/1.0\r\n\r\n"),
            Ok(Some(RequestHead {
                method: "GET",
                path: "/live"
            }))
        );
    }

    #[test]
    fn an_incomplete_head_asks_for_more_until_the_size_limit() {
        assert_eq!(parse_head(b"GET /live HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let mut big = b"GET /live HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&big), Err(ParseError::TooLarge));
    }

    #[test]
    fn malformed_heads_are_rejected() {
        for bad in [
            &b"GET /live\r\n\r\n"[..],
            b"GET  /live HTTP/1.1\r\n\r\n",
            b"get /live HTTP/1.1\r\n\r\n",
            b"GET live HTTP/1.1\r\n\r\n",
            b"GET /live HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /live HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(ParseError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_head(b"GET /live HTTP/2.0\r\n\r\n"),
            Err(ParseError::Version)
        );
    }

    #[test]
    fn responses_carry_length_and_close() {
        let bytes = Response::text(503, "draining").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Length: 9\r\n") && text.contains("Connection: close\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\ndraining\n"), "{text}");
        let head = Response {
            head_only: true,
            ..Response::text(200, "ok")
        }
        .to_bytes();
        assert!(String::from_utf8(head).unwrap().ends_with("\r\n\r\n"));
    }
}
