//! A fake configuration space for unit tests: functions with registers and BARs that answer
//! sizing writes like hardware.

use super::{Bdf, ConfigSpace};
use std::vec::Vec;

/// One fake function.
#[derive(Clone, Debug)]
pub struct FakeFunction {
    /// Its address.
    pub bdf: Bdf,
    /// The 256 bytes of configuration space as dwords.
    pub regs: [u32; 64],
    /// For each BAR register: the bits software can write (0 = register not a BAR).
    pub bar_write_masks: [u32; 6],
}

impl FakeFunction {
    /// A function with vendor/device/class and header type.
    pub fn new(bdf: Bdf, vendor: u16, device: u16, class: u32, header_type: u8) -> Self {
        let mut regs = [0u32; 64];
        regs[0] = u32::from(device) << 16 | u32::from(vendor);
        regs[2] = class << 8;
        regs[3] = u32::from(header_type) << 16;
        Self {
            bdf,
            regs,
            bar_write_masks: [0; 6],
        }
    }

    /// Makes BAR `index` a `size`-byte BAR with `flags` (low bits) at `base`.
    pub fn bar(mut self, index: usize, size: u64, flags: u32, base: u64) -> Self {
        let low_bits = if flags & 1 == 1 { 0x3 } else { 0xF };
        let mask = !(size - 1);
        self.bar_write_masks[index] = (mask as u32) & !low_bits;
        self.regs[4 + index] = (base as u32 & !low_bits) | flags;
        if flags & 0x6 == 0x4 {
            self.bar_write_masks[index + 1] = (mask >> 32) as u32;
            self.regs[4 + index + 1] = (base >> 32) as u32;
        }
        self
    }

    /// Adds an MSI-X capability with `vectors` table entries at offset 0x70, behind a
    /// power-management capability at 0x40.
    pub fn msix(mut self, vectors: u16) -> Self {
        self.regs[1] |= 1 << 20; // status: capability list
        self.regs[0x34 / 4] = 0x40;
        self.regs[0x40 / 4] = 0x7001; // PM, next 0x70
        self.regs[0x70 / 4] = u32::from(vectors - 1) << 16 | 0x11;
        self
    }
}

/// A bus of fake functions; absent functions read all ones.
#[derive(Debug, Default)]
pub struct FakeConfigSpace {
    /// The functions.
    pub functions: Vec<FakeFunction>,
    /// Every write, in order: (bdf, offset, value).
    pub writes: Vec<(Bdf, u8, u32)>,
}

impl ConfigSpace for FakeConfigSpace {
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
        self.functions
            .iter()
            .find(|f| f.bdf == bdf)
            .map_or(0xFFFF_FFFF, |f| f.regs[usize::from(offset / 4)])
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        self.writes.push((bdf, offset, value));
        let Some(function) = self.functions.iter_mut().find(|f| f.bdf == bdf) else {
            return;
        };
        let index = usize::from(offset / 4);
        match index {
            1 => function.regs[1] = (function.regs[1] & 0xFFFF_0000) | (value & 0xFFFF),
            4..=9 => {
                let mask = function.bar_write_masks[index - 4];
                function.regs[index] = (function.regs[index] & !mask) | (value & mask);
            }
            _ => function.regs[index] = value,
        }
    }
}
