//! The guest's PCI segment: bus 0, its 32 slots (single-function devices; the host bridge in
//! slot 0), and the dispatch of configuration cycles (mechanism 1 and ECAM) and trapped BAR
//! accesses to the function that owns them.

use std::sync::{Arc, Mutex};

use super::function::{PciAddress, SharedFunction};
use super::host_bridge::HostBridge;
use crate::devices::lock;
use crate::devices::pci::{ConfigAddress, PciConfigSpace};

/// Slots on bus 0.
pub const SLOTS: u8 = 32;

/// Errors placing a function on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// The slot asked for is outside 1..=31 (slot 0 is the host bridge's).
    #[error("PCI slot {slot} is not usable: choose a slot from 1 to 31 (0 is the host bridge)")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: u8,
    },
    /// The slot asked for is already taken.
    #[error("PCI slot {slot} is already taken by another device: choose another slot")]
    SlotTaken {
        /// The slot asked for.
        slot: u8,
    },
    /// All 31 slots are taken.
    #[error("no free PCI slot: a VM has at most 31 PCI devices")]
    BusFull,
}

/// Bus 0: the host bridge and the functions the VMM adds.
pub struct PciSegment {
    slots: [Option<SharedFunction>; SLOTS as usize],
}

impl std::fmt::Debug for PciSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_some())
            .collect();
        f.debug_struct("PciSegment").field("slots", &used).finish()
    }
}

impl Default for PciSegment {
    fn default() -> Self {
        Self::new()
    }
}

impl PciSegment {
    /// A bus with the host bridge at `00:00.0`.
    pub fn new() -> Self {
        let mut slots: [Option<SharedFunction>; SLOTS as usize] = Default::default();
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())));
        Self { slots }
    }

    /// The slot a new function would get: `requested`, or the lowest free one.
    pub fn free_slot(&self, requested: Option<u8>) -> Result<u8, PciError> {
        match requested {
            Some(slot) if slot == 0 || slot >= SLOTS => Err(PciError::SlotOutOfRange { slot }),
            Some(slot) if self.slots[usize::from(slot)].is_some() => {
                Err(PciError::SlotTaken { slot })
            }
            Some(slot) => Ok(slot),
            None => (1..SLOTS)
                .find(|&slot| self.slots[usize::from(slot)].is_none())
                .ok_or(PciError::BusFull),
        }
    }

    /// Puts `function` in `requested` slot (or the lowest free one) and returns its address.
    pub fn add(
        &mut self,
        function: SharedFunction,
        requested: Option<u8>,
    ) -> Result<PciAddress, PciError> {
        let slot = self.free_slot(requested)?;
        self.slots[usize::from(slot)] = Some(function);
        Ok(PciAddress {
            bus: 0,
            device: slot,
            function: 0,
        })
    }

    fn function_at(&self, address: ConfigAddress) -> Option<&SharedFunction> {
        if address.bus != 0 || address.function != 0 {
            return None;
        }
        self.slots.get(usize::from(address.device))?.as_ref()
    }

    /// Reads a configuration dword; `None` when no function answers.
    pub fn read_config(&self, address: ConfigAddress) -> Option<u32> {
        let function = self.function_at(address)?;
        Some(lock(function).read_config(address.register))
    }

    /// Writes part of a configuration dword; ignored when no function answers.
    pub fn write_config(&self, address: ConfigAddress, offset: u8, data: &[u8]) {
        if let Some(function) = self.function_at(address) {
            lock(function).write_config(address.register, offset, data);
        }
    }

    /// A guest read of BAR-window address `addr`; false when no function claims it.
    pub fn bar_read(&self, addr: u64, data: &mut [u8]) -> bool {
        for function in self.slots.iter().flatten() {
            let mut function = lock(function);
            if let Some((bar, offset)) = function.trapped_bar_at(addr, data.len()) {
                function.bar_read(bar, offset, data);
                return true;
            }
        }
        false
    }

    /// A guest write to BAR-window address `addr`; false when no function claims it.
    pub fn bar_write(&self, addr: u64, data: &[u8]) -> bool {
        for function in self.slots.iter().flatten() {
            let mut function = lock(function);
            if let Some((bar, offset)) = function.trapped_bar_at(addr, data.len()) {
                function.bar_write(bar, offset, data);
                return true;
            }
        }
        false
    }

    /// Resets every function (VM reset).
    pub fn reset(&self) {
        for function in self.slots.iter().flatten() {
            lock(function).reset();
        }
    }
}

/// The segment, shared by the mechanism-1 ports, the ECAM window and the BAR window.
#[derive(Clone, Debug)]
pub struct SharedSegment(pub Arc<Mutex<PciSegment>>);

impl PciConfigSpace for SharedSegment {
    fn read_dword(&mut self, address: ConfigAddress) -> Option<u32> {
        lock(&self.0).read_config(address)
    }

    fn write(&mut self, address: ConfigAddress, offset: u8, data: &[u8]) {
        lock(&self.0).write_config(address, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{PciFunction, merge_dword};

    /// A function with 64 bytes of plain read-write registers and one trapped page at
    /// `0xC000_1000`.
    #[derive(Default)]
    struct Scratch {
        regs: [u32; 16],
        last_bar_write: Option<(usize, u64, Vec<u8>)>,
    }

    impl PciFunction for Scratch {
        fn read_config(&mut self, register: u16) -> u32 {
            self.regs
                .get(usize::from(register / 4))
                .copied()
                .unwrap_or(0)
        }
        fn write_config(&mut self, register: u16, offset: u8, data: &[u8]) {
            if let Some(reg) = self.regs.get_mut(usize::from(register / 4)) {
                *reg = merge_dword(*reg, offset, data);
            }
        }
        fn trapped_bar_at(&self, addr: u64, len: usize) -> Option<(usize, u64)> {
            (addr >= 0xC000_1000 && addr + len as u64 <= 0xC000_2000)
                .then(|| (2, addr - 0xC000_1000))
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_bar_write = Some((bar, offset, data.to_vec()));
        }
    }

    fn at(device: u8, register: u16) -> ConfigAddress {
        ConfigAddress {
            bus: 0,
            device,
            function: 0,
            register,
        }
    }

    #[test]
    fn slots_are_allocated_from_1_and_requests_are_checked() {
        let mut segment = PciSegment::new();
        let scratch = || -> SharedFunction { Arc::new(Mutex::new(Scratch::default())) };
        assert_eq!(segment.add(scratch(), None).unwrap().device, 1);
        assert_eq!(segment.add(scratch(), Some(5)).unwrap().device, 5);
        assert_eq!(segment.add(scratch(), None).unwrap().device, 2);
        assert_eq!(
            segment.add(scratch(), Some(5)),
            Err(PciError::SlotTaken { slot: 5 })
        );
        assert_eq!(
            segment.add(scratch(), Some(0)),
            Err(PciError::SlotOutOfRange { slot: 0 })
        );
        assert_eq!(
            segment.add(scratch(), Some(32)),
            Err(PciError::SlotOutOfRange { slot: 32 })
        );
        while segment.add(scratch(), None).is_ok() {}
        assert_eq!(segment.free_slot(None), Err(PciError::BusFull));
    }

    #[test]
    fn config_cycles_reach_the_function_in_the_slot_and_only_function_0() {
        let mut segment = PciSegment::new();
        segment
            .add(Arc::new(Mutex::new(Scratch::default())), Some(3))
            .unwrap();
        assert_eq!(
            segment.read_config(at(0, 0)),
            Some(0x0008_1b36),
            "host bridge"
        );
        segment.write_config(at(3, 0x10), 1, &[0xAB]);
        assert_eq!(segment.read_config(at(3, 0x10)), Some(0xAB00));
        assert_eq!(segment.read_config(at(4, 0)), None, "empty slot");
        let mut other_function = at(3, 0);
        other_function.function = 1;
        assert_eq!(segment.read_config(other_function), None);
        let mut other_bus = at(3, 0);
        other_bus.bus = 1;
        assert_eq!(segment.read_config(other_bus), None);
    }

    #[test]
    fn linux_type_1_check_finds_the_address_register_and_the_host_bridge() {
        use crate::devices::BusDevice;
        use crate::devices::pci::PciConfigIo;
        // arch/x86/pci/direct.c, pci_check_type1: a byte to 0xCFB, then 0x80000000 to 0xCF8
        // must read back; pci_sanity_check then wants a host bridge's class on bus 0.
        let mut io = PciConfigIo::new(SharedSegment(Arc::new(Mutex::new(PciSegment::new()))));
        io.write(3, &[0x01]);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut dword = [0u8; 4];
        io.read(0, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x8000_0000);
        io.write(0, &(0x8000_0000u32 | 0x0A).to_le_bytes());
        let mut class = [0u8; 2];
        io.read(6, &mut class); // 0xCFE: bytes 2..4 of dword 0x08
        assert_eq!(u16::from_le_bytes(class), 0x0600, "PCI_CLASS_BRIDGE_HOST");
    }

    #[test]
    fn trapped_bar_accesses_reach_the_function_that_claims_them() {
        let mut segment = PciSegment::new();
        let scratch = Arc::new(Mutex::new(Scratch::default()));
        segment.add(scratch.clone(), None).unwrap();
        let mut data = [0u8; 4];
        assert!(segment.bar_read(0xC000_1010, &mut data));
        assert_eq!(data, [0x10; 4]);
        assert!(segment.bar_write(0xC000_1FFC, &[1, 2, 3, 4]));
        assert_eq!(
            lock(&scratch).last_bar_write,
            Some((2, 0xFFC, vec![1, 2, 3, 4]))
        );
        assert!(!segment.bar_read(0xC000_2000, &mut data));
        assert!(!segment.bar_write(0xC000_0FFC, &[0; 4]));
    }
}
