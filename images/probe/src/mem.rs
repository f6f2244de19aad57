//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`: the compiler emits calls to them, and on
//! this target they normally come from libc, which the probe does not link.
//!
//! The copies use `rep movsb` / `rep stosb` in inline assembly rather than Rust loops: the
//! optimiser turns such loops back into calls to these very functions.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest`; the ranges do not overlap.
///
/// # Safety
/// `src` is readable and `dest` writable for `n` bytes (the C contract of `memcpy`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes; `rep movsb` touches
    // exactly those bytes, forwards (the direction flag is clear: boot.rs clears it and the
    // ABI keeps it clear).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// `src` is readable and `dest` writable for `n` bytes (the C contract of `memmove`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when `dest` does not start inside `src`.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: `dest` starts inside `src`, so copy backwards from the last byte with the
    // direction flag set, and clear it again as the ABI requires. The caller guarantees both
    // ranges are valid for `n` bytes; n > 0 here because `dest` < `src + n` and `dest` > `src`.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _,
             inout("rdi") dest.add(n - 1) => _,
             inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `value`.
///
/// # Safety
/// `dest` is writable for `n` bytes (the C contract of `memset`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes; `rep stosb` writes exactly
    // those, forwards. Truncating `value` to its low byte is memset's definition.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") value as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes: negative, zero or positive like C's `memcmp`.
///
/// # Safety
/// Both pointers are readable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n and the caller guarantees both ranges are readable for n bytes.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Equality-only `memcmp` (zero when equal), which LLVM emits for slice comparisons.
///
/// # Safety
/// Both pointers are readable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp, forwarded unchanged.
    unsafe { memcmp(a, b, n) }
}
