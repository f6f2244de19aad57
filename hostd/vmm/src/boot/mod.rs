//! Loading a guest and the boot state it starts from (docs/VMM.md "Boot protocols").
//!
//! [`BootImage::open`] checks the files before anything else happens (a missing or
//! non-kernel file is refused at start); [`BootImage::load`] writes kernel, initramfs,
//! command line, boot parameters, ACPI tables, GDT and page tables into guest RAM. It runs
//! at start and again at every reset, so a rebooted VM starts from the same state.

pub mod acpi;
pub mod cpu;
pub mod cpuid;
mod linux;
mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{CMDLINE, CMDLINE_MAX, HIGH_RAM_START, MMIO_HOLE_START};

pub use cpu::EntryMode;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel (or initramfs) file cannot be opened.
    #[error("cannot open the {what} {path}: check kernel.path / kernel.initramfs in the config")]
    Open {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF nor a bzImage.
    #[error("{path} is not a kernel: expected a Linux bzImage or an ELF with a PVH entry note")]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// An ELF without the PVH entry note.
    #[error(
        "{path} is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build the kernel with PVH support (CONFIG_PVH) or use its bzImage"
    )]
    NoPvhEntry {
        /// The file.
        path: PathBuf,
    },
    /// A bzImage without the 64-bit entry point.
    #[error(
        "{path} is a bzImage without a 64-bit entry point (boot protocol 2.12+, XLF_KERNEL_64): use a 64-bit kernel"
    )]
    NoLinux64Entry {
        /// The file.
        path: PathBuf,
    },
    /// linux-loader refused the kernel.
    #[error("cannot load the kernel {path}: is it complete and built for x86-64?")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Reading a file failed.
    #[error("cannot read the {what} {path}")]
    Read {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the top of low RAM.
    #[error(
        "the initramfs {path} ({size} bytes) does not fit in guest RAM above the kernel: raise memory_mib"
    )]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is not acceptable.
    #[error("the kernel command line is not valid")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing to guest memory failed.
    #[error("cannot write the {what} to guest memory")]
    GuestWrite {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Too many vCPUs for the ACPI area.
    #[error("the ACPI tables for {vcpus} vCPUs do not fit below 1 MiB")]
    AcpiTooLarge {
        /// vCPUs asked.
        vcpus: u8,
    },
    /// The boot MSR list could not be built.
    #[error("cannot build the boot MSR list")]
    Msrs,
}

/// Kernel formats the VMM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF with a PVH entry note (probe, Linux vmlinux).
    Elf,
    /// Linux bzImage, 64-bit boot protocol.
    BzImage,
}

/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Detects the format from the first bytes of the file.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if file.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .map_err(read_err)?;
    if file.read_exact(&mut magic).is_ok() && &magic == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel {
        path: path.to_owned(),
    })
}

/// What the guest boots from, with its files held open (a file replaced on disk does not
/// change what a reboot loads).
#[derive(Debug)]
pub struct BootImage {
    kernel: File,
    kernel_path: PathBuf,
    format: KernelFormat,
    initramfs: Option<(File, PathBuf)>,
    cmdline: Cmdline,
    vcpus: u8,
    ram_bytes: u64,
    /// Guest range the last load wrote the kernel to, zeroed before the next load so an ELF's
    /// BSS starts zeroed after a reset too.
    loaded_range: Option<(u64, u64)>,
    /// virtio-mmio devices to describe in the DSDT.
    virtio_mmio: Vec<VirtioMmioSlot>,
}

/// A virtio-mmio device's register window and interrupt, as the guest's ACPI tables describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Guest-physical base of its registers.
    pub base: u64,
    /// Size of its register window.
    pub size: u64,
    /// Its interrupt (an ISA IRQ on the IOAPIC: edge, active high).
    pub gsi: u32,
}

impl BootImage {
    /// Opens and checks the kernel and initramfs.
    pub fn open(
        kernel_path: &Path,
        initramfs_path: Option<&Path>,
        cmdline: Cmdline,
        vcpus: u8,
        ram_bytes: u64,
    ) -> Result<Self, BootError> {
        let open = |what, path: &Path| {
            File::open(path).map_err(|source| BootError::Open {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let mut kernel = open("kernel", kernel_path)?;
        let format = detect_format(&mut kernel, kernel_path)?;
        let initramfs = match initramfs_path {
            Some(path) => Some((open("initramfs", path)?, path.to_owned())),
            None => None,
        };
        Ok(Self {
            kernel,
            kernel_path: kernel_path.to_owned(),
            format,
            initramfs,
            cmdline,
            vcpus,
            ram_bytes,
            loaded_range: None,
            virtio_mmio: Vec::new(),
        })
    }

    /// Adds a virtio-mmio device for the guest's ACPI tables to describe.
    pub fn add_virtio_mmio(&mut self, slot: VirtioMmioSlot) {
        self.virtio_mmio.push(slot);
    }

    /// The kernel format.
    pub fn format(&self) -> KernelFormat {
        self.format
    }

    /// Writes everything the guest boots from into `memory` and returns how vCPU 0 enters it.
    pub fn load(&mut self, memory: &GuestMemoryMmap) -> Result<EntryMode, BootError> {
        if let Some((start, end)) = self.loaded_range.take() {
            zero(memory, start, end)?;
        }
        cpu::write_tables(memory)?;
        let acpi = acpi::build(self.vcpus, &self.virtio_mmio)?;
        acpi.write(memory)?;
        linux_loader::loader::load_cmdline(memory, CMDLINE, &self.cmdline).map_err(|source| {
            BootError::Load {
                path: self.kernel_path.clone(),
                source,
            }
        })?;
        let cmdline_len = self
            .cmdline
            .as_cstring()
            .map_err(BootError::Cmdline)?
            .as_bytes()
            .len();

        let path = self.kernel_path.clone();
        let load_err = |source| BootError::Load {
            path: path.clone(),
            source,
        };
        let highmem = Some(GuestAddress(HIGH_RAM_START));
        match self.format {
            KernelFormat::Elf => {
                let result =
                    Elf::load(memory, None, &mut self.kernel, highmem).map_err(load_err)?;
                let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap else {
                    return Err(BootError::NoPvhEntry { path });
                };
                self.loaded_range = Some((HIGH_RAM_START, result.kernel_end));
                let initramfs =
                    self.load_initramfs(memory, result.kernel_end, u64::from(u32::MAX))?;
                pvh::write_start_info(memory, self.ram_bytes, initramfs)?;
                Ok(EntryMode::Pvh {
                    entry: entry.0 as u32,
                    start_info: crate::layout::PVH_START_INFO.0 as u32,
                })
            }
            KernelFormat::BzImage => {
                let result =
                    BzImage::load(memory, None, &mut self.kernel, highmem).map_err(load_err)?;
                let header = result
                    .setup_header
                    .ok_or_else(|| BootError::NotAKernel { path: path.clone() })?;
                if !linux::has_64bit_entry(&header) {
                    return Err(BootError::NoLinux64Entry { path });
                }
                self.loaded_range = Some((result.kernel_load.0, result.kernel_end));
                let initramfs = self.load_initramfs(
                    memory,
                    result.kernel_end,
                    linux::initrd_addr_max(&header),
                )?;
                let params = linux::boot_params(header, self.ram_bytes, cmdline_len, initramfs);
                linux::write_boot_params(memory, &params)?;
                Ok(EntryMode::Linux64 {
                    entry: result.kernel_load.0 + linux::ENTRY_64_OFFSET,
                    zero_page: crate::layout::ZERO_PAGE.0,
                })
            }
        }
    }

    /// Places the initramfs at the top of low RAM (below `addr_max` and the MMIO hole), page
    /// aligned, and returns (address, size).
    fn load_initramfs(
        &mut self,
        memory: &GuestMemoryMmap,
        kernel_end: u64,
        addr_max: u64,
    ) -> Result<Option<(u64, u64)>, BootError> {
        let Some((file, path)) = self.initramfs.as_mut() else {
            return Ok(None);
        };
        let read_err = |source| BootError::Read {
            what: "initramfs",
            path: path.clone(),
            source,
        };
        let size = file.seek(SeekFrom::End(0)).map_err(read_err)?;
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let addr = initramfs_addr(size, self.ram_bytes, kernel_end, addr_max).ok_or_else(|| {
            BootError::InitramfsTooLarge {
                path: path.clone(),
                size,
            }
        })?;
        let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge {
            path: path.clone(),
            size,
        })?;
        memory
            .read_exact_volatile_from(GuestAddress(addr), file, len)
            .map_err(|source| BootError::GuestWrite {
                what: "initramfs",
                source,
            })?;
        Ok(Some((addr, size)))
    }
}

/// Where an initramfs of `size` bytes goes: page aligned, as high as possible below the end
/// of low RAM and `addr_max` (the highest byte it may occupy), above `kernel_end`.
pub fn initramfs_addr(size: u64, ram_bytes: u64, kernel_end: u64, addr_max: u64) -> Option<u64> {
    let top = ram_bytes
        .min(MMIO_HOLE_START)
        .min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xFFF;
    (addr >= kernel_end).then_some(addr)
}

fn zero(memory: &GuestMemoryMmap, start: u64, end: u64) -> Result<(), BootError> {
    const CHUNK: u64 = 64 << 10;
    let zeros = [0u8; CHUNK as usize];
    let mut addr = start;
    while addr < end {
        let len = (end - addr).min(CHUNK) as usize;
        memory
            .write_slice(&zeros[..len], GuestAddress(addr))
            .map_err(|source| BootError::GuestWrite {
                what: "cleared kernel range",
                source,
            })?;
        addr += len as u64;
    }
    Ok(())
}

/// The kernel command line, as given, limited to the room reserved for it.
pub fn cmdline(text: &str) -> Result<Cmdline, BootError> {
    Cmdline::try_from(text, CMDLINE_MAX).map_err(BootError::Cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn initramfs_goes_high_page_aligned_and_above_the_kernel() {
        let mib = 1u64 << 20;
        assert_eq!(
            initramfs_addr(0x1800, 64 * mib, 2 * mib, u64::MAX),
            Some(64 * mib - 0x2000)
        );
        // The bzImage's initrd_addr_max caps it.
        assert_eq!(
            initramfs_addr(4096, 8 << 30, 2 * mib, 0x37FF_FFFF),
            Some(0x3800_0000 - 4096)
        );
        // Large guests keep it below the MMIO hole.
        assert_eq!(
            initramfs_addr(4096, 8 << 30, 2 * mib, u64::MAX),
            Some(MMIO_HOLE_START - 4096)
        );
        assert_eq!(initramfs_addr(63 * mib, 64 * mib, 2 * mib, u64::MAX), None);
    }

    #[test]
    fn formats_are_detected_and_other_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::File::create(&path)
                .unwrap()
                .write_all(bytes)
                .unwrap();
            path
        };
        let elf = write("elf", b"\x7fELF\x02\x01\x01");
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = write("bz", &bz);
        let text = write("text", b"#!/bin/sh\necho not a kernel\n");
        let empty = write("empty", b"");
        let detect = |path: &PathBuf| detect_format(&mut File::open(path).unwrap(), path);
        assert_eq!(detect(&elf).unwrap(), KernelFormat::Elf);
        assert_eq!(detect(&bz).unwrap(), KernelFormat::BzImage);
        let err = detect(&text).unwrap_err().to_string();
        assert!(err.contains("is not a kernel"), "{err}");
        assert!(matches!(detect(&empty), Err(BootError::NotAKernel { .. })));
    }

    /// A minimal bzImage: one setup sector after the boot sector, then `payload`.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512];
        image[0x1F1] = 1; // setup_sects
        image[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes()); // version 2.15
        image[0x211] = 1; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        image[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
        image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn bzimage_boot_writes_kernel_initramfs_cmdline_and_zero_page() {
        use vm_memory::GuestMemoryBackend;
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, fake_bzimage(&[0xF4; 4096])).unwrap();
        let initramfs = dir.path().join("initrd");
        std::fs::write(&initramfs, [0x5A; 10_000]).unwrap();
        let ram = 64u64 << 20;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let mut image = BootImage::open(
            &kernel,
            Some(&initramfs),
            cmdline("console=ttyS0 root=/dev/vda").unwrap(),
            2,
            ram,
        )
        .unwrap();
        assert_eq!(image.format(), KernelFormat::BzImage);
        let entry = image.load(&memory).unwrap();
        assert_eq!(
            entry,
            EntryMode::Linux64 {
                entry: 0x10_0200,
                zero_page: 0x7000
            }
        );

        // The protected-mode kernel is at 1 MiB.
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(),
            0xF4
        );
        // Command line at 0x20000, NUL-terminated, and the zero page points at it.
        let mut text = [0u8; 28];
        memory.read_slice(&mut text, CMDLINE).unwrap();
        assert_eq!(&text[..27], b"console=ttyS0 root=/dev/vda");
        assert_eq!(text[27], 0);
        let zero_page = 0x7000u64;
        let read_u32 = |offset: u64| {
            memory
                .read_obj::<u32>(GuestAddress(zero_page + offset))
                .unwrap()
        };
        assert_eq!(read_u32(0x228), 0x2_0000, "cmd_line_ptr");
        // The initramfs sits page-aligned at the top of RAM, and the zero page says where.
        let (ramdisk_image, ramdisk_size) = (read_u32(0x218), read_u32(0x21C));
        assert_eq!(ramdisk_size, 10_000);
        assert_eq!(u64::from(ramdisk_image), (ram - 10_000) & !0xFFF);
        assert_eq!(
            memory
                .read_obj::<u8>(GuestAddress(u64::from(ramdisk_image)))
                .unwrap(),
            0x5A
        );
        assert_eq!(
            memory
                .read_obj::<u8>(GuestAddress(zero_page + 0x210))
                .unwrap(),
            0xFF,
            "type_of_loader"
        );
        // e820: three RAM and reserved entries, the last RAM up to the end of guest memory,
        // then the ECAM reservation.
        assert_eq!(
            memory
                .read_obj::<u8>(GuestAddress(zero_page + 0x1E8))
                .unwrap(),
            4
        );
        let last = zero_page + 0x2D0 + 2 * 20;
        let (addr, size) = (
            memory.read_obj::<u64>(GuestAddress(last)).unwrap(),
            memory.read_obj::<u64>(GuestAddress(last + 8)).unwrap(),
        );
        assert_eq!(addr + size, ram);
        // ACPI RSDP is where the guest looks for it.
        let mut rsdp = [0u8; 8];
        memory
            .read_slice(&mut rsdp, GuestAddress(0xE_0000))
            .unwrap();
        assert_eq!(&rsdp, b"RSD PTR ");
        assert!(memory.last_addr().0 >= ram - 1);
    }

    #[test]
    fn a_32bit_only_bzimage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage32");
        let mut image = fake_bzimage(&[0; 512]);
        image[0x236] = 0; // no XLF_KERNEL_64
        std::fs::write(&kernel, image).unwrap();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut boot = BootImage::open(&kernel, None, cmdline("").unwrap(), 1, 16 << 20).unwrap();
        let err = boot.load(&memory).unwrap_err();
        assert!(matches!(err, BootError::NoLinux64Entry { .. }), "{err}");
    }

    #[test]
    fn missing_kernel_names_the_file() {
        let err = BootImage::open(
            Path::new("/nonexistent/vmlinuz"),
            None,
            cmdline("").unwrap(),
            1,
            64 << 20,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/nonexistent/vmlinuz") && err.contains("kernel.path"),
            "{err}"
        );
    }
}
