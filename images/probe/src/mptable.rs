//! The Intel MultiProcessor table, the CPU count of last resort when there is no ACPI MADT
//! (docs/VMM.md: "or the processor entries of an MP table when there is no ACPI").

use thiserror::Error;

use crate::le::{checksum_ok, u8_at, u16_at, u32_at};
use crate::phys::PhysMemory;

/// Where the BIOS data area keeps the EBDA segment.
const EBDA_SEGMENT_PTR: u64 = 0x40E;
/// Where the floating pointer may be, besides the first KiB of the EBDA (MP spec 1.4, 4).
const SCAN_AREAS: [(u64, u64); 2] = [(0x9_FC00, 0xA_0000), (0xF_0000, 0x10_0000)];
/// Length of the floating pointer structure.
const FLOATING_LEN: usize = 16;
/// Length of the configuration table header.
const CONFIG_HEADER_LEN: usize = 44;

/// Why no CPU count came from an MP table.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MpTableError {
    /// No `_MP_` floating pointer with a configuration table.
    #[error(
        "no MP table (_MP_ floating pointer in the EBDA, 0x9FC00 or 0xF0000..0xFFFFF with a \
         PCMP configuration table)"
    )]
    NotFound,
    /// The configuration table is unreadable or fails its checksum.
    #[error("the MP configuration table at {addr:#x} is unreadable or corrupt")]
    Corrupt {
        /// Where the floating pointer says it is.
        addr: u64,
    },
}

/// Number of enabled processor entries in the MP configuration table.
pub fn enabled_cpus(mem: &impl PhysMemory) -> Result<u32, MpTableError> {
    let config = find_floating_pointer(mem).ok_or(MpTableError::NotFound)?;
    count_enabled_processors(mem, config)
}

/// The configuration table address of the first valid floating pointer.
fn find_floating_pointer(mem: &impl PhysMemory) -> Option<u64> {
    let ebda = mem
        .bytes(EBDA_SEGMENT_PTR, 2)
        .ok()
        .and_then(|bytes| u16_at(bytes, 0))
        .map(|segment| u64::from(segment) << 4)
        .filter(|&start| start != 0);
    let ebda_area = ebda.map(|start| (start, start + 1024));
    ebda_area
        .into_iter()
        .chain(SCAN_AREAS)
        .find_map(|(start, end)| {
            (start..end).step_by(16).find_map(|addr| {
                let bytes = mem.bytes(addr, FLOATING_LEN).ok()?;
                let is_pointer = bytes.get(..4)? == b"_MP_" && checksum_ok(bytes);
                let config = u32_at(bytes, 4)?;
                (is_pointer && config != 0).then_some(u64::from(config))
            })
        })
}

/// Counts processor entries (type 0) with the enabled flag in the table at `addr`.
fn count_enabled_processors(mem: &impl PhysMemory, addr: u64) -> Result<u32, MpTableError> {
    const PROCESSOR: u8 = 0;
    const PROCESSOR_LEN: usize = 20;
    const OTHER_LEN: usize = 8; // bus, I/O APIC, I/O and local interrupt assignments
    const ENABLED: u8 = 1;
    let corrupt = MpTableError::Corrupt { addr };
    let header = mem.bytes(addr, CONFIG_HEADER_LEN).map_err(|_| corrupt)?;
    if header.get(..4) != Some(b"PCMP".as_slice()) {
        return Err(corrupt);
    }
    let length = usize::from(u16_at(header, 4).ok_or(corrupt)?);
    let entries = u16_at(header, 34).ok_or(corrupt)?;
    let table = mem
        .bytes(addr, length.max(CONFIG_HEADER_LEN))
        .map_err(|_| corrupt)?;
    if !checksum_ok(table) {
        return Err(corrupt);
    }
    let mut offset = CONFIG_HEADER_LEN;
    let mut count = 0;
    for _ in 0..entries {
        match u8_at(table, offset) {
            Some(PROCESSOR) => {
                if u8_at(table, offset + 3).is_some_and(|flags| flags & ENABLED != 0) {
                    count += 1;
                }
                offset += PROCESSOR_LEN;
            }
            Some(1..=4) => offset += OTHER_LEN,
            _ => break, // unknown entry type: its length is unknown too
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::build::fix_checksum;
    use crate::phys::fake::FakeMemory;
    use std::vec::Vec;

    fn config_table(processor_flags: &[u8]) -> Vec<u8> {
        let mut table = std::vec![0u8; CONFIG_HEADER_LEN];
        table[0..4].copy_from_slice(b"PCMP");
        table[6] = 4; // spec revision 1.4
        for (apic_id, flags) in processor_flags.iter().enumerate() {
            let mut entry = [0u8; 20];
            entry[1] = apic_id as u8;
            entry[3] = *flags;
            table.extend_from_slice(&entry);
        }
        table.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // a bus entry
        let len = table.len() as u16;
        table[4..6].copy_from_slice(&len.to_le_bytes());
        table[34..36].copy_from_slice(&(processor_flags.len() as u16 + 1).to_le_bytes());
        fix_checksum(&mut table, 7);
        table
    }

    fn floating_pointer(config: u32) -> [u8; 16] {
        let mut pointer = [0u8; 16];
        pointer[0..4].copy_from_slice(b"_MP_");
        pointer[4..8].copy_from_slice(&config.to_le_bytes());
        pointer[8] = 1;
        pointer[9] = 4;
        fix_checksum(&mut pointer, 10);
        pointer
    }

    #[test]
    fn counts_enabled_processors_found_in_the_bios_area() {
        let mut mem = FakeMemory::new(0x400, 0x100000 - 0x400);
        mem.write(0xF5000, &config_table(&[3, 1, 0, 1]));
        mem.write(0xF4F00, &floating_pointer(0xF5000));
        assert_eq!(enabled_cpus(&mem), Ok(3));
    }

    #[test]
    fn finds_the_pointer_in_the_ebda() {
        let mut mem = FakeMemory::new(0x400, 0x100000 - 0x400);
        mem.write(EBDA_SEGMENT_PTR, &0x9000u16.to_le_bytes()); // EBDA at 0x90000
        mem.write(0x90100, &floating_pointer(0x90200));
        mem.write(0x90200, &config_table(&[1, 1]));
        assert_eq!(enabled_cpus(&mem), Ok(2));
    }

    #[test]
    fn absent_or_corrupt_tables_are_errors() {
        let mut mem = FakeMemory::new(0x400, 0x100000 - 0x400);
        assert_eq!(enabled_cpus(&mem), Err(MpTableError::NotFound));
        let mut table = config_table(&[1]);
        table[44 + 3] = 0; // disable the CPU without fixing the checksum
        mem.write(0xF5000, &table);
        mem.write(0xF4F00, &floating_pointer(0xF5000));
        assert_eq!(
            enabled_cpus(&mem),
            Err(MpTableError::Corrupt { addr: 0xF5000 })
        );
    }
}
