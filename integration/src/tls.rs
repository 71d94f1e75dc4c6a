//! A rustls client for tests that need a TLS connection they control from Rust (e.g. one
//! keep-alive connection held across a certificate rotation), and certificate inspection.

use crate::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// A TLS client connection over a TCP stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client config trusting the PEM certificates in `ca_file`, optionally presenting a client
/// certificate (`cert` chain PEM, `key` PEM). aws-lc-rs, as everywhere in this workspace.
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>> {
    client_config_with_alpn(ca_file, client, &[])
}

/// [`client_config`] offering `alpn` protocols (e.g. `["h2", "http/1.1"]`) in the handshake.
pub fn client_config_with_alpn(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[&str],
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).context("cannot read the CA file")? {
        roots.add(cert.context("bad CA PEM")?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .context("cannot read the client certificate")?
                .collect::<Result<Vec<_>, _>>()
                .context("bad client certificate PEM")?;
            let key = PrivateKeyDer::from_pem_file(key).context("cannot read the client key")?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Completes a TLS handshake on `tcp` for `server_name` (a DNS name or an IP address).
pub fn handshake(
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    tcp: TcpStream,
) -> Result<TlsStream> {
    let name = ServerName::try_from(server_name.to_owned()).context("bad server name")?;
    let conn = rustls::ClientConnection::new(config, name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.conn
        .complete_io(&mut tls.sock)
        .context("TLS handshake failed")?;
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .context("TLS handshake failed")?;
    }
    Ok(tls)
}

/// The serial of the peer's leaf, normalised (upper-case hex, no leading zeros) like
/// [`normalize_serial`].
pub fn peer_serial(tls: &TlsStream) -> Result<String> {
    let certs = tls
        .conn
        .peer_certificates()
        .context("no peer certificate")?;
    let leaf = certs.first().context("empty peer chain")?;
    der_serial(leaf.as_ref())
}

/// The peer chain's subjects (RFC 2253-like, as x509-parser prints them), leaf first.
pub fn peer_subjects(tls: &TlsStream) -> Result<Vec<String>> {
    let certs = tls
        .conn
        .peer_certificates()
        .context("no peer certificate")?;
    certs
        .iter()
        .map(|c| {
            let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref())
                .map_err(|e| crate::Error::msg(format!("bad peer certificate: {e}")))?;
            Ok(cert.subject().to_string())
        })
        .collect()
}

/// The serial of a DER certificate, normalised.
pub fn der_serial(der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| crate::Error::msg(format!("bad certificate: {e}")))?;
    Ok(normalize_serial(&hex::encode_upper(
        cert.tbs_certificate.raw_serial(),
    )))
}

/// Upper-case hex without leading zeros, so `openssl -serial` output and DER bytes compare.
pub fn normalize_serial(s: &str) -> String {
    let t = s
        .trim()
        .trim_start_matches("serial=")
        .replace(':', "")
        .to_ascii_uppercase();
    let t = t.trim_start_matches('0');
    if t.is_empty() {
        "0".to_owned()
    } else {
        t.to_owned()
    }
}
