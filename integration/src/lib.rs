//! A local emulation of the parts of Cloud Foundry a supply buildpack with a sidecar meets, and the
//! helpers the end-to-end tests drive it with.
//!
//! - [`cell`]: a fake Diego cell identity: the CA chain (`appRootCA` → `instanceIdentityCA`) and
//!   instance certificates in Diego's exact shape, with Diego's rotation order.
//! - [`stage`]: the buildpack lifecycle builder in skip-detect mode (`cf push -b a -b b`): supply
//!   buildpacks, the final buildpack, `launch.yml` merge, `result.json`, the droplet.
//! - [`launch`]: an app instance: its own network namespace, the droplet at `/home/vcap`, the
//!   credentials at `/etc/cf-instance-credentials`, each process (web and sidecars) started as
//!   `vcap` through the launcher's exact sequence.
//! - [`buildpacks`]: our packaged zips (from `scripts/package.sh` or the environment), the fixture
//!   buildpacks zipped on demand, and zip surgery for tampered copies.
//! - [`sidecar`]: readiness of our sidecar and the clients a user would point at it.
//! - [`http`], [`tls`], [`elf`]: small clients and checks the tests use.
//!
//! Staging and launching need root (namespaces, mounts, `setpriv`); [`require_root`] fails with a clear
//! message otherwise. Each instance and staging gets its own temp dirs and namespace, so tests run
//! in parallel.

pub mod buildpacks;
pub mod cc;
pub mod cell;
pub mod elf;
pub mod http;
pub mod launch;
pub mod netns;
pub mod netpair;
pub mod sidecar;
pub mod stage;
pub mod tls;
pub mod util;

mod error;
mod xxhash;

pub use cell::{AppIdentity, Caller, Callers, CellCa, InstanceCredentials, IssuedCert};
pub use error::{Context, Error, Result};
pub use launch::{Instance, LaunchOptions, Process};
pub use netns::NetNs;
pub use stage::{AppInfo, Buildpack, Droplet, Staging, StagingRequest};
pub use util::{require_root, workspace_root};
