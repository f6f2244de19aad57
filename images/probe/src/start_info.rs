//! The PVH `hvm_start_info` the loader passes in `%ebx`: where the ACPI RSDP is, and the
//! memory map whose RAM entries make the banner's `ram=` figure.

use thiserror::Error;

use crate::le::{u32_at, u64_at};
use crate::phys::{PhysError, PhysMemory};

/// `hvm_start_info.magic` ("xEn3" with the top bit cleared).
pub const MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` up to and including the version 1 fields.
const SIZE: usize = 56;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: usize = 24;
/// Memory map type of usable RAM (the e820 numbering).
pub const MEMMAP_RAM: u32 = 1;
/// More entries than any sane map has: bounds the read of a corrupt count.
const MEMMAP_MAX_ENTRIES: u32 = 1024;

/// The fields of `hvm_start_info` the probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// Structure version (1 adds the memory map).
    pub version: u32,
    /// Guest-physical address of the ACPI RSDP, 0 when the loader gave none.
    pub rsdp_paddr: u64,
    /// Guest-physical address of the memory map (version >= 1).
    pub memmap_paddr: u64,
    /// Number of memory map entries (version >= 1).
    pub memmap_entries: u32,
}

/// Why the start info or its memory map could not be used.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum StartInfoError {
    /// `%ebx` did not point at readable memory.
    #[error("cannot read hvm_start_info at {addr:#x}: the loader must pass its address in %ebx")]
    Unreadable {
        /// The address from `%ebx`.
        addr: u64,
        /// Why it could not be read.
        #[source]
        source: PhysError,
    },
    /// The structure there is not a start info.
    #[error(
        "hvm_start_info at {addr:#x} has magic {found:#x}, not {MAGIC:#x}: the probe was not \
         started through the PVH entry (use a loader that honours the PVH ELF note)"
    )]
    BadMagic {
        /// The address from `%ebx`.
        addr: u64,
        /// The magic found there.
        found: u32,
    },
    /// Version 0 has no memory map.
    #[error(
        "hvm_start_info version {version} has no memory map: the loader must pass version 1 \
         with memmap_paddr / memmap_entries (docs/VMM.md)"
    )]
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// The memory map is empty or its entries cannot be read.
    #[error(
        "hvm_start_info memory map at {addr:#x} ({entries} entries) is unreadable: fix the \
         loader's memmap_paddr / memmap_entries"
    )]
    MemoryMapUnreadable {
        /// `memmap_paddr`.
        addr: u64,
        /// `memmap_entries`.
        entries: u32,
        /// Why it could not be read.
        #[source]
        source: PhysError,
    },
}

impl StartInfo {
    /// Reads and checks the start info at `addr`.
    pub fn read(mem: &impl PhysMemory, addr: u64) -> Result<Self, StartInfoError> {
        // Version 0 structures are 48 bytes; read those first, then the rest for version 1.
        let head = mem
            .bytes(addr, 48)
            .map_err(|source| StartInfoError::Unreadable { addr, source })?;
        let field32 = |offset| u32_at(head, offset).unwrap_or(0);
        let magic = field32(0);
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic { addr, found: magic });
        }
        let version = field32(4);
        let rsdp_paddr = u64_at(head, 32).unwrap_or(0);
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            let full = mem
                .bytes(addr, SIZE)
                .map_err(|source| StartInfoError::Unreadable { addr, source })?;
            (u64_at(full, 40).unwrap_or(0), u32_at(full, 48).unwrap_or(0))
        } else {
            (0, 0)
        };
        Ok(Self {
            version,
            rsdp_paddr,
            memmap_paddr,
            memmap_entries,
        })
    }

    /// Sum of the sizes of the RAM entries of the memory map, in bytes.
    pub fn ram_bytes(&self, mem: &impl PhysMemory) -> Result<u64, StartInfoError> {
        if self.version < 1 {
            return Err(StartInfoError::NoMemoryMap {
                version: self.version,
            });
        }
        let entries = self.memmap_entries.min(MEMMAP_MAX_ENTRIES);
        let unreadable = |source| StartInfoError::MemoryMapUnreadable {
            addr: self.memmap_paddr,
            entries: self.memmap_entries,
            source,
        };
        if entries == 0 {
            return Err(unreadable(PhysError::OutsideMap {
                addr: self.memmap_paddr,
                len: 0,
            }));
        }
        let table = mem
            .bytes(self.memmap_paddr, entries as usize * MEMMAP_ENTRY_SIZE)
            .map_err(unreadable)?;
        let ram = table
            .chunks_exact(MEMMAP_ENTRY_SIZE)
            .filter(|entry| u32_at(entry, 16) == Some(MEMMAP_RAM))
            .filter_map(|entry| u64_at(entry, 8))
            .fold(0u64, u64::saturating_add);
        Ok(ram)
    }
}

/// Bytes to whole MiB, rounded to the nearest: a map that reserves the legacy hole
/// (0x9FC00..0x100000) out of 64 MiB still reads as 64 MiB.
pub fn mib_rounded(bytes: u64) -> u64 {
    bytes.saturating_add(1 << 19) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::fake::FakeMemory;

    const INFO: u64 = 0x6000;
    const MEMMAP: u64 = 0x6100;

    fn memory_with(version: u32, map: &[(u64, u64, u32)]) -> FakeMemory {
        let mut mem = FakeMemory::new(0x1000, 0x10000);
        let mut info = [0u8; SIZE];
        info[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        info[4..8].copy_from_slice(&version.to_le_bytes());
        info[32..40].copy_from_slice(&0xE0000u64.to_le_bytes());
        info[40..48].copy_from_slice(&MEMMAP.to_le_bytes());
        info[48..52].copy_from_slice(&(map.len() as u32).to_le_bytes());
        mem.write(INFO, &info);
        for (i, (addr, size, kind)) in map.iter().enumerate() {
            let mut entry = [0u8; MEMMAP_ENTRY_SIZE];
            entry[0..8].copy_from_slice(&addr.to_le_bytes());
            entry[8..16].copy_from_slice(&size.to_le_bytes());
            entry[16..20].copy_from_slice(&kind.to_le_bytes());
            mem.write(MEMMAP + (i * MEMMAP_ENTRY_SIZE) as u64, &entry);
        }
        mem
    }

    #[test]
    fn sums_ram_entries_of_our_vmms_64_mib_map() {
        // docs/VMM.md: RAM below the EBDA, the reserved legacy hole, RAM from 1 MiB.
        let mem = memory_with(
            1,
            &[
                (0, 0x9FC00, 1),
                (0x9FC00, 0x60400, 2),
                (0x100000, 63 << 20, 1),
            ],
        );
        let info = StartInfo::read(&mem, INFO).unwrap();
        assert_eq!(info.rsdp_paddr, 0xE0000);
        let ram = info.ram_bytes(&mem).unwrap();
        assert_eq!(ram, 0x9FC00 + (63 << 20));
        assert_eq!(mib_rounded(ram), 64);
    }

    #[test]
    fn refuses_wrong_magic_and_version_0() {
        let mut mem = memory_with(0, &[]);
        let info = StartInfo::read(&mem, INFO).unwrap();
        assert_eq!(
            info.ram_bytes(&mem),
            Err(StartInfoError::NoMemoryMap { version: 0 })
        );
        mem.write(INFO, &0xdead_beefu32.to_le_bytes());
        assert_eq!(
            StartInfo::read(&mem, INFO),
            Err(StartInfoError::BadMagic {
                addr: INFO,
                found: 0xdead_beef
            })
        );
        assert!(matches!(
            StartInfo::read(&mem, 0),
            Err(StartInfoError::Unreadable { .. })
        ));
    }

    #[test]
    fn empty_memory_map_is_an_error() {
        let mem = memory_with(1, &[]);
        let info = StartInfo::read(&mem, INFO).unwrap();
        assert!(matches!(
            info.ram_bytes(&mem),
            Err(StartInfoError::MemoryMapUnreadable { .. })
        ));
    }

    #[test]
    fn rounds_to_the_nearest_mib() {
        assert_eq!(mib_rounded(64 << 20), 64);
        assert_eq!(mib_rounded((64 << 20) - (1 << 19)), 64);
        assert_eq!(mib_rounded((64 << 20) - (1 << 19) - 1), 63);
        assert_eq!(mib_rounded(u64::MAX), u64::MAX >> 20);
    }
}
