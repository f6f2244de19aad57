//! The guest-physical memory map of docs/VMM.md ("Memory map"), and where the VMM puts its
//! boot structures inside it. Every other module takes its addresses from here.

use vm_memory::GuestAddress;

/// End of the low RAM below the EBDA (`0x9FC00`): conventional memory the guest may use.
pub const LOW_RAM_END: u64 = 0x9_FC00;
/// Start of RAM above the legacy hole: kernels load here (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (3 GiB); RAM stops below it.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// Where RAM continues when the guest has more than 3 GiB.
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;

/// IOAPIC MMIO base (24 pins).
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
/// Number of IOAPIC pins KVM's in-kernel IOAPIC has.
pub const IOAPIC_PINS: u32 = 24;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;

/// The PCI BAR window inside the MMIO hole: the VMM assigns every BAR of a guest PCI function
/// here (32-bit and 64-bit BARs alike), and the DSDT's host bridge announces it as its only
/// memory window. 256 MiB: VFs' BARs are KiBs to a few MiB.
pub const PCI_BAR_WINDOW_START: u64 = 0xC000_0000;
/// Size of the PCI BAR window (it ends where the virtio-mmio windows start).
pub const PCI_BAR_WINDOW_SIZE: u64 = 0x1000_0000;
/// PCI Express enhanced configuration space (ECAM) of segment 0, announced in the ACPI MCFG
/// and reserved in the memory map.
pub const PCI_ECAM_BASE: u64 = 0xE000_0000;
/// ECAM size: bus 0 only (32 devices x 8 functions x 4 KiB).
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;

/// First virtio-mmio device window inside the MMIO hole; one 4 KiB page per device.
pub const VIRTIO_MMIO_BASE: u64 = 0xD000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI (IOAPIC pin) of the first virtio-mmio device; the next devices take the next pins.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;

/// GDT used for both boot protocols.
pub const BOOT_GDT: GuestAddress = GuestAddress(0x500);
/// Empty IDT loaded at boot (the guest installs its own).
pub const BOOT_IDT: GuestAddress = GuestAddress(0x520);
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: GuestAddress = GuestAddress(0x6000);
/// PVH module list (the initramfs, when given).
pub const PVH_MODLIST: GuestAddress = GuestAddress(0x6040);
/// PVH memory map entries.
pub const PVH_MEMMAP: GuestAddress = GuestAddress(0x6100);
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer for the Linux 64-bit entry.
pub const BOOT_STACK_TOP: u64 = 0x8FF0;
/// Identity-map page tables: PML4, one PDPT, four PDs (2 MiB pages covering 4 GiB).
pub const PML4: GuestAddress = GuestAddress(0x9000);
/// Page-directory-pointer table.
pub const PDPT: GuestAddress = GuestAddress(0xA000);
/// First of the four page directories.
pub const PD_FIRST: GuestAddress = GuestAddress(0xB000);
/// Kernel command line.
pub const CMDLINE: GuestAddress = GuestAddress(0x2_0000);
/// Room for the command line, including its NUL.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// ACPI tables (RSDP first, so the `0xE0000..0xFFFFF` scan finds it).
pub const ACPI_START: GuestAddress = GuestAddress(0xE_0000);
/// End of the ACPI table area.
pub const ACPI_END: u64 = 0x10_0000;

/// Kind of a memory-map entry, in the e820 / PVH numbering (they agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved (EBDA, ACPI tables, BIOS area).
    Reserved = 2,
}

/// One entry of the memory map given to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

/// The RAM ranges backing `ram_bytes` of guest RAM: `[0, min(ram, 3 GiB))` and, when RAM is
/// larger than 3 GiB, the rest from 4 GiB. The legacy hole `0x9FC00..0x100000` is backed by
/// RAM too (it holds the ACPI tables) but reported as reserved.
pub fn ram_ranges(ram_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = ram_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if ram_bytes > MMIO_HOLE_START {
        ranges.push((
            GuestAddress(RAM_ABOVE_4G_START),
            ram_bytes - MMIO_HOLE_START,
        ));
    }
    ranges
}

/// The memory map the guest is told about (PVH memmap, Linux e820), exactly as docs/VMM.md says.
pub fn memory_map(ram_bytes: u64) -> Vec<MemoryMapEntry> {
    let low_end = ram_bytes.min(MMIO_HOLE_START);
    let mut map = vec![
        MemoryMapEntry {
            start: 0,
            len: LOW_RAM_END,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            start: LOW_RAM_END,
            len: HIGH_RAM_START - LOW_RAM_END,
            kind: MemoryKind::Reserved,
        },
    ];
    if low_end > HIGH_RAM_START {
        map.push(MemoryMapEntry {
            start: HIGH_RAM_START,
            len: low_end - HIGH_RAM_START,
            kind: MemoryKind::Ram,
        });
    }
    // Linux only uses an MCFG's ECAM when the memory map reserves it ("MMCONFIG ... not
    // reserved in E820" otherwise, and it falls back to mechanism 1).
    map.push(MemoryMapEntry {
        start: PCI_ECAM_BASE,
        len: PCI_ECAM_SIZE,
        kind: MemoryKind::Reserved,
    });
    if ram_bytes > MMIO_HOLE_START {
        map.push(MemoryMapEntry {
            start: RAM_ABOVE_4G_START,
            len: ram_bytes - MMIO_HOLE_START,
            kind: MemoryKind::Ram,
        });
    }
    map
}

/// The smallest guest RAM the VMM accepts: the boot structures and a kernel at 1 MiB need it.
pub const MIN_RAM_BYTES: u64 = 2 * HIGH_RAM_START;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_ram_range_and_four_map_entries() {
        let ram = 64 << 20;
        assert_eq!(ram_ranges(ram), vec![(GuestAddress(0), ram)]);
        let map = memory_map(ram);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[0],
            MemoryMapEntry {
                start: 0,
                len: 0x9FC00,
                kind: MemoryKind::Ram
            }
        );
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!(map[1].start + map[1].len, 0x10_0000);
        assert_eq!(
            map[2],
            MemoryMapEntry {
                start: 0x10_0000,
                len: ram - 0x10_0000,
                kind: MemoryKind::Ram
            }
        );
        assert_eq!(
            map[3],
            MemoryMapEntry {
                start: PCI_ECAM_BASE,
                len: PCI_ECAM_SIZE,
                kind: MemoryKind::Reserved
            }
        );
    }

    #[test]
    fn mmio_hole_windows_do_not_overlap() {
        let mut windows = [
            (PCI_BAR_WINDOW_START, PCI_BAR_WINDOW_SIZE),
            (VIRTIO_MMIO_BASE, 8 * VIRTIO_MMIO_SIZE),
            (PCI_ECAM_BASE, PCI_ECAM_SIZE),
            (IOAPIC_ADDR, 0x1000),
        ];
        windows.sort();
        assert!(windows[0].0 >= MMIO_HOLE_START);
        for pair in windows.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let ram = 5u64 << 30;
        assert_eq!(
            ram_ranges(ram),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
        let map = memory_map(ram);
        let ram_total: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.len)
            .sum();
        // Only the legacy hole is withheld from the RAM the guest is told about.
        assert_eq!(ram_total, ram - (HIGH_RAM_START - LOW_RAM_END));
        assert_eq!(map.last().map(|e| e.start), Some(RAM_ABOVE_4G_START));
        assert!(
            map.iter()
                .filter(|e| e.kind == MemoryKind::Ram)
                .all(|e| e.start + e.len <= MMIO_HOLE_START || e.start >= 1 << 32)
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT.0, 0x20),
            (BOOT_IDT.0, 0x8),
            (PVH_START_INFO.0, 0x40),
            (PVH_MODLIST.0, 0x20),
            (PVH_MEMMAP.0, 0x100),
            (ZERO_PAGE.0, 0x1000),
            (BOOT_STACK_TOP - 0x100, 0x100),
            (PML4.0, 0x1000),
            (PDPT.0, 0x1000),
            (PD_FIRST.0, 0x4000),
            (CMDLINE.0, CMDLINE_MAX as u64),
            (ACPI_START.0, ACPI_END - ACPI_START.0),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
    }
}
