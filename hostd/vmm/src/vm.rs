//! Building a VM from its config, in the order that refuses bad input before anything
//! expensive happens: cores (present, then locked), kernel and disk files and the host side of
//! passthrough devices, /dev/kvm, guest RAM (checked, reserved, faulted in, locked), the
//! passthrough devices (VFIO, DMA), devices, guest image, then the vCPU threads, each pinned
//! before it first runs. Also the VM-wide operations the control loop uses: pause, resume,
//! reset, stop.

use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::boot::{self, BootError, BootImage, EntryMode, VirtioMmioSlot, cpuid};
use crate::config::VmConfig;
use crate::cores::{self, CoreError, CoreLock};
use crate::devices::acpi_pm::{self, AcpiPm, InterruptLine};
use crate::devices::console::{ConsoleLog, ConsoleOutput};
use crate::devices::legacy::{self, DebugExit, I8042};
use crate::devices::pci::{self, PciConfigIo};
use crate::devices::serial::{self, SerialDevice};
use crate::devices::virtio_blk::{Block, DiskError};
use crate::devices::virtio_mmio::MmioTransport;
use crate::devices::{Bus, BusError, SharedDevice, lock};
use crate::events::{EventReceiver, EventSender, event_channel};
use crate::layout;
use crate::memory::{self, GuestRam, MemoryError, MemoryRequest};
use crate::pci::{BarWindowTrap, Ecam, PciSegment, SharedSegment};
use crate::vcpu::{self, VcpuError, VcpuHandle, VcpuReply, VcpuRequest, VcpuSetup};
use crate::vfio::host::{self as vfio_host, HostDevice, HostPaths};
use crate::vfio::{OpenRequest, Passthrough, PassthroughError};

/// Why a VM could not start. Each kind has its own process exit code (docs/VMM.md).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Kernel or initramfs missing or unusable.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Cores absent or taken.
    #[error(transparent)]
    Cores(#[from] CoreError),
    /// Not enough memory, or it cannot be locked.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Disk image missing, read-only or in use.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A passthrough device is missing, not ready, in use, or VFIO refused it.
    #[error(transparent)]
    Passthrough(#[from] PassthroughError),
    /// /dev/kvm is missing or refused a VM operation.
    #[error("KVM: cannot {what}: is /dev/kvm present and usable (kvm_intel / kvm_amd loaded)?")]
    Kvm {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The console log cannot be opened.
    #[error("cannot open the console log {path}: check console.log in the config")]
    ConsoleLog {
        /// The log.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd or similar host object could not be made.
    #[error("cannot create {what}")]
    Host {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Device layout bug.
    #[error("device layout")]
    Bus(#[from] BusError),
    /// A vCPU thread did not start.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// Drives the SCI through KVM's in-kernel IOAPIC/PIC line.
struct KvmIrqLine {
    vm: Arc<VmFd>,
    irq: u32,
}

impl InterruptLine for KvmIrqLine {
    fn set_level(&self, asserted: bool) {
        if let Err(err) = self.vm.set_irq_line(self.irq, asserted) {
            log::warn!("cannot drive IRQ {}: {err}", self.irq);
        }
    }
}

/// A created VM: its memory, devices and (parked or running) vCPU threads.
pub struct Vm {
    /// The configuration it was built from.
    pub config: VmConfig,
    /// Guest RAM.
    pub ram: GuestRam,
    /// vCPU threads.
    pub vcpus: Vec<VcpuHandle>,
    /// COM1, for console input and attaching clients.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// PM1a, for the power button.
    pub pm: Arc<Mutex<AcpiPm>>,
    /// Events from vCPUs and devices.
    pub events: EventReceiver,
    /// Resets since start.
    pub resets: u32,
    /// Passthrough devices (VFIO).
    pub passthrough: Passthrough,
    vm_fd: Arc<VmFd>,
    boot: BootImage,
    disk: Option<Arc<Mutex<MmioTransport<Block>>>>,
    pci: SharedSegment,
    replies: Receiver<(usize, VcpuReply)>,
    initial_irqchips: Vec<kvm_irqchip>,
    initial_pit: kvm_pit_state2,
    _core_locks: Vec<CoreLock>,
    _kvm: Kvm,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.config.name)
            .field("vcpus", &self.vcpus)
            .finish()
    }
}

/// How long a vCPU may take to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);
/// KVM's TSS and identity map pages (needed by VMX for real mode) sit below the BIOS area.
const KVM_TSS_ADDRESS: usize = 0xFFFB_D000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xFFFB_C000;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StartError {
    move |source| StartError::Kvm { what, source }
}

fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Host { what, source }
}

impl Vm {
    /// Creates the VM and its parked vCPU threads; [`Vm::resume`] starts the guest.
    pub fn create(config: VmConfig) -> Result<Self, StartError> {
        // Cores first: cheapest to check, and the lock keeps a second VMM off them.
        let available = cores::available_cores()?;
        cores::check_present(&config.vcpu_cores, &available)?;
        let housekeeping = housekeeping_cores(&config, &available);
        cores::check_present(&housekeeping, &available)?;
        let core_locks = cores::lock_cores(&config.runtime_dir, &config.vcpu_cores, &config.name)?;
        // This thread and every thread it starts stay off the vCPU cores (where possible).
        cores::pin_current_thread(&housekeeping)?;

        let vcpu_count = config.vcpu_cores.len() as u8;
        let cmdline = boot::cmdline(&config.kernel.cmdline)?;
        let disk = match &config.disk {
            Some(disk) => Some(Block::open(&disk.path, disk.read_only)?),
            None => None,
        };
        let mut boot = BootImage::open(
            &config.kernel.path,
            config.kernel.initramfs.as_deref(),
            cmdline,
            vcpu_count,
            config.memory_bytes(),
        )?;
        if disk.is_some() {
            // Announced in the DSDT (`LNRO0005`): distribution kernels such as Debian's are
            // built without virtio-mmio command-line devices, but every ACPI kernel with
            // virtio-mmio finds it there.
            boot.add_virtio_mmio(VirtioMmioSlot {
                base: layout::VIRTIO_MMIO_BASE,
                size: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::VIRTIO_MMIO_FIRST_GSI,
            });
        }
        let console_log = ConsoleLog::open(&config.console.log, config.console.log_max_bytes)
            .map_err(|source| StartError::ConsoleLog {
                path: config.console.log.clone(),
                source,
            })?;
        let host = HostPaths::real();
        let vfio_devices = check_passthrough_devices(&config, &host)?;

        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let ram = memory::create_guest_ram(&MemoryRequest {
            bytes: config.memory_bytes(),
            hugepages: config.hugepages,
            numa_node: memory::numa_node_for(config.vcpu_cores[0]),
        })?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("create a VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("create the PIT"))?;
        register_memory(&vm_fd, &ram)?;
        let mut segment = PciSegment::new();
        let passthrough = Passthrough::open(OpenRequest {
            devices: vfio_devices,
            vm_fd: &vm_fd,
            ram: &ram.memory,
            segment: &mut segment,
            memory_slots: (
                ram.memory.num_regions() as u32,
                kvm.get_nr_memslots() as u32,
            ),
            host: &host,
        })?;
        let pci = SharedSegment(Arc::new(Mutex::new(segment)));

        let (event_tx, events) = event_channel().map_err(host_err("the event channel"))?;
        let serial_irq = irqfd(&vm_fd, serial::COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq,
            event_tx.clone(),
            ConsoleOutput::new(console_log, config.console.stdout),
        )));
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            Arc::new(KvmIrqLine {
                vm: vm_fd.clone(),
                irq: u32::from(acpi_pm::SCI_IRQ),
            }),
            event_tx.clone(),
        )));
        let disk = match disk {
            Some(block) => {
                let irq = irqfd(&vm_fd, layout::VIRTIO_MMIO_FIRST_GSI)?;
                Some(Arc::new(Mutex::new(MmioTransport::new(
                    block,
                    ram.memory.clone(),
                    irq,
                ))))
            }
            None => None,
        };
        let (io_bus, mmio_bus) = buses(&serial, &pm, disk.as_ref(), &pci, &event_tx)?;

        let entry = boot.load(&ram.memory)?;
        log::info!(
            "{}: loaded {:?} kernel, entry {entry:x?}",
            config.name,
            boot.format()
        );

        let mut initial_irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm_fd
                .get_irqchip(&mut chip)
                .map_err(kvm_err("read the irqchip state"))?;
            initial_irqchips.push(chip);
        }
        let initial_pit = vm_fd.get_pit2().map_err(kvm_err("read the PIT state"))?;

        vcpu::install_kick_handler()?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read the supported CPUID"))?;
        let (reply_tx, replies) = channel();
        let io_bus = Arc::new(io_bus);
        let mmio_bus = Arc::new(mmio_bus);
        let mut vcpus = Vec::new();
        for (index, &core) in config.vcpu_cores.iter().enumerate() {
            let fd = vm_fd
                .create_vcpu(index as u64)
                .map_err(kvm_err("create a vCPU"))?;
            let cpuid: CpuId = cpuid::for_vcpu(&supported, index as u32, u32::from(vcpu_count));
            fd.set_cpuid2(&cpuid)
                .map_err(kvm_err("set the vCPU CPUID"))?;
            vcpus.push(vcpu::spawn(VcpuSetup {
                index,
                core,
                fd,
                io_bus: io_bus.clone(),
                mmio_bus: mmio_bus.clone(),
                events: event_tx.clone(),
                replies: reply_tx.clone(),
            })?);
        }
        let vm = Self {
            config,
            ram,
            vcpus,
            serial,
            pm,
            events,
            resets: 0,
            passthrough,
            vm_fd,
            boot,
            disk,
            pci,
            replies,
            initial_irqchips,
            initial_pit,
            _core_locks: core_locks,
            _kvm: kvm,
        };
        vm.load_vcpu_state(entry);
        Ok(vm)
    }

    fn load_vcpu_state(&self, entry: EntryMode) {
        for vcpu in &self.vcpus {
            let entry = (vcpu.index == 0).then_some(entry);
            vcpu.request(VcpuRequest::Reset(entry));
        }
    }

    /// Lets all vCPUs run.
    pub fn resume(&self) {
        for vcpu in &self.vcpus {
            vcpu.request(VcpuRequest::Resume);
        }
    }

    /// Parks all vCPUs and waits until none is in the guest.
    pub fn pause(&self) -> Result<(), String> {
        // Replies left over from an earlier timed-out pause must not count now.
        while self.replies.try_recv().is_ok() {}
        for vcpu in &self.vcpus {
            vcpu.request(VcpuRequest::Pause);
        }
        let mut parked = vec![false; self.vcpus.len()];
        while parked.iter().any(|p| !p) {
            match self.replies.recv_timeout(PARK_TIMEOUT) {
                Ok((index, VcpuReply::Paused)) => parked[index] = true,
                Err(_) => {
                    let missing: Vec<usize> = (0..parked.len()).filter(|&i| !parked[i]).collect();
                    return Err(format!(
                        "vCPUs {missing:?} did not park within {PARK_TIMEOUT:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Puts the whole machine back to its boot state; vCPUs stay parked. Call after
    /// [`Vm::pause`].
    pub fn reset(&mut self) -> Result<(), String> {
        self.resets += 1;
        let entry = self
            .boot
            .load(&self.ram.memory)
            .map_err(|e| format!("reload the guest: {e}"))?;
        for chip in &self.initial_irqchips {
            self.vm_fd
                .set_irqchip(chip)
                .map_err(|e| format!("reset the irqchip: {e}"))?;
        }
        self.vm_fd
            .set_pit2(&self.initial_pit)
            .map_err(|e| format!("reset the PIT: {e}"))?;
        lock(&self.pm).reset();
        if let Some(disk) = &self.disk {
            lock(disk).reset();
        }
        lock(&self.pci.0).reset();
        self.load_vcpu_state(entry);
        Ok(())
    }

    /// Ends all vCPU threads, then resets the passthrough devices and unmaps guest RAM from
    /// the IOMMU (before the RAM itself goes).
    pub fn stop(&mut self) {
        for vcpu in &mut self.vcpus {
            vcpu.stop();
        }
        self.passthrough.shutdown();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host checks of every `[[vfio]]` entry (docs/VMM.md "VF passthrough"), in config order;
/// two entries naming the same function are refused.
fn check_passthrough_devices(
    config: &VmConfig,
    host: &HostPaths,
) -> Result<Vec<(HostDevice, Option<u8>)>, PassthroughError> {
    let mut devices: Vec<(HostDevice, Option<u8>)> = Vec::new();
    for entry in &config.vfio {
        let device = vfio_host::check(&entry.device, host)?;
        if devices.iter().any(|(d, _)| d.address == device.address) {
            return Err(PassthroughError::Duplicate {
                address: device.address,
            });
        }
        devices.push((device, entry.slot));
    }
    Ok(devices)
}

/// Housekeeping cores from the config, or the available non-vCPU cores, or all available.
fn housekeeping_cores(config: &VmConfig, available: &[usize]) -> Vec<usize> {
    if !config.housekeeping_cores.is_empty() {
        return config.housekeeping_cores.clone();
    }
    let others: Vec<usize> = available
        .iter()
        .copied()
        .filter(|c| !config.vcpu_cores.contains(c))
        .collect();
    if others.is_empty() {
        available.to_vec()
    } else {
        others
    }
}

fn register_memory(vm_fd: &VmFd, ram: &GuestRam) -> Result<(), StartError> {
    for (slot, region) in ram.memory.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `ram`, which
        // the Vm keeps for as long as the VM fd (and so the memory slot) exists.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

fn irqfd(vm_fd: &VmFd, gsi: u32) -> Result<EventFd, StartError> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(host_err("an interrupt eventfd"))?;
    vm_fd
        .register_irqfd(&fd, gsi)
        .map_err(kvm_err("register an irqfd"))?;
    Ok(fd)
}

fn buses(
    serial: &Arc<Mutex<SerialDevice>>,
    pm: &Arc<Mutex<AcpiPm>>,
    disk: Option<&Arc<Mutex<MmioTransport<Block>>>>,
    pci: &SharedSegment,
    events: &EventSender,
) -> Result<(Bus, Bus), StartError> {
    let mut io = Bus::default();
    io.insert(serial::COM1_PORT, 8, serial.clone())?;
    io.insert(
        legacy::I8042_PORT,
        5,
        Arc::new(Mutex::new(I8042::new(events.clone()))),
    )?;
    io.insert(
        legacy::DEBUG_EXIT_PORT,
        1,
        Arc::new(Mutex::new(DebugExit::new(events.clone()))),
    )?;
    io.insert(
        u64::from(acpi_pm::PM1A_EVT_PORT),
        acpi_pm::PM_BLOCK_LEN,
        pm.clone(),
    )?;
    let config_io: SharedDevice = Arc::new(Mutex::new(PciConfigIo::new(pci.clone())));
    io.insert(pci::PCI_CONFIG_PORT, pci::PCI_CONFIG_LEN, config_io)?;
    let mut mmio = Bus::default();
    mmio.insert(
        layout::PCI_ECAM_BASE,
        layout::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(Ecam::new(pci.clone()))),
    )?;
    mmio.insert(
        layout::PCI_BAR_WINDOW_START,
        layout::PCI_BAR_WINDOW_SIZE,
        Arc::new(Mutex::new(BarWindowTrap::new(
            pci.clone(),
            layout::PCI_BAR_WINDOW_START,
        ))),
    )?;
    if let Some(disk) = disk {
        mmio.insert(
            layout::VIRTIO_MMIO_BASE,
            layout::VIRTIO_MMIO_SIZE,
            disk.clone(),
        )?;
    }
    Ok((io, mmio))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vcpu_cores: Vec<usize>, housekeeping: Vec<usize>) -> VmConfig {
        let mut config: VmConfig = toml::from_str(
            r#"name = "t"
            memory_mib = 16
            vcpu_cores = [0]
            control_socket = "/tmp/x"
            [kernel]
            path = "/k"
            [console]
            log = "/tmp/l""#,
        )
        .unwrap();
        config.vcpu_cores = vcpu_cores;
        config.housekeeping_cores = housekeeping;
        config
    }

    #[test]
    fn housekeeping_defaults_to_the_other_cores() {
        assert_eq!(
            housekeeping_cores(&config(vec![1], vec![]), &[0, 1, 2, 3]),
            [0, 2, 3]
        );
        assert_eq!(
            housekeeping_cores(&config(vec![0, 1], vec![]), &[0, 1]),
            [0, 1]
        );
        assert_eq!(
            housekeeping_cores(&config(vec![1], vec![3]), &[0, 1, 2, 3]),
            [3]
        );
    }
}
