//! A passthrough function's BARs in the guest: the parts VFIO lets the VMM mmap become KVM
//! memory slots at the BAR's guest address, so the guest reaches the device's registers with
//! no exit; the rest (the MSI-X table and PBA pages, regions VFIO does not let map, BARs
//! smaller than a page) trap to the VMM, which forwards them through the VFIO device fd.
//!
//! Slots follow the guest: they are placed when it enables memory decoding, and moved when it
//! moves a BAR (slot numbers stay; only their guest address changes).

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vm_memory::FileOffset;
use vm_memory::mmap::MmapRegion;

use crate::pci::window::PAGE_SIZE;

/// A byte range inside a BAR: `(offset, len)`.
pub type Range = (u64, u64);

fn page_down(value: u64) -> u64 {
    value & !(PAGE_SIZE - 1)
}

fn page_up(value: u64) -> u64 {
    value.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// The page-aligned parts of a BAR of `size` bytes to map into the guest: the areas VFIO
/// allows to mmap (`None` when it allows none; the whole BAR when it gives no sparse list),
/// minus the pages holding the `trapped` ranges.
pub fn mappable(size: u64, mmap_areas: Option<&[Range]>, trapped: &[Range]) -> Vec<Range> {
    let Some(areas) = mmap_areas else {
        return Vec::new();
    };
    let whole = [(0, size)];
    let areas = if areas.is_empty() { &whole[..] } else { areas };
    let mut pieces: Vec<Range> = areas
        .iter()
        .filter_map(|&(offset, len)| {
            let start = page_up(offset);
            let end = page_down(offset.saturating_add(len).min(size));
            (end > start).then_some((start, end - start))
        })
        .collect();
    for &(offset, len) in trapped {
        let (hole_start, hole_end) = (page_down(offset), page_up(offset.saturating_add(len)));
        pieces = pieces
            .into_iter()
            .flat_map(|(start, len)| {
                let end = start + len;
                let mut left = Vec::new();
                if start < hole_start.min(end) {
                    left.push((start, hole_start.min(end) - start));
                }
                if hole_end.max(start) < end {
                    left.push((hole_end.max(start), end - hole_end.max(start)));
                }
                left
            })
            .collect();
    }
    pieces
}

/// What VFIO says about mmapping BAR `index` of `device`: `None` when it cannot be mapped,
/// else its sparse areas (empty: the whole region).
pub fn mmap_areas(device: &VfioDevice, index: u32) -> Option<Vec<Range>> {
    if device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return None;
    }
    let sparse = device
        .get_region_caps(index)
        .into_iter()
        .find_map(|cap| match cap {
            VfioRegionInfoCap::SparseMmap(sparse) => Some(
                sparse
                    .areas
                    .iter()
                    .map(|area| (area.offset, area.size))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        });
    Some(sparse.unwrap_or_default())
}

/// One mapped piece of a BAR.
struct Piece {
    bar: usize,
    offset: u64,
    len: u64,
    slot: u32,
    /// Where it is in the guest now, if anywhere.
    at: Option<u64>,
    mapping: MmapRegion<()>,
}

/// Errors setting up a BAR's mapping.
#[derive(Debug, thiserror::Error)]
pub enum BarMapError {
    /// The device fd could not be duplicated for the mapping.
    #[error("cannot duplicate the VFIO device fd")]
    Dup(#[source] std::io::Error),
    /// mmap of the region failed.
    #[error("cannot mmap BAR {bar} (offset {offset:#x}, {len:#x} bytes) of the device")]
    Mmap {
        /// BAR index.
        bar: usize,
        /// Offset in the BAR.
        offset: u64,
        /// Length.
        len: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The VM has no KVM memory slot left.
    #[error("no KVM memory slot left for BAR {bar} (the VM has {max})")]
    NoSlot {
        /// BAR index.
        bar: usize,
        /// Slots of the VM.
        max: u32,
    },
}

/// KVM memory slot numbers for BAR pieces: after the RAM's, up to KVM's limit.
#[derive(Debug)]
pub struct SlotNumbers {
    next: u32,
    max: u32,
}

impl SlotNumbers {
    /// Numbers from `first` (the first slot RAM does not use) below `max`.
    pub fn new(first: u32, max: u32) -> Self {
        Self { next: first, max }
    }

    fn take(&mut self, bar: usize) -> Result<u32, BarMapError> {
        if self.next >= self.max {
            return Err(BarMapError::NoSlot { bar, max: self.max });
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// The mapped pieces of one function's BARs and their KVM slots.
pub struct BarMappings {
    vm_fd: Arc<VmFd>,
    pieces: Vec<Piece>,
}

impl std::fmt::Debug for BarMappings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pieces: Vec<(usize, u64, u64, Option<u64>)> = self
            .pieces
            .iter()
            .map(|p| (p.bar, p.offset, p.len, p.at))
            .collect();
        f.debug_struct("BarMappings")
            .field("pieces", &pieces)
            .finish()
    }
}

impl BarMappings {
    /// mmaps `ranges` (per BAR: the pieces [`mappable`] gives) of `device`; none is placed in
    /// the guest yet.
    pub fn new(
        device: &VfioDevice,
        ranges: &[(usize, Vec<Range>)],
        vm_fd: Arc<VmFd>,
        slots: &mut SlotNumbers,
    ) -> Result<Self, BarMapError> {
        let mut pieces = Vec::new();
        for (bar, bar_ranges) in ranges {
            let region_offset = device.get_region_offset(*bar as u32);
            for &(offset, len) in bar_ranges {
                // SAFETY: the fd is the open VFIO device fd `device` owns for this whole call;
                // it is only borrowed to duplicate it.
                let borrowed = unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) };
                let file = File::from(borrowed.try_clone_to_owned().map_err(BarMapError::Dup)?);
                let mapping = MmapRegion::<()>::build(
                    Some(FileOffset::new(file, region_offset + offset)),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
                .map_err(|source| BarMapError::Mmap {
                    bar: *bar,
                    offset,
                    len,
                    source,
                })?;
                pieces.push(Piece {
                    bar: *bar,
                    offset,
                    len,
                    slot: slots.take(*bar)?,
                    at: None,
                    mapping,
                });
            }
        }
        Ok(Self { vm_fd, pieces })
    }

    /// Whether the access at `offset` of `bar` lies in a piece that is mapped (placed) now.
    pub fn is_mapped(&self, bar: usize, offset: u64) -> bool {
        self.pieces.iter().any(|p| {
            p.bar == bar && p.at.is_some() && offset >= p.offset && offset < p.offset + p.len
        })
    }

    /// Places BAR `bar`'s pieces at guest address `base` (or, with `None`, removes them).
    /// Failures are logged: the guest then reaches those registers through the trap path.
    pub fn place(&mut self, bar: usize, base: Option<u64>) {
        for piece in self.pieces.iter_mut().filter(|p| p.bar == bar) {
            let want = base.map(|b| b + piece.offset);
            if piece.at == want {
                continue;
            }
            if piece.at.is_some() {
                if let Err(err) = set_slot(&self.vm_fd, piece, None) {
                    log::error!("cannot remove KVM slot {}: {err}", piece.slot);
                }
                piece.at = None;
            }
            if let Some(addr) = want {
                match set_slot(&self.vm_fd, piece, Some(addr)) {
                    Ok(()) => piece.at = Some(addr),
                    Err(err) => log::error!(
                        "cannot map BAR {bar}+{:#x} at {addr:#x} (KVM slot {}): {err}",
                        piece.offset,
                        piece.slot
                    ),
                }
            }
        }
    }

    /// Removes every piece from the guest.
    pub fn remove_all(&mut self) {
        let bars: Vec<usize> = self.pieces.iter().map(|p| p.bar).collect();
        for bar in bars {
            self.place(bar, None);
        }
    }
}

impl Drop for BarMappings {
    fn drop(&mut self) {
        // The slots go before the mappings they point at are unmapped.
        self.remove_all();
    }
}

fn set_slot(vm_fd: &VmFd, piece: &Piece, at: Option<u64>) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot: piece.slot,
        guest_phys_addr: at.unwrap_or(0),
        // Size 0 deletes the slot.
        memory_size: if at.is_some() { piece.len } else { 0 },
        userspace_addr: piece.mapping.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the slot points at `piece.mapping`, a live mmap of `piece.len` bytes of the
    // device's BAR that lives as long as the piece; BarMappings removes every slot (Drop)
    // before the mappings are unmapped.
    unsafe { vm_fd.set_user_memory_region(region) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    #[test]
    fn the_msix_table_and_pba_pages_are_cut_out() {
        // igb VF BAR3: 16 KiB, table at 0 (48 bytes), PBA at 0x2000 (8 bytes).
        let trapped = [(0, 48), (0x2000, 8)];
        assert_eq!(
            mappable(16 * K, Some(&[]), &trapped),
            [(0x1000, 0x1000), (0x3000, 0x1000)]
        );
        // BAR0: no MSI-X structures, all of it.
        assert_eq!(mappable(16 * K, Some(&[]), &[]), [(0, 16 * K)]);
    }

    #[test]
    fn sparse_areas_and_unmappable_regions_are_honoured() {
        // VFIO's own sparse list already leaves the table out (no MSIX_MAPPABLE).
        let sparse = [(0x1000, 0x3000)];
        assert_eq!(
            mappable(16 * K, Some(&sparse), &[(0, 48), (0x2000, 8)]),
            [(0x1000, 0x1000), (0x3000, 0x1000)]
        );
        assert!(mappable(16 * K, None, &[]).is_empty(), "no mmap flag");
        // Areas are shrunk to whole pages.
        assert_eq!(
            mappable(16 * K, Some(&[(0x800, 0x2000)]), &[]),
            [(0x1000, 0x1000)]
        );
        assert!(
            mappable(128, Some(&[]), &[]).is_empty(),
            "smaller than a page"
        );
        // A trapped range straddling a page boundary takes both pages.
        assert_eq!(
            mappable(16 * K, Some(&[]), &[(0x1ff0, 0x20)]),
            [(0, 0x1000), (0x3000, 0x1000)]
        );
    }
}
