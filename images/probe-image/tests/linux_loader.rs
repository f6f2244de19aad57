//! The probe ELF passes the checks of linux-loader, the loader our VMM uses: PVH note found,
//! segments 2 MiB aligned, entry above 1 MiB, image inside a small guest.

use std::io::Cursor;

use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[test]
fn linux_loader_finds_the_pvh_entry_and_loads_the_image_at_2_mib() {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let himem_start = GuestAddress(0x10_0000);
    let result = Elf::load(
        &memory,
        None,
        &mut Cursor::new(probe_image::ELF),
        Some(himem_start),
    )
    .expect("linux-loader rejects the probe ELF");

    let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap else {
        panic!("no PVH entry note: {:?}", result.pvh_boot_cap);
    };
    assert_eq!(entry, result.kernel_load, "the PVH entry is the ELF entry");
    assert!(
        (0x20_0000..0x30_0000).contains(&entry.0),
        "entry {entry:?} not in the 2 MiB image"
    );
    // The image (with .bss and the 64 KiB stack) ends well inside a 64 MiB guest.
    assert!(
        result.kernel_end > 0x21_0000 && result.kernel_end < 0x40_0000,
        "{:#x}",
        result.kernel_end
    );

    // The bytes at 2 MiB are the ELF header (linker.ld puts the headers in the segment), and
    // the entry holds code (`cli` = 0xFA).
    let mut magic = [0u8; 4];
    memory
        .read_slice(&mut magic, GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(&magic, b"\x7fELF");
    assert_eq!(memory.read_obj::<u8>(entry).unwrap(), 0xFA);
}
