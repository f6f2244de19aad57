//! Events the vCPU threads and devices send to the control loop: one enum value per event
//! over a channel, plus an eventfd that wakes the loop's epoll.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Something the control loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked for a reset (i8042, triple fault / KVM shutdown).
    Reset {
        /// What it was.
        reason: &'static str,
    },
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest wrote to the debug exit port.
    DebugExit(u8),
    /// A vCPU failed and stopped running.
    VcpuFailed {
        /// The vCPU.
        vcpu: usize,
        /// What failed.
        message: String,
    },
    /// The guest drained the serial input FIFO: more console input may be delivered.
    ConsoleInputSpace,
}

/// Sending side, cloned into every device and vCPU thread.
#[derive(Clone, Debug)]
pub struct EventSender {
    tx: Sender<VmEvent>,
    wake: Arc<EventFd>,
}

impl EventSender {
    /// Sends an event and wakes the control loop. A closed loop (VM shutting down) drops it.
    pub fn send(&self, event: VmEvent) {
        if self.tx.send(event).is_ok() {
            if let Err(err) = self.wake.write(1) {
                log::warn!("cannot wake the control loop: {err}");
            }
        }
    }
}

/// Receiving side, owned by the control loop.
#[derive(Debug)]
pub struct EventReceiver {
    rx: Receiver<VmEvent>,
    wake: Arc<EventFd>,
}

impl EventReceiver {
    /// The eventfd to poll.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes all pending events (after the eventfd fired).
    pub fn drain(&self) -> Vec<VmEvent> {
        // Reset the counter first so an event sent after try_iter is not lost.
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

/// A connected sender/receiver pair.
pub fn event_channel() -> std::io::Result<(EventSender, EventReceiver)> {
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let (tx, rx) = channel();
    Ok((
        EventSender {
            tx,
            wake: wake.clone(),
        },
        EventReceiver { rx, wake },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_arrive_in_order_and_wake_the_loop() {
        let (tx, rx) = event_channel().unwrap();
        tx.send(VmEvent::PowerOff);
        tx.clone().send(VmEvent::DebugExit(3));
        assert_eq!(rx.wake_fd().read().unwrap(), 2);
        assert_eq!(rx.drain(), [VmEvent::PowerOff, VmEvent::DebugExit(3)]);
        assert!(rx.drain().is_empty());
    }
}
