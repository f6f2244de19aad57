//! How ACPI describes the PCI segment to the guest: the MCFG table (ECAM of segment 0, bus 0)
//! and the DSDT's host bridge device `\_SB.PCI0` (PNP0A08, PCI Express root bridge), whose
//! `_CRS` gives its bus range, the mechanism-1 ports and the BAR window.
//!
//! Linux needs the device: with ACPI it scans PCI from the root bridges the DSDT declares
//! (the legacy scan of bus 0 runs only without ACPI), and keeps BAR assignments that lie in
//! the bridge's windows.

use acpi_tables::mcfg::MCFG;
use acpi_tables::{Aml, aml};

use crate::layout::{PCI_BAR_WINDOW_SIZE, PCI_BAR_WINDOW_START, PCI_ECAM_BASE};

/// The mechanism-1 ports the root bridge consumes.
const CONFIG_PORT: u16 = 0xCF8;
const CONFIG_PORT_LEN: u8 = 8;

/// The MCFG table: one ECAM region for segment 0, buses 0..=0.
pub fn mcfg(oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
    let mut table = MCFG::new(oem_id, oem_table_id, oem_revision);
    table.add_ecam(PCI_ECAM_BASE, 0, 0, 0);
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// AML for `Scope (\_SB) { Device (PCI0) { ... } }`, to append to the DSDT body.
pub fn root_bridge_aml() -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &0u8);
    let seg = aml::Name::new("_SEG".into(), &0u8);
    let uid = aml::Name::new("_UID".into(), &0u8);
    let bbn = aml::Name::new("_BBN".into(), &0u8);
    let buses = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(CONFIG_PORT, CONFIG_PORT, 1, CONFIG_PORT_LEN);
    let bar_window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_BAR_WINDOW_START as u32,
        (PCI_BAR_WINDOW_START + PCI_BAR_WINDOW_SIZE - 1) as u32,
        None,
    );
    let resources = aml::ResourceTemplate::new(vec![&buses, &config_ports, &bar_window]);
    let crs = aml::Name::new("_CRS".into(), &resources);
    let device = aml::Device::new(
        "PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    );
    let scope = aml::Scope::new("\\_SB_".into(), vec![&device]);
    let mut bytes = Vec::new();
    scope.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn mcfg_has_one_ecam_entry_for_bus_0() {
        let table = mcfg(*b"HOSTD ", *b"HOSTDVMM", 1);
        assert_eq!(&table[..4], b"MCFG");
        assert_eq!(table.len(), 44 + 16, "header, reserved, one entry");
        assert_eq!(
            u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
            table.len()
        );
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let entry = &table[44..];
        assert_eq!(
            u64::from_le_bytes(entry[..8].try_into().unwrap()),
            0xE000_0000
        );
        assert_eq!(&entry[8..12], &[0, 0, 0, 0], "segment 0, buses 0..=0");
    }

    #[test]
    fn root_bridge_declares_pnp0a08_its_ports_and_the_bar_window() {
        let aml = root_bridge_aml();
        assert!(contains(&aml, b"PCI0") && contains(&aml, b"_CRS"));
        // EISAID("PNP0A08") compresses to 41 D0 0A 08.
        assert!(contains(&aml, &[0x41, 0xD0, 0x0A, 0x08]));
        // IO descriptor: 16-bit decode, 0xCF8..0xCF8, alignment 1, 8 ports.
        assert!(contains(
            &aml,
            &[0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]
        ));
        // DWord memory descriptor minimum and maximum.
        let window = [0xC000_0000u32.to_le_bytes(), 0xCFFF_FFFFu32.to_le_bytes()].concat();
        assert!(contains(&aml, &window));
    }
}
