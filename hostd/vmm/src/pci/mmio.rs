//! The segment's two MMIO windows on the VMM's MMIO bus: ECAM (configuration space as
//! memory, including the extended space mechanism 1 cannot reach) and the BAR window, where
//! the parts of BARs that are not mapped into the guest (a passthrough device's MSI-X table,
//! registers sharing its pages) trap to the function that owns them.

use super::segment::SharedSegment;
use crate::devices::pci::ConfigAddress;
use crate::devices::{BusDevice, lock, read_le, write_le};

/// ECAM: `offset = bus << 20 | device << 15 | function << 12 | register`.
#[derive(Debug)]
pub struct Ecam {
    segment: SharedSegment,
}

impl Ecam {
    /// ECAM in front of `segment`; insert it on the MMIO bus at
    /// [`crate::layout::PCI_ECAM_BASE`].
    pub fn new(segment: SharedSegment) -> Self {
        Self { segment }
    }

    /// The dword address and the byte offset in it of an access, when it is 1, 2 or 4 bytes
    /// and does not cross a dword (the only accesses PCI defines for configuration space).
    fn decode(offset: u64, len: usize) -> Option<(ConfigAddress, u8)> {
        let byte = (offset & 0x3) as u8;
        if !matches!(len, 1 | 2 | 4) || usize::from(byte) + len > 4 {
            return None;
        }
        let address = ConfigAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1F) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            register: (offset & 0xFFC) as u16,
        };
        Some((address, byte))
    }
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = Self::decode(offset, data.len())
            .and_then(|(address, byte)| {
                let dword = lock(&self.segment.0).read_config(address)?;
                Some(u64::from(dword) >> (8 * byte))
            })
            .unwrap_or(u64::MAX);
        write_le(data, value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((address, byte)) = Self::decode(offset, data.len()) {
            lock(&self.segment.0).write_config(address, byte, data);
        }
    }
}

/// The BAR window's trapped ranges: an access the guest makes inside the window that no KVM
/// memory slot covers.
#[derive(Debug)]
pub struct BarWindowTrap {
    segment: SharedSegment,
    base: u64,
}

impl BarWindowTrap {
    /// The trap for a window starting at `base` (where it is inserted on the MMIO bus).
    pub fn new(segment: SharedSegment, base: u64) -> Self {
        Self { segment, base }
    }
}

impl BusDevice for BarWindowTrap {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.base + offset;
        if !lock(&self.segment.0).bar_read(addr, data) {
            log::debug!("read of {addr:#x}: no BAR there");
            data.fill(0xFF);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.base + offset;
        if !lock(&self.segment.0).bar_write(addr, data) {
            log::debug!("write of {:#x} to {addr:#x}: no BAR there", read_le(data));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pci::PciSegment;

    fn ecam() -> Ecam {
        Ecam::new(SharedSegment(Arc::new(Mutex::new(PciSegment::new()))))
    }

    #[test]
    fn ecam_reads_the_host_bridge_at_any_width() {
        let mut ecam = ecam();
        let mut dword = [0u8; 4];
        ecam.read(0, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x0008_1b36);
        let mut word = [0u8; 2];
        ecam.read(2, &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x0008);
        let mut byte = [0u8; 1];
        ecam.read(0xB, &mut byte);
        assert_eq!(byte, [0x06], "class: bridge");
        // Extended space of a function with no extended capabilities.
        ecam.read(0x100, &mut dword);
        assert_eq!(dword, [0; 4]);
    }

    #[test]
    fn ecam_absent_functions_and_bad_accesses_read_all_ones() {
        let mut ecam = ecam();
        let mut dword = [0u8; 4];
        ecam.read(1 << 15, &mut dword);
        assert_eq!(dword, [0xFF; 4], "slot 1 is empty");
        ecam.read(2, &mut dword);
        assert_eq!(dword, [0xFF; 4], "crosses a dword");
        let mut qword = [0u8; 8];
        ecam.read(0, &mut qword);
        assert_eq!(qword, [0xFF; 8], "8-byte accesses are not config cycles");
    }

    #[test]
    fn ecam_writes_reach_the_register() {
        let mut ecam = ecam();
        ecam.write(4, &[0x06]);
        let mut word = [0u8; 2];
        ecam.read(4, &mut word);
        assert_eq!(word, [0x06, 0]);
    }
}
