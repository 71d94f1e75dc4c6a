//! The TLS client: rustls with aws-lc-rs, TLS 1.3 only, AES-256-GCM only (so every peer does
//! the same record crypto as the single-core limit measured by `openssl speed`), one key
//! exchange group, chain verified against the bench root CA, and (with `--cert`/`--key`) a
//! calling app's instance identity presented whenever the server asks for one.

use crate::ClientArgs;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type Tls = TlsStream<TcpStream>;

/// Everything needed to open a connection to the terminator.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub name: ServerName<'static>,
    roots: Arc<RootCertStore>,
    group: &'static dyn rustls::crypto::SupportedKxGroup,
    identity: Option<Arc<CertifiedKey>>,
}

/// The client certificate resolver: presents the identity (if any) and remembers whether the
/// server asked, so the probe can record which peers request a client certificate. rustls
/// calls it only when a CertificateRequest arrives (never on a resumed TLS 1.3 handshake).
#[derive(Debug)]
pub struct Identity {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl Identity {
    /// Did a server using this config ever ask for a client certificate?
    pub fn asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        // rustls itself picks a scheme the server accepts (RSA-PSS for this key) and sends an
        // empty Certificate if there is none.
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

fn pem_error(path: &std::path::Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

impl Target {
    pub fn new(args: &ClientArgs) -> crate::Result<Self> {
        crate::loopback_only(&args.addr)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&args.ca).map_err(|e| pem_error(&args.ca, e))? {
            roots.add(cert.map_err(|e| pem_error(&args.ca, e))?)?;
        }
        let group = match args.group.as_str() {
            "x25519" => kx_group::X25519,
            "x25519mlkem768" => kx_group::X25519MLKEM768,
            other => return Err(format!("unknown --group {other}").into()),
        };
        let identity = match (&args.cert, &args.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| pem_error(cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error(cert, e))?;
                if chain.is_empty() {
                    return Err(format!("{}: no certificate in it", cert.display()).into());
                }
                // PKCS#1 (what `openssl genrsa -traditional` and Diego write), PKCS#8 or SEC1.
                let der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
                let certified = CertifiedKey::from_der(chain, der, &aws_lc_rs::default_provider())
                    .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
                Some(Arc::new(certified))
            }
            _ => return Err("--cert and --key go together".into()),
        };
        Ok(Target {
            addr: args.addr,
            name: ServerName::try_from(args.sni.clone())?,
            roots: Arc::new(roots),
            group,
            identity,
        })
    }

    /// Whether --cert/--key were given.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// A client config without ALPN (every peer then speaks HTTP/1.1); `resume` false offers no
    /// session id or ticket, ever.
    pub fn config(&self, resume: bool) -> crate::Result<Arc<ClientConfig>> {
        Ok(self.config_with(resume, &[])?.0)
    }

    /// A client config offering `alpn` (empty: no ALPN extension at all), and its resolver.
    pub fn config_with(
        &self,
        resume: bool,
        alpn: &[&[u8]],
    ) -> crate::Result<(Arc<ClientConfig>, Arc<Identity>)> {
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![self.group];
        provider.cipher_suites = vec![cipher_suite::TLS13_AES_256_GCM_SHA384];
        let identity = Arc::new(Identity {
            key: self.identity.clone(),
            asked: AtomicBool::new(false),
        });
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(identity.clone());
        config.resumption = if resume {
            Resumption::in_memory_sessions(64)
        } else {
            Resumption::disabled()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok((Arc::new(config), identity))
    }

    /// TCP connect (from `source` if given) and a completed TLS handshake.
    pub async fn connect(
        &self,
        config: &Arc<ClientConfig>,
        source: Option<IpAddr>,
    ) -> io::Result<Tls> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(config.clone())
            .connect(self.name.clone(), tcp)
            .await
    }
}

/// A plaintext TCP connection (the route-port phase), loopback only like every other.
pub async fn connect_plain(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Was this handshake a resumption?
pub fn resumed(tls: &Tls) -> bool {
    matches!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    )
}

/// The ALPN protocol the server selected, as text ("none" without one).
pub fn alpn(tls: &Tls) -> String {
    tls.get_ref().1.alpn_protocol().map_or_else(
        || "none".to_owned(),
        |p| String::from_utf8_lossy(p).into_owned(),
    )
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519" for the probe.
pub fn describe(tls: &Tls) -> (String, String, String) {
    let conn = tls.get_ref().1;
    (
        conn.protocol_version()
            .map_or_else(|| "none".to_owned(), |v| format!("{v:?}")),
        conn.negotiated_cipher_suite()
            .map_or_else(|| "none".to_owned(), |s| format!("{:?}", s.suite())),
        conn.negotiated_key_exchange_group()
            .map_or_else(|| "none".to_owned(), |g| format!("{:?}", g.name())),
    )
}
