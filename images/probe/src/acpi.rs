//! ACPI tables: finding the RSDP, walking the XSDT (or RSDT), and the two tables the probe
//! reads: the MADT (how many CPUs are enabled) and the FADT (where the PM1 registers and the
//! DSDT are).

use core::fmt;

use thiserror::Error;

use crate::le::{array_at, checksum_ok, u8_at, u32_at, u64_at};
use crate::phys::{PhysError, PhysMemory};

/// Where the legacy RSDP scan looks (docs/VMM.md: "0xE0000..0xFFFFF").
pub const RSDP_SCAN_START: u64 = 0xE_0000;
/// End (exclusive) of the legacy RSDP scan.
pub const RSDP_SCAN_END: u64 = 0x10_0000;
/// Length of the ACPI 1.0 part of the RSDP, which its first checksum covers.
const RSDP_V1_LEN: usize = 20;
/// Length of the ACPI 2.0+ RSDP.
const RSDP_V2_LEN: usize = 36;
/// Length of the common table header.
pub const HEADER_LEN: usize = 36;
/// Tables longer than this are taken as corrupt rather than read.
const MAX_TABLE_LEN: usize = 1 << 20;

/// A four-character table signature such as `APIC` or `FACP`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 4]);

/// Multiple APIC Description Table.
pub const MADT: Signature = Signature(*b"APIC");
/// Fixed ACPI Description Table.
pub const FADT: Signature = Signature(*b"FACP");
/// Differentiated System Description Table.
pub const DSDT: Signature = Signature(*b"DSDT");

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            let shown = if byte.is_ascii_graphic() {
                char::from(byte)
            } else {
                '?'
            };
            fmt::Write::write_char(f, shown)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why an ACPI table could not be used.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// No valid RSDP at the start info's address or in the legacy scan area.
    #[error(
        "no ACPI RSDP (hvm_start_info.rsdp_paddr {hint:#x}, scan of 0xE0000..0xFFFFF): the \
         VMM must provide ACPI tables (docs/VMM.md)"
    )]
    RsdpNotFound {
        /// The address the start info gave, 0 when none.
        hint: u64,
    },
    /// The XSDT / RSDT does not list the table.
    #[error("the ACPI tables have no {signature}: the VMM must provide it (docs/VMM.md)")]
    Missing {
        /// The table looked for.
        signature: Signature,
    },
    /// The table's memory cannot be read.
    #[error("cannot read ACPI {signature} at {addr:#x}: fix the pointer to it in the VMM's tables")]
    Unreadable {
        /// The table being read.
        signature: Signature,
        /// Where it should be.
        addr: u64,
        /// Why it could not be read.
        #[source]
        source: PhysError,
    },
    /// The bytes at the address are not the table expected, or fail their checksum.
    #[error(
        "ACPI {signature} at {addr:#x} has a bad signature, length or checksum: fix the \
         VMM's table builder"
    )]
    Corrupt {
        /// The table being read.
        signature: Signature,
        /// Where it is.
        addr: u64,
    },
    /// The table is shorter than the fields the probe reads.
    #[error("ACPI {signature} is {len} bytes, too short for the fields the probe reads")]
    TooShort {
        /// The table.
        signature: Signature,
        /// Its length.
        len: usize,
    },
}

/// The root of the tables: the RSDP's XSDT (ACPI 2.0+) or RSDT (1.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    /// 64-bit table pointers.
    Xsdt(u64),
    /// 32-bit table pointers.
    Rsdt(u64),
}

/// The checked RSDP at `addr`, or `None` when there is none.
pub fn parse_rsdp(mem: &impl PhysMemory, addr: u64) -> Option<Root> {
    let v1 = mem.bytes(addr, RSDP_V1_LEN).ok()?;
    if v1.get(..8)? != b"RSD PTR " || !checksum_ok(v1) {
        return None;
    }
    if u8_at(v1, 15)? >= 2 {
        let v2 = mem.bytes(addr, RSDP_V2_LEN).ok()?;
        let length = u32_at(v2, 20)? as usize;
        let whole = mem.bytes(addr, length.clamp(RSDP_V2_LEN, 4096)).ok()?;
        let xsdt = u64_at(v2, 24)?;
        if checksum_ok(whole) && xsdt != 0 {
            return Some(Root::Xsdt(xsdt));
        }
    }
    Some(Root::Rsdt(u64::from(u32_at(v1, 16)?)))
}

/// Finds the RSDP: at `hint` (the start info's `rsdp_paddr`) when valid, else by scanning
/// the 16-byte boundaries of `0xE0000..0xFFFFF`.
pub fn find_root(mem: &impl PhysMemory, hint: u64) -> Result<Root, AcpiError> {
    if hint != 0 {
        if let Some(root) = parse_rsdp(mem, hint) {
            return Ok(root);
        }
    }
    (RSDP_SCAN_START..RSDP_SCAN_END)
        .step_by(16)
        .find_map(|addr| parse_rsdp(mem, addr))
        .ok_or(AcpiError::RsdpNotFound { hint })
}

/// Reads the whole table at `addr`, checking signature, length and checksum.
pub fn read_table(
    mem: &impl PhysMemory,
    addr: u64,
    signature: Signature,
) -> Result<&[u8], AcpiError> {
    let unreadable = |source| AcpiError::Unreadable {
        signature,
        addr,
        source,
    };
    let corrupt = AcpiError::Corrupt { signature, addr };
    let header = mem.bytes(addr, HEADER_LEN).map_err(unreadable)?;
    if array_at::<4>(header, 0) != Some(signature.0) {
        return Err(corrupt);
    }
    let length = u32_at(header, 4).ok_or(corrupt)? as usize;
    if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&length) {
        return Err(corrupt);
    }
    let table = mem.bytes(addr, length).map_err(unreadable)?;
    if !checksum_ok(table) {
        return Err(corrupt);
    }
    Ok(table)
}

/// Finds the table with `signature` listed in the root table.
pub fn find_table(
    mem: &impl PhysMemory,
    root: Root,
    signature: Signature,
) -> Result<&[u8], AcpiError> {
    let (root_addr, root_signature, entry_len) = match root {
        Root::Xsdt(addr) => (addr, Signature(*b"XSDT"), 8),
        Root::Rsdt(addr) => (addr, Signature(*b"RSDT"), 4),
    };
    let root_table = read_table(mem, root_addr, root_signature)?;
    let entries = root_table.get(HEADER_LEN..).unwrap_or_default();
    for entry in entries.chunks_exact(entry_len) {
        let addr = if entry_len == 8 {
            u64_at(entry, 0).unwrap_or(0)
        } else {
            u64::from(u32_at(entry, 0).unwrap_or(0))
        };
        // Another table's corruption is not this one's: skip entries that do not match.
        let is_wanted = mem
            .bytes(addr, 4)
            .is_ok_and(|head| array_at::<4>(head, 0) == Some(signature.0));
        if is_wanted {
            return read_table(mem, addr, signature);
        }
    }
    Err(AcpiError::Missing { signature })
}

/// Number of enabled processors in a MADT: local APIC (type 0) and local x2APIC (type 9)
/// entries with the Enabled flag.
pub fn madt_enabled_cpus(madt: &[u8]) -> u32 {
    const LOCAL_APIC: u8 = 0;
    const LOCAL_X2APIC: u8 = 9;
    const ENABLED: u32 = 1;
    let mut offset = HEADER_LEN + 8; // local APIC address and flags
    let mut count = 0;
    while let (Some(kind), Some(len)) = (u8_at(madt, offset), u8_at(madt, offset + 1)) {
        let flags = match kind {
            LOCAL_APIC => u32_at(madt, offset + 4),
            LOCAL_X2APIC => u32_at(madt, offset + 8),
            _ => None,
        };
        if flags.is_some_and(|flags| flags & ENABLED != 0) {
            count += 1;
        }
        if len < 2 {
            break; // a zero-length entry would loop forever
        }
        offset += usize::from(len);
    }
    count
}

/// The FADT fields the probe uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fadt {
    /// I/O port of PM1a_EVT_BLK (status, then enable), 0 when absent.
    pub pm1a_evt_blk: u16,
    /// Length of PM1a_EVT_BLK in bytes (status and enable are half each).
    pub pm1_evt_len: u8,
    /// I/O port of PM1a_CNT_BLK, 0 when absent.
    pub pm1a_cnt_blk: u16,
    /// Guest-physical address of the DSDT.
    pub dsdt: u64,
    /// HW_REDUCED_ACPI: no fixed PM1 hardware (QEMU's microvm).
    pub hardware_reduced: bool,
}

impl Fadt {
    /// Decodes a FADT (the whole table, header included).
    pub fn parse(table: &[u8]) -> Result<Self, AcpiError> {
        const FLAGS_HW_REDUCED: u32 = 1 << 20;
        const SYSTEM_IO: u8 = 1;
        let too_short = AcpiError::TooShort {
            signature: FADT,
            len: table.len(),
        };
        // ACPI 1.0 FADTs are 116 bytes; the 64-bit (X_) fields come after.
        let pm1a_evt_32 = u32_at(table, 56).ok_or(too_short)?;
        let pm1a_cnt_32 = u32_at(table, 64).ok_or(too_short)?;
        let pm1_evt_len = u8_at(table, 88).ok_or(too_short)?;
        let flags = u32_at(table, 112).unwrap_or(0);
        // A Generic Address Structure in system I/O space: (space id, address).
        let io_gas = |offset: usize| {
            (u8_at(table, offset)? == SYSTEM_IO)
                .then(|| u64_at(table, offset + 4))
                .flatten()
        };
        let port = |legacy: u32, gas_offset: usize| {
            let addr = if legacy != 0 {
                u64::from(legacy)
            } else {
                io_gas(gas_offset).unwrap_or(0)
            };
            u16::try_from(addr).unwrap_or(0)
        };
        let x_dsdt = u64_at(table, 140).unwrap_or(0);
        let dsdt = if x_dsdt != 0 {
            x_dsdt
        } else {
            u64::from(u32_at(table, 40).unwrap_or(0))
        };
        Ok(Self {
            pm1a_evt_blk: port(pm1a_evt_32, 148),
            pm1_evt_len,
            pm1a_cnt_blk: port(pm1a_cnt_32, 172),
            dsdt,
            hardware_reduced: flags & FLAGS_HW_REDUCED != 0,
        })
    }
}

#[cfg(test)]
pub mod build {
    //! Builders of ACPI tables for unit tests.
    use std::vec::Vec;

    /// A table with a valid header and checksum around `body`.
    pub fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = std::vec![0u8; 36];
        bytes[0..4].copy_from_slice(signature);
        bytes[8] = revision;
        bytes[10..16].copy_from_slice(b"PROBE ");
        bytes.extend_from_slice(body);
        let len = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut bytes, 9);
        bytes
    }

    /// Sets the byte at `at` so that the bytes sum to zero.
    pub fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bytes[at] = sum.wrapping_neg();
    }

    /// An ACPI 2.0 RSDP pointing at `xsdt`.
    pub fn rsdp_v2(xsdt: u64) -> Vec<u8> {
        let mut bytes = std::vec![0u8; 36];
        bytes[0..8].copy_from_slice(b"RSD PTR ");
        bytes[9..15].copy_from_slice(b"PROBE ");
        bytes[15] = 2;
        bytes[20..24].copy_from_slice(&36u32.to_le_bytes());
        bytes[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut bytes[..20], 8);
        fix_checksum(&mut bytes, 32);
        bytes
    }

    /// An ACPI 1.0 RSDP pointing at `rsdt`.
    pub fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut bytes = std::vec![0u8; 20];
        bytes[0..8].copy_from_slice(b"RSD PTR ");
        bytes[16..20].copy_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut bytes, 8);
        bytes
    }

    /// A MADT body: local APIC address and flags, then `entries`.
    pub fn madt(entries: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for entry in entries {
            body.extend_from_slice(entry);
        }
        table(b"APIC", 4, &body)
    }

    /// A 276-byte (ACPI 6) FADT with the given PM1 ports and DSDT in X_DSDT.
    pub fn fadt(pm1a_evt: u32, pm1a_cnt: u32, dsdt: u64, flags: u32) -> Vec<u8> {
        let mut body = std::vec![0u8; 276 - 36];
        let mut put = |offset: usize, bytes: &[u8]| {
            body[offset - 36..offset - 36 + bytes.len()].copy_from_slice(bytes)
        };
        put(56, &pm1a_evt.to_le_bytes());
        put(64, &pm1a_cnt.to_le_bytes());
        put(88, &[4]);
        put(112, &flags.to_le_bytes());
        put(140, &dsdt.to_le_bytes());
        table(b"FACP", 6, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::phys::fake::FakeMemory;
    use std::vec::Vec;

    const RSDP: u64 = 0xE0000;
    const XSDT: u64 = 0xE0040;
    const FADT_AT: u64 = 0xE0100;
    const MADT_AT: u64 = 0xE0400;

    /// The layout our VMM uses: RSDP at 0xE0000, then XSDT -> FADT, MADT.
    fn memory_with_tables(madt_entries: &[&[u8]]) -> FakeMemory {
        let mut mem = FakeMemory::new(0xE0000, 0x20000);
        let mut xsdt_body = Vec::new();
        xsdt_body.extend_from_slice(&FADT_AT.to_le_bytes());
        xsdt_body.extend_from_slice(&MADT_AT.to_le_bytes());
        mem.write(RSDP, &rsdp_v2(XSDT));
        mem.write(XSDT, &table(b"XSDT", 1, &xsdt_body));
        mem.write(FADT_AT, &fadt(0x600, 0x604, 0xE0800, 0));
        mem.write(MADT_AT, &madt(madt_entries));
        mem
    }

    #[test]
    fn finds_rsdp_by_scan_and_by_hint() {
        let mem = memory_with_tables(&[]);
        assert_eq!(find_root(&mem, 0), Ok(Root::Xsdt(XSDT)));
        assert_eq!(find_root(&mem, RSDP), Ok(Root::Xsdt(XSDT)));
        // A bad hint falls back to the scan.
        assert_eq!(find_root(&mem, 0xE1000), Ok(Root::Xsdt(XSDT)));
    }

    #[test]
    fn rsdp_with_bad_checksum_is_not_found() {
        let mut mem = memory_with_tables(&[]);
        mem.bytes[8] ^= 1; // first checksum
        assert_eq!(find_root(&mem, 0), Err(AcpiError::RsdpNotFound { hint: 0 }));
    }

    #[test]
    fn acpi_1_rsdp_uses_the_rsdt() {
        let mut mem = FakeMemory::new(0xE0000, 0x20000);
        mem.write(0xF0010, &rsdp_v1(0xE0040));
        let mut rsdt_body = Vec::new();
        rsdt_body.extend_from_slice(&(MADT_AT as u32).to_le_bytes());
        mem.write(0xE0040, &table(b"RSDT", 1, &rsdt_body));
        mem.write(MADT_AT, &madt(&[&[0, 8, 0, 0, 1, 0, 0, 0]]));
        let root = find_root(&mem, 0).unwrap();
        assert_eq!(root, Root::Rsdt(0xE0040));
        assert_eq!(madt_enabled_cpus(find_table(&mem, root, MADT).unwrap()), 1);
    }

    #[test]
    fn counts_only_enabled_local_apics_and_x2apics() {
        let enabled: &[u8] = &[0, 8, 0, 0, 1, 0, 0, 0];
        let disabled: &[u8] = &[0, 8, 1, 1, 0, 0, 0, 0];
        let ioapic: &[u8] = &[1, 12, 2, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0];
        let x2apic: &[u8] = &[9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0];
        let mem = memory_with_tables(&[enabled, disabled, ioapic, enabled, x2apic]);
        let root = find_root(&mem, 0).unwrap();
        let madt = find_table(&mem, root, MADT).unwrap();
        assert_eq!(madt_enabled_cpus(madt), 3);
    }

    #[test]
    fn zero_length_madt_entry_ends_the_walk() {
        let enabled: &[u8] = &[0, 8, 0, 0, 1, 0, 0, 0];
        let broken: &[u8] = &[0, 0, 0, 0, 1, 0, 0, 0];
        let table = madt(&[enabled, broken, enabled]);
        assert_eq!(madt_enabled_cpus(&table), 2);
    }

    #[test]
    fn decodes_fadt_pm1_blocks_and_x_dsdt() {
        let mem = memory_with_tables(&[]);
        let root = find_root(&mem, 0).unwrap();
        let fadt = Fadt::parse(find_table(&mem, root, FADT).unwrap()).unwrap();
        assert_eq!(fadt.pm1a_evt_blk, 0x600);
        assert_eq!(fadt.pm1_evt_len, 4);
        assert_eq!(fadt.pm1a_cnt_blk, 0x604);
        assert_eq!(fadt.dsdt, 0xE0800);
        assert!(!fadt.hardware_reduced);
    }

    #[test]
    fn fadt_falls_back_to_x_pm1_generic_addresses() {
        let mut bytes = fadt(0, 0, 0xE0800, 1 << 20);
        bytes[148] = 1; // X_PM1a_EVT_BLK: system I/O, address 0xB000
        bytes[152..160].copy_from_slice(&0xB000u64.to_le_bytes());
        fix_checksum(&mut bytes, 9);
        let fadt = Fadt::parse(&bytes).unwrap();
        assert_eq!(fadt.pm1a_evt_blk, 0xB000);
        assert_eq!(fadt.pm1a_cnt_blk, 0);
        assert!(fadt.hardware_reduced);
    }

    #[test]
    fn missing_and_corrupt_tables_are_errors() {
        let mut mem = memory_with_tables(&[]);
        let root = find_root(&mem, 0).unwrap();
        assert_eq!(
            find_table(&mem, root, DSDT),
            Err(AcpiError::Missing { signature: DSDT })
        );
        mem.bytes[(MADT_AT - 0xE0000) as usize + 40] ^= 0xFF;
        assert_eq!(
            find_table(&mem, root, MADT),
            Err(AcpiError::Corrupt {
                signature: MADT,
                addr: MADT_AT
            })
        );
        assert!(Fadt::parse(&[0u8; 60]).is_err());
    }
}
