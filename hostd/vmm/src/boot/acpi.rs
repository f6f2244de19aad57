//! ACPI tables (docs/VMM.md "Devices"): RSDP at the start of the `0xE0000` area so the
//! legacy scan finds it, then XSDT, FADT (PM1a blocks, SCI 9, no CMOS RTC, no 8042),
//! DSDT (`\_S5`, the PCI host bridge `\_SB.PCI0`, virtio-mmio devices `\_SB.VRnn`), MADT (one enabled local APIC per vCPU,
//! the IOAPIC, SCI override) and MCFG (the PCI segment's ECAM, [`crate::pci::acpi`]).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::acpi_pm::{PM1A_CNT_PORT, PM1A_EVT_PORT, S5_SLP_TYP, SCI_IRQ};
use crate::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};

use super::{BootError, VirtioMmioSlot};

const OEM_ID: [u8; 6] = *b"HOSTD ";
const OEM_TABLE_ID: [u8; 8] = *b"HOSTDVMM";
const OEM_REVISION: u32 = 1;

/// FADT IA-PC boot architecture flags: no VGA, no CMOS RTC (the guest must not probe them).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT interrupt source override flags: active high, level triggered.
const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0b1101;

/// The table images and where each goes.
#[derive(Debug)]
pub struct AcpiTables {
    /// (guest address, bytes) in write order.
    pub tables: Vec<(GuestAddress, Vec<u8>)>,
}

/// Guest-physical address of the RSDP.
pub const RSDP_ADDR: GuestAddress = ACPI_START;

fn align16(addr: u64) -> u64 {
    (addr + 15) & !15
}

/// Builds the tables for `vcpus` processors (APIC ids 0..vcpus) and the virtio-mmio devices.
pub fn build(vcpus: u8, virtio_mmio: &[VirtioMmioSlot]) -> Result<AcpiTables, BootError> {
    let mut tables = Vec::new();
    let mut next = align16(RSDP_ADDR.0 + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next = align16(addr + bytes.len() as u64);
        (GuestAddress(addr), bytes)
    };

    let dsdt = place(dsdt(virtio_mmio));
    let fadt = place(fadt(dsdt.0.0));
    let madt = place(madt(vcpus));
    let mcfg = place(crate::pci::acpi::mcfg(OEM_ID, OEM_TABLE_ID, OEM_REVISION));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt.0.0);
    xsdt.add_entry(madt.0.0);
    xsdt.add_entry(mcfg.0.0);
    let xsdt = place(to_bytes(&xsdt));
    let end = xsdt.0.0 + xsdt.1.len() as u64;
    if end > ACPI_END {
        return Err(BootError::AcpiTooLarge { vcpus });
    }
    tables.push((RSDP_ADDR, to_bytes(&Rsdp::new(OEM_ID, xsdt.0.0))));
    tables.extend([dsdt, fadt, madt, mcfg, xsdt]);
    Ok(AcpiTables { tables })
}

impl AcpiTables {
    /// Writes the tables into guest memory.
    pub fn write(&self, memory: &GuestMemoryMmap) -> Result<(), BootError> {
        for (addr, bytes) in &self.tables {
            memory
                .write_slice(bytes, *addr)
                .map_err(|source| BootError::GuestWrite {
                    what: "ACPI tables",
                    source,
                })?;
        }
        Ok(())
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB.VRnn`: a virtio-mmio device the Linux driver matches by `_HID` `LNRO0005`, with its
/// register window and its (edge, active-high) interrupt.
fn virtio_mmio_aml(index: usize, slot: &VirtioMmioSlot) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &(index as u32));
    let window = aml::Memory32Fixed::new(true, slot.base as u32, slot.size as u32);
    let irq = aml::Interrupt::new(true, true, false, false, slot.gsi);
    let resources = aml::ResourceTemplate::new(vec![&window, &irq]);
    let crs = aml::Name::new("_CRS".into(), &resources);
    let device = aml::Device::new(
        format!("VR{index:02}").as_str().into(),
        vec![&hid, &uid, &crs],
    );
    let scope = aml::Scope::new("\\_SB_".into(), vec![&device]);
    to_bytes(&scope)
}

fn dsdt(virtio_mmio: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // \_S5: SLP_TYP for PM1a and PM1b, then two reserved values.
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &0u8, &0u8]),
    );
    dsdt.append_slice(&to_bytes(&s5));
    dsdt.append_slice(&crate::pci::acpi::root_bridge_aml());
    for (index, slot) in virtio_mmio.iter().enumerate() {
        dsdt.append_slice(&virtio_mmio_aml(index, slot));
    }
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        // No sleep button; the power button is the fixed-hardware one (flag clear).
        .flag(Flags::SlpButton)
        .flag(Flags::Wbinvd);
    builder.sci_int = SCI_IRQ.into();
    // No SMI command port: the machine is in ACPI mode from reset (SCI_EN reads as set).
    builder.smi_cmd = 0.into();
    builder.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    builder.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    builder.pm1_evt_len = 4;
    builder.pm1_cnt_len = 2;
    builder.iapc_boot_arch =
        (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).into();
    to_bytes(&builder.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(*b"APIC", 36, 4, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.append_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    madt.append_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..vcpus {
        // Processor local APIC: type 0, length 8, uid, APIC id, flags (enabled).
        madt.append_slice(&[0, 8, id, id]);
        madt.append_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, id (after the CPUs'), reserved, address, GSI base 0.
    madt.append_slice(&[1, 12, vcpus, 0]);
    madt.append_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    madt.append_slice(&0u32.to_le_bytes());
    // Interrupt source override for the SCI: type 2, length 10, ISA bus, IRQ 9 -> GSI 9,
    // active high level (the default for the SCI would be active low).
    madt.append_slice(&[2, 10, 0, SCI_IRQ as u8]);
    madt.append_slice(&u32::from(SCI_IRQ).to_le_bytes());
    madt.append_slice(&MPS_INTI_ACTIVE_HIGH_LEVEL.to_le_bytes());
    madt.update_checksum();
    madt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn tables_fit_and_checksum() {
        let tables = build(4, &[]).unwrap();
        let (rsdp_addr, rsdp) = &tables.tables[0];
        assert_eq!(*rsdp_addr, GuestAddress(0xE0000));
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        for (addr, table) in &tables.tables[1..] {
            assert!(checksum_ok(table), "{:?}", std::str::from_utf8(&table[..4]));
            assert_eq!(u32_at(table, 4) as usize, table.len());
            assert!(addr.0 + table.len() as u64 <= ACPI_END);
        }
        assert!(build(254, &[]).is_ok());
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu_and_the_sci_override() {
        let tables = build(3, &[]).unwrap();
        let madt = &tables
            .tables
            .iter()
            .find(|(_, t)| &t[..4] == b"APIC")
            .unwrap()
            .1;
        let mut offset = 44;
        let mut lapic_ids = Vec::new();
        let mut sci_override = false;
        while offset < madt.len() {
            let (kind, len) = (madt[offset], madt[offset + 1] as usize);
            match kind {
                0 if u32_at(madt, offset + 4) & 1 == 1 => lapic_ids.push(madt[offset + 3]),
                2 => sci_override = madt[offset + 3] == 9 && u32_at(madt, offset + 4) == 9,
                _ => {}
            }
            offset += len;
        }
        assert_eq!(lapic_ids, [0, 1, 2]);
        assert!(sci_override);
    }

    #[test]
    fn fadt_points_at_pm1a_blocks_and_dsdt_has_s5() {
        let tables = build(1, &[]).unwrap();
        let find = |sig: &[u8]| tables.tables.iter().find(|(_, t)| &t[..4] == sig).unwrap();
        let fadt = &find(b"FACP").1;
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI_INT");
        assert_eq!(u32_at(fadt, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(fadt, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!((fadt[88], fadt[89]), (4, 2), "PM1 lengths");
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let (dsdt_addr, dsdt) = find(b"DSDT");
        assert_eq!(x_dsdt, dsdt_addr.0);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        assert!(
            !dsdt.windows(8).any(|w| w == b"LNRO0005"),
            "no disk, no virtio device"
        );
        // The XSDT lists the FADT, the MADT and the MCFG.
        let xsdt = &find(b"XSDT").1;
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            entries,
            [find(b"FACP").0.0, find(b"APIC").0.0, find(b"MCFG").0.0]
        );
    }

    #[test]
    fn a_virtio_mmio_device_is_described_with_its_window_and_interrupt() {
        let slot = VirtioMmioSlot {
            base: 0xD000_0000,
            size: 0x1000,
            gsi: 5,
        };
        let tables = build(1, &[slot]).unwrap();
        let dsdt = &tables
            .tables
            .iter()
            .find(|(_, t)| &t[..4] == b"DSDT")
            .unwrap()
            .1;
        assert!(checksum_ok(dsdt));
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"VR00") && has(b"LNRO0005"));
        // Memory32Fixed (0x86, length 9): read-write, base 0xD0000000, length 0x1000.
        assert!(has(&[0x86, 9, 0, 1, 0, 0, 0, 0xD0, 0, 0x10, 0, 0]));
        // Extended interrupt (0x89, length 6): consumer + edge (flags 0b11), one interrupt, 5.
        assert!(has(&[0x89, 6, 0, 0b11, 1, 5, 0, 0, 0]));
    }
}
