//! Connections to the app: HTTP/1.1 over TCP, kept for reuse in one stack per listener.
//!
//! Written here rather than taken from hyper-util's pooled `Client` because of what that client
//! cost on every request of this path (callgrind, one http-mode keep-alive request): a pool key
//! hashed with SipHash into a map behind a mutex, the URI rewritten, and — because an HTTP/1
//! response body is still arriving when its head is handed over — a task spawned per request
//! to wait until the connection is free again. A listener has one destination, so its pool is
//! a stack: the most recently used connection (warm in every cache) goes out first, and a
//! connection comes back when its response body has ended, in the task that read that end.

use super::trailers::RequestBody;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tls_sidecar_config::HostPort;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle connection to the app is kept: between this and 1.5 times this. Apps close
/// idle keep-alive connections on their own timers (Node 5 s, Puma 20 s, Tomcat 60 s); hyper
/// notices that close on loopback at once and the connection is not lent again.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle connections to one app port, for requests with bodies of type `B`.
pub(crate) struct AppPool<B = RequestBody> {
    upstream: HostPort,
    connect_timeout: Duration,
    /// At most this many are kept idle; more are closed when their response ends.
    max_idle: usize,
    idle: Mutex<Idle<B>>,
}

struct Idle<B> {
    /// Each with the moment it came back, oldest first.
    senders: Vec<(SendRequest<B>, Instant)>,
    /// A [`reap`] task is running.
    reaping: bool,
}

/// Why the app gave no response head.
#[derive(Debug)]
pub(crate) enum AppError {
    /// No connection: the I/O error, or `None` when `connect_timeout` passed first.
    Connect(Option<std::io::Error>),
    /// The connection broke before a response head came.
    Exchange(hyper::Error),
}

/// A connection lent to one request until its response body has ended.
pub(crate) struct Lease<B = RequestBody> {
    sender: SendRequest<B>,
    pool: Arc<AppPool<B>>,
}

impl<B> AppPool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(upstream: HostPort, connect_timeout: Duration, max_idle: usize) -> Self {
        AppPool {
            upstream,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Idle {
                senders: Vec::new(),
                reaping: false,
            }),
        }
    }

    /// Sends `request` on an idle connection, or a new one, and returns the response head with
    /// the connection, which goes back through [`Lease::release`].
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<B>), AppError> {
        loop {
            let (mut sender, reused) = match self.take() {
                Some(sender) => (sender, true),
                // Boxed: a new connection is the rare case, and unboxed its futures (connect,
                // timer, hyper's handshake) would be carried by every request's future.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = self.clone();
                    return Ok((response, Lease { sender, pool }));
                }
                Err(mut e) => match e.take_message() {
                    // A kept connection closed (the app's idle timer) before the request went
                    // out: nothing reached the app, so it goes on another connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(AppError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// The most recently returned connection that can still take a request.
    fn take(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some((sender, since)) = idle.senders.pop() {
            if sender.is_ready() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<B>, AppError> {
        let connect = TcpStream::connect((self.upstream.host.as_str(), self.upstream.port));
        let tcp = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(AppError::Connect(Some(e))),
            Err(_) => return Err(AppError::Connect(None)),
        };
        // Request and response heads are small writes: Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(AppError::Exchange)?;
        tokio::spawn(async move {
            // How it ends (the app closed it, the pool dropped it) is no request's business:
            // a request on it gets its own error.
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }

    fn put(self: &Arc<Self>, sender: SendRequest<B>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.senders.len() >= self.max_idle {
            return; // dropped: hyper closes it
        }
        idle.senders.push((sender, Instant::now()));
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.senders.len())
    }

    #[cfg(test)]
    fn idle_all_closed(&self) -> bool {
        self.idle
            .lock()
            .is_ok_and(|idle| idle.senders.iter().all(|(s, _)| s.is_closed()))
    }
}

/// Closes connections idle for [`IDLE_TIMEOUT`] or closed by the app. Ends when none are left
/// (the next return starts another) or the listener is gone: an idle sidecar has no timer.
async fn reap<B>(pool: Weak<AppPool<B>>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let Ok(mut idle) = pool.idle.lock() else {
            return;
        };
        let now = Instant::now();
        idle.senders.retain(|(sender, since)| {
            !sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
        });
        if idle.senders.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

impl<B> Lease<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The response body has ended: the connection goes back to the pool as soon as hyper has
    /// finished the exchange on its side (normally already, since it read that end first).
    pub(crate) fn release(self) {
        let Lease { mut sender, pool } = self;
        if sender.is_ready() {
            pool.put(sender);
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Pool = Arc<AppPool<Empty<Bytes>>>;

    /// An app on loopback that answers each request `200 ok`, closing the connection after
    /// `requests_per_connection` answers; it counts the connections it accepted.
    async fn app(requests_per_connection: usize) -> (HostPort, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    for _ in 0..requests_per_connection {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let host = "127.0.0.1".to_owned();
        (HostPort { host, port }, accepted)
    }

    /// One `GET /` through the pool, its body read to the end, the connection given back.
    async fn get(pool: &Pool) -> Bytes {
        let request = Request::builder()
            .uri("/")
            .header("host", "app")
            .body(Empty::new())
            .unwrap();
        let (response, lease) = pool.send(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        lease.release();
        body
    }

    fn pool(upstream: HostPort, max_idle: usize) -> Pool {
        Arc::new(AppPool::new(upstream, Duration::from_secs(5), max_idle))
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_app_connection() {
        let (upstream, accepted) = app(usize::MAX).await;
        let pool = pool(upstream, 4);
        for _ in 0..5 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_while_idle_is_not_lent_and_the_request_still_succeeds() {
        let (upstream, accepted) = app(1).await;
        let pool = pool(upstream, 4);
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
            // The next request must find the kept connection closed, not race the app's FIN.
            while !pool.idle_all_closed() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_are_kept() {
        let (upstream, accepted) = app(usize::MAX).await;
        let pool = pool(upstream, 2);
        // Five at once: five connections, each held until its body is read.
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let request = Request::builder()
                .uri("/")
                .header("host", "app")
                .body(Empty::new())
                .unwrap();
            let pool = pool.clone();
            requests.spawn(async move { pool.send(request).await.map_err(|e| format!("{e:?}")) });
        }
        let answers = requests.join_all().await;
        for answer in answers {
            let (response, lease) = answer.unwrap();
            response.into_body().collect().await.unwrap();
            lease.release();
        }
        assert_eq!(accepted.load(SeqCst), 5);
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let host = "127.0.0.1".to_owned();
        let pool = pool(HostPort { host, port }, 2);
        let request = Request::builder().uri("/").body(Empty::new()).unwrap();
        match pool.send(request).await {
            Err(AppError::Connect(Some(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected a refused connection, got {:?}", other.map(|_| ())),
        }
    }
}
