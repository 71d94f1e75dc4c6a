//! `memcpy` and `memmove` for the static musl build on x86_64, in place of musl's.
//!
//! Why: musl's x86_64 `memcpy` is `rep movsq` for every size, and that instruction costs tens
//! of cycles to start whatever it copies. The shipped binary is the static musl one, and most
//! of its copies are small: a TLS 1.3 handshake's ~30 HMACs each copy a hash context of a few
//! hundred bytes, rustls and the proxy move records, buffers and futures of tens to hundreds.
//! Measured with `perf` on resumed TLS connections (tcp mode, 64 clients): `memcpy` took 8.9 %
//! of the musl build's CPU against 3.8 % for glibc's vector `memcpy` in the glibc build, the
//! largest difference between the two builds. glibc's approach, taken here: small copies are
//! a few possibly overlapping unaligned vector moves, middle-sized ones a loop of 64-byte
//! moves, and only large ones `rep movsb`, which is fast on CPUs that advertise ERMS (Intel
//! since 2012, AMD since Zen 3) and correct everywhere.
//!
//! The exports exist only where they replace musl's (`target_env = "musl"`); everywhere else
//! these are ordinary functions that the tests compare against the standard library's copies.
//! Both are defined so that neither of musl's objects (whose `memmove` jumps into its
//! `memcpy`) is linked: a second definition would fail the link rather than go unnoticed.
//!
//! LLVM never turns the loop below back into a call to `memcpy`: it does not form that call
//! inside a function named `memcpy` (loop idiom recognition), and the helpers are inlined.
#![allow(unsafe_code)]

use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

/// Above this, `rep movsb`: its start-up cost is small beside the copy.
const REP_MOVSB_FROM: usize = 2048;

/// Copies `n` bytes from `src` to `dest`; the two must not overlap.
///
/// # Safety
/// As C's `memcpy`: `src` readable and `dest` writable for `n` bytes, not overlapping.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; every access below is within `n` bytes of both.
    unsafe {
        if n <= 128 {
            small(dest, src, n);
        } else if n < REP_MOVSB_FROM {
            // Whole 64-byte blocks, then the last 64 bytes (which may overlap the last
            // block): no byte loop for the remainder.
            let mut at = 0;
            while at + 64 < n {
                move64(dest.add(at), src.add(at));
                at += 64;
            }
            move64(dest.add(n - 64), src.add(n - 64));
        } else {
            rep_movsb(dest, src, n);
        }
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`, which may overlap.
///
/// # Safety
/// As C's `memmove`: `src` readable and `dest` writable for `n` bytes.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract, as above.
    unsafe {
        if (dest as usize).abs_diff(src as usize) >= n {
            return memcpy(dest, src, n);
        }
        if n <= 128 {
            // `small` reads everything before it writes anything.
            small(dest, src, n);
        } else if (dest as usize) < (src as usize) {
            // Forwards, a byte at a time as `rep movsb` goes: each byte is read before the
            // writes behind it reach it.
            rep_movsb(dest, src, n);
        } else {
            rep_movsb_backwards(dest, src, n);
        }
    }
    dest
}

/// Up to 128 bytes: every byte read before any is written (so overlap is fine), with one or
/// two moves of the largest width that fits, the second ending where the range ends.
#[inline(always)]
unsafe fn small(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the callers' contract; `n` bytes at each.
    unsafe {
        match n {
            0 => {}
            1 => dest.write(src.read()),
            2..=3 => {
                let (a, b) = (load::<u16>(src), load::<u16>(src.add(n - 2)));
                store(dest, a);
                store(dest.add(n - 2), b);
            }
            4..=7 => {
                let (a, b) = (load::<u32>(src), load::<u32>(src.add(n - 4)));
                store(dest, a);
                store(dest.add(n - 4), b);
            }
            8..=16 => {
                let (a, b) = (load::<u64>(src), load::<u64>(src.add(n - 8)));
                store(dest, a);
                store(dest.add(n - 8), b);
            }
            17..=32 => {
                let (a, b) = (vload(src), vload(src.add(n - 16)));
                vstore(dest, a);
                vstore(dest.add(n - 16), b);
            }
            33..=64 => {
                let (a, b) = (vload(src), vload(src.add(16)));
                let (c, d) = (vload(src.add(n - 32)), vload(src.add(n - 16)));
                vstore(dest, a);
                vstore(dest.add(16), b);
                vstore(dest.add(n - 32), c);
                vstore(dest.add(n - 16), d);
            }
            _ => {
                let (a, b) = (vload(src), vload(src.add(16)));
                let (c, d) = (vload(src.add(32)), vload(src.add(48)));
                let (e, f) = (vload(src.add(n - 64)), vload(src.add(n - 48)));
                let (g, h) = (vload(src.add(n - 32)), vload(src.add(n - 16)));
                vstore(dest, a);
                vstore(dest.add(16), b);
                vstore(dest.add(32), c);
                vstore(dest.add(48), d);
                vstore(dest.add(n - 64), e);
                vstore(dest.add(n - 48), f);
                vstore(dest.add(n - 32), g);
                vstore(dest.add(n - 16), h);
            }
        }
    }
}

/// 64 bytes, all read before any is written.
#[inline(always)]
unsafe fn move64(dest: *mut u8, src: *const u8) {
    // SAFETY: the callers' contract; 64 bytes at each.
    unsafe {
        let (a, b) = (vload(src), vload(src.add(16)));
        let (c, d) = (vload(src.add(32)), vload(src.add(48)));
        vstore(dest, a);
        vstore(dest.add(16), b);
        vstore(dest.add(32), c);
        vstore(dest.add(48), d);
    }
}

#[inline(always)]
unsafe fn load<T: Copy>(at: *const u8) -> T {
    // SAFETY: the callers' contract.
    unsafe { at.cast::<T>().read_unaligned() }
}

#[inline(always)]
unsafe fn store<T: Copy>(at: *mut u8, value: T) {
    // SAFETY: the callers' contract.
    unsafe { at.cast::<T>().write_unaligned(value) }
}

#[inline(always)]
unsafe fn vload(at: *const u8) -> __m128i {
    // SAFETY: the callers' contract; SSE2 is part of x86_64.
    unsafe { _mm_loadu_si128(at.cast()) }
}

#[inline(always)]
unsafe fn vstore(at: *mut u8, value: __m128i) {
    // SAFETY: the callers' contract; SSE2 is part of x86_64.
    unsafe { _mm_storeu_si128(at.cast(), value) }
}

#[inline(always)]
unsafe fn rep_movsb(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the callers' contract; the direction flag is clear, as the ABI requires.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `rep movsb` from the last byte down (direction flag set, then cleared again).
#[inline(always)]
unsafe fn rep_movsb_backwards(dest: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the callers' contract; the direction flag is restored before the asm ends.
    unsafe {
        std::arch::asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// Every length up to past `rep movsb`'s threshold, at every alignment of either end
    /// within 16 bytes.
    const LENGTHS: std::ops::RangeInclusive<usize> = 0..=REP_MOVSB_FROM + 300;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + 7) as u8).collect()
    }

    #[test]
    fn memcpy_copies_every_length_at_every_alignment_and_nothing_around_it() {
        let src = pattern(LENGTHS.end() + 64);
        for n in LENGTHS {
            for (s, d) in [(0, 0), (1, 0), (0, 3), (7, 9), (15, 1), (8, 8)] {
                let mut dest = vec![0xEE; n + 64];
                // SAFETY: both ranges are inside their vectors and do not overlap.
                unsafe {
                    memcpy(
                        black_box(dest.as_mut_ptr().add(d)),
                        black_box(src.as_ptr().add(s)),
                        black_box(n),
                    );
                }
                assert_eq!(&dest[d..d + n], &src[s..s + n], "n={n} s={s} d={d}");
                assert!(dest[..d].iter().all(|&b| b == 0xEE), "before: n={n}");
                assert!(dest[d + n..].iter().all(|&b| b == 0xEE), "after: n={n}");
            }
        }
    }

    #[test]
    fn memmove_gives_what_copy_within_gives_for_every_overlap() {
        let data = pattern(16384);
        let lengths = (0..=300).chain([511, 512, 1000, 2047, 2048, 2049, 3000]);
        for n in lengths {
            for shift in [
                -129isize, -64, -17, -16, -8, -1, 0, 1, 3, 16, 33, 64, 130, 3001,
            ] {
                let from: usize = 4000;
                let to = from.checked_add_signed(shift).expect("inside");
                let mut expected = data.clone();
                expected.copy_within(from..from + n, to);
                let mut buf = data.clone();
                let base = buf.as_mut_ptr();
                // SAFETY: both ranges are inside `buf`.
                unsafe {
                    memmove(
                        black_box(base.add(to)),
                        black_box(base.add(from)),
                        black_box(n),
                    );
                }
                assert!(buf == expected, "n={n} shift={shift}");
            }
        }
    }
}
