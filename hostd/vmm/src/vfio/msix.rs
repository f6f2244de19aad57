//! MSI-X, emulated: the capability's enable and function-mask bits, and the vector table the
//! guest programs. The VMM must see every table write (to route the vector's message through
//! KVM), so the table's pages are never mapped into the guest, whatever VFIO allows; the rest
//! of the BAR is. The pending-bit array (PBA) is read from the device.

use super::capabilities::{Capability, MsiMessage};

/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// Message control bits.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_TABLE_SIZE: u16 = 0x7FF;

/// Where the table or the PBA is: a BAR and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRange {
    /// BAR index (BIR).
    pub bar: usize,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl BarRange {
    /// Whether an access of `len` bytes at `offset` of `bar` falls inside.
    pub fn contains(&self, bar: usize, offset: u64, len: u64) -> bool {
        bar == self.bar && offset >= self.offset && offset + len <= self.offset + self.len
    }
}

/// The MSI-X capability and table of a passthrough function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msix {
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Vectors in the table.
    pub vectors: u16,
    /// Where the table is.
    pub table: BarRange,
    /// Where the pending-bit array is.
    pub pba: BarRange,
    control: u16,
    /// Per vector: address low, address high, data, vector control.
    entries: Vec<[u32; 4]>,
}

impl Msix {
    /// The capability at `capability` of `config` (the device's configuration space), in its
    /// reset state: disabled, every vector masked.
    pub fn new(capability: Capability, config: &[u8; 256]) -> Self {
        let at = usize::from(capability.offset);
        let dword = |offset: usize| {
            u32::from_le_bytes([
                config[at + offset],
                config[at + offset + 1],
                config[at + offset + 2],
                config[at + offset + 3],
            ])
        };
        let control = (dword(0) >> 16) as u16;
        let vectors = (control & CONTROL_TABLE_SIZE) + 1;
        let (table, pba) = (dword(4), dword(8));
        let mut msix = Self {
            offset: capability.offset,
            vectors,
            table: BarRange {
                bar: (table & 0x7) as usize,
                offset: u64::from(table & !0x7),
                len: u64::from(vectors) * ENTRY_SIZE,
            },
            pba: BarRange {
                bar: (pba & 0x7) as usize,
                offset: u64::from(pba & !0x7),
                len: u64::from(vectors).div_ceil(64) * 8,
            },
            control: control & CONTROL_TABLE_SIZE,
            entries: Vec::new(),
        };
        msix.reset();
        msix
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        self.control &= CONTROL_TABLE_SIZE;
        self.entries = vec![[0, 0, 0, VECTOR_MASKED]; usize::from(self.vectors)];
    }

    /// Whether `register` (a dword offset) is one of the capability's three.
    pub fn covers(&self, register: u16) -> bool {
        let start = u16::from(self.offset);
        register >= start && register < start + 12
    }

    /// Reads capability dword `register`; `header` is the id and next pointer the chain
    /// gives it, `device` the device's own value of the dword (for the table and PBA
    /// locations, which are read-only).
    pub fn read_capability(&self, register: u16, header: u16, device: u32) -> u32 {
        if register == u16::from(self.offset) {
            u32::from(self.control) << 16 | u32::from(header)
        } else {
            device
        }
    }

    /// A guest write to capability dword `register`, already merged with the current value
    /// (`dword`); returns whether the vectors' state may have changed.
    pub fn write_capability(&mut self, register: u16, dword: u32) -> bool {
        if register != u16::from(self.offset) {
            return false; // table and PBA locations are read-only
        }
        let writable = CONTROL_ENABLE | CONTROL_FUNCTION_MASK;
        let control = (self.control & !writable) | ((dword >> 16) as u16 & writable);
        let changed = control != self.control;
        self.control = control;
        changed
    }

    /// Whether the guest has enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// Whether all vectors are masked by the function mask.
    pub fn function_masked(&self) -> bool {
        self.control & CONTROL_FUNCTION_MASK != 0
    }

    /// A guest read of the table at `offset` (relative to the table).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.table_byte(offset + i as u64).unwrap_or(0xFF);
        }
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let entry = self
            .entries
            .get(usize::try_from(offset / ENTRY_SIZE).ok()?)?;
        let word = entry[((offset % ENTRY_SIZE) / 4) as usize];
        Some(word.to_le_bytes()[(offset % 4) as usize])
    }

    /// A guest write to the table at `offset` (relative to the table); returns the vectors it
    /// changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<u16> {
        let mut changed = Vec::new();
        for (i, byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            let Ok(vector) = u16::try_from(at / ENTRY_SIZE) else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(usize::from(vector)) else {
                continue;
            };
            let word = &mut entry[((at % ENTRY_SIZE) / 4) as usize];
            let mut bytes = word.to_le_bytes();
            bytes[(at % 4) as usize] = *byte;
            let new = u32::from_le_bytes(bytes);
            if new != *word {
                *word = new;
                if changed.last() != Some(&vector) {
                    changed.push(vector);
                }
            }
        }
        changed
    }

    /// The message of `vector` when MSI-X is enabled and the vector unmasked (by its own bit
    /// and the function mask); `None` otherwise.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let entry = self.entries.get(usize::from(vector))?;
        let live = self.enabled() && !self.function_masked() && entry[3] & VECTOR_MASKED == 0;
        live.then_some(MsiMessage {
            address_lo: entry[0],
            address_hi: entry[1],
            data: entry[2],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An igb VF's MSI-X capability at 0x70: 3 vectors, table in BAR 3 at 0, PBA in BAR 3 at
    /// 0x2000.
    fn igbvf_msix() -> Msix {
        let mut config = [0u8; 256];
        config[0x70..0x74].copy_from_slice(&(0x0002_0011u32).to_le_bytes());
        config[0x74..0x78].copy_from_slice(&3u32.to_le_bytes());
        config[0x78..0x7C].copy_from_slice(&(0x2000u32 | 3).to_le_bytes());
        Msix::new(
            Capability {
                id: 0x11,
                offset: 0x70,
            },
            &config,
        )
    }

    #[test]
    fn the_capability_locates_the_table_and_the_pba() {
        let msix = igbvf_msix();
        assert_eq!(msix.vectors, 3);
        assert_eq!(
            msix.table,
            BarRange {
                bar: 3,
                offset: 0,
                len: 48
            }
        );
        assert_eq!(
            msix.pba,
            BarRange {
                bar: 3,
                offset: 0x2000,
                len: 8
            }
        );
        assert!(msix.table.contains(3, 0x2C, 4));
        assert!(!msix.table.contains(3, 0x30, 4));
        assert!(!msix.table.contains(0, 0, 4));
        assert_eq!(
            msix.read_capability(0x70, 0x0011, 0) >> 16,
            2,
            "table size - 1"
        );
        assert_eq!(msix.read_capability(0x74, 0, 3), 3, "device value");
    }

    #[test]
    fn vectors_are_masked_until_enabled_and_unmasked() {
        let mut msix = igbvf_msix();
        let mut entry = [0u8; 16];
        msix.read_table(16, &mut entry);
        assert_eq!(entry[12], 1, "masked at reset");
        assert_eq!(msix.write_table(16, &0xFEE0_0000u32.to_le_bytes()), [1]);
        assert_eq!(msix.write_table(24, &0x4021u32.to_le_bytes()), [1]);
        assert!(msix.write_table(24, &0x4021u32.to_le_bytes()).is_empty());
        assert_eq!(msix.write_table(28, &0u32.to_le_bytes()), [1]);
        assert_eq!(msix.message(1), None, "MSI-X not enabled");
        // Enable with the function mask set, as Linux does first.
        assert!(msix.write_capability(0x70, 0xC000_0000));
        assert!(msix.enabled() && msix.function_masked());
        assert_eq!(msix.message(1), None);
        assert!(msix.write_capability(0x70, 0x8000_0000));
        assert_eq!(
            msix.message(1),
            Some(MsiMessage {
                address_lo: 0xFEE0_0000,
                address_hi: 0,
                data: 0x4021
            })
        );
        assert_eq!(msix.message(0), None, "still masked");
        assert_eq!(msix.message(3), None, "no such vector");
        // The table size is read-only.
        msix.write_capability(0x70, 0x87FF_0000);
        assert_eq!(msix.read_capability(0x70, 0, 0) >> 16, 0x8002);
        msix.reset();
        assert!(!msix.enabled());
        assert_eq!(msix.message(1), None);
    }

    #[test]
    fn table_accesses_of_any_width_and_qwords_spanning_words_work() {
        let mut msix = igbvf_msix();
        // A qword write of address low and high, as some drivers do.
        let changed = msix.write_table(32, &0x0000_0001_FEE0_2000u64.to_le_bytes());
        assert_eq!(changed, [2]);
        let mut qword = [0u8; 8];
        msix.read_table(32, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0x0000_0001_FEE0_2000);
        let mut byte = [0u8; 1];
        msix.read_table(34, &mut byte);
        assert_eq!(byte, [0xE0]);
        // Past the last entry: reads all ones, writes change nothing.
        let mut dword = [0u8; 4];
        msix.read_table(48, &mut dword);
        assert_eq!(dword, [0xFF; 4]);
        assert!(msix.write_table(48, &[0; 4]).is_empty());
    }
}
