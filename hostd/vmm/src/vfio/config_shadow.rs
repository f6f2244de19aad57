//! The configuration space a passthrough function shows the guest: a shadow in front of the
//! device's own (read through VFIO).
//!
//! | registers | guest sees | guest writes |
//! |---|---|---|
//! | IDs, class, revision, subsystem, status | the device's | status (write-1-to-clear) to the device |
//! | command | the device's | to the device; memory decoding also (un)maps the BARs |
//! | header type | the device's, single-function | cache line size and latency timer to the device |
//! | BARs | the VMM's addresses, the device's sizes and flags; I/O BARs hidden | emulated (sizing works) |
//! | expansion ROM, CardBus CIS | 0 (hidden) | dropped |
//! | capabilities pointer, chain | PM, MSI, PCIe, MSI-X only | - |
//! | MSI and MSI-X capabilities | emulated | emulated: drive VFIO and KVM interrupts |
//! | PM and PCIe capabilities | the device's | to the device (VFIO filters them further) |
//! | interrupt line / pin | the line the guest wrote / 0 (no INTx: VFs have none) | line emulated |
//! | other bytes of 0x40..0x100 | the device's | dropped |
//! | extended space (0x100..) | 0: no extended capabilities (AER, ARI, SR-IOV hidden) | dropped |

use super::capabilities::{self, Capability, MsiCapability, id};
use super::msix::Msix;
use crate::pci::{merge_dword, regs};

/// The device's configuration space, as VFIO gives it.
pub trait DeviceConfig {
    /// Reads the dword at `register`.
    fn read(&self, register: u16) -> u32;
    /// Writes `data` at byte `offset` of the dword at `register`.
    fn write(&self, register: u16, offset: u8, data: &[u8]);
}

/// A memory BAR of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// Size in bytes (a power of two, at least 16).
    pub size: u64,
    /// A 64-bit BAR (it also takes the next BAR register).
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

impl BarSpec {
    fn flags(&self) -> u32 {
        let kind = if self.is_64 { regs::BAR_MEM_TYPE_64 } else { 0 };
        let prefetch = if self.prefetchable {
            regs::BAR_PREFETCHABLE
        } else {
            0
        };
        kind | prefetch
    }

    fn mask(&self) -> u64 {
        !(self.size.max(16) - 1)
    }
}

/// What a BAR register holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    /// Not implemented (or an I/O BAR, hidden): reads 0.
    Unused,
    /// A memory BAR, or the low half of a 64-bit one.
    Bar {
        spec: BarSpec,
        address: u64,
        assigned: u64,
    },
    /// The upper half of the 64-bit BAR in the register before.
    Upper,
}

/// What a configuration write asks the VMM to do next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// BAR addresses or memory decoding changed: the BAR mappings must follow.
    pub mappings: bool,
    /// MSI or MSI-X state changed: the interrupt routes must follow.
    pub interrupts: bool,
}

/// The shadow configuration space of one passthrough function.
#[derive(Clone, Debug)]
pub struct ConfigShadow {
    bars: [BarSlot; regs::BAR_COUNT],
    command: u16,
    interrupt_line: u8,
    /// Visible capabilities, in chain order, with their lengths.
    visible: Vec<(Capability, u8)>,
    msi: Option<MsiCapability>,
    msix: Option<Msix>,
}

impl ConfigShadow {
    /// The shadow of a device whose configuration space is `device` (read at open), with
    /// memory BARs `bars` assigned the guest addresses `addresses`.
    pub fn new(
        device: &[u8; 256],
        bars: [Option<BarSpec>; regs::BAR_COUNT],
        addresses: [Option<u64>; regs::BAR_COUNT],
    ) -> Self {
        let mut slots = [BarSlot::Unused; regs::BAR_COUNT];
        for index in 0..regs::BAR_COUNT {
            if slots[index] == BarSlot::Upper {
                continue;
            }
            if let (Some(spec), Some(address)) = (bars[index], addresses[index]) {
                slots[index] = BarSlot::Bar {
                    spec,
                    address,
                    assigned: address,
                };
                if spec.is_64 && index + 1 < regs::BAR_COUNT {
                    slots[index + 1] = BarSlot::Upper;
                }
            }
        }
        let chain = capabilities::chain(device);
        let visible: Vec<(Capability, u8)> = chain
            .iter()
            .filter(|c| capabilities::VISIBLE.contains(&c.id))
            .map(|&c| (c, capabilities::length(c, device)))
            .collect();
        let find = |wanted| {
            visible
                .iter()
                .find(|(c, _)| c.id == wanted)
                .map(|(c, _)| *c)
        };
        Self {
            bars: slots,
            command: 0,
            interrupt_line: 0,
            msi: find(id::MSI).map(|c| MsiCapability::new(c, device)),
            msix: find(id::MSIX).map(|c| Msix::new(c, device)),
            visible,
        }
    }

    /// Back to the state at open: BARs at their assigned addresses, decoding off, interrupts
    /// disabled. (The device itself is reset through VFIO.)
    pub fn reset(&mut self) {
        for slot in &mut self.bars {
            if let BarSlot::Bar {
                address, assigned, ..
            } = slot
            {
                *address = *assigned;
            }
        }
        self.command = 0;
        self.interrupt_line = 0;
        if let Some(msi) = &mut self.msi {
            msi.reset();
        }
        if let Some(msix) = &mut self.msix {
            msix.reset();
        }
    }

    /// Whether the guest has memory decoding on.
    pub fn memory_enabled(&self) -> bool {
        self.command & regs::COMMAND_MEMORY != 0
    }

    /// The guest address and size of memory BAR `index`, as the guest programmed it.
    pub fn bar(&self, index: usize) -> Option<(u64, u64)> {
        match self.bars.get(index)? {
            BarSlot::Bar { spec, address, .. } => Some((*address & spec.mask(), spec.size)),
            _ => None,
        }
    }

    /// The MSI capability, if the device has one.
    pub fn msi(&self) -> Option<&MsiCapability> {
        self.msi.as_ref()
    }

    /// The MSI-X capability and table, if the device has them.
    pub fn msix(&self) -> Option<&Msix> {
        self.msix.as_ref()
    }

    /// The MSI-X table, for the guest's accesses to it.
    pub fn msix_mut(&mut self) -> Option<&mut Msix> {
        self.msix.as_mut()
    }

    /// The header (id, next pointer) the guest sees for visible capability `index`.
    fn header(&self, index: usize) -> u16 {
        let next = self.visible.get(index + 1).map_or(0, |(c, _)| c.offset);
        u16::from(next) << 8 | u16::from(self.visible[index].0.id)
    }

    fn visible_at(&self, register: u16) -> Option<usize> {
        self.visible.iter().position(|(c, len)| {
            let start = u16::from(c.offset);
            register >= start & !3 && register < start + u16::from(*len)
        })
    }

    fn read_bar(&self, index: usize) -> u32 {
        match self.bars[index] {
            BarSlot::Unused => 0,
            BarSlot::Bar { spec, address, .. } => {
                (address & spec.mask()) as u32 & 0xFFFF_FFF0 | spec.flags()
            }
            BarSlot::Upper => match self.bars[index - 1] {
                BarSlot::Bar { spec, address, .. } => ((address & spec.mask()) >> 32) as u32,
                _ => 0,
            },
        }
    }

    fn write_bar(&mut self, index: usize, value: u32) {
        match self.bars[index] {
            BarSlot::Unused => {}
            BarSlot::Bar {
                ref mut address, ..
            } => *address = (*address & !0xFFFF_FFFF) | u64::from(value & 0xFFFF_FFF0),
            BarSlot::Upper => {
                if let BarSlot::Bar {
                    ref mut address, ..
                } = self.bars[index - 1]
                {
                    *address = (*address & 0xFFFF_FFFF) | u64::from(value) << 32;
                }
            }
        }
    }

    /// Reads the dword at `register` as the guest sees it.
    pub fn read(&self, register: u16, device: &dyn DeviceConfig) -> u32 {
        const MULTI_FUNCTION: u32 = 0x80 << 16;
        const STATUS_CAPABILITIES: u32 = (regs::STATUS_CAPABILITIES as u32) << 16;
        match register {
            regs::VENDOR_DEVICE | regs::CLASS_REVISION | regs::SUBSYSTEM => device.read(register),
            regs::COMMAND_STATUS => {
                let value = device.read(register) & !STATUS_CAPABILITIES;
                if self.visible.is_empty() {
                    value
                } else {
                    value | STATUS_CAPABILITIES
                }
            }
            regs::HEADER_TYPE_DWORD => device.read(register) & !MULTI_FUNCTION,
            r if (regs::BAR0..regs::BAR0 + 4 * regs::BAR_COUNT as u16).contains(&r) => {
                self.read_bar(usize::from((r - regs::BAR0) / 4))
            }
            regs::CAPABILITIES_POINTER => self.visible.first().map_or(0, |(c, _)| c.offset.into()),
            regs::INTERRUPT_LINE_PIN => u32::from(self.interrupt_line),
            r if !(0x40..regs::STANDARD_SPACE_END).contains(&r) => 0,
            r => self.read_capability_area(r, device),
        }
    }

    fn read_capability_area(&self, register: u16, device: &dyn DeviceConfig) -> u32 {
        let Some(index) = self.visible_at(register) else {
            return device.read(register);
        };
        let header = self.header(index);
        if let Some(msix) = self.msix.as_ref().filter(|m| m.covers(register)) {
            return msix.read_capability(register, header, device.read(register));
        }
        if let Some(msi) = self.msi.as_ref().filter(|m| m.covers(register)) {
            return msi.read(register, header);
        }
        let value = device.read(register);
        if register == u16::from(self.visible[index].0.offset) {
            (value & 0xFFFF_0000) | u32::from(header)
        } else {
            value
        }
    }

    /// A guest write of `data` at byte `offset` of the dword at `register`.
    pub fn write(
        &mut self,
        register: u16,
        offset: u8,
        data: &[u8],
        device: &dyn DeviceConfig,
    ) -> WriteEffect {
        let mut effect = WriteEffect::default();
        match register {
            regs::COMMAND_STATUS => {
                device.write(register, offset, data);
                let command = merge_dword(u32::from(self.command), offset, data) as u16;
                effect.mappings = (command ^ self.command) & regs::COMMAND_MEMORY != 0;
                self.command = command;
            }
            regs::HEADER_TYPE_DWORD if offset < 2 => {
                // Cache line size and latency timer; not the header type or BIST.
                let len = data.len().min(usize::from(2 - offset));
                device.write(register, offset, &data[..len]);
            }
            r if (regs::BAR0..regs::BAR0 + 4 * regs::BAR_COUNT as u16).contains(&r) => {
                let index = usize::from((r - regs::BAR0) / 4);
                let value = merge_dword(self.read_bar(index), offset, data);
                self.write_bar(index, value);
                effect.mappings = true;
            }
            regs::INTERRUPT_LINE_PIN if offset == 0 => self.interrupt_line = data[0],
            r if (0x40..regs::STANDARD_SPACE_END).contains(&r) => {
                effect.interrupts = self.write_capability_area(r, offset, data, device);
            }
            _ => {}
        }
        effect
    }

    /// A write in the capability area; returns whether the interrupt state may have changed.
    fn write_capability_area(
        &mut self,
        register: u16,
        offset: u8,
        data: &[u8],
        device: &dyn DeviceConfig,
    ) -> bool {
        let Some(index) = self.visible_at(register) else {
            return false; // hidden capabilities and device-specific registers
        };
        if self.msix.as_ref().is_some_and(|m| m.covers(register)) {
            let dword = merge_dword(self.read(register, device), offset, data);
            return self
                .msix
                .as_mut()
                .is_some_and(|m| m.write_capability(register, dword));
        }
        if let Some(msi) = self.msi.as_mut().filter(|m| m.covers(register)) {
            return msi.write(register, offset, data);
        }
        if register != u16::from(self.visible[index].0.offset) {
            device.write(register, offset, data);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A device configuration space in memory that records the writes reaching it.
    struct FakeDevice {
        config: [u8; 256],
        writes: RefCell<Vec<(u16, u8, Vec<u8>)>>,
    }

    impl DeviceConfig for FakeDevice {
        fn read(&self, register: u16) -> u32 {
            let at = usize::from(register);
            self.config
                .get(at..at + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn write(&self, register: u16, offset: u8, data: &[u8]) {
            self.writes
                .borrow_mut()
                .push((register, offset, data.to_vec()));
        }
    }

    /// An igb VF as VFIO shows it: 8086:10ca, BAR0 and BAR3 16 KiB (64-bit, as on 82576
    /// VFs), capabilities MSI-X at 0x70 -> PCIe at 0xa0 -> VPD (hidden) at 0xe0.
    fn igbvf() -> (FakeDevice, ConfigShadow) {
        let mut config = [0u8; 256];
        config[0..4].copy_from_slice(&0x10ca_8086u32.to_le_bytes());
        config[0x06] = 0x10;
        config[0x08..0x0C].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        config[0x0E] = 0x80; // a multi-function bit the guest must not see
        config[0x34] = 0x70;
        config[0x70..0x74].copy_from_slice(&0x0002_a011u32.to_le_bytes());
        config[0x74..0x78].copy_from_slice(&3u32.to_le_bytes());
        config[0x78..0x7C].copy_from_slice(&(0x2000u32 | 3).to_le_bytes());
        config[0xa0..0xa4].copy_from_slice(&0x0002_e010u32.to_le_bytes());
        config[0xa4..0xa8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        config[0xe0..0xe4].copy_from_slice(&0x0000_0003u32.to_le_bytes());
        let bar = BarSpec {
            size: 16 << 10,
            is_64: true,
            prefetchable: false,
        };
        let mut bars = [None; 6];
        bars[0] = Some(bar);
        bars[3] = Some(bar);
        let mut addresses = [None; 6];
        addresses[0] = Some(0xC000_0000);
        addresses[3] = Some(0xC000_4000);
        let shadow = ConfigShadow::new(&config, bars, addresses);
        let device = FakeDevice {
            config,
            writes: RefCell::new(Vec::new()),
        };
        (device, shadow)
    }

    #[test]
    fn ids_come_from_the_device_and_the_header_is_single_function() {
        let (device, shadow) = igbvf();
        assert_eq!(shadow.read(0x00, &device), 0x10ca_8086);
        assert_eq!(shadow.read(0x08, &device) >> 8, 0x02_0000);
        assert_eq!(shadow.read(0x0C, &device), 0, "multi-function bit cleared");
        assert_eq!(shadow.read(0x30, &device), 0, "no expansion ROM");
        assert_eq!(shadow.read(0x3C, &device) >> 8, 0, "no INTx pin");
        assert_eq!(shadow.read(0x100, &device), 0, "no extended capabilities");
    }

    #[test]
    fn bars_hold_the_vmm_addresses_and_answer_sizing() {
        let (device, mut shadow) = igbvf();
        assert_eq!(
            shadow.read(0x10, &device),
            0xC000_0004,
            "64-bit, at its address"
        );
        assert_eq!(shadow.read(0x14, &device), 0);
        assert_eq!(shadow.read(0x1C, &device), 0xC000_4004);
        assert_eq!(shadow.read(0x18, &device), 0, "BAR2 not implemented");
        // Sizing: all ones, read back the mask, restore.
        let effect = shadow.write(0x10, 0, &[0xFF; 4], &device);
        assert!(effect.mappings);
        assert_eq!(shadow.read(0x10, &device), 0xFFFF_C004);
        shadow.write(0x14, 0, &[0xFF; 4], &device);
        assert_eq!(shadow.read(0x14, &device), 0xFFFF_FFFF);
        shadow.write(0x18, 0, &[0xFF; 4], &device);
        assert_eq!(
            shadow.read(0x18, &device),
            0,
            "unimplemented BARs size as absent"
        );
        shadow.write(0x10, 0, &0xC000_0000u32.to_le_bytes(), &device);
        shadow.write(0x14, 0, &[0; 4], &device);
        assert_eq!(shadow.bar(0), Some((0xC000_0000, 16 << 10)));
        // The guest moves BAR3; sub-size bits are ignored.
        shadow.write(0x1C, 0, &0xC801_2345u32.to_le_bytes(), &device);
        assert_eq!(shadow.bar(3), Some((0xC801_0000, 16 << 10)));
        assert!(
            device.writes.borrow().is_empty(),
            "BARs never reach the device"
        );
        shadow.reset();
        assert_eq!(shadow.bar(3), Some((0xC000_4000, 16 << 10)));
    }

    #[test]
    fn the_command_register_reaches_the_device_and_memory_decoding_is_tracked() {
        let (device, mut shadow) = igbvf();
        assert!(!shadow.memory_enabled());
        let effect = shadow.write(0x04, 0, &[0x06, 0x00], &device);
        assert_eq!(
            effect,
            WriteEffect {
                mappings: true,
                interrupts: false
            }
        );
        assert!(shadow.memory_enabled());
        assert_eq!(device.writes.borrow()[0], (0x04, 0, vec![0x06, 0x00]));
        // Bus master alone does not touch the mappings.
        let effect = shadow.write(0x04, 0, &[0x02, 0x00], &device);
        assert!(!effect.mappings);
        assert_eq!(
            shadow.read(0x04, &device) >> 16 & 0x10,
            0x10,
            "capability list"
        );
        // The header type byte and BIST are not forwarded.
        shadow.write(0x0C, 0, &[0x10, 0x40, 0x80, 0xFF], &device);
        assert_eq!(
            device.writes.borrow().last(),
            Some(&(0x0C, 0, vec![0x10, 0x40]))
        );
    }

    #[test]
    fn the_capability_chain_skips_hidden_capabilities() {
        let (device, shadow) = igbvf();
        assert_eq!(shadow.read(0x34, &device), 0x70);
        let msix = shadow.read(0x70, &device);
        assert_eq!(msix & 0xFFFF, 0xa011, "MSI-X, next PCIe");
        assert_eq!(msix >> 16, 0x0002, "3 vectors, disabled");
        let pcie = shadow.read(0xa0, &device);
        assert_eq!(pcie & 0xFFFF, 0x0010, "PCIe is the last: VPD is hidden");
        assert_eq!(
            pcie >> 16,
            0x0002,
            "PCIe capabilities register from the device"
        );
        assert_eq!(shadow.read(0xa4, &device), 0x1234_5678);
    }

    #[test]
    fn hidden_and_unknown_registers_are_not_writable() {
        let (device, mut shadow) = igbvf();
        shadow.write(0xe0, 0, &[0xAA; 4], &device); // VPD, hidden
        shadow.write(0x50, 0, &[0xAA; 4], &device); // no capability there
        shadow.write(0x30, 0, &[0xFF; 4], &device); // expansion ROM
        shadow.write(0x104, 0, &[0xFF; 4], &device); // extended space
        shadow.write(0xa0, 0, &[0x99, 0x99], &device); // a visible capability's header
        assert!(device.writes.borrow().is_empty(), "{:?}", device.writes);
        shadow.write(0xa8, 0, &[0x20, 0x00], &device); // PCIe device control
        assert_eq!(device.writes.borrow()[0], (0xa8, 0, vec![0x20, 0x00]));
    }

    #[test]
    fn msix_enable_is_emulated_and_reported() {
        let (device, mut shadow) = igbvf();
        let effect = shadow.write(0x70, 2, &0xC000u16.to_le_bytes(), &device);
        assert!(effect.interrupts);
        let msix = shadow.msix().unwrap();
        assert!(msix.enabled() && msix.function_masked());
        assert_eq!(shadow.read(0x70, &device) >> 16, 0xC002);
        assert!(
            device.writes.borrow().is_empty(),
            "VFIO enables MSI-X, not config writes"
        );
        // A write that changes nothing reports nothing.
        let effect = shadow.write(0x70, 2, &0xC000u16.to_le_bytes(), &device);
        assert!(!effect.interrupts);
        shadow.reset();
        assert!(!shadow.msix().unwrap().enabled());
    }
}
