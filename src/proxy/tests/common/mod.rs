//! Test kit: Diego-shaped certificates made with the `openssl` CLI, the instance credential
//! directory and its rotation, a rustls client, tiny apps to forward to, log capture, and
//! waiting under one generous deadline (never a fixed sleep).

#![allow(dead_code)]
// each test binary uses a different part
// Tests may unwrap (clippy.toml); the lint exempts only #[test] fns, not their helpers.
#![allow(clippy::unwrap_used)]

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;
use tempfile::TempDir;
use tls_sidecar::{ReloadTiming, SidecarConfig};
use tls_sidecar_config::{Env, HostPort, StagedConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Everything a test waits for must happen within this; generous for a loaded 2-core box.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
pub const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// ---------------------------------------------------------------------------------------------
// Certificates

/// A root (appRootCA) and an intermediate (instanceIdentityCA) like cf-deployment's, shared by
/// every test in a binary.
pub struct Pki {
    dir: TempDir,
    pub root_der: CertificateDer<'static>,
    /// appRootCA in PEM, what Diego puts in `$CF_SYSTEM_CERT_PATH/trusted-ca-1.crt`.
    pub root_pem: String,
    pub intermediate_pem: String,
    pub intermediate_der: CertificateDer<'static>,
    next: AtomicU32,
}

/// A Diego instance identity: `chain_pem` is `instance.crt` (leaf + intermediate), `key_pem`
/// is `instance.key` (PKCS#1).
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub leaf_der: CertificateDer<'static>,
    pub guid: String,
    /// The org, space and app in its OUs (empty for [`Pki::issue_without_ous`]).
    pub identity: Identity,
}

/// The CF identity in a certificate's OUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org: String,
    pub space: String,
    pub app: String,
}

impl Identity {
    /// A new app in a new space of a new org.
    pub fn random() -> Identity {
        Identity {
            org: new_guid(),
            space: new_guid(),
            app: new_guid(),
        }
    }

    /// Another app in the same space.
    pub fn same_space(&self) -> Identity {
        Identity {
            app: new_guid(),
            ..self.clone()
        }
    }

    /// An app in another space of the same org.
    pub fn same_org(&self) -> Identity {
        Identity {
            space: new_guid(),
            app: new_guid(),
            ..self.clone()
        }
    }

    /// Diego's subject: the three OUs in ONE multi-valued RDN, CN = the instance GUID.
    fn subject(&self, instance: &str) -> String {
        format!(
            "/OU=organization:{}+OU=space:{}+OU=app:{}/CN={instance}",
            self.org, self.space, self.app
        )
    }

    /// `VCAP_APPLICATION` of an app with this identity.
    pub fn vcap_application(&self) -> tls_sidecar_config::VcapApplication {
        tls_sidecar_config::VcapApplication {
            application_id: Some(self.app.clone()),
            application_name: Some("test-app".to_owned()),
            space_id: Some(self.space.clone()),
            organization_id: Some(self.org.clone()),
            ..Default::default()
        }
    }
}

/// How a test leaf's key is made.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// RSA of this many bits, PKCS#1.
    Rsa(u32),
    /// P-256, SEC1.
    Ec,
}

/// Validity of a test leaf.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From now, one day.
    OneDay,
    /// Fixed dates, `YYMMDDHHMMSSZ` (made with `openssl ca`, which OpenSSL 3.0's `x509 -req`
    /// cannot do).
    Dates(&'static str, &'static str),
}

/// Expired on 2020-01-02.
pub const EXPIRED: Validity = Validity::Dates("200101000000Z", "200102000000Z");
/// Valid from 2049.
pub const NOT_YET_VALID: Validity = Validity::Dates("490101000000Z", "490102000000Z");

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
[any]
organizationalUnitName = optional
commonName = supplied
[root]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

impl Pki {
    pub fn shared() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::generate)
    }

    /// Another CA hierarchy, unrelated to [`Pki::shared`], with names of its own.
    pub fn other() -> Pki {
        Pki::named("otherRootCA", "otherIdentityCA")
    }

    /// A hierarchy with cf-deployment's names (as another foundation's would be).
    pub fn generate() -> Pki {
        Pki::named("appRootCA", "instanceIdentityCA")
    }

    fn named(root_cn: &str, intermediate_cn: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("openssl.cnf"), OPENSSL_CNF).unwrap();
        let serial = format!("0x{}", hex::encode(random_bytes()));
        for command in [
            "genrsa -traditional -out root.key 2048".to_owned(),
            format!(
                "req -x509 -new -key root.key -subj /CN={root_cn} -days 3650 -sha256 \
                 -config openssl.cnf -extensions root -out root.crt"
            ),
            "genrsa -traditional -out intermediate.key 2048".to_owned(),
            format!(
                "req -new -key intermediate.key -subj /CN={intermediate_cn} -config openssl.cnf \
                 -out intermediate.csr"
            ),
            format!(
                "x509 -req -in intermediate.csr -CA root.crt -CAkey root.key -set_serial {serial} \
                 -days 3650 -sha256 -extfile openssl.cnf -extensions intermediate \
                 -out intermediate.crt"
            ),
        ] {
            openssl(d, &command);
        }
        let intermediate_pem = std::fs::read_to_string(d.join("intermediate.crt")).unwrap();
        Pki {
            root_der: CertificateDer::from_pem_file(d.join("root.crt")).unwrap(),
            root_pem: std::fs::read_to_string(d.join("root.crt")).unwrap(),
            intermediate_der: CertificateDer::from_pem_slice(intermediate_pem.as_bytes()).unwrap(),
            intermediate_pem,
            dir,
            next: AtomicU32::new(0),
        }
    }

    /// A new leaf with a new RSA key of `bits` in PKCS#1, shaped like Diego's (see
    /// cf-instance-identity.md §1): CN = instance GUID, the three OUs in one multi-valued RDN,
    /// SANs DNS:<guid> and IP:127.0.0.1, serverAuth + clientAuth.
    pub fn leaf(&self, bits: u32) -> Leaf {
        self.issue(&Identity::random(), KeyKind::Rsa(bits), Validity::OneDay)
    }

    /// Like [`Pki::leaf`] with a P-256 key in SEC1 (`EC PRIVATE KEY`).
    pub fn ec_leaf(&self) -> Leaf {
        self.issue(&Identity::random(), KeyKind::Ec, Validity::OneDay)
    }

    /// An instance identity of an app with `identity` (a P-256 key: quick to make), used as a
    /// client certificate.
    pub fn client(&self, identity: &Identity) -> Leaf {
        self.issue(identity, KeyKind::Ec, Validity::OneDay)
    }

    /// A Diego-shaped leaf for `identity`.
    pub fn issue(&self, identity: &Identity, key_kind: KeyKind, validity: Validity) -> Leaf {
        self.issue_as(Some(identity), key_kind, validity)
    }

    /// Like [`Pki::issue`], but the subject is only `CN=<guid>`: no OUs, so no CF identity
    /// (its [`Leaf::identity`] fields are empty).
    pub fn issue_without_ous(&self, key_kind: KeyKind) -> Leaf {
        self.issue_as(None, key_kind, Validity::OneDay)
    }

    fn issue_as(&self, identity: Option<&Identity>, key_kind: KeyKind, validity: Validity) -> Leaf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.path();
        let guid = new_guid();
        let (key, csr, crt, ext) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.crt"),
            format!("leaf{n}.ext"),
        );
        let extensions = format!(
            "[leaf]\nkeyUsage = critical,digitalSignature,keyEncipherment,keyAgreement\n\
             extendedKeyUsage = serverAuth,clientAuth\n\
             subjectAltName = DNS:{guid},IP:127.0.0.1\nauthorityKeyIdentifier = keyid\n"
        );
        std::fs::write(d.join(&ext), extensions).unwrap();
        let subject = identity.map_or_else(|| format!("/CN={guid}"), |id| id.subject(&guid));
        match key_kind {
            KeyKind::Rsa(bits) => openssl(d, &format!("genrsa -traditional -out {key} {bits}")),
            KeyKind::Ec => openssl(
                d,
                &format!("ecparam -name prime256v1 -genkey -noout -out {key}"),
            ),
        }
        openssl(
            d,
            &format!("req -new -key {key} -subj {subject} -config openssl.cnf -out {csr}"),
        );
        match validity {
            Validity::OneDay => {
                let serial = format!("0x{}", hex::encode(random_bytes()));
                openssl(
                    d,
                    &format!(
                        "x509 -req -in {csr} -CA intermediate.crt -CAkey intermediate.key \
                         -set_serial {serial} -days 1 -sha256 -extfile {ext} -extensions leaf -out {crt}"
                    ),
                );
            }
            Validity::Dates(start, end) => {
                // `openssl ca` keeps a database: one per certificate, so parallel tests do
                // not share it.
                let db = d.join(format!("ca{n}"));
                std::fs::create_dir(&db).unwrap();
                std::fs::write(db.join("index.txt"), "").unwrap();
                std::fs::write(
                    db.join("serial"),
                    format!("{}\n", hex::encode(random_bytes())),
                )
                .unwrap();
                let up = |f: &str| d.join(f).display().to_string();
                openssl(
                    &db,
                    &format!(
                        "ca -batch -config {} -cert {} -keyfile {} -in {} -out {} \
                         -startdate {start} -enddate {end} -extfile {} -extensions leaf \
                         -notext -preserveDN",
                        up("openssl.cnf"),
                        up("intermediate.crt"),
                        up("intermediate.key"),
                        up(&csr),
                        up(&crt),
                        up(&ext),
                    ),
                );
            }
        }
        let leaf_pem = std::fs::read_to_string(d.join(&crt)).unwrap();
        Leaf {
            leaf_der: CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap(),
            chain_pem: format!("{leaf_pem}{}", self.intermediate_pem),
            key_pem: std::fs::read_to_string(d.join(&key)).unwrap(),
            guid,
            identity: identity.cloned().unwrap_or(Identity {
                org: String::new(),
                space: String::new(),
                app: String::new(),
            }),
        }
    }

    /// A key of a type rustls cannot sign with (Ed448), in PKCS#8.
    pub fn ed448_key(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.path();
        openssl(d, &format!("genpkey -algorithm ed448 -out ed448-{n}.key"));
        std::fs::read_to_string(d.join(format!("ed448-{n}.key"))).unwrap()
    }

    /// `leaf` with its key rewritten as PKCS#8 (`PRIVATE KEY`).
    pub fn as_pkcs8(&self, leaf: &Leaf) -> Leaf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let d = self.dir.path();
        std::fs::write(d.join(format!("in{n}.key")), &leaf.key_pem).unwrap();
        openssl(d, &format!("pkey -in in{n}.key -out pkcs8-{n}.key"));
        Leaf {
            chain_pem: leaf.chain_pem.clone(),
            key_pem: std::fs::read_to_string(d.join(format!("pkcs8-{n}.key"))).unwrap(),
            leaf_der: leaf.leaf_der.clone(),
            guid: leaf.guid.clone(),
            identity: leaf.identity.clone(),
        }
    }
}

/// The key of a [`TestCa`].
#[derive(Debug, Clone, Copy)]
pub enum CaKey {
    /// RSA 2048, `RSA PRIVATE KEY`.
    RsaPkcs1,
    /// P-256, `EC PRIVATE KEY`.
    EcSec1,
    /// P-256, `PRIVATE KEY`.
    EcPkcs8,
}

/// A CA for `certificate.source: minted`, as an operator would make one with openssl.
pub struct TestCa {
    _dir: TempDir,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl TestCa {
    /// A self-signed CA (CA:TRUE, keyCertSign, SKI) with `constraints` as its nameConstraints
    /// extension value if given (e.g. `critical,permitted;DNS:apps.internal`).
    pub fn new(key: CaKey, constraints: Option<&str>) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut cnf = String::from(
            "[req]\ndistinguished_name = dn\n[dn]\n[mintca]\nbasicConstraints = critical,CA:true\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
        );
        if let Some(c) = constraints {
            cnf.push_str(&format!("nameConstraints = {c}\n"));
        }
        std::fs::write(d.join("ca.cnf"), cnf).unwrap();
        match key {
            CaKey::RsaPkcs1 => openssl(d, "genrsa -traditional -out ca.key 2048"),
            CaKey::EcSec1 => openssl(d, "ecparam -name prime256v1 -genkey -noout -out ca.key"),
            CaKey::EcPkcs8 => openssl(
                d,
                "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key",
            ),
        }
        openssl(
            d,
            "req -x509 -new -key ca.key -subj /CN=testMintCA -days 30 -sha256 -config ca.cnf \
             -extensions mintca -out ca.crt",
        );
        let cert_pem = std::fs::read_to_string(d.join("ca.crt")).unwrap();
        TestCa {
            cert_der: CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap(),
            cert_pem,
            key_pem: std::fs::read_to_string(d.join("ca.key")).unwrap(),
            _dir: dir,
        }
    }

    /// `VCAP_SERVICES` with this CA bound as the user-provided service `name`.
    pub fn vcap_services(&self, name: &str) -> String {
        serde_json::json!({
            "user-provided": [{
                "name": name,
                "label": "user-provided",
                "credentials": {"ca_certificate": self.cert_pem, "ca_private_key": self.key_pem}
            }]
        })
        .to_string()
    }
}

/// The environment of an instance of `me` whose `certificate.source: minted` uses `ca`
/// (service `test-ca`), with the route `backend.apps.internal`, instance GUID `guid`, index
/// 0, internal IP 127.0.0.1.
pub fn minted_env(me: &Identity, ca: &TestCa, guid: &str) -> Env {
    let vcap = serde_json::json!({
        "application_id": me.app,
        "application_name": "backend",
        "space_id": me.space,
        "organization_id": me.org,
        "application_uris": ["backend.apps.internal", "backend.example.com"],
        "instance_index": 0,
    });
    [
        ("VCAP_APPLICATION", vcap.to_string()),
        ("VCAP_SERVICES", ca.vcap_services("test-ca")),
        ("CF_INSTANCE_GUID", guid.to_owned()),
        ("CF_INSTANCE_INTERNAL_IP", "127.0.0.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The tls-sidecar.yml of a minted instance.
pub const MINTED_YAML: &str =
    "certificate:\n  source: minted\n  service: test-ca\n  validity: 2h\n";

/// The production shape (RSA-3072, PKCS#1), made once per test binary because it is slow.
pub fn leaf_3072() -> &'static Leaf {
    static LEAF: OnceLock<Leaf> = OnceLock::new();
    LEAF.get_or_init(|| Pki::shared().leaf(3072))
}

/// Runs `openssl` with `command` split on whitespace (no argument here contains any).
fn openssl(dir: &Path, command: &str) {
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes[0] &= 0x7f; // a positive serial
    bytes
}

pub fn new_guid() -> String {
    let h = hex::encode(random_bytes());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

// ---------------------------------------------------------------------------------------------
// The credential directory (what Diego mounts at /etc/cf-instance-credentials)

pub struct Creds {
    pub dir: TempDir,
}

impl Creds {
    pub fn empty() -> Creds {
        Creds {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn with(leaf: &Leaf) -> Creds {
        let creds = Creds::empty();
        creds.rotate_the_diego_way(leaf);
        creds
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("instance.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("instance.key")
    }

    /// Diego's order: write both `.tmp` files, rename the key, then the certificate.
    pub fn rotate_the_diego_way(&self, leaf: &Leaf) {
        self.write_tmp(leaf);
        self.rename_key();
        self.rename_cert();
    }

    pub fn write_tmp(&self, leaf: &Leaf) {
        std::fs::write(self.dir.path().join("instance.key.tmp"), &leaf.key_pem).unwrap();
        std::fs::write(self.dir.path().join("instance.crt.tmp"), &leaf.chain_pem).unwrap();
    }

    pub fn rename_key(&self) {
        std::fs::rename(self.dir.path().join("instance.key.tmp"), self.key()).unwrap();
    }

    pub fn rename_cert(&self) {
        std::fs::rename(self.dir.path().join("instance.crt.tmp"), self.cert()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The sidecar

/// The built-in defaults resolved for `creds`, on 127.0.0.1 port 0, forwarding to `app`, with
/// quick reload retries.
pub fn sidecar_config(creds: &Creds, app: SocketAddr) -> SidecarConfig {
    let env: Env = [
        (
            "CF_INSTANCE_CERT".to_owned(),
            creds.cert().display().to_string(),
        ),
        (
            "CF_INSTANCE_KEY".to_owned(),
            creds.key().display().to_string(),
        ),
    ]
    .into();
    let (config, warnings) = resolved_config("", &env, app);
    assert!(warnings.is_empty(), "{warnings:?}");
    config
}

/// `yaml` resolved against `env` as the sidecar would at start, then moved to 127.0.0.1 port
/// 0 (every listener, and the admin port), the first listener forwarding to `app`, with quick
/// reload retries.
pub fn resolved_config(yaml: &str, env: &Env, app: SocketAddr) -> (SidecarConfig, Vec<String>) {
    let (staged, _, _) = StagedConfig::load_with_env(yaml, "test", env, 8080).unwrap();
    let (mut config, warnings) = SidecarConfig::resolve(&staged, env).unwrap();
    for listener in &mut config.listeners {
        listener.bind = loopback(0);
    }
    config.listeners[0].upstream = HostPort {
        host: "127.0.0.1".to_owned(),
        port: app.port(),
    };
    config.admin = Some(loopback(0));
    config.reload = ReloadTiming {
        debounce: Duration::from_millis(50),
        recheck: Duration::from_secs(30),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
    };
    (config, warnings)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

pub struct Addrs {
    pub tls: SocketAddr,
    pub admin: SocketAddr,
}

pub fn addrs(running: &tls_sidecar::Running) -> Addrs {
    let tls = running.tls_addrs()[0].expect("port 0 binds at once");
    Addrs {
        tls,
        admin: running.admin_addr().expect("port 0 binds at once"),
    }
}

/// Waits for `GET /ready` to answer 200.
pub async fn until_ready(admin: SocketAddr) {
    eventually("/ready to answer 200", || async {
        matches!(get(admin, "/ready").await, Ok((200, _)))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A client that trusts only the root, so a chain without the intermediate fails. A fresh
/// config has an empty session cache: every connection made with it is a full handshake.
pub fn client_config(versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(Pki::shared().root_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A client presenting `leaf` with its intermediate (as Diego apps do), trusting the shared
/// root, offering `alpn`. A fresh config: no session to resume.
pub fn mtls_client(leaf: &Leaf, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(Pki::shared().root_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(ALL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects with `config`, sends `ping` and reads the echo. `Err` carries the failure text: in
/// TLS 1.3 the client finishes its handshake before the server checks the client certificate,
/// so a refusal (`received fatal alert: AccessDenied`) often shows only on the first read.
pub async fn exchange(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Vec<u8>, String> {
    let mut tls = connect_with(addr, config)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut back = vec![0; 4];
    match tokio::time::timeout(DEADLINE, tls.read_exact(&mut back)).await {
        Ok(Ok(_)) => Ok(back),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// A `$CF_SYSTEM_CERT_PATH` as Diego writes it: `trusted-ca-<n>.crt` files.
pub struct TrustDir {
    pub dir: TempDir,
}

impl TrustDir {
    /// One file per PEM bundle, `trusted-ca-1.crt` and up.
    pub fn with(bundles: &[&str]) -> TrustDir {
        let trust = TrustDir {
            dir: tempfile::tempdir().unwrap(),
        };
        for (i, pem) in bundles.iter().enumerate() {
            trust.write(&format!("trusted-ca-{}.crt", i + 1), pem);
        }
        trust
    }

    /// Writes a file the way certsplitter does: a temp name, then a rename.
    pub fn write(&self, name: &str, pem: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(tmp, self.dir.path().join(name)).unwrap();
    }

    /// Trust exactly this directory's certificates.
    pub fn config(&self) -> tls_sidecar::TrustConfig {
        tls_sidecar::TrustConfig {
            system_dir: Some(self.dir.path().to_owned()),
            system_certs: true,
            ca_files: Vec::new(),
            extra: Vec::new(),
        }
    }
}

/// The value of one series on `/metrics`, e.g.
/// `tls_sidecar_handshake_failures_total{listener="8443",reason="denied"}`.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<String> {
    let (_, body) = get(admin, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(str::to_owned)
}

/// Waits until `series` reads `value`.
pub async fn until_metric(admin: SocketAddr, series: &str, value: &str) {
    eventually(&format!("{series} to read {value}"), || async {
        metric(admin, series).await.as_deref() == Some(value)
    })
    .await;
}

/// Connects and verifies the server as 127.0.0.1 (the IP SAN of every test leaf).
pub async fn connect_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    TlsConnector::from(config).connect(name, tcp).await
}

pub async fn connect(addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    connect_with(addr, client_config(ALL_VERSIONS)).await
}

pub fn served_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

/// Writes `message` and reads the same number of bytes back (through an echo app).
pub async fn echo(tls: &mut TlsStream<TcpStream>, message: &[u8]) -> Vec<u8> {
    tls.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    tls.read_exact(&mut back).await.unwrap();
    back
}

/// Reads until the connection ends; `true` when it ended (cleanly or not) within the deadline.
pub async fn closes(tls: &mut TlsStream<TcpStream>) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// `GET path` on the admin port: status and body.
pub async fn get(admin: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
}

pub async fn request(admin: SocketAddr, raw: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(admin).await?;
    stream.write_all(raw.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// Apps to forward to

/// Echoes every byte, and half-closes when the client does.
pub async fn echo_app() -> SocketAddr {
    app(|stream| async move {
        let (mut r, mut w) = stream.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Reads until the client's FIN, then answers `got <n> bytes: <data>` and closes.
pub async fn answer_after_eof_app() -> SocketAddr {
    app(|mut stream| async move {
        let mut data = Vec::new();
        if stream.read_to_end(&mut data).await.is_ok() {
            let answer = format!(
                "got {} bytes: {}",
                data.len(),
                String::from_utf8_lossy(&data)
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await
}

/// Sends `hello`, half-closes, then reports everything the client sends until its FIN.
pub async fn greet_then_listen_app() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = app(move |mut stream| {
        let tx = tx.clone();
        async move {
            let _ = stream.write_all(b"hello").await;
            let _ = stream.shutdown().await;
            let mut data = Vec::new();
            let _ = stream.read_to_end(&mut data).await;
            let _ = tx.send(data);
        }
    })
    .await;
    (addr, rx)
}

/// An echo app that counts the connections it accepts (to prove nothing reached it).
pub async fn counting_echo_app() -> (SocketAddr, Arc<AtomicU32>) {
    let count = Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    let addr = app(move |stream| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    })
    .await;
    (addr, count)
}

/// An address where nothing listens.
pub async fn dead_app() -> SocketAddr {
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    listener.local_addr().unwrap()
}

async fn app<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` until it is true; fails the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LINES
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the library's log events (of every test in this binary) to memory.
pub fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// Waits for a captured log line containing every one of `parts` (tests running in parallel
/// share the log: include something unique, such as this test's credential path).
pub async fn log_line(parts: &[&str]) -> String {
    let mut found = None;
    eventually(&format!("a log line with {parts:?}"), || {
        found = LINES
            .lock()
            .unwrap()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .cloned();
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.unwrap_or_default()
}
