//! The plaintext upstream every terminator forwards to: HTTP/1.1 keep-alive, `GET /bulk`
//! answers `--bulk-bytes` of 'x', anything else 1 KiB. Single-threaded; exits by itself after
//! `--max-seconds`.

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
    chunk: Vec<u8>,
    bulk_head: Vec<u8>,
    bulk_bytes: u64,
}

pub fn run(args: &UpstreamArgs) -> crate::Result<()> {
    crate::loopback_only(&args.listen)?;
    let mut small = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        args.small_bytes
    )
    .into_bytes();
    small.extend(std::iter::repeat_n(b'x', args.small_bytes));
    let bodies = Arc::new(Bodies {
        small,
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
            let close = head
                .split(|&b| b == b'\n')
                .any(|l| l.eq_ignore_ascii_case(b"connection: close\r"));
            if bulk {
                tcp.write_all(&bodies.bulk_head).await?;
                let mut left = bodies.bulk_bytes;
                while left > 0 {
                    let n = left.min(bodies.chunk.len() as u64) as usize;
                    tcp.write_all(&bodies.chunk[..n]).await?;
                    left -= n as u64;
                }
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
