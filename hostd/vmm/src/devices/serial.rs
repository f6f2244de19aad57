//! COM1: vm-superio's 16550 on I/O `0x3F8..0x3FF`, IRQ 4 through an irqfd, writing to the
//! [`ConsoleOutput`](super::console::ConsoleOutput) and fed console input by the control loop.

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use super::console::ConsoleOutput;
use crate::events::{EventSender, VmEvent};

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3F8;
/// COM1 IRQ (ISA IRQ 4, IOAPIC pin 4).
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt by writing its irqfd.
#[derive(Debug)]
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the control loop when the guest has emptied the input FIFO.
#[derive(Debug)]
pub struct InputSpaceEvents(pub EventSender);

impl SerialEvents for InputSpaceEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        self.0.send(VmEvent::ConsoleInputSpace);
    }
}

/// The UART.
pub type Uart = Serial<IrqFdTrigger, InputSpaceEvents, ConsoleOutput>;

/// The UART as a port-I/O device.
#[derive(Debug)]
pub struct SerialDevice {
    /// The 16550 model.
    pub uart: Uart,
}

impl SerialDevice {
    /// A UART raising `irq`, writing to `output`.
    pub fn new(irq: EventFd, events: EventSender, output: ConsoleOutput) -> Self {
        Self {
            uart: Serial::with_events(IrqFdTrigger(irq), InputSpaceEvents(events), output),
        }
    }

    /// Queues console input for the guest; returns how many bytes fitted in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(count) => count,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(err) => {
                log::warn!("serial input not delivered: {err}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [byte] = data {
            *byte = self.uart.read(offset as u8);
        } else {
            data.fill(0xFF);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            if let Err(err) = self.uart.write(offset as u8, *byte) {
                log::warn!("serial write at offset {offset}: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::ConsoleLog;
    use crate::events::event_channel;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn guest_output_reaches_the_log_and_input_raises_the_irq() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let output = ConsoleOutput::new(ConsoleLog::open(&log, 4096).unwrap(), false);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = event_channel().unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), tx, output);
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&log).unwrap(), b"hi");
        // Enable the received-data interrupt (IER bit 0), then feed input.
        dev.write(1, &[0x01]);
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte[0], b'o');
        dev.read(0, &mut byte);
        assert_eq!(rx.drain(), [VmEvent::ConsoleInputSpace]);
    }
}
