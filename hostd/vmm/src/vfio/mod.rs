//! VFIO passthrough (docs/VMM.md "VF passthrough"): host PCI functions (SR-IOV VFs) given to
//! the guest, which drives them directly, with DMA confined by the IOMMU.
//!
//! The path, in [`Passthrough::open`]'s order:
//! 1. [`host::check`] (before /dev/kvm and RAM): the device exists, is bound to vfio-pci, its
//!    IOMMU group is viable, VFIO's nodes exist.
//! 2. One VFIO container per VM (type-1 IOMMU), registered with KVM's VFIO device; each
//!    device's group joins it and the device is opened (EBUSY: another VM has it).
//! 3. Each device's BARs get addresses in the BAR window ([`crate::pci::BarWindow`]), its
//!    configuration space a shadow ([`config_shadow`]), its mappable BAR pieces an mmap and a
//!    KVM slot ([`bars`]), its vectors an eventfd and a GSI ([`interrupts`]); it joins the
//!    guest's bus ([`function`]).
//! 4. All guest RAM is mapped for DMA, once for the container, IOVA = guest physical
//!    address.
//!
//! At a VM reset each function is reset ([`function::VfioPciFunction`]'s `reset`); when the
//! VM stops, and on every error path, [`Passthrough::shutdown`] disables interrupts, resets
//! the devices and unmaps DMA. If the process dies without that, the kernel does it when it
//! closes the fds (vfio-pci resets a device on its last close).

pub mod bars;
pub mod capabilities;
pub mod config_shadow;
pub mod error;
pub mod function;
pub mod host;
pub mod interrupts;
pub mod msix;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use self::bars::{BarMappings, SlotNumbers};
use self::config_shadow::{BarSpec, ConfigShadow};
pub use self::error::PassthroughError;
use self::function::{FunctionParts, VfioPciFunction};
use self::host::{HostDevice, HostPaths};
use self::interrupts::{GsiRouting, KvmInterrupts, Vectors};
use crate::api::PassthroughStatus;
use crate::devices::lock;
use crate::pci::{BarWindow, PciAddress, PciSegment, SharedFunction, regs};

/// What [`Passthrough::open`] needs from the VM being built.
#[derive(Debug)]
pub struct OpenRequest<'a> {
    /// The checked devices and the guest slot each asks for.
    pub devices: Vec<(HostDevice, Option<u8>)>,
    /// The VM.
    pub vm_fd: &'a Arc<VmFd>,
    /// Guest RAM (mapped for DMA).
    pub ram: &'a GuestMemoryMmap,
    /// The guest's bus, which the functions join.
    pub segment: &'a mut PciSegment,
    /// KVM memory slots: the first RAM does not use, and the VM's limit.
    pub memory_slots: (u32, u32),
    /// The host paths (for the holders of a busy group).
    pub host: &'a HostPaths,
}

/// The VM's passthrough devices: the VFIO container, the functions, the DMA mapping.
pub struct Passthrough {
    container: Option<Arc<VfioContainer>>,
    functions: Vec<Arc<Mutex<VfioPciFunction>>>,
    /// Guest RAM ranges mapped for DMA: (IOVA = guest address, length).
    dma: Vec<(u64, u64)>,
    /// Set once [`Passthrough::shutdown`] ran.
    released: bool,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("functions", &self.functions)
            .field("dma", &self.dma)
            .finish()
    }
}

/// The memory BARs of an opened device, from its VFIO regions and BAR registers. I/O BARs
/// are left out (hidden from the guest): SR-IOV VFs have none.
fn bar_specs(device: &VfioDevice, config: &[u8; 256], address: &str) -> [Option<BarSpec>; 6] {
    let mut specs = [None; regs::BAR_COUNT];
    let mut index = 0;
    while index < regs::BAR_COUNT {
        let at = usize::from(regs::BAR0) + 4 * index;
        let register =
            u32::from_le_bytes([config[at], config[at + 1], config[at + 2], config[at + 3]]);
        let size = device.get_region_size(index as u32);
        let is_64 = register & regs::BAR_IO == 0
            && register & regs::BAR_MEM_TYPE_64 != 0
            && index + 1 < regs::BAR_COUNT;
        if size > 0 && register & regs::BAR_IO != 0 {
            log::warn!("{address}: I/O BAR {index} is not passed through");
        } else if size > 0 {
            specs[index] = Some(BarSpec {
                size: size.next_power_of_two().max(16),
                is_64,
                prefetchable: register & regs::BAR_PREFETCHABLE != 0,
            });
        }
        index += if is_64 { 2 } else { 1 };
    }
    specs
}

fn open_error(device: &HostDevice, host: &HostPaths, err: VfioError) -> PassthroughError {
    let address = device.address.clone();
    match err {
        VfioError::OpenGroup(source, _) => match source.raw_os_error() {
            Some(libc::EBUSY) => PassthroughError::DeviceBusy {
                address,
                group: device.group,
                holders: host::group_holders(device.group, host),
            },
            Some(libc::ENOENT) => PassthroughError::VfioUnavailable {
                path: host.vfio_group(device.group),
                source,
            },
            _ => PassthroughError::Setup {
                address,
                what: "open its IOMMU group",
                source: VfioError::OpenGroup(source, device.group.to_string()),
            },
        },
        VfioError::GroupViable => PassthroughError::GroupNotViable {
            address,
            group: device.group,
            blockers: host::group_blockers(&device.sysfs),
        },
        other => PassthroughError::Setup {
            address,
            what: "open the device",
            source: other,
        },
    }
}

impl Passthrough {
    /// No devices.
    pub fn none() -> Self {
        Self {
            container: None,
            functions: Vec::new(),
            dma: Vec::new(),
            released: true,
        }
    }

    /// Opens the devices, puts them on the guest's bus and maps guest RAM for their DMA.
    pub fn open(mut request: OpenRequest<'_>) -> Result<Self, PassthroughError> {
        if request.devices.is_empty() {
            return Ok(Self::none());
        }
        let started = Instant::now();
        let mut kvm_vfio = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = request
            .vm_fd
            .create_device(&mut kvm_vfio)
            .map_err(PassthroughError::KvmVfio)?;
        let container = VfioContainer::new(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))
            .map_err(|err| match err {
                VfioError::OpenContainer(source) => PassthroughError::VfioUnavailable {
                    path: request.host.vfio_container(),
                    source,
                },
                other => PassthroughError::Setup {
                    address: "(container)".into(),
                    what: "set up a type-1 IOMMU container",
                    source: other,
                },
            })?;
        // Drops (and so shuts down) whatever was opened if a later step fails.
        let mut passthrough = Self {
            container: Some(Arc::new(container)),
            functions: Vec::new(),
            dma: Vec::new(),
            released: false,
        };
        let routing = Arc::new(Mutex::new(GsiRouting::new()));
        let mut window = BarWindow::new(
            crate::layout::PCI_BAR_WINDOW_START,
            crate::layout::PCI_BAR_WINDOW_SIZE,
        );
        let mut slots = SlotNumbers::new(request.memory_slots.0, request.memory_slots.1);
        let devices = std::mem::take(&mut request.devices);
        for (device, slot) in &devices {
            let (function, guest) = passthrough.open_function(
                device,
                *slot,
                &request,
                &routing,
                &mut window,
                &mut slots,
            )?;
            passthrough.functions.push(function.clone());
            let shared: SharedFunction = function;
            request
                .segment
                .add(shared, Some(guest.device))
                .map_err(|source| PassthroughError::Slot {
                    address: device.address.clone(),
                    source,
                })?;
        }
        passthrough.map_dma(request.ram)?;
        log::info!(
            "passthrough: {} device(s) assigned in {} ms (guest RAM of {} MiB mapped for DMA)",
            passthrough.functions.len(),
            started.elapsed().as_millis(),
            passthrough.dma.iter().map(|(_, len)| len).sum::<u64>() >> 20
        );
        Ok(passthrough)
    }

    fn open_function(
        &self,
        device: &HostDevice,
        slot: Option<u8>,
        request: &OpenRequest<'_>,
        routing: &Arc<Mutex<GsiRouting>>,
        window: &mut BarWindow,
        slots: &mut SlotNumbers,
    ) -> Result<(Arc<Mutex<VfioPciFunction>>, PciAddress), PassthroughError> {
        let address = device.address.clone();
        let Some(container) = &self.container else {
            return Err(PassthroughError::Setup {
                address,
                what: "open the device without a container",
                source: VfioError::DowncastVfioOps,
            });
        };
        let ops: Arc<dyn VfioOps> = container.clone();
        let vfio = VfioDevice::new(&device.sysfs, ops, false)
            .map_err(|err| open_error(device, request.host, err))?;
        let vfio = Arc::new(vfio);
        let mut config = [0u8; 256];
        vfio.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut config, 0);
        let ids = (
            u16::from_le_bytes([config[0], config[1]]),
            u16::from_le_bytes([config[2], config[3]]),
        );

        let specs = bar_specs(&vfio, &config, &address);
        let mut addresses = [None; regs::BAR_COUNT];
        for (index, spec) in specs.iter().enumerate() {
            if let Some(spec) = spec {
                addresses[index] = Some(window.allocate(spec.size).ok_or(
                    PassthroughError::BarWindowFull {
                        address: address.clone(),
                        bar: index,
                        size: spec.size,
                        window_mib: crate::layout::PCI_BAR_WINDOW_SIZE >> 20,
                    },
                )?);
            }
        }
        let shadow = ConfigShadow::new(&config, specs, addresses);

        let trapped: Vec<(usize, u64, u64)> = shadow
            .msix()
            .map(|m| {
                vec![
                    (m.table.bar, m.table.offset, m.table.len),
                    (m.pba.bar, m.pba.offset, m.pba.len),
                ]
            })
            .unwrap_or_default();
        let ranges: Vec<(usize, Vec<bars::Range>)> = (0..regs::BAR_COUNT)
            .filter_map(|index| {
                let spec = specs[index]?;
                let cut: Vec<bars::Range> = trapped
                    .iter()
                    .filter(|(bar, _, _)| *bar == index)
                    .map(|&(_, offset, len)| (offset, len))
                    .collect();
                let areas = bars::mmap_areas(&vfio, index as u32);
                Some((index, bars::mappable(spec.size, areas.as_deref(), &cut)))
            })
            .collect();
        let bar_mappings =
            BarMappings::new(&vfio, &ranges, request.vm_fd.clone(), slots).map_err(|source| {
                PassthroughError::BarMap {
                    address: address.clone(),
                    source,
                }
            })?;

        let irq_count = |index| vfio.get_irq_info(index).map_or(0, |irq| irq.count);
        let vfio_vectors = (
            irq_count(VFIO_PCI_MSIX_IRQ_INDEX),
            irq_count(VFIO_PCI_MSI_IRQ_INDEX),
        );
        let wanted = shadow
            .msix()
            .map_or(0, |m| u32::from(m.vectors))
            .max(shadow.msi().map_or(0, |m| m.capable_vectors()));
        let vector_error = |source| PassthroughError::Vectors {
            address: address.clone(),
            vectors: wanted,
            source,
        };
        let gsis = lock(routing)
            .allocate(wanted)
            .ok_or_else(|| vector_error(std::io::Error::from_raw_os_error(libc::ENOSPC)))?;
        let vectors = Vectors::new(gsis).map_err(vector_error)?;

        let slot = request
            .segment
            .free_slot(slot)
            .map_err(|source| PassthroughError::Slot {
                address: address.clone(),
                source,
            })?;
        let guest = PciAddress {
            bus: 0,
            device: slot,
            function: 0,
        };
        let bar_text: Vec<String> = (0..regs::BAR_COUNT)
            .filter_map(|i| {
                shadow
                    .bar(i)
                    .map(|(base, size)| format!("BAR{i} {size:#x} at {base:#x}"))
            })
            .collect();
        log::info!(
            "{address} (IOMMU group {}, {:04x}:{:04x}) at guest {guest}: {}, {} MSI-X vectors",
            device.group,
            ids.0,
            ids.1,
            bar_text.join(", "),
            shadow.msix().map_or(0, |m| m.vectors)
        );
        let function = Arc::new(Mutex::new(VfioPciFunction::new(
            FunctionParts {
                device: vfio,
                host_address: address.clone(),
                group: device.group,
                ids,
                shadow,
                bars: bar_mappings,
                vectors,
                interrupts: Box::new(KvmInterrupts::new(request.vm_fd.clone(), routing.clone())),
                vfio_vectors,
                window: (window.start(), window.end()),
            },
            guest,
        )));
        // No reset here: vfio-pci resets a device when it is first opened.
        Ok((function, guest))
    }

    fn map_dma(&mut self, ram: &GuestMemoryMmap) -> Result<(), PassthroughError> {
        let Some(container) = &self.container else {
            return Ok(());
        };
        // SAFETY: the regions are guest RAM, mapped MAP_SHARED and mlocked by GuestRam, which
        // the Vm keeps until after Passthrough::shutdown has unmapped them from the IOMMU (Vm
        // calls it when it stops, before its fields drop; on a failed start this value is
        // dropped before the RAM). The VMM touches guest RAM only through vm-memory's
        // volatile accessors, never through Rust references, so the device writing it by DMA
        // breaks no aliasing rule.
        unsafe { container.vfio_map_guest_memory(ram) }.map_err(PassthroughError::DmaMap)?;
        self.dma = ram
            .iter()
            .map(|region| (region.start_addr().0, region.len()))
            .collect();
        Ok(())
    }

    /// What status reports.
    pub fn status(&self) -> Vec<PassthroughStatus> {
        self.functions.iter().map(|f| lock(f).status()).collect()
    }

    /// The functions, to put on the guest's bus.
    pub fn functions(&self) -> &[Arc<Mutex<VfioPciFunction>>] {
        &self.functions
    }

    /// Quiesces every device (interrupts off, reset, BARs out of the guest) and unmaps guest
    /// RAM from the IOMMU. Idempotent; called when the VM stops and on drop.
    pub fn shutdown(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        for function in &self.functions {
            lock(function).shutdown();
        }
        if let Some(container) = &self.container {
            for (iova, len) in self.dma.drain(..) {
                if let Err(err) = container.vfio_dma_unmap(iova, len as usize) {
                    log::error!("cannot unmap guest RAM {iova:#x}+{len:#x} from the IOMMU: {err}");
                }
            }
        }
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        self.shutdown();
    }
}
