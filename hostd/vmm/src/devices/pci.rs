//! PCI configuration mechanism 1 (`0xCF8` address, `0xCFC..0xCFF` data) in front of a
//! [`PciConfigSpace`]: the guest's PCI segment ([`crate::pci::PciSegment`]), whose ECAM
//! window ([`crate::pci::Ecam`]) reaches the same functions. Reads of absent functions answer
//! all ones ("no device").

use super::{BusDevice, read_le, write_le};

/// The address port; the device covers `0xCF8..0xD00`.
pub const PCI_CONFIG_PORT: u64 = 0xCF8;
/// Bytes covered (address + data).
pub const PCI_CONFIG_LEN: u64 = 8;
const ENABLE: u32 = 1 << 31;

/// Bus/device/function plus register, decoded from the address port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
    /// Dword-aligned register offset: `0..0x100` through mechanism 1, `0..0x1000` through
    /// ECAM (extended configuration space).
    pub register: u16,
}

impl ConfigAddress {
    /// Decodes the address port value; `None` when the enable bit is clear.
    pub fn decode(value: u32) -> Option<Self> {
        (value & ENABLE != 0).then_some(Self {
            bus: (value >> 16) as u8,
            device: ((value >> 11) & 0x1F) as u8,
            function: ((value >> 8) & 0x7) as u8,
            register: (value & 0xFC) as u16,
        })
    }
}

/// What answers configuration cycles.
pub trait PciConfigSpace: Send {
    /// Reads the dword at `address`; `None` when no function is there.
    fn read_dword(&mut self, address: ConfigAddress) -> Option<u32>;
    /// Writes `data` (1, 2 or 4 bytes, not crossing the dword) at byte `offset` (0..4) of the
    /// dword at `address`.
    fn write(&mut self, address: ConfigAddress, offset: u8, data: &[u8]);
}

/// A PCI segment with no functions.
#[derive(Debug, Default)]
pub struct NoFunctions;

impl PciConfigSpace for NoFunctions {
    fn read_dword(&mut self, _address: ConfigAddress) -> Option<u32> {
        None
    }
    fn write(&mut self, _address: ConfigAddress, _offset: u8, _data: &[u8]) {}
}

/// The mechanism-1 ports.
#[derive(Debug)]
pub struct PciConfigIo<S: PciConfigSpace> {
    address: u32,
    space: S,
}

impl<S: PciConfigSpace> PciConfigIo<S> {
    /// Ports in front of `space`.
    pub fn new(space: S) -> Self {
        Self { address: 0, space }
    }
}

impl<S: PciConfigSpace> BusDevice for PciConfigIo<S> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            // Only dword accesses reach the address register.
            if offset == 0 && data.len() == 4 {
                write_le(data, u64::from(self.address));
            } else {
                data.fill(0xFF);
            }
            return;
        }
        let dword = ConfigAddress::decode(self.address)
            .and_then(|address| self.space.read_dword(address))
            .unwrap_or(u32::MAX);
        let shift = 8 * (offset - 4);
        write_le(data, u64::from(dword) >> shift);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                self.address = read_le(data) as u32;
            }
            return;
        }
        if let Some(address) = ConfigAddress::decode(self.address) {
            self.space.write(address, (offset - 4) as u8, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_functions_read_all_ones_and_the_address_latches() {
        let mut pci = PciConfigIo::new(NoFunctions);
        let address = ENABLE | (3 << 11) | 0x10;
        pci.write(0, &address.to_le_bytes());
        let mut dword = [0u8; 4];
        pci.read(0, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), address);
        pci.read(4, &mut dword);
        assert_eq!(dword, [0xFF; 4]);
        let mut word = [0u8; 2];
        pci.read(6, &mut word);
        assert_eq!(word, [0xFF; 2]);
    }

    #[test]
    fn address_decodes_bus_device_function_register() {
        let a = ConfigAddress::decode(ENABLE | (1 << 16) | (31 << 11) | (7 << 8) | 0xFF).unwrap();
        assert_eq!(
            a,
            ConfigAddress {
                bus: 1,
                device: 31,
                function: 7,
                register: 0xFC
            }
        );
        assert_eq!(ConfigAddress::decode(0x10), None);
    }
}
