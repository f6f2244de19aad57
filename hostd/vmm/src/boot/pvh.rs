//! PVH boot: `hvm_start_info` (magic, version 1, RSDP, command line, memory map, and the
//! initramfs as module 0) for ELF kernels with a PVH entry note.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestMemoryMmap;

use crate::layout::{self, CMDLINE, PVH_MEMMAP, PVH_MODLIST, PVH_START_INFO};

use super::BootError;

/// The start info and its tables, before they are written.
pub fn start_info(
    ram_bytes: u64,
    initramfs: Option<(u64, u64)>,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Option<hvm_modlist_entry>,
) {
    let memmap: Vec<hvm_memmap_table_entry> = layout::memory_map(ram_bytes)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.start,
            size: e.len,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let module = initramfs.map(|(paddr, size)| hvm_modlist_entry {
        paddr,
        size,
        cmdline_paddr: 0,
        reserved: 0,
    });
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() { PVH_MODLIST.0 } else { 0 },
        cmdline_paddr: CMDLINE.0,
        rsdp_paddr: super::acpi::RSDP_ADDR.0,
        memmap_paddr: PVH_MEMMAP.0,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, module)
}

/// Writes the start info, the memory map and the module list.
pub fn write_start_info(
    memory: &GuestMemoryMmap,
    ram_bytes: u64,
    initramfs: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let (info, memmap, module) = start_info(ram_bytes, initramfs);
    let mut params = BootParams::new::<hvm_start_info>(&info, PVH_START_INFO);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, PVH_MEMMAP);
    if let Some(module) = module {
        params.set_modules::<hvm_modlist_entry>(&[module], PVH_MODLIST);
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, memory).map_err(|_| {
        BootError::GuestWrite {
            what: "PVH start info",
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(PVH_START_INFO),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn start_info_has_magic_rsdp_memmap_and_module() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_start_info(&memory, 64 << 20, Some((0x300_0000, 0x800))).unwrap();
        let info: hvm_start_info = memory.read_obj(PVH_START_INFO).unwrap();
        assert_eq!((info.magic, info.version), (0x336E_C578, 1));
        assert_eq!(info.rsdp_paddr, 0xE_0000);
        assert_eq!((info.memmap_paddr, info.memmap_entries), (PVH_MEMMAP.0, 4));
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST.0));
        let ram: u64 = (0..4)
            .map(|i| {
                memory
                    .read_obj::<hvm_memmap_table_entry>(PVH_MEMMAP.unchecked_add(i * 24))
                    .unwrap()
            })
            .filter(|e| e.type_ == 1)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (64 << 20) - (0x10_0000 - 0x9_FC00));
        let module: hvm_modlist_entry = memory.read_obj(PVH_MODLIST).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x800));
    }
}
