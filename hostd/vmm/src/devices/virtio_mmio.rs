//! virtio-mmio transport (virtio 1.x, register layout version 2) for one device in a 4 KiB
//! window of the MMIO hole, announced to Linux on the command line
//! (`virtio_mmio.device=4K@<base>:<gsi>`). Queue notifications are handled synchronously on
//! the vCPU thread that wrote `QueueNotify`; the interrupt goes out through an irqfd.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{BusDevice, read_le, write_le};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// Vendor id reported to the guest ("HSTD").
const VENDOR_ID: u32 = 0x4454_5348;
/// `VIRTIO_F_VERSION_1`: modern device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const INTERRUPT_USED_BUFFER: u32 = 1;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FAILED: u32 = 0x80;

pub(crate) mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00C;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0A0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0A4;
    pub const CONFIG_GENERATION: u64 = 0x0FC;
    pub const CONFIG: u64 = 0x100;
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (2 = block).
    fn device_type(&self) -> u32;
    /// Feature bits offered (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles the buffers the driver made available on queue `index`; returns whether any
    /// were used (the driver should be interrupted).
    fn process_queue(&mut self, index: usize, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool;
}

/// The transport registers and queues of one device.
#[derive(Debug)]
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    memory: GuestMemoryMmap,
    irq: EventFd,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device`, interrupting through `irq`.
    pub fn new(device: D, memory: GuestMemoryMmap, irq: EventFd) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            // Max sizes are powers of two <= 32768, which Queue::new accepts.
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        Self {
            device,
            memory,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Back to the reset state (driver wrote status 0, or the machine was reset).
    pub fn reset(&mut self) {
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn notify(&mut self, index: u32) {
        if self.status & STATUS_DRIVER_OK == 0 {
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let used = self
            .device
            .process_queue(index as usize, queue, &self.memory);
        let notify = used && queue.needs_notification(&self.memory).unwrap_or(true);
        if notify {
            self.interrupt_status |= INTERRUPT_USED_BUFFER;
            if let Err(err) = self.irq.write(1) {
                log::warn!("virtio-mmio interrupt not delivered: {err}");
            }
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        // Queue layout may only change while the queue is not ready.
        let queue_setup = |this: &mut Self, f: &dyn Fn(&mut Queue)| {
            if let Some(queue) = this.selected_queue() {
                if !queue.ready() {
                    f(queue);
                }
            }
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xFFFF_FFFFu64 << shift;
                let offered = self.offered_features();
                self.driver_features =
                    (self.driver_features & !mask) | ((u64::from(value) << shift) & offered);
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => queue_setup(self, &|q| q.set_size(value as u16)),
            reg::QUEUE_READY => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => {
                if value == 0 {
                    self.reset();
                } else {
                    self.status = value;
                    if value & STATUS_FAILED != 0 {
                        log::warn!("virtio driver reported failure (status {value:#x})");
                    }
                }
            }
            reg::QUEUE_DESC_LOW => {
                queue_setup(self, &|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                queue_setup(self, &|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                queue_setup(self, &|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                queue_setup(self, &|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                queue_setup(self, &|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                queue_setup(self, &|q| q.set_used_ring_address(None, Some(value)))
            }
            _ => log::debug!("virtio-mmio write to unknown register {offset:#x}"),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 {
            write_le(data, u64::from(self.read_register(offset)));
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // Block configuration is read-only for the driver.
            return;
        }
        if data.len() == 4 {
            self.write_register(offset, read_le(data) as u32);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Driver-side helpers for transport tests.
    pub fn write32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    pub fn read32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Offsets re-exported for the block device tests.
    pub(crate) use super::reg;
}
