//! A passthrough function's capability list as the guest sees it: which of the device's
//! capabilities stay visible (power management, MSI, PCI Express, MSI-X: what a NIC driver
//! uses), how the chain skips the others, and the emulated MSI capability registers.
//!
//! Hidden capabilities (VPD, vendor-specific, ...) are unlinked from the chain and their
//! registers are not writable by the guest; the extended capabilities (AER, ARI, SR-IOV, ...)
//! are hidden as a whole by the configuration space shadow.

use crate::pci::merge_dword;

/// Capability IDs.
pub mod id {
    /// PCI power management.
    pub const POWER_MANAGEMENT: u8 = 0x01;
    /// Message signalled interrupts.
    pub const MSI: u8 = 0x05;
    /// PCI Express.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Capabilities the guest sees; all others are hidden.
pub const VISIBLE: [u8; 4] = [id::POWER_MANAGEMENT, id::MSI, id::PCI_EXPRESS, id::MSIX];

/// One capability of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of its header in configuration space.
    pub offset: u8,
}

/// The device's capability chain, read from its configuration space (`config`, 256 bytes):
/// in chain order, stopping at a loop or a pointer into the header.
pub fn chain(config: &[u8; 256]) -> Vec<Capability> {
    const STATUS_CAPABILITIES: u8 = 1 << 4;
    let mut found = Vec::new();
    if config[0x06] & STATUS_CAPABILITIES == 0 {
        return found;
    }
    let mut pointer = config[0x34] & 0xFC;
    // 48 capabilities of 4 bytes fill the space after the header: more means a loop.
    while pointer >= 0x40 && found.len() < 48 {
        let at = usize::from(pointer);
        if found.iter().any(|c: &Capability| c.offset == pointer) {
            break;
        }
        found.push(Capability {
            id: config[at],
            offset: pointer,
        });
        pointer = config[at + 1] & 0xFC;
    }
    found
}

/// Bytes of configuration space a visible capability covers, from its header.
pub fn length(capability: Capability, config: &[u8; 256]) -> u8 {
    match capability.id {
        id::POWER_MANAGEMENT => 8,
        id::MSIX => 12,
        // PCI Express capability structure, version 2 (with the device/link/slot 2 registers).
        id::PCI_EXPRESS => 0x3C,
        id::MSI => MsiLayout::of(msi_control(capability, config)).bytes(),
        _ => 4,
    }
}

fn msi_control(capability: Capability, config: &[u8; 256]) -> u16 {
    let at = usize::from(capability.offset) + 2;
    u16::from_le_bytes([config[at], config[at + 1]])
}

/// MSI control register bits.
mod msi_control {
    pub const ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable: log2 of the vectors the function asks for (bits 1..4).
    pub const MMC_SHIFT: u16 = 1;
    /// Multiple Message Enable: log2 of the vectors software grants (bits 4..7).
    pub const MME_SHIFT: u16 = 4;
    pub const MME_MASK: u16 = 0x7 << MME_SHIFT;
    pub const ADDRESS_64: u16 = 1 << 7;
    pub const PER_VECTOR_MASKING: u16 = 1 << 8;
}

/// Where the registers of an MSI capability are, by its 64-bit and per-vector-masking bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiLayout {
    /// 64-bit message address.
    pub address_64: bool,
    /// Per-vector mask and pending bits present.
    pub per_vector_masking: bool,
}

impl MsiLayout {
    fn of(control: u16) -> Self {
        Self {
            address_64: control & msi_control::ADDRESS_64 != 0,
            per_vector_masking: control & msi_control::PER_VECTOR_MASKING != 0,
        }
    }

    fn data_offset(self) -> u8 {
        if self.address_64 { 0x0C } else { 0x08 }
    }

    fn mask_offset(self) -> Option<u8> {
        self.per_vector_masking.then_some(self.data_offset() + 4)
    }

    /// Length of the capability in bytes.
    pub fn bytes(self) -> u8 {
        self.data_offset() + if self.per_vector_masking { 12 } else { 4 }
    }
}

/// An MSI message: what the device writes, and where, to raise a vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (low dword).
    pub address_lo: u32,
    /// Address (high dword).
    pub address_hi: u32,
    /// Data.
    pub data: u32,
}

/// The MSI capability, emulated: the guest programs it here, the VMM turns it into VFIO's
/// MSI enable and KVM routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability.
    pub offset: u8,
    layout: MsiLayout,
    /// Control register: capability bits from the device, enable and MME from the guest.
    control: u16,
    address_lo: u32,
    address_hi: u32,
    data: u16,
    mask: u32,
}

impl MsiCapability {
    /// The capability at `capability`, in its reset state (disabled, all vectors unmasked).
    pub fn new(capability: Capability, config: &[u8; 256]) -> Self {
        let control = msi_control(capability, config);
        Self {
            offset: capability.offset,
            layout: MsiLayout::of(control),
            control: control & !(msi_control::ENABLE | msi_control::MME_MASK),
            address_lo: 0,
            address_hi: 0,
            data: 0,
            mask: 0,
        }
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        self.control &= !(msi_control::ENABLE | msi_control::MME_MASK);
        (self.address_lo, self.address_hi, self.data, self.mask) = (0, 0, 0, 0);
    }

    /// Whether `register` (a dword offset) is one of this capability's.
    pub fn covers(&self, register: u16) -> bool {
        let start = u16::from(self.offset);
        register >= start && register < start + u16::from(self.layout.bytes())
    }

    /// Reads the dword at `register` (inside the capability); `header` is the id and next
    /// pointer the chain gives it.
    pub fn read(&self, register: u16, header: u16) -> u32 {
        let relative = (register - u16::from(self.offset)) as u8;
        match relative {
            0 => u32::from(self.control) << 16 | u32::from(header),
            4 => self.address_lo,
            r if r == self.layout.data_offset() => u32::from(self.data),
            8 if self.layout.address_64 => self.address_hi,
            r if Some(r) == self.layout.mask_offset() => self.mask,
            // Pending bits: the VMM does not track them (KVM delivers or the eventfd holds
            // the interrupt); they read as none pending.
            _ => 0,
        }
    }

    /// A guest write; returns whether the vectors' state may have changed.
    pub fn write(&mut self, register: u16, offset: u8, data: &[u8]) -> bool {
        let relative = (register - u16::from(self.offset)) as u8;
        let old = self.read(register, 0);
        let new = merge_dword(old, offset, data);
        match relative {
            0 => {
                let writable = msi_control::ENABLE | msi_control::MME_MASK;
                let control = (new >> 16) as u16;
                self.control = (self.control & !writable) | (control & writable);
            }
            4 => self.address_lo = new & !0x3,
            r if r == self.layout.data_offset() => self.data = new as u16,
            8 if self.layout.address_64 => self.address_hi = new,
            r if Some(r) == self.layout.mask_offset() => self.mask = new,
            _ => return false,
        }
        new != old
    }

    /// Whether the guest has enabled MSI.
    pub fn enabled(&self) -> bool {
        self.control & msi_control::ENABLE != 0
    }

    /// Vectors the guest enabled: `2^MME`, capped by what the function is capable of.
    pub fn vectors(&self) -> u32 {
        let capable = (self.control >> msi_control::MMC_SHIFT) & 0x7;
        let enabled = (self.control & msi_control::MME_MASK) >> msi_control::MME_SHIFT;
        1 << enabled.min(capable)
    }

    /// Vectors the function may ask for: `2^MMC`.
    pub fn capable_vectors(&self) -> u32 {
        1 << ((self.control >> msi_control::MMC_SHIFT) & 0x7)
    }

    /// The message of `vector` when it is enabled and unmasked; `None` otherwise.
    pub fn message(&self, vector: u32) -> Option<MsiMessage> {
        let masked = self.layout.per_vector_masking && self.mask & (1 << vector) != 0;
        if !self.enabled() || vector >= self.vectors() || masked {
            return None;
        }
        // With several vectors, the function puts the vector number in the data's low bits.
        let data = (u32::from(self.data) & !(self.vectors() - 1)) | vector;
        Some(MsiMessage {
            address_lo: self.address_lo,
            address_hi: self.address_hi,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config space with a status capability bit and the given `(offset, id, extra bytes)`
    /// capabilities chained in that order.
    pub fn config_with(capabilities: &[(u8, u8, &[u8])]) -> [u8; 256] {
        let mut config = [0u8; 256];
        config[0x06] = 1 << 4;
        config[0x34] = capabilities.first().map_or(0, |c| c.0);
        for (index, (offset, id, extra)) in capabilities.iter().enumerate() {
            let at = usize::from(*offset);
            config[at] = *id;
            config[at + 1] = capabilities.get(index + 1).map_or(0, |c| c.0);
            config[at + 2..at + 2 + extra.len()].copy_from_slice(extra);
        }
        config
    }

    #[test]
    fn the_chain_is_read_in_order_and_loops_end_it() {
        let config = config_with(&[(0x50, 0x01, &[]), (0x40, 0x11, &[]), (0x70, 0x03, &[])]);
        let ids: Vec<(u8, u8)> = chain(&config).iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(ids, [(0x50, 0x01), (0x40, 0x11), (0x70, 0x03)]);
        let mut looped = config;
        looped[0x71] = 0x50;
        assert_eq!(chain(&looped).len(), 3);
        let mut no_list = config;
        no_list[0x06] = 0;
        assert!(chain(&no_list).is_empty());
    }

    #[test]
    fn msi_capability_lengths_follow_its_control_bits() {
        // 64-bit, per-vector masking: 24 bytes; 32-bit, no masking: 12.
        let config = config_with(&[(0x50, 0x05, &[0x80, 0x01]), (0x70, 0x05, &[0, 0])]);
        let caps = chain(&config);
        assert_eq!(length(caps[0], &config), 24);
        assert_eq!(length(caps[1], &config), 12);
    }

    #[test]
    fn msi_registers_are_emulated_and_vectors_follow_mme_and_masks() {
        // 64-bit, per-vector masking, 4 vectors capable (MMC = 2).
        let config = config_with(&[(0x50, 0x05, &[0x84, 0x01])]);
        let mut msi = MsiCapability::new(chain(&config)[0], &config);
        assert_eq!(msi.read(0x50, 0x0005) & 0xFFFF, 0x0005);
        assert!(!msi.enabled());
        assert_eq!(msi.capable_vectors(), 4);
        assert!(msi.write(0x54, 0, &0xFEE0_1000u32.to_le_bytes()));
        msi.write(0x58, 0, &0u32.to_le_bytes());
        msi.write(0x5C, 0, &0x4041u16.to_le_bytes());
        assert_eq!(msi.message(0), None, "not enabled yet");
        // Enable with MME = 2 (4 vectors), writing the control word alone.
        assert!(msi.write(0x50, 2, &(0x0184u16 | 1 | (2 << 4)).to_le_bytes()));
        assert!(msi.enabled());
        assert_eq!(msi.vectors(), 4);
        assert_eq!(
            msi.message(3),
            Some(MsiMessage {
                address_lo: 0xFEE0_1000,
                address_hi: 0,
                data: 0x4043
            })
        );
        assert_eq!(msi.message(4), None);
        // The capability bits are not the guest's to change.
        assert_eq!((msi.read(0x50, 0) >> 16) & 0x1FE, 0x0184 | (2 << 4));
        msi.write(0x60, 0, &0b10u32.to_le_bytes());
        assert_eq!(msi.message(1), None, "masked");
        assert!(msi.message(0).is_some());
        assert_eq!(msi.read(0x60, 0), 0b10);
        assert_eq!(msi.read(0x64, 0), 0, "pending bits read as none");
        msi.reset();
        assert!(!msi.enabled() && msi.read(0x60, 0) == 0);
    }

    #[test]
    fn mme_beyond_what_the_function_is_capable_of_is_capped() {
        // 32-bit, 1 vector capable.
        let config = config_with(&[(0x50, 0x05, &[0x00, 0x00])]);
        let mut msi = MsiCapability::new(chain(&config)[0], &config);
        msi.write(0x50, 2, &(1u16 | (5 << 4)).to_le_bytes());
        assert_eq!(msi.vectors(), 1);
        msi.write(0x58, 0, &0x31u32.to_le_bytes());
        assert_eq!(msi.read(0x58, 0), 0x31, "data at 0x08 when 32-bit");
        assert_eq!(msi.message(0).map(|m| m.data), Some(0x31));
    }
}
