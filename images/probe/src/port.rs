//! x86 port I/O, the only way the probe reaches the UART, PCI configuration space, the ACPI PM
//! registers and the reset and debug-exit ports.
//!
//! Each function is `unsafe`: the instruction itself is harmless to the probe's memory, but
//! what it does depends on the device behind the port (reading the UART data register
//! consumes input, writing 0xFE to port 0x64 resets the machine), so the caller must know it.

use core::arch::asm;

/// Reads a byte from `port`.
///
/// # Safety
/// The caller knows which device decodes `port` and accepts the side effects of the read.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` reads an I/O port and nothing else (no memory, no stack, no flags); the
    // caller vouches for the device-side effect.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port,
             options(nomem, nostack, preserves_flags));
    }
    value
}

/// Reads 16 bits from `port`.
///
/// # Safety
/// As [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in `inb`.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port,
             options(nomem, nostack, preserves_flags));
    }
    value
}

/// Reads 32 bits from `port`.
///
/// # Safety
/// As [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port,
             options(nomem, nostack, preserves_flags));
    }
    value
}

/// Writes a byte to `port`.
///
/// # Safety
/// The caller knows which device decodes `port` and wants the effect of the write.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` writes an I/O port and nothing else; the caller vouches for the effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value,
             options(nomem, nostack, preserves_flags));
    }
}

/// Writes 16 bits to `port`.
///
/// # Safety
/// As [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value,
             options(nomem, nostack, preserves_flags));
    }
}

/// Writes 32 bits to `port`.
///
/// # Safety
/// As [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value,
             options(nomem, nostack, preserves_flags));
    }
}
