//! The two Cloud Controller rules a droplet's sidecars meet when it is assigned to the app
//! (`cloud_controller_ng`: `app/actions/sidecar_synchronize_from_app_droplet.rb`,
//! `app/models/runtime/constraints/sidecar_memory_less_than_process_memory_policy.rb`), after
//! staging succeeded: there a violation surfaces as an unhelpful server error or an app that
//! never starts, so tests show that staging refuses the same configurations first.
//!
//! - Every `origin: buildpack` sidecar is recreated from the droplet; one with the name of a
//!   user-defined (app manifest) sidecar raises `ConflictingSidecarsError`.
//! - For each process type, the memory of the sidecars running beside it (those that declare
//!   one) must be strictly less than the process's memory.

use crate::stage::Droplet;

/// A sidecar the app manifest declares (`sidecars:`), as Cloud Controller stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSidecar {
    pub name: String,
    pub process_types: Vec<String>,
    pub memory_mb: Option<u32>,
}

/// What Cloud Controller says when it refuses the droplet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "Buildpack defined sidecar '{0}' conflicts with an existing user-defined sidecar. Consider renaming '{0}'."
    )]
    ConflictingSidecars(String),
    #[error(
        "The memory allocation defined is too large to run with the dependent \"{process_type}\" process ({sidecars} MB of sidecars, {process} MB process)"
    )]
    SidecarMemory {
        process_type: String,
        sidecars: u64,
        process: u32,
    },
}

/// Assigns `droplet` to its app with `manifest` sidecars already defined, with the process
/// memory `process_memory_mb` (`cf push -m`, `cf scale -m`).
pub fn assign_droplet(
    droplet: &Droplet,
    manifest: &[ManifestSidecar],
    process_memory_mb: u32,
) -> Result<(), Refusal> {
    let from_droplet = droplet.result.sidecars.clone().unwrap_or_default();
    if let Some(clash) = from_droplet
        .iter()
        .find(|b| manifest.iter().any(|m| m.name == b.name))
    {
        return Err(Refusal::ConflictingSidecars(clash.name.clone()));
    }
    let all = from_droplet
        .iter()
        .map(|b| {
            let memory = u32::try_from(b.memory).ok().filter(|m| *m > 0);
            (b.process_types.clone(), memory)
        })
        .chain(
            manifest
                .iter()
                .map(|m| (m.process_types.clone(), m.memory_mb)),
        )
        .collect::<Vec<_>>();
    let mut types: Vec<&String> = all.iter().flat_map(|(t, _)| t).collect();
    types.sort();
    types.dedup();
    for process_type in types {
        let sidecars: u64 = all
            .iter()
            .filter(|(t, _)| t.contains(process_type))
            .filter_map(|(_, m)| *m)
            .map(u64::from)
            .sum();
        if sidecars >= u64::from(process_memory_mb) {
            return Err(Refusal::SidecarMemory {
                process_type: process_type.clone(),
                sidecars,
                process: process_memory_mb,
            });
        }
    }
    Ok(())
}
