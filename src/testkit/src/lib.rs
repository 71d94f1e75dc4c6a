//! Test kit for tls-sidecar: Diego-shaped PKI made in process, the instance credential
//! directory with Diego's rotation, and the sidecar binary as a child process.
//!
//! What Diego hands an app instance (docs/cf-instance-identity.md §1, §2):
//! - [`Pki`]: a root (`appRootCA`) and an intermediate (`instanceIdentityCA`), both RSA;
//! - [`Leaf`]: an RSA-3072 PKCS#1 key (`RSA PRIVATE KEY`), CN = the instance GUID, the three
//!   OUs `organization:`, `space:` and `app:` in ONE multi-valued RDN, SANs `DNS:<guid>` and an
//!   IP, serverAuth + clientAuth; `instance.crt` is the leaf followed by the intermediate;
//!   validity from now, or any window in the past or future ([`Validity`]);
//! - [`Creds`]: the credential directory, replaced the way the executor does it (write both
//!   `.tmp` files, rename the key first, then the certificate).
//!
//! And the sidecar binary as a child process: [`sidecar_command`], [`Process`], [`free_port`],
//! and what `/proc` says of it: [`rss`], [`fds`].
//!
//! No `openssl` command: keys come from aws-lc-rs (the graph's one crypto provider, which can
//! make RSA keys), CAs from rcgen, and leaves are written field by field with yasna because
//! rcgen cannot put several attributes in one RDN.
//!
//! This crate is only ever a dev-dependency. A certificate that cannot be made is a broken test
//! environment, so the kit panics with the reason, like an assertion.

mod creds;
mod keys;
mod leaf;
mod name;
mod pki;
mod process;
mod util;

pub use creds::{Creds, free_port};
pub use keys::{ED448_PKCS8_PEM, KeyKind, pem};
pub use name::{Attr, Name};
pub use pki::{CaKey, EXPIRED, Identity, Leaf, LeafSpec, NOT_YET_VALID, Pki, TestCa, Validity};
pub use process::{Process, fds, rss, sidecar_command};
pub use util::{new_guid, random_bytes, unix_now};
