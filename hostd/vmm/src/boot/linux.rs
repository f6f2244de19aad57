//! Linux 64-bit boot protocol: the zero page (`boot_params`) with the setup header from the
//! bzImage, the command line, the initramfs and the e820 map of docs/VMM.md.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestMemoryMmap;

use crate::layout::{self, CMDLINE, ZERO_PAGE};

use super::BootError;

/// The 64-bit entry point is 0x200 past the protected-mode kernel's load address.
pub const ENTRY_64_OFFSET: u64 = 0x200;
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
const BOOT_FLAG_MAGIC: u16 = 0xAA55;
const XLF_KERNEL_64: u16 = 1;
/// `initrd_addr_max` of kernels older than boot protocol 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37FF_FFFF;

/// Whether the kernel has the 64-bit entry point (boot protocol 2.12+, `XLF_KERNEL_64`).
pub fn has_64bit_entry(header: &setup_header) -> bool {
    let version = header.version;
    let xloadflags = header.xloadflags;
    version >= 0x020C && xloadflags & XLF_KERNEL_64 != 0
}

/// Highest address the initramfs may occupy.
pub fn initrd_addr_max(header: &setup_header) -> u64 {
    let version = header.version;
    let max = header.initrd_addr_max;
    if version >= 0x0203 && max != 0 {
        u64::from(max)
    } else {
        DEFAULT_INITRD_ADDR_MAX
    }
}

/// Fills the zero page.
pub fn boot_params(
    header: setup_header,
    ram_bytes: u64,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE.0 as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = super::acpi::RSDP_ADDR.0;
    let map = layout::memory_map(ram_bytes);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.start,
            size: entry.len,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes the zero page.
pub fn write_boot_params(memory: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(params, ZERO_PAGE),
        memory,
    )
    .map_err(|_| BootError::GuestWrite {
        what: "zero page",
        source: vm_memory::GuestMemoryError::InvalidGuestAddress(ZERO_PAGE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn header(version: u16, xloadflags: u16) -> setup_header {
        setup_header {
            version,
            xloadflags,
            header: 0x5372_6448,
            initrd_addr_max: 0x7FFF_FFFF,
            ..Default::default()
        }
    }

    #[test]
    fn only_64bit_capable_kernels_are_accepted() {
        assert!(has_64bit_entry(&header(0x020F, 0x1)));
        assert!(!has_64bit_entry(&header(0x020F, 0x0)));
        assert!(!has_64bit_entry(&header(0x020A, 0x1)));
        assert_eq!(initrd_addr_max(&header(0x020F, 1)), 0x7FFF_FFFF);
        assert_eq!(initrd_addr_max(&header(0x0202, 1)), DEFAULT_INITRD_ADDR_MAX);
    }

    #[test]
    fn zero_page_has_cmdline_initramfs_rsdp_and_e820() {
        let params = boot_params(header(0x020F, 1), 64 << 20, 27, Some((0x3F0_0000, 0x1234)));
        let hdr = params.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xFF);
        assert_eq!({ hdr.boot_flag }, 0xAA55);
        assert_eq!({ hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ hdr.cmdline_size }, 27);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x3F0_0000, 0x1234)
        );
        assert_eq!({ params.acpi_rsdp_addr }, 0xE_0000);
        assert_eq!(params.e820_entries, 4);
        let e820: Vec<(u64, u64, u32)> = params.e820_table[..4]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(
            e820,
            [
                (0, 0x9_FC00, 1),
                (0x9_FC00, 0x10_0000 - 0x9_FC00, 2),
                (0x10_0000, (64 << 20) - 0x10_0000, 1),
                (0xE000_0000, 0x10_0000, 2)
            ]
        );
    }

    #[test]
    fn zero_page_is_written_at_0x7000() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let params = boot_params(header(0x020F, 1), 64 << 20, 1, None);
        write_boot_params(&memory, &params).unwrap();
        // "HdrS" at 0x202 of the zero page.
        let magic: u32 = memory.read_obj(GuestAddress(0x7000 + 0x202)).unwrap();
        assert_eq!(magic, 0x5372_6448);
        let entries: u8 = memory.read_obj(GuestAddress(0x7000 + 0x1E8)).unwrap();
        assert_eq!(entries, 4);
    }
}
