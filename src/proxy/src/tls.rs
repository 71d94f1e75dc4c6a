//! Each listener's `ServerConfig`, serving the pair [`crate::cert`] keeps current.
//!
//! Every listener's `ServerConfig` asks the one [`CertStore`] for the pair on every handshake,
//! so a certificate reload swaps one pointer. A trust change (the bundle or the platform
//! identity anchors) builds new client verifiers and so new `ServerConfig`s
//! ([`ListenerTls::install`]), each with a NEW ticketer and session cache: a session
//! established under the old trust is not resumed at all (it falls back to a full handshake,
//! which checks the client certificate against today's anchors). Between trust changes,
//! resumed sessions are re-verified after the handshake (`forward`), so a client certificate
//! that expired since cannot keep resuming. Ticketers and caches are never shared between
//! listeners: a session resumed elsewhere would skip this listener's client certificate
//! checks.

use crate::cert::CertStore;
use crate::identity::AccessPolicy;
use crate::trust::{Anchors, chain_verifier};
use crate::verifier::PolicyVerifier;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use tls_sidecar_config::{ClientAuth, Mode};
use tokio_rustls::TlsAcceptor;

/// Sessions kept for stateful resumption (TLS 1.2 clients without ticket support). Each entry
/// is a few hundred bytes.
const SESSION_CACHE_SIZE: usize = 1024;

/// TLS 1.3 tickets sent per connection (rustls's default is 2, like OpenSSL after a full
/// handshake). One is enough for a client to resume its next connection, and every resumed
/// connection brings a fresh one, so the second only costs a ticket encryption and a key
/// derivation on every connection (OpenSSL, too, sends one after a resumption).
const TLS13_TICKETS: usize = 1;

/// The only crypto provider in the graph, passed explicitly (docs/DESIGN.md).
/// Its TLS 1.3 suites compute HMAC pads once per key ([`crate::key_schedule`]).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    crate::key_schedule::precompute_hmac_pads(&mut provider);
    Arc::new(provider)
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    // `None` before the first load: rustls aborts the handshake with an alert, which is right
    // while there is nothing to prove our identity with.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

/// One listener's TLS settings and its current `ServerConfig`.
pub(crate) struct ListenerTls {
    settings: Settings,
    current: ArcSwap<Current>,
}

/// A `ServerConfig` and the anchors its verifier was built from.
struct Current {
    config: Arc<ServerConfig>,
    anchors: Arc<Anchors>,
}

/// What stays the same across trust reloads.
struct Settings {
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
    client_auth: ClientAuth,
    /// tcp mode with `allow` rules: enforced in the client certificate verifier.
    handshake_policy: Option<Arc<AccessPolicy>>,
}

impl ListenerTls {
    /// TLS 1.3 and 1.2, the certificate from `store`, client certificates per `client_auth`
    /// verified against `roots`, ALPN `h2`/`http/1.1` in http mode (none in tcp mode).
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        store: Arc<CertStore>,
        mode: Mode,
        client_auth: ClientAuth,
        policy: &AccessPolicy,
        anchors: &Arc<Anchors>,
    ) -> Result<Self, rustls::Error> {
        let alpn = match mode {
            Mode::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Mode::Tcp => Vec::new(),
        };
        let settings = Settings {
            provider,
            resolver: Arc::new(Resolver(store)),
            alpn,
            client_auth,
            handshake_policy: (mode == Mode::Tcp && policy.has_rules())
                .then(|| Arc::new(policy.clone())),
        };
        let current = ArcSwap::from_pointee(settings.build(anchors)?);
        Ok(ListenerTls { settings, current })
    }

    /// An acceptor for one connection, with the configuration current now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load().config.clone())
    }

    /// The anchors peers are checked against now (which may be newer than those of the
    /// acceptor a connection was accepted with).
    pub(crate) fn anchors(&self) -> Arc<Anchors> {
        self.current.load().anchors.clone()
    }

    /// Swaps in client verifiers built from `anchors`, with a new ticketer and session cache:
    /// sessions from before the change are not resumed.
    pub(crate) fn install(&self, anchors: &Arc<Anchors>) -> Result<(), rustls::Error> {
        self.current.store(Arc::new(self.settings.build(anchors)?));
        Ok(())
    }
}

impl Settings {
    fn build(&self, anchors: &Arc<Anchors>) -> Result<Current, rustls::Error> {
        let verifier = self.verifier(anchors)?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.resolver.clone());
        // New ones per trust: the ticket key and the cache are what would let a session from
        // before a trust change resume.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        config.send_tls13_tickets = TLS13_TICKETS;
        config.alpn_protocols = self.alpn.clone();
        Ok(Current {
            config: Arc::new(config),
            anchors: anchors.clone(),
        })
    }

    fn verifier(
        &self,
        anchors: &Arc<Anchors>,
    ) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots = &anchors.bundle;
        let optional = match self.client_auth {
            ClientAuth::None => return Ok(rustls::server::WebPkiClientVerifier::no_client_auth()),
            ClientAuth::Optional => true,
            ClientAuth::Required => false,
        };
        let chain = chain_verifier(roots, &self.provider, optional)?;
        Ok(match &self.handshake_policy {
            Some(policy) => Arc::new(PolicyVerifier::new(chain, policy.clone(), anchors.clone())),
            None => chain,
        })
    }
}
