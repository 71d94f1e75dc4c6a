//! The plaintext upstream every terminator forwards to: HTTP/1.1 keep-alive, `GET /bulk`
//! answers `--bulk-bytes` of 'x', `GET /xfcc` echoes the request's X-Forwarded-Client-Cert
//! value as its body, anything else 1 KiB. Every answer to a request that carried
//! X-Forwarded-Client-Cert has the header `x-bench-xfcc: 1`, so the probe sees which peers
//! forward the caller's identity. Single-threaded; exits by itself after `--max-seconds`.

use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Args)]
pub struct UpstreamArgs {
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Body size of `GET /bulk`.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    bulk_bytes: u64,
    /// Body size of every other GET.
    #[arg(long, default_value_t = 1024)]
    small_bytes: usize,
    /// Exit after this long, whatever happens (the script kills it sooner).
    #[arg(long, default_value_t = 4 * 3600)]
    max_seconds: u64,
}

struct Bodies {
    small: Vec<u8>,
    /// `small` with the `x-bench-xfcc: 1` header: both are built once, so marking a response
    /// costs the upstream (on the generator's CPU) nothing per request.
    small_xfcc: Vec<u8>,
    chunk: Vec<u8>,
    bulk_head: Vec<u8>,
    bulk_bytes: u64,
}

pub fn run(args: &UpstreamArgs) -> crate::Result<()> {
    crate::loopback_only(&args.listen)?;
    let small_with = |extra: &str| {
        let mut small = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\n\r\n",
            args.small_bytes
        )
        .into_bytes();
        small.extend(std::iter::repeat_n(b'x', args.small_bytes));
        small
    };
    let bodies = Arc::new(Bodies {
        small: small_with(""),
        small_xfcc: small_with(&format!("{}: 1\r\n", crate::http::XFCC_SEEN)),
        chunk: vec![b'x'; 256 * 1024],
        bulk_head: format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            args.bulk_bytes
        )
        .into_bytes(),
        bulk_bytes: args.bulk_bytes,
    });
    let rt = crate::runtime()?;
    rt.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        println!("upstream listening on {}", args.listen);
        let serve = async {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // EMFILE and friends: pause instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(tcp, &bodies).await;
                });
            }
        };
        tokio::select! {
            () = serve => {}
            () = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {}
        }
        Ok(())
    })
}

async fn serve_conn(mut tcp: TcpStream, bodies: &Bodies) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    // Small at first: idle connections (10,000 of them in the RSS test) should cost little.
    let mut buf = vec![0u8; 2048];
    let mut len = 0;
    loop {
        // Serve every complete request head in the buffer (GETs have no body).
        while let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let bulk = head.starts_with(b"GET /bulk");
            let (mut close, mut xfcc) = (false, None);
            for line in head.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.eq_ignore_ascii_case(b"connection: close") {
                    close = true;
                } else if let Some(value) = header_value(line, XFCC) {
                    xfcc = Some(value);
                }
            }
            if head.starts_with(b"GET /xfcc ") {
                // The probe's request: the value as the peer wrote it, for the report.
                let value = xfcc.unwrap_or_default();
                let seen = if xfcc.is_some() {
                    format!("{}: 1\r\n", crate::http::XFCC_SEEN)
                } else {
                    String::new()
                };
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{seen}Content-Length: {}\r\n\r\n",
                    value.len()
                )
                .into_bytes();
                out.extend_from_slice(value);
                tcp.write_all(&out).await?;
            } else if bulk {
                tcp.write_all(&bodies.bulk_head).await?;
                let mut left = bodies.bulk_bytes;
                while left > 0 {
                    let n = left.min(bodies.chunk.len() as u64) as usize;
                    tcp.write_all(&bodies.chunk[..n]).await?;
                    left -= n as u64;
                }
            } else if xfcc.is_some() {
                tcp.write_all(&bodies.small_xfcc).await?;
            } else {
                tcp.write_all(&bodies.small).await?;
            }
            if close {
                return tcp.shutdown().await;
            }
            buf.copy_within(end + 4..len, 0);
            len -= end + 4;
        }
        if len == buf.len() {
            if buf.len() >= 64 * 1024 {
                return Ok(()); // a head this large is not from our generator
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = tcp.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

/// The request header every http-mode peer sets from the caller's certificate.
const XFCC: &[u8] = b"x-forwarded-client-cert";

/// The value of `line` if it is the header `name` (case-insensitive), without surrounding
/// blanks.
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.get(name.len()..)?;
    if !line[..name.len()].eq_ignore_ascii_case(name) || rest.first() != Some(&b':') {
        return None;
    }
    Some(rest[1..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_xfcc_header() {
        assert_eq!(
            header_value(b"X-Forwarded-Client-Cert: Hash=ab;Subject=\"CN=x\"", XFCC),
            Some(&b"Hash=ab;Subject=\"CN=x\""[..])
        );
        assert_eq!(header_value(b"x-forwarded-client-certs: a", XFCC), None);
        assert_eq!(header_value(b"Host: bench", XFCC), None);
    }
}
