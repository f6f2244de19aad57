//! What a function on the guest's PCI bus implements: its configuration space, the parts of
//! its BARs that are trapped (accessed through the VMM rather than mapped into the guest), and
//! reset.

use std::sync::{Arc, Mutex};

/// A guest PCI function address on segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number (always 0: the VMM has one root bus).
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// A PCI function as the guest sees it. Called with the segment's lock held, from vCPU
/// threads (guest accesses) and the control loop (reset, status).
pub trait PciFunction: Send {
    /// Reads the dword at `register` (dword aligned, below `0x1000`; at or above `0x100` only
    /// through ECAM).
    fn read_config(&mut self, register: u16) -> u32;

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` of the dword at `register`.
    fn write_config(&mut self, register: u16, offset: u8, data: &[u8]);

    /// The BAR and the offset in it of a trapped access at guest address `addr` of `len`
    /// bytes, if this function claims it. Only ranges that are not mapped into the guest as
    /// memory ever reach the VMM; a function claims an address only while its memory
    /// decoding is on.
    fn trapped_bar_at(&self, _addr: u64, _len: usize) -> Option<(usize, u64)> {
        None
    }

    /// A guest read of a trapped BAR range (see [`PciFunction::trapped_bar_at`]).
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    /// A guest write to a trapped BAR range.
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    /// Puts the function back in its power-on state (VM reset, guest-initiated or requested).
    fn reset(&mut self) {}
}

/// A function shared between the segment (guest accesses) and its owner (status, shutdown).
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_like_lspci() {
        let address = PciAddress {
            bus: 0,
            device: 0x1f,
            function: 7,
        };
        assert_eq!(address.to_string(), "0000:00:1f.7");
    }
}
