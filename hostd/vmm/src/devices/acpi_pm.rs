//! ACPI fixed hardware: the PM1a event block (`0x600`: STS, EN) and control block (`0x604`).
//! The VMM presses the power button by setting `PWRBTN_STS`; the guest powers off by writing
//! `SLP_EN` with `SLP_TYP = 5` (`\_S5`). The SCI (IRQ 9, level) is asserted while an enabled
//! status bit is set.

use std::sync::Arc;

use super::{BusDevice, read_le, write_le};
use crate::events::{EventSender, VmEvent};

/// PM1a_EVT_BLK port (4 bytes: STS, EN).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1a_CNT_BLK port (2 bytes).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// Bytes from `PM1A_EVT_PORT` the device covers.
pub const PM_BLOCK_LEN: u64 = 6;
/// SCI interrupt (ISA IRQ 9).
pub const SCI_IRQ: u16 = 9;
/// `SLP_TYP` the DSDT's `\_S5` names.
pub const S5_SLP_TYP: u8 = 5;

/// `PWRBTN_STS` / `PWRBTN_EN`.
pub const PWRBTN: u16 = 1 << 8;
const SCI_EN: u16 = 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
/// Status bits this machine implements (write-one-to-clear).
const STS_IMPLEMENTED: u16 = PWRBTN;

/// A level-triggered interrupt line.
pub trait InterruptLine: Send + Sync {
    /// Drives the line.
    fn set_level(&self, asserted: bool);
}

/// The PM1a registers.
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    sci: Arc<dyn InterruptLine>,
    sci_asserted: bool,
    events: EventSender,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("status", &self.status)
            .field("enable", &self.enable)
            .field("control", &self.control)
            .finish()
    }
}

impl AcpiPm {
    /// Registers at reset, SCI on `sci`.
    pub fn new(sci: Arc<dyn InterruptLine>, events: EventSender) -> Self {
        Self {
            status: 0,
            enable: 0,
            control: SCI_EN,
            sci,
            sci_asserted: false,
            events,
        }
    }

    /// Presses the power button (graceful stop).
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    /// Back to the reset state (machine reset).
    pub fn reset(&mut self) {
        self.status = 0;
        self.enable = 0;
        self.control = SCI_EN;
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let asserted = self.status & self.enable != 0;
        if asserted != self.sci_asserted {
            self.sci_asserted = asserted;
            self.sci.set_level(asserted);
        }
    }

    /// The 6 register bytes as the guest sees them.
    fn bytes(&self) -> [u8; 6] {
        let mut bytes = [0u8; 6];
        write_le(&mut bytes[0..2], u64::from(self.status));
        write_le(&mut bytes[2..4], u64::from(self.enable));
        write_le(&mut bytes[4..6], u64::from(self.control | SCI_EN));
        bytes
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = bytes.get(offset as usize + i).copied().unwrap_or(0xFF);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Split the access into the (up to three) 16-bit registers it touches.
        for (i, &byte) in data.iter().enumerate() {
            let at = offset as usize + i;
            let shift = 8 * (at % 2);
            let value = u16::from(byte) << shift;
            let mask = 0xFFu16 << shift;
            match at / 2 {
                0 => self.status &= !(value & STS_IMPLEMENTED),
                1 => self.enable = (self.enable & !mask) | value,
                2 => self.control = (self.control & !mask) | value,
                _ => {}
            }
        }
        if (offset as usize..offset as usize + data.len()).any(|at| at / 2 == 2) {
            self.control_written();
        }
        self.update_sci();
    }
}

impl AcpiPm {
    fn control_written(&mut self) {
        if self.control & SLP_EN == 0 {
            return;
        }
        // SLP_EN is write-only: it never reads back.
        self.control &= !SLP_EN;
        let slp_typ = (self.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if slp_typ == u16::from(S5_SLP_TYP) {
            self.events.send(VmEvent::PowerOff);
        } else {
            log::info!("guest asked for sleep type {slp_typ}, which this machine does not have");
        }
    }
}

/// Reads the 16-bit register at `offset` (tests, status).
pub fn register(pm: &mut AcpiPm, offset: u64) -> u16 {
    let mut data = [0u8; 2];
    pm.read(offset, &mut data);
    read_le(&data) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::event_channel;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);
    impl InterruptLine for Line {
        fn set_level(&self, asserted: bool) {
            self.0.lock().unwrap().push(asserted);
        }
    }

    #[test]
    fn power_button_sets_status_and_raises_sci_only_when_enabled() {
        let line = Arc::new(Line::default());
        let (tx, _rx) = event_channel().unwrap();
        let mut pm = AcpiPm::new(line.clone(), tx);
        pm.press_power_button();
        assert_eq!(register(&mut pm, 0), PWRBTN);
        assert!(line.0.lock().unwrap().is_empty(), "SCI without PWRBTN_EN");
        pm.write(2, &PWRBTN.to_le_bytes());
        assert_eq!(*line.0.lock().unwrap(), [true]);
        // Write-one-to-clear, byte access to the high byte.
        pm.write(1, &[0x01]);
        assert_eq!(register(&mut pm, 0), 0);
        assert_eq!(*line.0.lock().unwrap(), [true, false]);
    }

    #[test]
    fn s5_powers_off_and_sci_en_reads_set() {
        let (tx, rx) = event_channel().unwrap();
        let mut pm = AcpiPm::new(Arc::new(Line::default()), tx);
        assert_eq!(register(&mut pm, 4) & SCI_EN, SCI_EN);
        // SLP_TYP = 3 without a matching \_S3: no power-off.
        pm.write(4, &((3 << 10) | SLP_EN).to_le_bytes());
        assert!(rx.drain().is_empty());
        pm.write(4, &((5 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(rx.drain(), [VmEvent::PowerOff]);
        assert_eq!(register(&mut pm, 4) & SLP_EN, 0);
    }
}
