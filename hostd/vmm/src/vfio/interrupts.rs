//! Interrupts of passthrough functions: each vector is an eventfd that VFIO signals when the
//! device raises it, bound by a KVM irqfd to a GSI whose route is the MSI message the guest
//! programmed. The guest's interrupt then never passes through the VMM.
//!
//! KVM has one routing table for the whole VM, replaced as a whole by `KVM_SET_GSI_ROUTING`:
//! [`GsiRouting`] keeps it, starting with the in-kernel irqchip's default routes (the
//! legacy devices' GSIs 0..24 must keep working) and adding an MSI route per vector.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::capabilities::MsiMessage;
use crate::devices::lock;
use crate::layout::IOAPIC_PINS;

/// KVM's limit on routing entries (`KVM_MAX_IRQ_ROUTES` on x86).
const MAX_ROUTES: u32 = 4096;

/// The VM's GSI routing table.
#[derive(Debug, Default)]
pub struct GsiRouting {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

impl GsiRouting {
    /// The default irqchip routes only; MSI GSIs are handed out from 24 up.
    pub fn new() -> Self {
        Self {
            msi: BTreeMap::new(),
            next_gsi: IOAPIC_PINS,
        }
    }

    /// Reserves `count` consecutive GSIs for MSI vectors; `None` past KVM's limit.
    pub fn allocate(&mut self, count: u32) -> Option<Range<u32>> {
        let start = self.next_gsi;
        let end = start.checked_add(count)?;
        // The default routes take 40 entries of the limit (GSIs 0..16 route to both chips).
        if end - IOAPIC_PINS + 40 > MAX_ROUTES {
            return None;
        }
        self.next_gsi = end;
        Some(start..end)
    }

    /// Sets (or with `None`, removes) the MSI route of `gsi`.
    pub fn set(&mut self, gsi: u32, message: Option<MsiMessage>) {
        match message {
            Some(message) => self.msi.insert(gsi, message),
            None => self.msi.remove(&gsi),
        };
    }

    /// The whole table: KVM's default routes for its in-kernel PIC and IOAPIC (as
    /// `KVM_CREATE_IRQCHIP` sets them up: GSIs 0..16 to both the IOAPIC pin and the PIC line,
    /// 16..24 to the IOAPIC), then the MSI routes.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            entry.u.irqchip.irqchip = chip;
            entry.u.irqchip.pin = pin;
            entry
        };
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip(gsi, chip, gsi % 8));
            }
        }
        for (&gsi, message) in &self.msi {
            let mut entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = message.address_lo;
            entry.u.msi.address_hi = message.address_hi;
            entry.u.msi.data = message.data;
            entries.push(entry);
        }
        entries
    }
}

/// Where vector routes and irqfds go: KVM, or a recorder in tests.
pub trait InterruptBackend: Send {
    /// Sets (or removes) the MSI route of `gsi` and installs the VM's routing table.
    fn route(&mut self, gsi: u32, message: Option<MsiMessage>) -> io::Result<()>;
    /// Binds `eventfd` to `gsi`: a signal on it injects the GSI's route.
    fn register_irqfd(&mut self, eventfd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Unbinds `eventfd` from `gsi`; later signals stay counted in the eventfd.
    fn unregister_irqfd(&mut self, eventfd: &EventFd, gsi: u32) -> io::Result<()>;
}

/// KVM's irqfds and routing table, shared by every passthrough function of the VM.
#[derive(Debug, Clone)]
pub struct KvmInterrupts {
    vm_fd: Arc<VmFd>,
    routing: Arc<Mutex<GsiRouting>>,
}

impl KvmInterrupts {
    /// The backend of the VM `vm_fd`, whose routing table is `routing`.
    pub fn new(vm_fd: Arc<VmFd>, routing: Arc<Mutex<GsiRouting>>) -> Self {
        Self { vm_fd, routing }
    }
}

impl InterruptBackend for KvmInterrupts {
    fn route(&mut self, gsi: u32, message: Option<MsiMessage>) -> io::Result<()> {
        let mut routing = lock(&self.routing);
        routing.set(gsi, message);
        let table = KvmIrqRouting::from_entries(&routing.entries())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        self.vm_fd
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn register_irqfd(&mut self, eventfd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm_fd
            .register_irqfd(eventfd, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister_irqfd(&mut self, eventfd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm_fd
            .unregister_irqfd(eventfd, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// A routing or irqfd operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} for GSI {gsi}")]
pub struct InterruptError {
    /// What was being done.
    pub what: &'static str,
    /// The GSI.
    pub gsi: u32,
    /// Why.
    #[source]
    pub source: io::Error,
}

#[derive(Debug)]
struct Vector {
    gsi: u32,
    eventfd: EventFd,
    routed: Option<MsiMessage>,
    irqfd: bool,
}

/// The vectors of one function: an eventfd and a GSI each, for MSI or MSI-X (only one is
/// enabled at a time).
#[derive(Debug)]
pub struct Vectors {
    vectors: Vec<Vector>,
}

impl Vectors {
    /// One vector per GSI of `gsis`.
    pub fn new(gsis: Range<u32>) -> io::Result<Self> {
        let vectors = gsis
            .map(|gsi| {
                Ok(Vector {
                    gsi,
                    eventfd: EventFd::new(EFD_NONBLOCK)?,
                    routed: None,
                    irqfd: false,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { vectors })
    }

    /// The eventfds of the first `count` vectors, for VFIO's interrupt enable.
    pub fn eventfds(&self, count: usize) -> Vec<&EventFd> {
        self.vectors
            .iter()
            .take(count)
            .map(|v| &v.eventfd)
            .collect()
    }

    /// Vectors whose irqfd is bound: they reach the guest.
    pub fn live(&self) -> usize {
        self.vectors.iter().filter(|v| v.irqfd).count()
    }

    /// Makes vector `index` deliver `message` to the guest, or (with `None`: masked or
    /// disabled) hold its interrupts in its eventfd until it is unmasked.
    pub fn update(
        &mut self,
        index: usize,
        message: Option<MsiMessage>,
        backend: &mut dyn InterruptBackend,
    ) -> Result<(), InterruptError> {
        let Some(vector) = self.vectors.get_mut(index) else {
            return Ok(());
        };
        let gsi = vector.gsi;
        let fail = |what| move |source| InterruptError { what, gsi, source };
        match message {
            Some(message) => {
                // The route goes in before the irqfd, never after. An irqfd bound to a GSI
                // without a route consumes the eventfd's count when it fires and injects into
                // nothing: an interrupt the device raised meanwhile (the first one after
                // unmasking, a mailbox message from the PF) would be lost for good, and the
                // guest driver would wait for it forever. Routed first, the irqfd delivers
                // from its first signal, including one already pending in the eventfd.
                if vector.routed != Some(message) {
                    backend
                        .route(gsi, Some(message))
                        .map_err(fail("set the MSI route"))?;
                    vector.routed = Some(message);
                }
                if !vector.irqfd {
                    backend
                        .register_irqfd(&vector.eventfd, gsi)
                        .map_err(fail("register the irqfd"))?;
                    vector.irqfd = true;
                }
            }
            None => {
                // Masked: unbind the irqfd so interrupts stay counted in the eventfd (the
                // pending state); the route stays for the unmask.
                if vector.irqfd {
                    backend
                        .unregister_irqfd(&vector.eventfd, gsi)
                        .map_err(fail("unregister the irqfd"))?;
                    vector.irqfd = false;
                }
            }
        }
        Ok(())
    }

    /// Unbinds and unroutes every vector and drops pending interrupts (interrupts disabled,
    /// function reset). Failures are logged: there is nothing better to do on this path.
    pub fn disable_all(&mut self, backend: &mut dyn InterruptBackend) {
        for vector in &mut self.vectors {
            if vector.irqfd {
                if let Err(err) = backend.unregister_irqfd(&vector.eventfd, vector.gsi) {
                    log::warn!("cannot unregister the irqfd of GSI {}: {err}", vector.gsi);
                }
                vector.irqfd = false;
            }
            if vector.routed.take().is_some() {
                if let Err(err) = backend.route(vector.gsi, None) {
                    log::warn!("cannot remove the route of GSI {}: {err}", vector.gsi);
                }
            }
            // Non-blocking: EAGAIN when nothing was pending.
            let _ = vector.eventfd.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what would have reached KVM.
    #[derive(Default)]
    struct Recorder {
        ops: Vec<String>,
    }

    impl InterruptBackend for Recorder {
        fn route(&mut self, gsi: u32, message: Option<MsiMessage>) -> io::Result<()> {
            let op = match message {
                Some(m) => format!("route {gsi} {:#x}", m.data),
                None => format!("unroute {gsi}"),
            };
            self.ops.push(op);
            Ok(())
        }
        fn register_irqfd(&mut self, _: &EventFd, gsi: u32) -> io::Result<()> {
            self.ops.push(format!("irqfd {gsi}"));
            Ok(())
        }
        fn unregister_irqfd(&mut self, _: &EventFd, gsi: u32) -> io::Result<()> {
            self.ops.push(format!("unbind {gsi}"));
            Ok(())
        }
    }

    fn message(data: u32) -> Option<MsiMessage> {
        Some(MsiMessage {
            address_lo: 0xFEE0_0000,
            address_hi: 0,
            data,
        })
    }

    #[test]
    fn the_route_is_set_before_the_irqfd_is_registered() {
        let mut vectors = Vectors::new(24..27).unwrap();
        let mut kvm = Recorder::default();
        vectors.update(1, message(0x41), &mut kvm).unwrap();
        assert_eq!(kvm.ops, ["route 25 0x41", "irqfd 25"]);
        assert_eq!(vectors.live(), 1);
        // Masking unbinds but keeps the route; unmasking with the same message rebinds only.
        vectors.update(1, None, &mut kvm).unwrap();
        vectors.update(1, message(0x41), &mut kvm).unwrap();
        // A new message while live: the route changes, the irqfd stays.
        vectors.update(1, message(0x42), &mut kvm).unwrap();
        assert_eq!(kvm.ops[2..], ["unbind 25", "irqfd 25", "route 25 0x42"]);
        vectors.update(7, message(0x1), &mut kvm).unwrap();
        assert_eq!(kvm.ops.len(), 5, "no such vector: nothing done");
        vectors.disable_all(&mut kvm);
        assert_eq!(kvm.ops[5..], ["unbind 25", "unroute 25"]);
        assert_eq!(vectors.live(), 0);
    }

    #[test]
    fn interrupts_raised_while_masked_stay_pending_in_the_eventfd() {
        let mut vectors = Vectors::new(24..25).unwrap();
        let mut kvm = Recorder::default();
        vectors.vectors[0].eventfd.write(1).unwrap();
        // Unmasking binds the irqfd to the eventfd that already holds the interrupt (KVM
        // injects it at once); disabling drops it.
        vectors.update(0, message(0x30), &mut kvm).unwrap();
        assert_eq!(vectors.vectors[0].eventfd.read().unwrap(), 1);
        vectors.vectors[0].eventfd.write(1).unwrap();
        vectors.disable_all(&mut kvm);
        assert!(vectors.vectors[0].eventfd.read().is_err(), "drained");
        assert_eq!(vectors.eventfds(5).len(), 1);
    }

    #[test]
    fn routing_keeps_the_irqchip_defaults_and_adds_msi_routes() {
        let mut routing = GsiRouting::new();
        assert_eq!(routing.allocate(3), Some(24..27));
        assert_eq!(routing.allocate(2), Some(27..29));
        routing.set(25, message(0x41));
        let entries = routing.entries();
        assert_eq!(entries.len(), 16 * 2 + 8 + 1);
        let irqchip: Vec<(u32, u32, u32)> = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            .map(|e| {
                // SAFETY: irqchip entries carry the irqchip member of the union.
                let chip = unsafe { e.u.irqchip };
                (e.gsi, chip.irqchip, chip.pin)
            })
            .collect();
        assert!(irqchip.contains(&(4, KVM_IRQCHIP_IOAPIC, 4)), "COM1");
        assert!(irqchip.contains(&(4, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(irqchip.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)), "SCI");
        assert!(irqchip.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        let msi = entries.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (25, KVM_IRQ_ROUTING_MSI));
        // SAFETY: MSI entries carry the msi member of the union.
        let route = unsafe { msi.u.msi };
        assert_eq!((route.address_lo, route.data), (0xFEE0_0000, 0x41));
        routing.set(25, None);
        assert_eq!(routing.entries().len(), 40);
        assert_eq!(routing.allocate(5000), None, "past KVM's limit");
    }
}
