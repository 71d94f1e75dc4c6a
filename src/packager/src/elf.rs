//! Checks that a binary is a static x86_64 ELF executable, reading the headers ourselves.
//!
//! Why: the buildpack and the sidecar run on cflinuxfs3 (glibc 2.27), cflinuxfs4 (2.35) and
//! cflinuxfs5 (2.39). A binary linked against the build machine's glibc fails there with a
//! loader error at staging or, worse, at app start. A static musl binary has no program
//! interpreter (`PT_INTERP`) and no `DT_NEEDED` entries. Rust's musl target builds static-pie
//! binaries: those are `ET_DYN` and keep a `PT_DYNAMIC` segment for self-relocation, but still
//! name no interpreter and no libraries, so "has `PT_DYNAMIC`" is not the test.
//!
//! No external tool (`file`, `readelf`, `ldd`): they differ between machines, and `ldd` may run
//! the binary. Only the ELF64 little-endian layout is parsed; anything else is rejected early.

use std::fs;
use std::path::Path;

use crate::errors::{ElfError, ElfProblem};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
/// `e_phnum` value meaning "the real count is in section header 0's `sh_info`".
const PN_XNUM: u16 = 0xffff;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// Size of the ELF64 file header.
const EHDR_SIZE: u64 = 64;
/// Size of one ELF64 program header.
const PHDR_SIZE: u64 = 56;
/// Size of one ELF64 section header (only header 0 is read, for `PN_XNUM`).
const SHDR_SIZE: u64 = 64;
/// Size of one ELF64 `Elf64_Dyn` entry.
const DYN_SIZE: u64 = 16;

/// Reads `path` and checks that it is a static x86_64 ELF executable.
///
/// # Errors
/// [`ElfError`] naming the file and the problem (unreadable, not ELF, wrong machine,
/// dynamically linked, needs shared libraries, malformed).
pub fn ensure_static_x86_64_executable(path: &Path) -> Result<(), ElfError> {
    let bytes = fs::read(path).map_err(|err| ElfError {
        path: path.to_path_buf(),
        problem: ElfProblem::Unreadable(err),
    })?;
    check_static_x86_64_executable(&bytes).map_err(|problem| ElfError {
        path: path.to_path_buf(),
        problem,
    })
}

/// Checks the bytes of a file: a static x86_64 ELF executable passes.
///
/// # Errors
/// The [`ElfProblem`] found first.
pub fn check_static_x86_64_executable(bytes: &[u8]) -> Result<(), ElfProblem> {
    let elf = Reader(bytes);
    if elf.slice(0, 4).ok() != Some(ELF_MAGIC.as_slice()) {
        return Err(ElfProblem::NotElf);
    }
    if elf.u8(4)? != ELFCLASS64 {
        return Err(ElfProblem::Not64Bit);
    }
    if elf.u8(5)? != ELFDATA2LSB {
        return Err(ElfProblem::BigEndian);
    }
    let e_type = elf.u16(16)?;
    let e_machine = elf.u16(18)?;
    if e_machine != EM_X86_64 {
        return Err(ElfProblem::WrongMachine(e_machine));
    }
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(ElfProblem::NotExecutable(e_type));
    }
    if elf.u64(24)? == 0 {
        return Err(ElfProblem::NoEntryPoint);
    }

    let headers = program_headers(&elf)?;
    if let Some(interp) = headers.iter().find(|h| h.p_type == PT_INTERP) {
        let raw = elf.slice(interp.offset, interp.filesz)?;
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        return Err(ElfProblem::HasInterpreter(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    if let Some(dynamic) = headers.iter().find(|h| h.p_type == PT_DYNAMIC) {
        let needed = needed_libraries(&elf, dynamic, &headers)?;
        if !needed.is_empty() {
            return Err(ElfProblem::NeedsLibraries(needed.join(", ")));
        }
    }
    Ok(())
}

/// The fields of a program header this check needs.
struct ProgramHeader {
    p_type: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn program_headers(elf: &Reader<'_>) -> Result<Vec<ProgramHeader>, ElfProblem> {
    let phoff = elf.u64(32)?;
    let phentsize = u64::from(elf.u16(54)?);
    let mut phnum = u64::from(elf.u16(56)?);
    if phnum == u64::from(PN_XNUM) {
        // More than 65534 headers: the count lives in section header 0 (`sh_info`, offset 44).
        let shoff = elf.u64(40)?;
        if shoff == 0 {
            return Err(ElfProblem::Malformed(
                "e_phnum is PN_XNUM but there is no section header 0".into(),
            ));
        }
        phnum = u64::from(elf.u32(add(shoff, 44)?)?);
        elf.slice(shoff, SHDR_SIZE)?;
    }
    if phnum == 0 {
        return Err(ElfProblem::Malformed("it has no program headers".into()));
    }
    if phentsize < PHDR_SIZE {
        return Err(ElfProblem::Malformed(format!(
            "program header size {phentsize} < {PHDR_SIZE}"
        )));
    }
    if phoff < EHDR_SIZE {
        return Err(ElfProblem::Malformed(format!(
            "program headers at offset {phoff}, inside the ELF header"
        )));
    }
    // The whole table must be in the file, not just the fields read below.
    elf.slice(phoff, phnum.checked_mul(phentsize).ok_or_else(overflow)?)?;
    (0..phnum)
        .map(|i| {
            let at = add(phoff, i.checked_mul(phentsize).ok_or_else(overflow)?)?;
            Ok(ProgramHeader {
                p_type: elf.u32(at)?,
                offset: elf.u64(add(at, 8)?)?,
                vaddr: elf.u64(add(at, 16)?)?,
                filesz: elf.u64(add(at, 32)?)?,
            })
        })
        .collect()
}

/// The `DT_NEEDED` names of the dynamic segment. A name that cannot be located (no `DT_STRTAB`,
/// or it points outside every `PT_LOAD`) still counts, as `?`: its presence is what matters.
fn needed_libraries(
    elf: &Reader<'_>,
    dynamic: &ProgramHeader,
    headers: &[ProgramHeader],
) -> Result<Vec<String>, ElfProblem> {
    let mut needed = Vec::new();
    let mut strtab_vaddr = None;
    for i in 0..dynamic.filesz / DYN_SIZE {
        let at = add(dynamic.offset, i * DYN_SIZE)?;
        let tag = elf.u64(at)?;
        let value = elf.u64(add(at, 8)?)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(value),
            DT_STRTAB => strtab_vaddr = Some(value),
            _ => {}
        }
    }
    let strtab_offset = strtab_vaddr.and_then(|vaddr| file_offset(vaddr, headers));
    Ok(needed
        .into_iter()
        .map(|name_at| {
            strtab_offset
                .and_then(|base| base.checked_add(name_at))
                .and_then(|at| elf.c_str(at))
                .unwrap_or_else(|| "?".to_owned())
        })
        .collect())
}

/// Maps a virtual address to its file offset through the `PT_LOAD` segment that holds it.
fn file_offset(vaddr: u64, headers: &[ProgramHeader]) -> Option<u64> {
    headers
        .iter()
        .filter(|h| h.p_type == PT_LOAD)
        .find(|h| vaddr >= h.vaddr && vaddr - h.vaddr < h.filesz)
        .and_then(|h| h.offset.checked_add(vaddr - h.vaddr))
}

fn add(a: u64, b: u64) -> Result<u64, ElfProblem> {
    a.checked_add(b).ok_or_else(overflow)
}

fn overflow() -> ElfProblem {
    ElfProblem::Malformed("a header offset overflows".into())
}

/// Bounds-checked little-endian reads: every offset comes from the file itself, so none is
/// trusted.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn slice(&self, offset: u64, len: u64) -> Result<&[u8], ElfProblem> {
        let out_of_file = || {
            ElfProblem::Malformed(format!(
                "{len} bytes at offset {offset} lie outside the {}-byte file",
                self.0.len()
            ))
        };
        let start = usize::try_from(offset).map_err(|_| out_of_file())?;
        let len = usize::try_from(len).map_err(|_| out_of_file())?;
        let end = start.checked_add(len).ok_or_else(out_of_file)?;
        self.0.get(start..end).ok_or_else(out_of_file)
    }

    fn array<const N: usize>(&self, offset: u64) -> Result<[u8; N], ElfProblem> {
        let mut out = [0; N];
        out.copy_from_slice(self.slice(offset, N as u64)?);
        Ok(out)
    }

    fn u8(&self, offset: u64) -> Result<u8, ElfProblem> {
        Ok(self.array::<1>(offset)?[0])
    }

    fn u16(&self, offset: u64) -> Result<u16, ElfProblem> {
        self.array(offset).map(u16::from_le_bytes)
    }

    fn u32(&self, offset: u64) -> Result<u32, ElfProblem> {
        self.array(offset).map(u32::from_le_bytes)
    }

    fn u64(&self, offset: u64) -> Result<u64, ElfProblem> {
        self.array(offset).map(u64::from_le_bytes)
    }

    /// A NUL-terminated string, or `None` if it runs off the end of the file.
    fn c_str(&self, offset: u64) -> Option<String> {
        let rest = self.0.get(usize::try_from(offset).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 file: header, the given program headers, then `tail`.
    /// Each header is (type, offset, vaddr, filesz).
    fn elf(machine: u16, e_type: u16, headers: &[(u32, u64, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(ELF_MAGIC);
        out[4] = ELFCLASS64;
        out[5] = ELFDATA2LSB;
        out[6] = 1;
        out[16..18].copy_from_slice(&e_type.to_le_bytes());
        out[18..20].copy_from_slice(&machine.to_le_bytes());
        out[24..32].copy_from_slice(&0x40_1000u64.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        for &(p_type, offset, vaddr, filesz) in headers {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&filesz.to_le_bytes());
            out.extend(ph);
        }
        out.extend_from_slice(tail);
        out
    }

    fn tail_offset(headers: usize) -> u64 {
        64 + 56 * headers as u64
    }

    fn dyn_entries(entries: &[(u64, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(tag, val)| [tag.to_le_bytes(), val.to_le_bytes()])
            .flatten()
            .collect()
    }

    #[test]
    fn a_static_executable_without_dynamic_segment_passes() {
        let bytes = elf(EM_X86_64, ET_EXEC, &[(PT_LOAD, 0, 0x40_0000, 120)], &[]);
        assert!(check_static_x86_64_executable(&bytes).is_ok());
    }

    #[test]
    fn a_static_pie_with_a_dynamic_segment_but_no_needed_entries_passes() {
        let dynamic = dyn_entries(&[(DT_STRTAB, 0x1000), (DT_NULL, 0)]);
        let at = tail_offset(2);
        let bytes = elf(
            EM_X86_64,
            ET_DYN,
            &[
                (PT_LOAD, 0, 0, at + 32),
                (PT_DYNAMIC, at, at, dynamic.len() as u64),
            ],
            &dynamic,
        );
        assert!(check_static_x86_64_executable(&bytes).is_ok());
    }

    #[test]
    fn a_needed_library_is_rejected_by_name() {
        let at = tail_offset(2);
        let mut tail = dyn_entries(&[(DT_NEEDED, 1), (DT_STRTAB, at + 48), (DT_NULL, 0)]);
        tail.extend_from_slice(b"\0libc.so.6\0");
        let len = tail.len() as u64;
        let bytes = elf(
            EM_X86_64,
            ET_DYN,
            &[(PT_LOAD, 0, 0, at + len), (PT_DYNAMIC, at, at, 48)],
            &tail,
        );
        match check_static_x86_64_executable(&bytes) {
            Err(ElfProblem::NeedsLibraries(names)) => assert_eq!(names, "libc.so.6"),
            other => panic!("expected NeedsLibraries, got {other:?}"),
        }
    }

    #[test]
    fn a_needed_library_without_a_string_table_is_still_rejected() {
        let at = tail_offset(1);
        let tail = dyn_entries(&[(DT_NEEDED, 1), (DT_NULL, 0)]);
        let bytes = elf(EM_X86_64, ET_DYN, &[(PT_DYNAMIC, at, at, 32)], &tail);
        match check_static_x86_64_executable(&bytes) {
            Err(ElfProblem::NeedsLibraries(names)) => assert_eq!(names, "?"),
            other => panic!("expected NeedsLibraries, got {other:?}"),
        }
    }

    #[test]
    fn a_program_interpreter_is_rejected_by_name() {
        let at = tail_offset(1);
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let bytes = elf(
            EM_X86_64,
            ET_DYN,
            &[(PT_INTERP, at, at, interp.len() as u64)],
            interp,
        );
        match check_static_x86_64_executable(&bytes) {
            Err(ElfProblem::HasInterpreter(name)) => {
                assert_eq!(name, "/lib64/ld-linux-x86-64.so.2")
            }
            other => panic!("expected HasInterpreter, got {other:?}"),
        }
    }

    #[test]
    fn another_machine_is_rejected() {
        const EM_AARCH64: u16 = 183;
        let bytes = elf(EM_AARCH64, ET_EXEC, &[(PT_LOAD, 0, 0, 64)], &[]);
        assert!(matches!(
            check_static_x86_64_executable(&bytes),
            Err(ElfProblem::WrongMachine(183))
        ));
    }

    #[test]
    fn a_relocatable_object_is_rejected() {
        let bytes = elf(EM_X86_64, 1, &[(PT_LOAD, 0, 0, 64)], &[]);
        assert!(matches!(
            check_static_x86_64_executable(&bytes),
            Err(ElfProblem::NotExecutable(1))
        ));
    }

    #[test]
    fn a_32_bit_elf_is_rejected() {
        let mut bytes = elf(EM_X86_64, ET_EXEC, &[(PT_LOAD, 0, 0, 64)], &[]);
        bytes[4] = 1;
        assert!(matches!(
            check_static_x86_64_executable(&bytes),
            Err(ElfProblem::Not64Bit)
        ));
    }

    #[test]
    fn a_script_is_not_elf() {
        let result = check_static_x86_64_executable(b"#!/bin/bash\nexit 0\n");
        assert!(matches!(result, Err(ElfProblem::NotElf)));
    }

    #[test]
    fn a_truncated_header_is_malformed_not_a_panic() {
        let bytes = elf(EM_X86_64, ET_EXEC, &[(PT_LOAD, 0, 0, 64)], &[]);
        for len in 0..bytes.len() {
            assert!(
                check_static_x86_64_executable(&bytes[..len]).is_err(),
                "accepted {len} bytes"
            );
        }
    }

    #[test]
    fn a_dynamic_segment_pointing_outside_the_file_is_malformed() {
        let bytes = elf(EM_X86_64, ET_DYN, &[(PT_DYNAMIC, 1 << 40, 0, 32)], &[]);
        assert!(matches!(
            check_static_x86_64_executable(&bytes),
            Err(ElfProblem::Malformed(_))
        ));
    }

    #[test]
    fn the_error_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.sh");
        fs::write(&path, "#!/bin/sh\n").expect("write");
        let err = ensure_static_x86_64_executable(&path).expect_err("a script is not ELF");
        assert!(
            err.to_string()
                .starts_with(&format!("{} is not an ELF executable", path.display()))
        );
    }
}
