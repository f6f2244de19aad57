//! The small legacy ports: the i8042 (only its reset line, via vm-superio) and the debug exit
//! port `0xF4` for test payloads.

use vm_superio::{I8042Device, Trigger};

use super::BusDevice;
use crate::events::{EventSender, VmEvent};

/// i8042 data port; the device covers `0x60..=0x64`.
pub const I8042_PORT: u64 = 0x60;
/// Debug exit port.
pub const DEBUG_EXIT_PORT: u64 = 0xF4;

/// Turns the i8042's reset line into a reset event.
#[derive(Debug)]
pub struct ResetTrigger {
    events: EventSender,
}

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.events.send(VmEvent::Reset {
            reason: "i8042 reset",
        });
        Ok(())
    }
}

/// The i8042 controller (reset only): writing `0xFE` to `0x64` resets the machine.
#[derive(Debug)]
pub struct I8042 {
    device: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller reporting resets to `events`.
    pub fn new(events: EventSender) -> Self {
        Self {
            device: I8042Device::new(ResetTrigger { events }),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let [byte] = data {
            *byte = self.device.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            let Ok(()) = self.device.write(offset as u8, *byte);
        }
    }
}

/// The debug exit port: writing `v` ends the VM with guest exit code `v`.
#[derive(Debug)]
pub struct DebugExit {
    events: EventSender,
}

impl DebugExit {
    /// A port reporting to `events`.
    pub fn new(events: EventSender) -> Self {
        Self { events }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.events.send(VmEvent::DebugExit(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::event_channel;

    #[test]
    fn reset_command_and_debug_exit_become_events() {
        let (tx, rx) = event_channel().unwrap();
        let mut i8042 = I8042::new(tx.clone());
        i8042.write(4, &[0xFE]);
        let mut exit = DebugExit::new(tx);
        exit.write(0, &[7]);
        let events = rx.drain();
        assert!(matches!(
            events[0],
            VmEvent::Reset {
                reason: "i8042 reset"
            }
        ));
        assert_eq!(events[1], VmEvent::DebugExit(7));
        // Status reads do not block a guest polling the controller.
        let mut status = [0xAAu8];
        i8042.read(4, &mut status);
        assert_eq!(status[0] & 0x2, 0, "input buffer reported full");
    }
}
