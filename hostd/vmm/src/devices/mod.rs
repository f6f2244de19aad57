//! Emulated devices (docs/VMM.md "Devices") and the port-I/O and MMIO buses the vCPU threads
//! dispatch guest accesses on.
//!
//! A bus maps address ranges to devices behind a mutex: vCPU threads call into them on I/O
//! exits, the control loop for console input and the power button. The bus itself is built
//! before the vCPUs start and never changes, so it is shared without a lock.

pub mod acpi_pm;
pub mod console;
pub mod legacy;
pub mod pci;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_mmio;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the base of the range it was inserted at.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges (a VMM bug).
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
    },
}

/// Address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = self.ranges.iter().map(|(b, (l, _))| (*b, *l)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// Adds `device` at `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base + len;
        let overlaps_before = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if len == 0 || overlaps_before {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        (addr + size as u64 <= base + len).then_some((addr - base, device))
    }

    /// Dispatches a read; returns false (and all ones) when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device. A device whose lock was poisoned by a panicking thread is still used: its
/// state is plain registers, and the panic itself is reported by that thread.
pub fn lock<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads a little-endian value of up to 8 bytes.
pub fn read_le(data: &[u8]) -> u64 {
    data.iter()
        .rev()
        .fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

/// Writes the low `data.len()` bytes of `value`, little-endian.
pub fn write_le(data: &mut [u8], value: u64) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (value >> (8 * i)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch([u8; 4]);
    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.0[o..o + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = Bus::default();
        let dev: SharedDevice = Arc::new(Mutex::new(Scratch([0; 4])));
        bus.insert(0x600, 4, dev).unwrap();
        assert!(bus.write(0x602, &[0xAB]));
        let mut word = [0u8; 2];
        assert!(bus.read(0x602, &mut word));
        assert_eq!(word, [0xAB, 0]);
        // Outside (or straddling the end of) the range: nobody answers, reads are all ones.
        let mut data = [0u8; 4];
        assert!(!bus.read(0x603, &mut data[..2]));
        assert_eq!(data[..2], [0xFF, 0xFF]);
        assert!(!bus.write(0x5FF, &[1]));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::default();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Scratch([0; 4]))) };
        bus.insert(0x10, 0x10, dev()).unwrap();
        assert!(bus.insert(0x18, 0x10, dev()).is_err());
        assert!(bus.insert(0x08, 0x09, dev()).is_err());
        bus.insert(0x20, 0x10, dev()).unwrap();
        bus.insert(0x00, 0x10, dev()).unwrap();
    }

    #[test]
    fn little_endian_helpers_round_trip() {
        let mut data = [0u8; 4];
        write_le(&mut data, 0x1234_5678);
        assert_eq!(data, [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(read_le(&data[..2]), 0x5678);
    }
}
