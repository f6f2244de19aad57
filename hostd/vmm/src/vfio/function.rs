//! A VFIO device as a function on the guest's PCI bus: the configuration space shadow, the
//! BAR mappings and trapped ranges, and the interrupt vectors, kept in step with what the
//! guest programs.

use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vfio_ioctls::VfioDevice;

use super::config_shadow::{ConfigShadow, DeviceConfig};
use super::interrupts::{InterruptBackend, Vectors};
use crate::api::{InterruptMode, PassthroughStatus};
use crate::pci::function::{PciAddress, PciFunction};
use crate::pci::regs;
use crate::pci::window::PAGE_SIZE;
use crate::vfio::bars::BarMappings;

/// The device's configuration space through its VFIO fd.
struct VfioConfigSpace<'a>(&'a VfioDevice);

impl DeviceConfig for VfioConfigSpace<'_> {
    fn read(&self, register: u16) -> u32 {
        let mut dword = [0u8; 4];
        self.0.region_read(
            VFIO_PCI_CONFIG_REGION_INDEX,
            &mut dword,
            u64::from(register),
        );
        u32::from_le_bytes(dword)
    }

    fn write(&self, register: u16, offset: u8, data: &[u8]) {
        let at = u64::from(register) + u64::from(offset);
        self.0.region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, at);
    }
}

/// What a function needs at creation (see [`super::Passthrough::open`]).
///
/// Field order is drop order: the BAR mappings (mmaps of the device fd, and duplicates of
/// it) go before the device. With them still open, closing the device would leave its group
/// busy and VFIO would refuse to take the group out of the container.
pub struct FunctionParts {
    /// The mmapped BAR pieces.
    pub bars: BarMappings,
    /// Its interrupt vectors (VFIO signals their eventfds until interrupts are disabled).
    pub vectors: Vectors,
    /// KVM routes and irqfds.
    pub interrupts: Box<dyn InterruptBackend>,
    /// The opened device.
    pub device: Arc<VfioDevice>,
    /// Its host PCI address.
    pub host_address: String,
    /// Its IOMMU group.
    pub group: u32,
    /// Vendor and device ID.
    pub ids: (u16, u16),
    /// The configuration space shadow, BARs assigned.
    pub shadow: ConfigShadow,
    /// Vectors VFIO offers for MSI-X and MSI.
    pub vfio_vectors: (u32, u32),
    /// The BAR window: BARs the guest moves outside it are not mapped.
    pub window: (u64, u64),
}

impl std::fmt::Debug for FunctionParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionParts")
            .field("host_address", &self.host_address)
            .field("group", &self.group)
            .field("bars", &self.bars)
            .finish()
    }
}

/// A passthrough function on the guest's bus.
pub struct VfioPciFunction {
    parts: FunctionParts,
    guest_address: PciAddress,
    mode: InterruptMode,
    resets: u32,
}

impl std::fmt::Debug for VfioPciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciFunction")
            .field("host", &self.parts.host_address)
            .field("guest", &self.guest_address.to_string())
            .field("mode", &self.mode)
            .finish()
    }
}

impl VfioPciFunction {
    /// A function from its parts, at `guest_address`.
    pub fn new(parts: FunctionParts, guest_address: PciAddress) -> Self {
        Self {
            parts,
            guest_address,
            mode: InterruptMode::None,
            resets: 0,
        }
    }

    /// What status reports about it.
    pub fn status(&self) -> PassthroughStatus {
        PassthroughStatus {
            host_address: self.parts.host_address.clone(),
            guest_address: self.guest_address.to_string(),
            iommu_group: self.parts.group,
            vendor_id: self.parts.ids.0,
            device_id: self.parts.ids.1,
            msix_vectors: self.parts.shadow.msix().map_or(0, |m| m.vectors),
            interrupts: self.mode,
            live_vectors: self.parts.vectors.live() as u32,
            resets: self.resets,
        }
    }

    fn config(&self) -> VfioConfigSpace<'_> {
        VfioConfigSpace(&self.parts.device)
    }

    /// Places or removes each BAR's mapped pieces to match the guest's BAR addresses and
    /// memory decoding.
    fn sync_mappings(&mut self) {
        let (start, end) = self.parts.window;
        let enabled = self.parts.shadow.memory_enabled();
        for index in 0..regs::BAR_COUNT {
            let Some((base, size)) = self.parts.shadow.bar(index) else {
                continue;
            };
            let inside = base >= start && base.checked_add(size).is_some_and(|e| e <= end);
            let place = enabled && inside && base % PAGE_SIZE == 0;
            if enabled && !inside {
                log::warn!(
                    "{}: guest put BAR {index} at {base:#x}, outside the BAR window: not mapped",
                    self.parts.host_address
                );
            }
            self.parts.bars.place(index, place.then_some(base));
        }
    }

    /// The interrupt mode the guest's MSI and MSI-X capabilities ask for.
    fn wanted_mode(&self) -> InterruptMode {
        let shadow = &self.parts.shadow;
        if shadow.msix().is_some_and(|m| m.enabled()) {
            InterruptMode::Msix
        } else if let Some(msi) = shadow.msi().filter(|m| m.enabled()) {
            InterruptMode::Msi {
                vectors: msi.vectors(),
            }
        } else {
            InterruptMode::None
        }
    }

    /// Brings VFIO's interrupt mode and each vector's route and irqfd in line with the
    /// guest's MSI / MSI-X programming.
    fn sync_interrupts(&mut self) {
        let wanted = self.wanted_mode();
        if wanted != self.mode {
            self.disable_interrupts();
            let (msix_max, msi_max) = self.parts.vfio_vectors;
            let device = &self.parts.device;
            let result = match wanted {
                InterruptMode::Msix => {
                    let count = self.parts.shadow.msix().map_or(0, |m| u32::from(m.vectors));
                    device.enable_msix(self.parts.vectors.eventfds(count.min(msix_max) as usize))
                }
                InterruptMode::Msi { vectors } => {
                    device.enable_msi(self.parts.vectors.eventfds(vectors.min(msi_max) as usize))
                }
                InterruptMode::None => Ok(()),
            };
            if let Err(err) = result {
                log::error!(
                    "{}: VFIO refused to enable {wanted:?}: {err}",
                    self.parts.host_address
                );
                return;
            }
            log::info!(
                "{} ({}): interrupts {wanted:?}",
                self.parts.host_address,
                self.guest_address
            );
            self.mode = wanted;
        }
        self.update_vectors(None);
    }

    /// Updates the route and irqfd of `only` vector, or of all of them.
    fn update_vectors(&mut self, only: Option<&[u16]>) {
        let parts = &mut self.parts;
        let messages: Vec<(usize, _)> = match self.mode {
            InterruptMode::None => Vec::new(),
            InterruptMode::Msix => {
                let Some(msix) = parts.shadow.msix() else {
                    return;
                };
                (0..msix.vectors)
                    .filter(|v| only.is_none_or(|only| only.contains(v)))
                    .map(|v| (usize::from(v), msix.message(v)))
                    .collect()
            }
            InterruptMode::Msi { vectors } => {
                let Some(msi) = parts.shadow.msi() else {
                    return;
                };
                (0..vectors).map(|v| (v as usize, msi.message(v))).collect()
            }
        };
        for (vector, message) in messages {
            if let Err(err) = parts
                .vectors
                .update(vector, message, &mut *parts.interrupts)
            {
                log::error!("{} vector {vector}: {err}", parts.host_address);
            }
        }
    }

    fn disable_interrupts(&mut self) {
        self.parts.vectors.disable_all(&mut *self.parts.interrupts);
        let result = match self.mode {
            InterruptMode::Msix => self.parts.device.disable_msix(),
            InterruptMode::Msi { .. } => self.parts.device.disable_msi(),
            InterruptMode::None => Ok(()),
        };
        if let Err(err) = result {
            log::warn!(
                "{}: disabling {:?}: {err}",
                self.parts.host_address,
                self.mode
            );
        }
        self.mode = InterruptMode::None;
    }

    /// Quiesces the device for good (VM stop, VMM exit, failed start): interrupts off, the
    /// device reset (it stops DMA), BARs out of the guest.
    pub fn shutdown(&mut self) {
        self.disable_interrupts();
        self.parts.device.reset();
        self.parts.bars.remove_all();
        log::info!("{}: reset and released", self.parts.host_address);
    }
}

impl PciFunction for VfioPciFunction {
    fn read_config(&mut self, register: u16) -> u32 {
        self.parts.shadow.read(register, &self.config())
    }

    fn write_config(&mut self, register: u16, offset: u8, data: &[u8]) {
        let device = VfioConfigSpace(&self.parts.device);
        let effect = self.parts.shadow.write(register, offset, data, &device);
        if effect.mappings {
            self.sync_mappings();
        }
        if effect.interrupts {
            self.sync_interrupts();
        }
    }

    fn trapped_bar_at(&self, addr: u64, len: usize) -> Option<(usize, u64)> {
        if !self.parts.shadow.memory_enabled() {
            return None;
        }
        (0..regs::BAR_COUNT).find_map(|index| {
            let (base, size) = self.parts.shadow.bar(index)?;
            let end = addr.checked_add(len as u64)?;
            (addr >= base && end <= base + size).then(|| (index, addr - base))
        })
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some(msix) = self.parts.shadow.msix() {
            if msix.table.contains(bar, offset, data.len() as u64) {
                msix.read_table(offset - msix.table.offset, data);
                return;
            }
        }
        self.parts.device.region_read(bar as u32, data, offset);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(msix) = self.parts.shadow.msix_mut() {
            if msix.table.contains(bar, offset, data.len() as u64) {
                let changed = msix.write_table(offset - msix.table.offset, data);
                if !changed.is_empty() && self.mode == InterruptMode::Msix {
                    self.update_vectors(Some(&changed));
                }
                return;
            }
        }
        self.parts.device.region_write(bar as u32, data, offset);
    }

    fn reset(&mut self) {
        self.shutdown();
        self.parts.shadow.reset();
        self.resets += 1;
    }
}
