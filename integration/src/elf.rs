//! Just enough ELF64 parsing to tell whether a binary is static: no `PT_INTERP` (no dynamic
//! loader) and no `DT_NEEDED` (no shared libraries). A static-pie has `PT_DYNAMIC` but no
//! `DT_NEEDED`, so it counts as static.

use crate::{Result, bail};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

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

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses a little-endian ELF64 file.
pub fn linking(bytes: &[u8]) -> Result<Linking> {
    if bytes.get(0..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    let bad = || crate::Error::msg("truncated ELF header");
    let machine = u16_at(bytes, 18).ok_or_else(bad)?;
    let phoff = u64_at(bytes, 32).ok_or_else(bad)? as usize;
    let phentsize = usize::from(u16_at(bytes, 54).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(bytes, 56).ok_or_else(bad)?);
    let mut interpreter = None;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(bytes, ph).ok_or_else(bad)?;
        let offset = u64_at(bytes, ph + 8).ok_or_else(bad)? as usize;
        let filesz = u64_at(bytes, ph + 32).ok_or_else(bad)? as usize;
        let segment = bytes.get(offset..offset + filesz).ok_or_else(bad)?;
        match p_type {
            PT_INTERP => {
                let s = String::from_utf8_lossy(segment);
                interpreter = Some(s.trim_end_matches('\0').to_owned());
            }
            PT_DYNAMIC => {
                for entry in segment.chunks_exact(16) {
                    let tag = u64_at(entry, 0).ok_or_else(bad)?;
                    if tag == DT_NULL {
                        break;
                    }
                    if tag == DT_NEEDED {
                        needed += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Linking {
        interpreter,
        needed,
        machine,
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
