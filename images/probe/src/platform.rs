//! What the probe learns about its machine before printing the banner: RAM from the PVH
//! memory map, the CPU count from the MADT (or an MP table), and the ACPI power registers.
//!
//! Discovery never prints: the banner's first bytes are already on the wire, and a warning in
//! the middle would break its line. Failures are kept and reported after the banner.

use thiserror::Error;

use crate::acpi::{self, AcpiError, Fadt, Root};
use crate::aml;
use crate::console::ErrorChain;
use crate::mptable::{self, MpTableError};
use crate::phys::PhysMemory;
use crate::power::{Pm1Registers, PowerError};
use crate::start_info::{StartInfo, StartInfoError};

/// Why no CPU count was found.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error(
    "no CPU count: the ACPI MADT is unusable or lists no enabled CPU, and {mp}; the VMM must \
     provide one of them (docs/VMM.md)"
)]
pub struct CpuCountError {
    /// Why the MADT was unusable (`None`: it listed no enabled CPU).
    #[source]
    pub madt: Option<AcpiError>,
    /// Why the MP table was unusable.
    pub mp: MpTableError,
}

/// The discovered machine.
#[derive(Debug)]
pub struct Platform {
    /// Sum of the RAM entries of the boot memory map.
    pub ram_bytes: Result<u64, StartInfoError>,
    /// Enabled CPUs.
    pub cpus: Result<u32, CpuCountError>,
    /// ACPI PM1 registers (power button, S5).
    pub pm1: Result<Pm1Registers, PowerError>,
    /// SLP_TYP of `\_S5`.
    pub s5_sleep_type: Result<u8, PowerError>,
}

impl Platform {
    /// Reads the start info at `start_info_addr` and the firmware tables.
    pub fn discover(mem: &impl PhysMemory, start_info_addr: u64) -> Self {
        let start_info = StartInfo::read(mem, start_info_addr);
        let ram_bytes = start_info.and_then(|info| info.ram_bytes(mem));
        let rsdp_hint = start_info.map_or(0, |info| info.rsdp_paddr);
        let root = acpi::find_root(mem, rsdp_hint);
        let fadt = root
            .and_then(|root| acpi::find_table(mem, root, acpi::FADT))
            .and_then(Fadt::parse)
            .map_err(PowerError::NoFadt);
        Self {
            ram_bytes,
            cpus: count_cpus(mem, root),
            pm1: fadt.and_then(|fadt| Pm1Registers::from_fadt(&fadt)),
            s5_sleep_type: fadt.and_then(|fadt| s5_sleep_type(mem, &fadt)),
        }
    }

    /// Logs a warning for everything discovery could not find.
    pub fn report_problems(&self) {
        if let Err(error) = &self.ram_bytes {
            log::warn!("ram=0: {}", ErrorChain(error));
        }
        if let Err(error) = &self.cpus {
            log::warn!("cpus=0: {}", ErrorChain(error));
        }
        if let Err(error) = &self.pm1 {
            log::warn!("{}", ErrorChain(error));
        }
        // Without PM1 blocks the missing \_S5 changes nothing: that warning is above.
        if let (Ok(_), Err(error)) = (&self.pm1, &self.s5_sleep_type) {
            log::warn!("{}", ErrorChain(error));
        }
    }
}

fn count_cpus(mem: &impl PhysMemory, root: Result<Root, AcpiError>) -> Result<u32, CpuCountError> {
    let madt = root
        .and_then(|root| acpi::find_table(mem, root, acpi::MADT))
        .map(acpi::madt_enabled_cpus);
    match madt {
        Ok(count) if count > 0 => Ok(count),
        _ => mptable::enabled_cpus(mem).map_err(|mp| CpuCountError {
            madt: madt.err(),
            mp,
        }),
    }
}

fn s5_sleep_type(mem: &impl PhysMemory, fadt: &Fadt) -> Result<u8, PowerError> {
    let dsdt = acpi::read_table(mem, fadt.dsdt, acpi::DSDT).map_err(PowerError::NoDsdt)?;
    let aml = dsdt.get(acpi::HEADER_LEN..).unwrap_or_default();
    aml::s5_sleep_type(aml).map_err(PowerError::NoS5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::build::{fadt, madt, rsdp_v2, table};
    use crate::phys::fake::FakeMemory;
    use crate::start_info::MAGIC;
    use std::vec::Vec;

    /// Low memory laid out the way our VMM does it (hostd/vmm layout.rs).
    fn vmm_memory(cpus: u8) -> FakeMemory {
        let mut mem = FakeMemory::new(0x1000, 0x100000 - 0x1000);
        let mut info = [0u8; 56];
        info[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        info[4..8].copy_from_slice(&1u32.to_le_bytes());
        info[32..40].copy_from_slice(&0xE0000u64.to_le_bytes());
        info[40..48].copy_from_slice(&0x6100u64.to_le_bytes());
        info[48..52].copy_from_slice(&2u32.to_le_bytes());
        mem.write(0x6000, &info);
        let mut map = Vec::new();
        for (addr, size) in [(0u64, 0x9FC00u64), (0x100000, 63 << 20)] {
            map.extend_from_slice(&addr.to_le_bytes());
            map.extend_from_slice(&size.to_le_bytes());
            map.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        }
        mem.write(0x6100, &map);

        let dsdt = table(
            b"DSDT",
            6,
            &[
                0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, 5, 0x0A, 5, 0, 0,
            ],
        );
        let cpu_entries: Vec<[u8; 8]> = (0..cpus).map(|id| [0, 8, id, id, 1, 0, 0, 0]).collect();
        let cpu_entries: Vec<&[u8]> = cpu_entries.iter().map(|e| e.as_slice()).collect();
        let mut xsdt_body = Vec::new();
        xsdt_body.extend_from_slice(&0xE0200u64.to_le_bytes());
        xsdt_body.extend_from_slice(&0xE0400u64.to_le_bytes());
        mem.write(0xE0000, &rsdp_v2(0xE0040));
        mem.write(0xE0040, &table(b"XSDT", 1, &xsdt_body));
        mem.write(0xE0100, &dsdt);
        mem.write(0xE0200, &fadt(0x600, 0x604, 0xE0100, 0));
        mem.write(0xE0400, &madt(&cpu_entries));
        mem
    }

    #[test]
    fn discovers_our_vmms_machine() {
        let mem = vmm_memory(2);
        let platform = Platform::discover(&mem, 0x6000);
        assert_eq!(platform.ram_bytes, Ok(0x9FC00 + (63 << 20)));
        assert_eq!(platform.cpus, Ok(2));
        assert_eq!(platform.pm1.unwrap().evt_blk, 0x600);
        assert_eq!(platform.s5_sleep_type, Ok(5));
    }

    #[test]
    fn finds_tables_by_scan_when_the_start_info_is_bad() {
        let mut mem = vmm_memory(4);
        mem.write(0x6000, &[0u8; 4]); // magic gone
        let platform = Platform::discover(&mem, 0x6000);
        assert!(matches!(
            platform.ram_bytes,
            Err(StartInfoError::BadMagic { .. })
        ));
        assert_eq!(platform.cpus, Ok(4));
        assert_eq!(platform.s5_sleep_type, Ok(5));
    }

    #[test]
    fn no_acpi_and_no_mp_table_is_reported_not_fatal() {
        let mem = FakeMemory::new(0x1000, 0x100000 - 0x1000);
        let platform = Platform::discover(&mem, 0x6000);
        let Err(error) = platform.cpus else {
            panic!("cpus found in empty memory")
        };
        assert_eq!(error.madt, Some(AcpiError::RsdpNotFound { hint: 0 }));
        assert_eq!(error.mp, MpTableError::NotFound);
        assert!(matches!(
            platform.pm1,
            Err(PowerError::NoFadt(AcpiError::RsdpNotFound { .. }))
        ));
    }
}
