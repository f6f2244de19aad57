//! The guest's PCI segment (docs/VMM.md "Guest PCI"): one root bus (bus 0) with a host bridge
//! at `00:00.0` and up to 31 more functions (today: VFIO passthrough devices), reached through
//! configuration mechanism 1 (ports `0xCF8`/`0xCFC`, [`crate::devices::pci`]) and through ECAM
//! at [`crate::layout::PCI_ECAM_BASE`], which the ACPI MCFG announces.
//!
//! The VMM plays the firmware's part: it gives each function a slot ([`PciSegment::add`]) and
//! each BAR an address in the BAR window ([`BarWindow`]) before the guest starts, and the
//! DSDT's host bridge (`\_SB.PCI0`) declares that window, so a guest OS keeps the
//! assignment. The guest may still move BARs; functions follow (see [`PciFunction`]).
//!
//! - [`function`]: what a function on the bus implements.
//! - [`host_bridge`]: the host bridge at `00:00.0`.
//! - [`segment`]: the bus, its slots, and the dispatch of configuration and BAR accesses.
//! - [`window`]: the BAR window allocator.
//! - [`mmio`]: the bus devices for ECAM and for the BAR window's trapped ranges.
//! - [`acpi`]: the MCFG table and the DSDT's `PCI0` device.

pub mod acpi;
pub mod function;
pub mod host_bridge;
pub mod mmio;
pub mod segment;
pub mod window;

pub use function::{PciAddress, PciFunction, SharedFunction};
pub use host_bridge::HostBridge;
pub use mmio::{BarWindowTrap, Ecam};
pub use segment::{PciError, PciSegment, SharedSegment};
pub use window::BarWindow;

/// Configuration space register offsets and bits the PCI modules share.
pub mod regs {
    /// Vendor ID (low half) and device ID (high half).
    pub const VENDOR_DEVICE: u16 = 0x00;
    /// Command (low half) and status (high half).
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision (byte 0) and class code (bytes 1..4).
    pub const CLASS_REVISION: u16 = 0x08;
    /// Cache line size, latency timer, header type (byte 2), BIST.
    pub const HEADER_TYPE_DWORD: u16 = 0x0C;
    /// First BAR register; BAR `i` is at `0x10 + 4 * i`.
    pub const BAR0: u16 = 0x10;
    /// Number of BAR registers of a type-0 header.
    pub const BAR_COUNT: usize = 6;
    /// Subsystem vendor and subsystem ID.
    pub const SUBSYSTEM: u16 = 0x2C;
    /// Expansion ROM base address.
    pub const EXPANSION_ROM: u16 = 0x30;
    /// Capabilities pointer (byte 0).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt line (byte 0) and interrupt pin (byte 1).
    pub const INTERRUPT_LINE_PIN: u16 = 0x3C;
    /// End of the standard configuration space; extended (PCI Express) space follows.
    pub const STANDARD_SPACE_END: u16 = 0x100;
    /// End of the extended configuration space.
    pub const EXTENDED_SPACE_END: u16 = 0x1000;

    /// Command: I/O space decoding.
    pub const COMMAND_IO: u16 = 1 << 0;
    /// Command: memory space decoding.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command: bus master (the function may DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command: INTx disable.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status: the function has a capability list.
    pub const STATUS_CAPABILITIES: u16 = 1 << 4;

    /// BAR bit 0: an I/O BAR.
    pub const BAR_IO: u32 = 1 << 0;
    /// BAR bits 1..3 of a memory BAR: `0b10` is a 64-bit BAR.
    pub const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
    /// BAR bit 3: prefetchable memory.
    pub const BAR_PREFETCHABLE: u32 = 1 << 3;
}

/// Merges a 1, 2 or 4-byte write at byte `offset` of a dword into `old`.
pub fn merge_dword(old: u32, offset: u8, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, byte) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(usize::from(offset) + i) {
            *slot = *byte;
        }
    }
    u32::from_le_bytes(bytes)
}

/// The mask of the bytes a write of `len` bytes at `offset` covers in a dword.
pub fn write_mask(offset: u8, len: usize) -> u32 {
    merge_dword(0, offset, &[0xFF; 4][..len.min(4)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_merge_into_the_dword() {
        assert_eq!(merge_dword(0x1122_3344, 0, &[0xAA]), 0x1122_33AA);
        assert_eq!(merge_dword(0x1122_3344, 2, &[0xAA, 0xBB]), 0xBBAA_3344);
        assert_eq!(merge_dword(0x1122_3344, 0, &[1, 2, 3, 4]), 0x0403_0201);
        // Bytes past the dword are dropped rather than wrapping.
        assert_eq!(merge_dword(0, 3, &[0xAA, 0xBB]), 0xAA00_0000);
        assert_eq!(write_mask(1, 2), 0x00FF_FF00);
        assert_eq!(write_mask(0, 4), 0xFFFF_FFFF);
    }
}
