//! Whether a binary is static: no `PT_INTERP` (no dynamic loader) and no `DT_NEEDED` (no shared
//! libraries). A static-pie has `PT_DYNAMIC` but no `DT_NEEDED`, so it counts as static.
//!
//! The headers are read by the packager's reader (`tls_sidecar_packager::elf`, on the `object`
//! crate), the one that refuses to package a dynamic binary: the tests check the zip with the
//! same code that built it, not a second parser that could disagree.

use crate::{Context, Result};

/// What the program headers and the dynamic section say about linking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linking {
    /// The `PT_INTERP` path, if any (e.g. `/lib64/ld-linux-x86-64.so.2`).
    pub interpreter: Option<String>,
    /// The number of `DT_NEEDED` entries.
    pub needed: usize,
    /// `e_machine` (62 = x86-64).
    pub machine: u16,
}

impl Linking {
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed == 0
    }
}

/// Parses a little-endian ELF64 file.
pub fn linking(bytes: &[u8]) -> Result<Linking> {
    let read = tls_sidecar_packager::elf::linking(bytes).context("cannot read the ELF file")?;
    Ok(Linking {
        interpreter: read.interpreter,
        needed: read.needed.len(),
        machine: read.machine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_system_binary_is_not_static() {
        let bytes = std::fs::read("/bin/sh").unwrap();
        let l = linking(&bytes).unwrap();
        assert!(!l.is_static(), "{l:?}");
        assert!(l.interpreter.is_some());
        assert!(l.needed > 0);
    }
}
