//! The TLS client: rustls with aws-lc-rs, TLS 1.3 only, AES-256-GCM only (so every peer does
//! the same record crypto as the single-core limit measured by `openssl speed`), one key
//! exchange group, chain verified against the bench root CA.

use crate::ClientArgs;
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
}

impl Target {
    pub fn new(args: &ClientArgs) -> crate::Result<Self> {
        crate::loopback_only(&args.addr)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&args.ca)
            .map_err(|e| format!("{}: {e}", args.ca.display()))?
        {
            roots.add(cert.map_err(|e| format!("{}: {e}", args.ca.display()))?)?;
        }
        let group = match args.group.as_str() {
            "x25519" => kx_group::X25519,
            "x25519mlkem768" => kx_group::X25519MLKEM768,
            other => return Err(format!("unknown --group {other}").into()),
        };
        Ok(Target {
            addr: args.addr,
            name: ServerName::try_from(args.sni.clone())?,
            roots: Arc::new(roots),
            group,
        })
    }

    /// A client config; `resume` false offers no session id or ticket, ever.
    pub fn config(&self, resume: bool) -> crate::Result<Arc<ClientConfig>> {
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![self.group];
        provider.cipher_suites = vec![cipher_suite::TLS13_AES_256_GCM_SHA384];
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.resumption = if resume {
            Resumption::in_memory_sessions(64)
        } else {
            Resumption::disabled()
        };
        Ok(Arc::new(config))
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

/// Was this handshake a resumption?
pub fn resumed(tls: &Tls) -> bool {
    matches!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
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
