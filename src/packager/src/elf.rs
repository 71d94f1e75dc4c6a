//! Checks that a binary is a static x86_64 ELF executable, with the `object` crate's ELF reader.
//!
//! Why: the buildpack and the sidecar run on cflinuxfs3 (glibc 2.27), cflinuxfs4 (2.35) and
//! cflinuxfs5 (2.39). A binary linked against the build machine's glibc fails there with a
//! loader error at staging or, worse, at app start. A static musl binary has no program
//! interpreter (`PT_INTERP`) and no `DT_NEEDED` entries. Rust's musl target builds static-pie
//! binaries: those are `ET_DYN` and keep a `PT_DYNAMIC` segment for self-relocation, but still
//! name no interpreter and no libraries, so "has `PT_DYNAMIC`" is not the test.
//!
//! No external tool (`file`, `readelf`, `ldd`): they differ between machines, and `ldd` may run
//! the binary. `object` reads the headers with every offset bounds-checked (each comes from the
//! file itself, so none is trusted); only the ELF64 little-endian layout is accepted, anything
//! else is rejected early. The integration tests read [`linking`] too, so there is one reader.

use std::fs;
use std::path::Path;

use object::LittleEndian;
use object::elf::{self, FileHeader64};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

use crate::errors::{ElfError, ElfProblem};

type Header = FileHeader64<LittleEndian>;
type Segment = elf::ProgramHeader64<LittleEndian>;

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
    let header = parse_header(bytes)?;
    let endian = LittleEndian;
    let e_machine = header.e_machine(endian).0;
    if e_machine != elf::EM_X86_64.0 {
        return Err(ElfProblem::WrongMachine(e_machine));
    }
    let e_type = header.e_type(endian);
    if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
        return Err(ElfProblem::NotExecutable(e_type.0));
    }
    if header.e_entry(endian) == 0 {
        return Err(ElfProblem::NoEntryPoint);
    }
    let linking = read_linking(header, bytes)?;
    if let Some(interpreter) = linking.interpreter {
        return Err(ElfProblem::HasInterpreter(interpreter));
    }
    if !linking.needed.is_empty() {
        return Err(ElfProblem::NeedsLibraries(linking.needed.join(", ")));
    }
    Ok(())
}

/// What an ELF file says about how it is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linking {
    /// `e_machine` (62 is x86_64).
    pub machine: u16,
    /// The `PT_INTERP` path, if any (e.g. `/lib64/ld-linux-x86-64.so.2`).
    pub interpreter: Option<String>,
    /// The `DT_NEEDED` library names; `?` for a name that cannot be located.
    pub needed: Vec<String>,
}

/// Reads how an ELF64 little-endian file is linked, whatever its machine or type.
///
/// # Errors
/// The [`ElfProblem`] if it is not such a file or its headers are malformed.
pub fn linking(bytes: &[u8]) -> Result<Linking, ElfProblem> {
    read_linking(parse_header(bytes)?, bytes)
}

/// The file header, after the identification bytes say ELF64 little-endian (checked here, so
/// the problem is named rather than `object`'s generic "unsupported").
fn parse_header(bytes: &[u8]) -> Result<&Header, ElfProblem> {
    if bytes.get(..4) != Some(elf::ELFMAG.as_slice()) {
        return Err(ElfProblem::NotElf);
    }
    // A header too short to hold these bytes is left to `parse`, which calls it malformed.
    if let Some(&class) = bytes.get(4)
        && class != elf::ELFCLASS64.0
    {
        return Err(ElfProblem::Not64Bit);
    }
    if let Some(&data) = bytes.get(5)
        && data != elf::ELFDATA2LSB.0
    {
        return Err(ElfProblem::BigEndian);
    }
    Header::parse(bytes).map_err(malformed)
}

fn read_linking(header: &Header, bytes: &[u8]) -> Result<Linking, ElfProblem> {
    let endian = LittleEndian;
    let segments = header.program_headers(endian, bytes).map_err(malformed)?;
    if segments.is_empty() {
        return Err(ElfProblem::Malformed("it has no program headers".into()));
    }
    let mut interpreter = None;
    let mut needed = Vec::new();
    for segment in segments {
        if let Some(path) = segment.interpreter(endian, bytes).map_err(malformed)? {
            interpreter.get_or_insert_with(|| String::from_utf8_lossy(path).into_owned());
        }
        if let Some(entries) = segment.dynamic(endian, bytes).map_err(malformed)? {
            needed.extend(needed_libraries(entries, segments, bytes));
        }
    }
    Ok(Linking {
        machine: header.e_machine(endian).0,
        interpreter,
        needed,
    })
}

/// The `DT_NEEDED` names of a dynamic segment. A name that cannot be located (no `DT_STRTAB`,
/// or it points outside every `PT_LOAD`) still counts, as `?`: its presence is what matters.
fn needed_libraries(
    entries: &[elf::Dyn64<LittleEndian>],
    segments: &[Segment],
    bytes: &[u8],
) -> Vec<String> {
    let endian = LittleEndian;
    let entries = entries
        .iter()
        .take_while(|d| d.d_tag(endian) != elf::DT_NULL);
    let strtab = entries
        .clone()
        .find(|d| d.d_tag(endian) == elf::DT_STRTAB)
        .and_then(|d| loaded(d.d_val(endian), segments, bytes));
    entries
        .filter(|d| d.d_tag(endian) == elf::DT_NEEDED)
        .map(|d| {
            strtab
                .and_then(|table| table.get(usize::try_from(d.d_val(endian)).ok()?..))
                .and_then(|name| name.get(..name.iter().position(|&b| b == 0)?))
                .map_or_else(
                    || "?".to_owned(),
                    |n| String::from_utf8_lossy(n).into_owned(),
                )
        })
        .collect()
}

/// The file bytes from virtual address `vaddr` to the end of the `PT_LOAD` segment holding it.
fn loaded<'a>(vaddr: u64, segments: &[Segment], bytes: &'a [u8]) -> Option<&'a [u8]> {
    let endian = LittleEndian;
    segments
        .iter()
        .filter(|s| s.p_type(endian) == elf::PT_LOAD)
        .find_map(|s| {
            let start = vaddr.checked_sub(s.p_vaddr(endian))?;
            let data = s.data(endian, bytes).ok()?;
            data.get(usize::try_from(start).ok()?..)
        })
}

fn malformed(err: object::Error) -> ElfProblem {
    ElfProblem::Malformed(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The raw values the hand-built files below are written with.
    const ELF_MAGIC: &[u8; 4] = &elf::ELFMAG;
    const ELFCLASS64: u8 = elf::ELFCLASS64.0;
    const ELFDATA2LSB: u8 = elf::ELFDATA2LSB.0;
    const ET_EXEC: u16 = elf::ET_EXEC.0;
    const ET_DYN: u16 = elf::ET_DYN.0;
    const EM_X86_64: u16 = elf::EM_X86_64.0;
    const PT_LOAD: u32 = elf::PT_LOAD.0;
    const PT_DYNAMIC: u32 = elf::PT_DYNAMIC.0;
    const PT_INTERP: u32 = elf::PT_INTERP.0;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;

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
