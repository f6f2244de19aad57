//! Guest-physical memory as the probe reads it: firmware structures (PVH start info, ACPI
//! tables, MP tables) through the boot identity map. Parsers take the [`PhysMemory`] trait so
//! unit tests can hand them a fake memory.

use thiserror::Error;

/// End (exclusive) of the identity map that boot.rs builds: 4 GiB.
pub const IDENTITY_MAP_END: u64 = 1 << 32;

/// Read access to guest-physical memory.
pub trait PhysMemory {
    /// The `len` bytes at guest-physical address `addr`.
    fn bytes(&self, addr: u64, len: usize) -> Result<&[u8], PhysError>;
}

/// A physical range the probe cannot read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PhysError {
    /// The range is not inside the identity map (or starts at address 0).
    #[error(
        "physical range {addr:#x}+{len:#x} is outside the probe's identity map (1..4 GiB): \
         the firmware table pointing there is corrupt or above 4 GiB; check the VMM's tables"
    )]
    OutsideMap {
        /// First address of the range.
        addr: u64,
        /// Length of the range in bytes.
        len: usize,
    },
}

/// Memory through the page tables of boot.rs, which map `0..4 GiB` one to one.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityMapped;

/// Checks that `addr..addr + len` is non-null and inside `0..end`.
pub fn check_range(addr: u64, len: usize, end: u64) -> Result<(), PhysError> {
    let outside = PhysError::OutsideMap { addr, len };
    let last = addr.checked_add(len as u64).ok_or(outside)?;
    if addr == 0 || last > end {
        return Err(outside);
    }
    Ok(())
}

impl PhysMemory for IdentityMapped {
    fn bytes(&self, addr: u64, len: usize) -> Result<&[u8], PhysError> {
        check_range(addr, len, IDENTITY_MAP_END)?;
        let start = usize::try_from(addr).map_err(|_| PhysError::OutsideMap { addr, len })?;
        // SAFETY: boot.rs maps [0, 4 GiB) one to one before any Rust code runs and never
        // unmaps it, and check_range put [addr, addr + len) inside that range and off the null
        // address, so every byte is mapped and readable. `u8` has no alignment or validity
        // requirement. The probe runs on one vCPU and only reads the firmware areas it looks
        // at (start info, ACPI and MP tables, all outside the probe's own image), so the bytes
        // do not change while the shared slice lives.
        Ok(unsafe { core::slice::from_raw_parts(start as *const u8, len) })
    }
}

#[cfg(test)]
pub mod fake {
    //! A fake physical memory for unit tests: a byte vector placed at a base address.
    use super::{PhysError, PhysMemory, check_range};
    use std::vec::Vec;

    /// `bytes` seen at guest-physical `base..base + bytes.len()`.
    #[derive(Debug)]
    pub struct FakeMemory {
        /// First guest-physical address of `bytes`.
        pub base: u64,
        /// The memory contents.
        pub bytes: Vec<u8>,
    }

    impl FakeMemory {
        /// `size` zero bytes at `base`.
        pub fn new(base: u64, size: usize) -> Self {
            Self {
                base,
                bytes: std::vec![0; size],
            }
        }

        /// Copies `data` to guest-physical `addr`.
        pub fn write(&mut self, addr: u64, data: &[u8]) {
            let start = (addr - self.base) as usize;
            self.bytes[start..start + data.len()].copy_from_slice(data);
        }
    }

    impl PhysMemory for FakeMemory {
        fn bytes(&self, addr: u64, len: usize) -> Result<&[u8], PhysError> {
            check_range(addr, len, u64::MAX)?;
            let outside = PhysError::OutsideMap { addr, len };
            let start = addr.checked_sub(self.base).ok_or(outside)? as usize;
            self.bytes
                .get(start..start.checked_add(len).ok_or(outside)?)
                .ok_or(outside)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_check_refuses_null_overflow_and_ranges_past_the_map() {
        assert!(check_range(0x1000, 16, IDENTITY_MAP_END).is_ok());
        assert!(check_range(IDENTITY_MAP_END - 4, 4, IDENTITY_MAP_END).is_ok());
        assert!(check_range(0, 16, IDENTITY_MAP_END).is_err());
        assert!(check_range(IDENTITY_MAP_END - 4, 5, IDENTITY_MAP_END).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
