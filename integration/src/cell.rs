//! A fake Diego cell identity, made in process by the workspace test kit
//! (`tls-sidecar-testkit`) in the shape cf-deployment and the rep give it
//! (`cf-instance-identity.md` §1–§4):
//!
//! - `appRootCA` (self-signed), written as `trusted-ca-1.crt` into a `CF_SYSTEM_CERT_PATH` dir;
//! - `instanceIdentityCA`, an intermediate signed by it (CA:true critical, keyCertSign + cRLSign,
//!   SKI and AKI, PKCS#1 RSA key: the rep refuses any other key type);
//! - instance certificates: RSA-3072 PKCS#1 key, subject
//!   `/OU=organization:<g>+OU=space:<g>+OU=app:<g>/CN=<instance guid>` (one multi-valued RDN),
//!   SANs `DNS:<instance guid>, IP:<container ip>`, EKU serverAuth + clientAuth, keyUsage
//!   digitalSignature + keyEncipherment + keyAgreement, a random 16-byte serial, notBefore = now
//!   (not backdated); `instance.crt` = leaf + intermediate.
//!
//! Rotation follows the executor's `instance_identity_handler.go`: write `instance.key.tmp` and
//! `instance.crt.tmp`, then rename the key first and the cert second.

use crate::util::{host_tool, random_guid, random_hex, random_instance_guid, run};
use crate::{Context, Result, bail};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tls_sidecar_testkit::{Creds, Identity, KeyKind, Leaf, Pki, Validity};

/// Diego's default `instance_identity_validity_period_in_hours`.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Diego's instance key size since the 2025 executor change (RSA 2048 before).
pub const INSTANCE_KEY_BITS: u32 = 3072;

/// The CA pair of a (fake) cf-deployment: root and instance-identity intermediate.
#[derive(Debug)]
pub struct CellCa {
    /// Set when the CA lives in its own temp dir (deleted on drop); `None` for the shared one.
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    root_cert: PathBuf,
    root_key: PathBuf,
    intermediate_cert: PathBuf,
    intermediate_key: PathBuf,
    system_certs: PathBuf,
    /// The CA pair read back from the files, on first use.
    pki: OnceLock<Pki>,
}

/// Who a certificate says its holder is: the OUs and CN Diego writes, and the IP SAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIdentity {
    pub org_guid: String,
    pub space_guid: String,
    pub app_guid: String,
    /// The CN and the DNS SAN (for an LRP: the instance GUID).
    pub instance_guid: String,
    /// The IP SAN (the container's internal IP).
    pub ip: IpAddr,
}

/// A key pair issued by the CA, as PEM files.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf followed by the intermediate, like `instance.crt`.
    pub cert: PathBuf,
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub key: PathBuf,
    /// Upper-case hex serial as `openssl x509 -serial` prints it.
    pub serial: String,
}

/// What `/etc/cf-instance-credentials` holds for one instance, on the host.
#[derive(Debug)]
pub struct InstanceCredentials {
    ca: Arc<CellCa>,
    identity: AppIdentity,
    dir: tempfile::TempDir,
    serial: Mutex<String>,
}

impl AppIdentity {
    /// A fresh app in a fresh space in a fresh org, instance IP in 192.0.2.0/24 (TEST-NET-1).
    pub fn random() -> Self {
        AppIdentity {
            org_guid: random_guid(),
            space_guid: random_guid(),
            app_guid: random_guid(),
            instance_guid: random_instance_guid(),
            ip: random_test_net_ip(),
        }
    }

    /// Another instance of the same app.
    pub fn another_instance(&self) -> Self {
        AppIdentity {
            instance_guid: random_instance_guid(),
            ip: random_test_net_ip(),
            ..self.clone()
        }
    }

    /// An instance of another app in the same space.
    pub fn another_app_same_space(&self) -> Self {
        AppIdentity {
            app_guid: random_guid(),
            ..self.another_instance()
        }
    }

    /// An instance of an app in another space of the same org.
    pub fn app_in_other_space(&self) -> Self {
        AppIdentity {
            space_guid: random_guid(),
            ..self.another_app_same_space()
        }
    }

    /// An instance of an app in another org.
    pub fn app_in_other_org(&self) -> Self {
        AppIdentity {
            org_guid: random_guid(),
            ..self.app_in_other_space()
        }
    }

    /// The subject as `openssl x509 -noout -subject -nameopt RFC2253` prints it.
    pub fn rfc2253_subject(&self) -> String {
        format!(
            "CN={},OU=organization:{}+OU=space:{}+OU=app:{}",
            self.instance_guid, self.org_guid, self.space_guid, self.app_guid
        )
    }
}

fn random_test_net_ip() -> IpAddr {
    let b = crate::util::random_bytes(1)[0];
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2 + b % 250))
}

fn openssl() -> Result<Command> {
    Ok(Command::new(host_tool("openssl")?))
}

static SHARED: OnceLock<Result<Arc<CellCa>, String>> = OnceLock::new();

impl CellCa {
    /// A new CA pair in its own temp dir (RSA keygen: about a second).
    pub fn generate() -> Result<Self> {
        let temp = tempfile::Builder::new().prefix("tsb-cell-ca-").tempdir()?;
        let mut ca = Self::generate_in(temp.path())?;
        ca._temp = Some(temp);
        Ok(ca)
    }

    /// The file names inside a CA dir.
    fn at(d: &Path) -> Self {
        CellCa {
            _temp: None,
            dir: d.to_path_buf(),
            root_cert: d.join("appRootCA.crt"),
            root_key: d.join("appRootCA.key"),
            intermediate_cert: d.join("instanceIdentityCA.crt"),
            intermediate_key: d.join("instanceIdentityCA.key"),
            system_certs: d.join("cf-system-certificates"),
            pki: OnceLock::new(),
        }
    }

    /// The CA pair, read from its files (another test process may have made them).
    fn pki(&self) -> Result<&Pki> {
        if let Some(pki) = self.pki.get() {
            return Ok(pki);
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let pki = Pki::from_pem(
            &read(&self.root_cert)?,
            &read(&self.root_key)?,
            &read(&self.intermediate_cert)?,
            &read(&self.intermediate_key)?,
        );
        Ok(self.pki.get_or_init(|| pki))
    }

    fn complete(&self) -> bool {
        [
            &self.root_cert,
            &self.root_key,
            &self.intermediate_cert,
            &self.intermediate_key,
        ]
        .iter()
        .all(|p| p.is_file())
            && self.system_certs.join("trusted-ca-1.crt").is_file()
    }

    /// Generates a CA pair into the existing dir `d`.
    pub fn generate_in(d: &Path) -> Result<Self> {
        // Readable by vcap: the system cert dir is bind-mounted into instances.
        set_mode(d, 0o755)?;
        let pki = Pki::generate();
        let at = Self::at(d);
        for (path, pem) in [
            (&at.root_cert, &pki.root_pem),
            (&at.root_key, &pki.root_key_pem),
            (&at.intermediate_cert, &pki.intermediate_pem),
            (&at.intermediate_key, &pki.intermediate_key_pem),
        ] {
            std::fs::write(path, pem)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let (root_cert, root_key, intermediate_key) =
            (at.root_cert, at.root_key, at.intermediate_key);

        let system_certs = d.join("cf-system-certificates");
        std::fs::create_dir(&system_certs)?;
        set_mode(&system_certs, 0o755)?;
        let trusted = system_certs.join("trusted-ca-1.crt");
        std::fs::copy(&root_cert, &trusted)?;
        set_mode(&trusted, 0o644)?;
        for f in [&root_key, &intermediate_key] {
            set_mode(f, 0o600)?;
        }
        Ok(Self::at(d))
    }

    /// The CA pair shared by every test: made once into `target/integration-ca/ca` (under an
    /// flock, so parallel test binaries agree) and reused by later runs; the CAs are valid for
    /// ten years and hold nothing secret.
    pub fn shared() -> Result<Arc<CellCa>> {
        SHARED
            .get_or_init(|| {
                Self::load_or_generate_shared()
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(crate::Error::msg)
    }

    fn load_or_generate_shared() -> Result<Self> {
        let base = crate::util::workspace_root()
            .join("target")
            .join("integration-ca");
        std::fs::create_dir_all(&base)?;
        let lock = std::fs::File::create(base.join(".lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .context("cannot lock target/integration-ca/.lock")?;
        let dir = base.join("ca");
        let existing = Self::at(&dir);
        if existing.complete() {
            return Ok(existing);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let fresh = base.join(format!(".ca-{}", random_hex(6)));
        std::fs::create_dir(&fresh)?;
        Self::generate_in(&fresh)?;
        std::fs::rename(&fresh, &dir)?;
        Ok(Self::at(&dir))
    }

    /// `appRootCA` (PEM): what clients trust.
    pub fn root_cert(&self) -> &Path {
        &self.root_cert
    }

    pub fn root_key(&self) -> &Path {
        &self.root_key
    }

    /// `instanceIdentityCA` (PEM): the intermediate in every `instance.crt`.
    pub fn intermediate_cert(&self) -> &Path {
        &self.intermediate_cert
    }

    /// The host dir mounted at `/etc/cf-system-certificates` (holds `trusted-ca-1.crt`).
    pub fn system_cert_dir(&self) -> &Path {
        &self.system_certs
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues an instance-identity key pair for `id` into `out_dir` as `<stem>.crt` (leaf +
    /// intermediate) and `<stem>.key`. Valid from now for `validity`.
    pub fn issue(
        &self,
        id: &AppIdentity,
        validity: Duration,
        out_dir: &Path,
        stem: &str,
    ) -> Result<IssuedCert> {
        let now = SystemTime::now();
        self.issue_between(id, now, now + validity, INSTANCE_KEY_BITS, out_dir, stem)
    }

    /// Like [`CellCa::issue`] with explicit validity bounds and RSA key size: a past
    /// `not_after` makes an expired certificate, a future `not_before` one that is not yet valid.
    pub fn issue_between(
        &self,
        id: &AppIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
        key_bits: u32,
        out_dir: &Path,
        stem: &str,
    ) -> Result<IssuedCert> {
        let leaf = self.issue_leaf(id, not_before, not_after, key_bits)?;
        let cert_out = out_dir.join(format!("{stem}.crt"));
        let key_out = out_dir.join(format!("{stem}.key"));
        std::fs::write(&cert_out, &leaf.chain_pem)?;
        std::fs::write(&key_out, &leaf.key_pem)?;
        set_mode(&cert_out, 0o644)?;
        set_mode(&key_out, 0o644)?;
        Ok(IssuedCert {
            cert: cert_out,
            key: key_out,
            serial: leaf.serial_hex(),
        })
    }

    /// An instance identity for `id` valid between `not_before` and `not_after`, in memory.
    pub fn issue_leaf(
        &self,
        id: &AppIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
        key_bits: u32,
    ) -> Result<Leaf> {
        let unix = |t: SystemTime| match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        let identity = Identity {
            org: id.org_guid.clone(),
            space: id.space_guid.clone(),
            app: id.app_guid.clone(),
        };
        Ok(self.pki()?.issue_at(
            &identity,
            &id.instance_guid,
            id.ip,
            KeyKind::Rsa(key_bits),
            Validity::Between(unix(not_before), unix(not_after)),
        ))
    }

    /// A client identity for another app (e.g. [`AppIdentity::app_in_other_space`]), in its own
    /// temp dir that lives as long as the returned guard.
    pub fn issue_client(&self, id: &AppIdentity) -> Result<(tempfile::TempDir, IssuedCert)> {
        let dir = tempfile::Builder::new().prefix("tsb-client-").tempdir()?;
        set_mode(dir.path(), 0o755)?;
        let cert = self.issue(id, DEFAULT_VALIDITY, dir.path(), "client")?;
        Ok((dir, cert))
    }

    /// A client identity valid between `not_before` and `not_after`, with a 2048-bit key (Diego's
    /// size before 2025, and quick to make), in its own temp dir like [`CellCa::issue_client`].
    pub fn issue_client_between(
        &self,
        id: &AppIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(tempfile::TempDir, IssuedCert)> {
        let dir = tempfile::Builder::new().prefix("tsb-client-").tempdir()?;
        set_mode(dir.path(), 0o755)?;
        let cert = self.issue_between(id, not_before, not_after, 2048, dir.path(), "client")?;
        Ok((dir, cert))
    }
}

/// One caller of an app under test: a client certificate (or none) and what it stands for.
#[derive(Debug)]
pub struct Caller {
    /// What the caller is, for messages (e.g. "an app in another space").
    pub what: &'static str,
    /// The identity its certificate claims, if it has one.
    pub identity: Option<AppIdentity>,
    /// The certificate and key it presents; `None`: no client certificate.
    pub cert: Option<IssuedCert>,
    _dir: Option<tempfile::TempDir>,
}

impl Caller {
    /// A caller that presents no certificate.
    pub fn anonymous() -> Self {
        Caller {
            what: "a caller without a client certificate",
            identity: None,
            cert: None,
            _dir: None,
        }
    }

    /// A caller with a 24 h certificate from `ca` for `id`.
    pub fn issued(what: &'static str, ca: &CellCa, id: &AppIdentity) -> Result<Self> {
        let now = SystemTime::now();
        Self::issued_between(what, ca, id, now, now + DEFAULT_VALIDITY)
    }

    pub fn issued_between(
        what: &'static str,
        ca: &CellCa,
        id: &AppIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self> {
        let (dir, cert) = ca.issue_client_between(id, not_before, not_after)?;
        Ok(Caller {
            what,
            identity: Some(id.clone()),
            cert: Some(cert),
            _dir: Some(dir),
        })
    }

    /// The app GUID its certificate claims.
    pub fn app_guid(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.app_guid.as_str())
    }
}

/// Every kind of caller the ingress tests try against an app (`server` is the app's own
/// identity: its org, space and app GUIDs).
#[derive(Debug)]
pub struct Callers {
    /// An app the server's `allow: [cf:app:<guid>]` names (same space as the server).
    pub allowed: Caller,
    /// Another app in the server's space: `cf:same-space` lets it in, `cf:app:<allowed>` does not.
    pub same_space: Caller,
    /// An app in another space of the server's org.
    pub other_space: Caller,
    /// An app in another org.
    pub other_org: Caller,
    /// The allowed app's identity, but signed by a CA the server does not trust.
    pub foreign_ca: Caller,
    /// The allowed app's identity from the right CA, expired yesterday.
    pub expired: Caller,
    /// No client certificate at all.
    pub anonymous: Caller,
}

impl Callers {
    /// Issues them all from the shared cell CA (and one fresh foreign CA).
    pub fn for_server(server: &AppIdentity) -> Result<Self> {
        let ca = CellCa::shared()?;
        let foreign = CellCa::generate()?;
        let allowed_id = server.another_app_same_space();
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        Ok(Callers {
            foreign_ca: Caller::issued(
                "the allowed app's identity from a foreign CA",
                &foreign,
                &allowed_id,
            )?,
            expired: Caller::issued_between(
                "the allowed app with an expired certificate",
                &ca,
                &allowed_id,
                now - 2 * day,
                now - day,
            )?,
            allowed: Caller::issued("the allowed app", &ca, &allowed_id)?,
            same_space: Caller::issued(
                "another app in the same space",
                &ca,
                &server.another_app_same_space(),
            )?,
            other_space: Caller::issued(
                "an app in another space of the same org",
                &ca,
                &server.app_in_other_space(),
            )?,
            other_org: Caller::issued("an app in another org", &ca, &server.app_in_other_org())?,
            anonymous: Caller::anonymous(),
        })
    }
}

impl InstanceCredentials {
    /// Issues `instance.crt`/`instance.key` for `identity` into a new host dir (mode 0755, files
    /// 0644, owned by root: vcap can read but not change them, as with Diego's read-only mount).
    pub fn new(ca: Arc<CellCa>, identity: AppIdentity, validity: Duration) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tsb-creds-").tempdir()?;
        set_mode(dir.path(), 0o755)?;
        let now = SystemTime::now();
        let leaf = ca.issue_leaf(&identity, now, now + validity, INSTANCE_KEY_BITS)?;
        Creds::in_dir(dir.path().to_owned()).rotate_the_diego_way(&leaf);
        Ok(InstanceCredentials {
            ca,
            identity,
            dir,
            serial: Mutex::new(leaf.serial_hex()),
        })
    }

    pub fn identity(&self) -> &AppIdentity {
        &self.identity
    }

    pub fn ca(&self) -> &Arc<CellCa> {
        &self.ca
    }

    /// The host dir mounted read-only at `/etc/cf-instance-credentials`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("instance.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("instance.key")
    }

    /// Serial of the current leaf (upper-case hex).
    pub fn serial(&self) -> String {
        self.serial.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Rotates the way the executor does (the kit's [`Creds::rotate_the_diego_way`]): new key
    /// and cert written as `.tmp` files, then the key renamed into place first and the cert
    /// second. Returns the new serial.
    pub fn rotate(&self, validity: Duration) -> Result<String> {
        let now = SystemTime::now();
        let leaf = self
            .ca
            .issue_leaf(&self.identity, now, now + validity, INSTANCE_KEY_BITS)?;
        Creds::in_dir(self.dir.path().to_owned()).rotate_the_diego_way(&leaf);
        let serial = leaf.serial_hex();
        if let Ok(mut s) = self.serial.lock() {
            s.clone_from(&serial);
        }
        Ok(serial)
    }
}

/// The first certificate in the PEM file `pem`, DER.
fn first_cert_der(pem: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let text = std::fs::read(pem).with_context(|| format!("cannot read {}", pem.display()))?;
    match CertificateDer::pem_slice_iter(&text).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        _ => bail!("no certificate in {}", pem.display()),
    }
}

/// notAfter of the first certificate in `pem`.
fn not_after(pem: &Path) -> Result<time::OffsetDateTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = first_cert_der(pem)?;
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        bail!("{} does not parse as X.509", pem.display());
    };
    Ok(cert.validity().not_after.to_datetime())
}

/// The serial of the first certificate in `pem` as `openssl x509 -noout -serial` prints it:
/// upper-case hex.
pub fn cert_serial(pem: &Path) -> Result<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = first_cert_der(pem)?;
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        bail!("{} does not parse as X.509", pem.display());
    };
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(0);
    Ok(hex::encode_upper(&raw[start..]))
}

/// `openssl x509 -noout -subject -nameopt RFC2253` of the first certificate in `pem`.
pub fn cert_subject_rfc2253(pem: &Path) -> Result<String> {
    let out = run(openssl()?
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(pem))?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text.trim().trim_start_matches("subject=").to_owned())
}

/// `openssl x509 -noout -text` of the first certificate in `pem`.
pub fn cert_text(pem: &Path) -> Result<String> {
    let out = run(openssl()?.args(["x509", "-noout", "-text", "-in"]).arg(pem))?;
    Ok(String::from_utf8(out.stdout)?)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// The SHA-256 of the first certificate in `pem` (its `openssl x509 -fingerprint -sha256`), as
/// lower-case hex without colons (Envoy's XFCC `Hash`).
pub fn cert_sha256_hex(pem: &Path) -> Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(first_cert_der(pem)?)))
}

/// notAfter of the first certificate in `pem` as Unix seconds.
pub fn cert_not_after_unix(pem: &Path) -> Result<i64> {
    Ok(not_after(pem)?.unix_timestamp())
}

/// notAfter of the first certificate in `pem` as `openssl x509 -noout -enddate -dateopt
/// iso_8601` prints it, e.g. `2026-11-29 03:43:59Z`.
pub fn cert_not_after_iso(pem: &Path) -> Result<String> {
    let iso = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    not_after(pem)?
        .format(&iso)
        .context("formatting a certificate's notAfter")
}

/// The base64 body of the first certificate in `pem`, armour and line breaks removed (what
/// Gorouter's `raw` XFCC carries).
pub fn cert_pem_body(pem: &Path) -> Result<String> {
    let text = std::fs::read_to_string(pem)?;
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = true;
        } else if line == "-----END CERTIFICATE-----" {
            return Ok(body);
        } else if inside {
            body.push_str(line);
        }
    }
    bail!("no certificate in {}", pem.display())
}
