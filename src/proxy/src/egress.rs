//! Egress: the app connects in plaintext to a loopback listener; the sidecar connects to the
//! entry's `target` over TLS, presenting this instance's certificate (from the same
//! [`CertStore`] ingress serves, so rotation and minting apply alike), checks the server's
//! chain against the trust bundle and then its identity against `expect`, and only then copies
//! bytes both ways. Any failure closes the app's connection, with one log line saying why and
//! a count in `/metrics`.
//!
//! The identity check is a custom [`ServerCertVerifier`] (Linkerd's `verify_id` pattern):
//! WebPKI verifies the chain without a hostname; `cf:` rules then read the leaf's OUs (Diego
//! certificates name no routes, so hostname verification would always fail on them), but
//! only when the chain also ends at the platform identity CA ([`crate::trust`]); `dns:` rules
//! run standard hostname verification over the SANs.
//!
//! Which certificate egress presents: the Diego instance identity whenever this container has
//! one, whatever `certificate.source` serves (server.rs wires the store). The receiving
//! side's `cf:` rules can only match a certificate from the platform identity CA, so that is
//! the only certificate that says "this app" to another sidecar; a minted or a service
//! certificate keeps serving ingress, where clients verify hostnames. Outside CF the serving
//! certificate is presented.
//!
//! Resumption: the `ClientConfig`, and with it the client session cache, is rebuilt whenever
//! the trust anchors change, so no session from before is offered. A resumed session is
//! re-verified after the handshake (rustls does not): a server certificate that expired since
//! the session began is refused like one in a full handshake.

use crate::accept::Door;
use crate::cert::{CertStore, leaf_info};
use crate::config::Limits;
use crate::forward::{self, CLOSE_GRACE, Counts, PumpError};
use crate::identity::{CfIdentity, Expectation};
use crate::logging::{millis, tls_version};
use crate::metrics::{EgressFailure, EgressMetrics};
use crate::shared::Shared;
use crate::stop::stopped;
use crate::trust::{Anchors, Side};
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ResolvesClientCert, verify_server_cert_signed_by_trust_anchor, verify_server_name,
};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, Error, HandshakeKind, OtherError,
    ProtocolVersion, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tls_sidecar_config::{HostPattern, HostPort};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

/// One egress entry, as its connection tasks see it.
pub(crate) struct Egress {
    pub(crate) name: String,
    pub(crate) target: HostPort,
    /// Fixed addresses instead of a lookup (tests).
    pub(crate) addrs: Option<Vec<SocketAddr>>,
    pub(crate) tls: Arc<EgressTls>,
    pub(crate) metrics: Arc<EgressMetrics>,
}

/// An egress entry's TLS client settings. The `ClientConfig` is rebuilt when the certificate
/// or the trust bundle changes: a rotated certificate is presented on the next connection,
/// and a session cached under the old trust is never resumed.
pub(crate) struct EgressTls {
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
    expect: Arc<Expectation>,
    anchors: ArcSwap<Anchors>,
    built: ArcSwapOption<Built>,
}

struct Built {
    cert: Arc<CertifiedKey>,
    anchors: Arc<Anchors>,
    config: Arc<ClientConfig>,
    verifier: Arc<ServerVerifier>,
}

impl EgressTls {
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        store: Arc<CertStore>,
        expect: Expectation,
        anchors: &Arc<Anchors>,
    ) -> Self {
        EgressTls {
            provider,
            store,
            expect: Arc::new(expect),
            anchors: ArcSwap::new(anchors.clone()),
            built: ArcSwapOption::empty(),
        }
    }

    /// Verifies servers against `anchors` from the next connection on (with an empty session
    /// cache).
    pub(crate) fn install(&self, anchors: &Arc<Anchors>) {
        self.anchors.store(anchors.clone());
    }

    /// The client configuration for a new connection.
    fn config(&self) -> Result<Arc<Built>, Failure> {
        let cert = self.store.current().ok_or_else(|| Failure {
            why: EgressFailure::NoCertificate,
            text: "no certificate loaded yet: nothing to present to the target".to_owned(),
        })?;
        let anchors = self.anchors.load_full();
        if let Some(built) = self.built.load_full()
            && Arc::ptr_eq(&built.cert, &cert)
            && Arc::ptr_eq(&built.anchors, &anchors)
        {
            return Ok(built);
        }
        let verifier = Arc::new(ServerVerifier {
            anchors: anchors.clone(),
            expect: self.expect.clone(),
            algorithms: self.provider.signature_verification_algorithms,
        });
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Failure {
                why: EgressFailure::Handshake,
                text: format!("cannot set up TLS: {e}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(Present(cert.clone())));
        let built = Arc::new(Built {
            cert,
            anchors,
            config: Arc::new(config),
            verifier,
        });
        self.built.store(Some(built.clone()));
        Ok(built)
    }
}

/// Presents this instance's certificate to every server, whatever CAs it hints at.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The chain against the trust bundle (no hostname), then the identity against `expect`.
#[derive(Debug)]
struct ServerVerifier {
    anchors: Arc<Anchors>,
    expect: Arc<Expectation>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The server is not who `expect` says; carried to the connection inside the rustls error.
#[derive(Debug)]
struct Unexpected {
    /// Only `dns:` rules were written, and no name matched.
    hostname: bool,
    text: String,
}

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Unexpected {}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.anchors.bundle.is_empty() {
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.anchors.bundle,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let identity = self
            .anchors
            .identity(Side::Server, end_entity, intermediates, now);
        if self.expect.admits(&identity) {
            return Ok(ServerCertVerified::assertion());
        }
        for name in &self.expect.dns {
            // `dns:*.<domain>` (egress proxy): the certificate must name the host asked for,
            // which the proxy sends as the server name, when that host is below the domain.
            let checked = match name.strip_prefix("*.") {
                Some(domain) => match server_name {
                    ServerName::DnsName(host)
                        if HostPattern::Below(domain.to_owned()).matches(host.as_ref()) =>
                    {
                        server_name.to_owned()
                    }
                    _ => continue,
                },
                None => match ServerName::try_from(name.as_str()) {
                    Ok(name) => name.to_owned(),
                    Err(_) => continue,
                },
            };
            if verify_server_name(&cert, &checked).is_ok() {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let sans = leaf_info(end_entity)
            .map(|leaf| leaf.sans.join(", "))
            .unwrap_or_default();
        let hostname = !self.expect.identity.has_rules();
        let text = if hostname {
            format!(
                "hostname mismatch: expected {}, the certificate names {}",
                self.expect.written(),
                if sans.is_empty() { "nothing" } else { &sans }
            )
        } else {
            format!(
                "wrong identity: expected {} got {identity} (SANs: {sans})",
                self.expect.written()
            )
        };
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(Unexpected { hostname, text })),
        )))
    }

    crate::trust::signatures_by_provider!();
}

/// Why a connection did not reach its target: the metrics label and a sentence for the log.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) why: EgressFailure,
    pub(crate) text: String,
}

/// What the connection's log line says.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    pub(crate) counts: Counts,
    pub(crate) server: Option<SocketAddr>,
    pub(crate) tls: Option<ProtocolVersion>,
    pub(crate) identity: Option<CfIdentity>,
}

/// Ends of a connection that got through to the target.
#[derive(Debug)]
enum Ended {
    /// Both sides finished.
    Done,
    /// The target closed with an alert or an error, or the app broke off.
    Error(String),
    /// Idle for `limits.idle_timeout`.
    Idle(std::time::Duration),
    /// The drain timeout ended.
    Drained,
}

/// An egress listener's [`Door`]: each connection from the app takes one of the egress
/// slots (`max_connections`, apart from the TLS listeners') and is [`serve`]d; with none
/// left it is closed.
pub(crate) struct EgressDoor {
    pub(crate) egress: Arc<Egress>,
    pub(crate) shared: Arc<Shared>,
}

impl Door for EgressDoor {
    type Slot = OwnedSemaphorePermit;

    fn admit(&mut self, _app: &TcpStream) -> Option<OwnedSemaphorePermit> {
        self.egress.metrics.accepted.fetch_add(1, Relaxed);
        self.shared.egress_permit()
    }

    fn serve(&self, app: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let (egress, shared) = (self.egress.clone(), self.shared.clone());
        tokio::spawn(serve(app, peer, egress, shared, permit));
    }

    fn refused(&self, peer: SocketAddr, held_back: Option<u64>) {
        self.egress.metrics.refused.fetch_add(1, Relaxed);
        if let Some(held_back) = held_back {
            let (name, max_connections) = (&self.egress.name, self.shared.limits.max_connections);
            warn!(
                egress = %name, peer = %peer, max_connections, held_back,
                "egress connection refused: max_connections reached"
            );
        }
    }

    fn accept_failed(&self, error: &io::Error, held_back: u64, retry_ms: u64) {
        let name = &self.egress.name;
        warn!(egress = %name, error = %error, held_back, retry_ms, "accept failed");
    }
}

/// Serves one connection from the app. `_permit` is its `max_connections` slot.
pub(crate) async fn serve(
    app: TcpStream,
    peer: SocketAddr,
    egress: Arc<Egress>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let metrics = egress.metrics.clone();
    metrics.active.fetch_add(1, Relaxed);
    let mut conn = Conn::default();
    let mut close_all = shared.close_all.clone();
    let result = tokio::select! {
        result = handle(app, &egress, &shared.limits, &mut conn) => result,
        () = stopped(&mut close_all) => Ok(Ended::Drained),
    };
    metrics.active.fetch_sub(1, Relaxed);
    // Its buffers are freed: give them back once the sidecar is quiet.
    crate::memory::collect_soon();

    let duration_ms = millis(started.elapsed());
    let tls = tls_version(conn.tls);
    let [app, space, org, instance] = CfIdentity::log_fields(conn.identity.as_ref());
    let server = conn.server.map(tracing::field::display);
    let (bytes_sent, bytes_received) = (conn.counts.bytes_out, conn.counts.bytes_in);
    let target = tracing::field::display(&egress.target);
    let name = egress.name.as_str();
    match result {
        Err(failure) => {
            metrics.failed(failure.why);
            warn!(
                egress = name, peer = %peer, target, server, tls, app, space, org, instance,
                duration_ms, reason = failure.why.as_str(),
                "egress connection refused: {}", failure.text
            );
        }
        Ok(ended) => {
            let error = match &ended {
                Ended::Done => None,
                Ended::Error(e) => Some(e.clone()),
                Ended::Idle(d) => Some(format!("idle for {} ms", d.as_millis())),
                Ended::Drained => Some("closed at the end of the drain".to_owned()),
            };
            info!(
                egress = name, peer = %peer, target, server, tls, app, space, org, instance,
                duration_ms, bytes_sent, bytes_received, error,
                "egress connection closed"
            );
        }
    }
}

async fn handle(
    mut app: TcpStream,
    egress: &Egress,
    limits: &Limits,
    conn: &mut Conn,
) -> Result<Ended, Failure> {
    // `app` has TCP_NODELAY from the listening socket (`accept::bind`).
    let result = connect(
        &egress.target,
        egress.addrs.as_deref(),
        &egress.tls,
        limits,
        conn,
    )
    .await;
    let mut tls = match result {
        Ok(tls) => tls,
        Err(failure) => {
            // The app sees its connection closed: nothing it sent went anywhere.
            let _ = app.shutdown().await;
            return Err(failure);
        }
    };
    let metrics = &egress.metrics;
    let result = forward::pump(
        &mut tls,
        &mut app,
        &mut conn.counts,
        &metrics.bytes_received,
        &metrics.bytes_sent,
        limits.idle_timeout,
    )
    .await;
    Ok(match result {
        Ok(()) => Ended::Done,
        Err(PumpError::Idle(d)) => {
            let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
            Ended::Idle(d)
        }
        Err(PumpError::Tls(e)) => {
            // In TLS 1.3 a server that refuses our certificate says so after our handshake
            // finished: its alert arrives on the first read.
            if let Some(Error::AlertReceived(alert)) = rustls_error(&e) {
                return Err(Failure {
                    why: EgressFailure::Refused,
                    text: refusal(*alert),
                });
            }
            Ended::Error(format!("target: {e}"))
        }
        Err(PumpError::Plain(e)) => Ended::Error(format!("app: {e}")),
        Err(PumpError::Stalled(d)) => Ended::Error(format!(
            "target: took none of the app's data for {} ms",
            d.as_millis()
        )),
    })
}

/// Resolves `target` (unless `addrs` are given), connects to its addresses in turn, and does
/// the TLS handshake with `tls`, the host as the server name.
pub(crate) async fn connect(
    target: &HostPort,
    addrs: Option<&[SocketAddr]>,
    tls: &EgressTls,
    limits: &Limits,
    conn: &mut Conn,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let built = tls.config()?;
    let deadline = Instant::now() + limits.connect_timeout;
    let addrs: Vec<SocketAddr> = match addrs {
        Some(addrs) => addrs.to_vec(),
        None => {
            let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
            match tokio::time::timeout_at(deadline, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    return Err(Failure {
                        why: EgressFailure::Resolve,
                        text: format!("cannot resolve {}: {e}", target.host),
                    });
                }
                Err(_) => {
                    return Err(Failure {
                        why: EgressFailure::Resolve,
                        text: format!(
                            "cannot resolve {} within {} ms",
                            target.host,
                            limits.connect_timeout.as_millis()
                        ),
                    });
                }
            }
        }
    };
    if addrs.is_empty() {
        return Err(Failure {
            why: EgressFailure::Resolve,
            text: format!("{} resolves to no address", target.host),
        });
    }
    let tcp = connect_any(&addrs, deadline, limits)
        .await
        .map_err(|tried| Failure {
            why: EgressFailure::Connect,
            text: format!("cannot connect to {target} ({})", tried.join("; ")),
        })?;
    let _ = tcp.set_nodelay(true);
    conn.server = tcp.peer_addr().ok();

    // SNI and the name rustls carries: the host as written (an IP address sends no SNI).
    let name = ServerName::try_from(target.host.clone()).map_err(|e| Failure {
        why: EgressFailure::Handshake,
        text: format!("{} cannot be a TLS server name: {e}", target.host),
    })?;
    let handshake = TlsConnector::from(built.config.clone()).connect(name.clone(), tcp);
    let tls = match timeout(limits.handshake_timeout, handshake).await {
        Err(_) => {
            return Err(Failure {
                why: EgressFailure::Timeout,
                text: format!(
                    "TLS handshake with {target} did not finish within {} ms",
                    limits.handshake_timeout.as_millis()
                ),
            });
        }
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(mut tls)) => {
            let state = tls.get_ref().1;
            conn.tls = state.protocol_version();
            let chain = state.peer_certificates().unwrap_or_default();
            let now = UnixTime::now();
            if let Some((leaf, intermediates)) = chain.split_first() {
                conn.identity = Some(built.anchors.identity(
                    Side::Server,
                    leaf,
                    intermediates,
                    now,
                ));
            }
            // rustls verifies the server only in a full handshake; a resumed session carries
            // the chain verified back then.
            if state.handshake_kind() == Some(HandshakeKind::Resumed) {
                let verified = match chain.split_first() {
                    Some((leaf, intermediates)) => built
                        .verifier
                        .verify_server_cert(leaf, intermediates, &name, &[], now)
                        .map(|_| ()),
                    None => Err(Error::NoCertificatesPresented),
                };
                if let Err(e) = verified {
                    let _ = timeout(CLOSE_GRACE, tls.shutdown()).await;
                    let mut failure = classify(&io::Error::new(io::ErrorKind::InvalidData, e));
                    failure.text = format!("resumed session refused: {}", failure.text);
                    return Err(failure);
                }
            }
            tls
        }
    };
    Ok(tls)
}

/// Tries each address in turn until one accepts, each getting an equal share of the time
/// left. `Err` lists every address with what went wrong.
async fn connect_any(
    addrs: &[SocketAddr],
    deadline: Instant,
    limits: &Limits,
) -> Result<TcpStream, Vec<String>> {
    let mut tried = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tried.push(format!(
                "{addr}: not tried, connect_timeout of {} ms used up",
                limits.connect_timeout.as_millis()
            ));
            continue;
        }
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => tried.push(format!("{addr}: {e}")),
            Err(_) => tried.push(format!(
                "{addr}: no connection within {} ms",
                share.as_millis()
            )),
        }
    }
    Err(tried)
}

/// What the target's alert says about us.
fn refusal(alert: AlertDescription) -> String {
    let why = match alert {
        AlertDescription::AccessDenied => "its allow rules do not name this app",
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown => {
            "it does not trust this app's certificate (its trust bundle lacks this certificate's CA)"
        }
        AlertDescription::CertificateExpired => "this app's certificate has expired, it says",
        AlertDescription::CertificateRequired => "it wants a client certificate",
        _ => "it ended the handshake",
    };
    format!("the target refused this app ({alert:?}): {why}")
}

fn rustls_error(e: &io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

/// Why the handshake failed, in words and as a metrics label.
fn classify(e: &io::Error) -> Failure {
    let (why, text) = match rustls_error(e) {
        Some(Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) => {
            match inner.downcast_ref::<Unexpected>() {
                Some(u) if u.hostname => (EgressFailure::Hostname, u.text.clone()),
                Some(u) => (EgressFailure::Identity, u.text.clone()),
                None => (EgressFailure::BadCertificate, format!("server certificate rejected: {inner}")),
            }
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => (
            EgressFailure::UnknownCa,
            "unknown CA: the server's certificate does not chain to a trusted CA ($CF_SYSTEM_CERT_PATH, trust.ca_files, a minted certificate's CA); the server must send its intermediate too".to_owned(),
        ),
        Some(Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        )) => (
            EgressFailure::BadCertificate,
            "server certificate rejected: not valid for server authentication (extended key usage)".to_owned(),
        ),
        Some(Error::InvalidCertificate(c)) => (
            EgressFailure::BadCertificate,
            format!("server certificate rejected: {}", crate::verifier::describe(c)),
        ),
        Some(Error::AlertReceived(alert)) => (EgressFailure::Refused, refusal(*alert)),
        Some(other) => (EgressFailure::Handshake, format!("TLS handshake failed: {other}")),
        None => (EgressFailure::Handshake, format!("TLS handshake failed: {e}")),
    };
    Failure { why, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_get_their_label_and_reason() {
        let unexpected = |hostname| {
            wrapped(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Unexpected {
                    hostname,
                    text: "wrong identity: expected cf:app:x got app=y".to_owned(),
                })),
            )))
        };
        let f = classify(&unexpected(false));
        assert_eq!(f.why, EgressFailure::Identity);
        assert_eq!(f.text, "wrong identity: expected cf:app:x got app=y");
        assert_eq!(classify(&unexpected(true)).why, EgressFailure::Hostname);
        let f = classify(&wrapped(Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert_eq!(f.why, EgressFailure::UnknownCa);
        assert!(f.text.starts_with("unknown CA"), "{}", f.text);
        let f = classify(&wrapped(Error::AlertReceived(
            rustls::AlertDescription::AccessDenied,
        )));
        assert_eq!(f.why, EgressFailure::Refused);
        let f = classify(&io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(f.why, EgressFailure::Handshake);
    }

    #[tokio::test]
    async fn addresses_are_tried_in_turn_until_one_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let dead = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let limits = Limits {
            max_connections: 1,
            handshake_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(5),
            drain_timeout: std::time::Duration::from_secs(5),
            connect_timeout: std::time::Duration::from_secs(5),
            listener_connections: None,
            app_connections: 16,
            streams_per_connection: 8,
        };
        let deadline = Instant::now() + limits.connect_timeout;
        let tcp = connect_any(&[dead, live], deadline, &limits).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live);
        let tried = connect_any(&[dead], deadline, &limits).await.unwrap_err();
        assert_eq!(tried.len(), 1);
        assert!(tried[0].starts_with(&format!("{dead}: ")), "{tried:?}");
    }
}
