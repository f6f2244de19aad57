//! COM1, the 16550 UART at 0x3F8 that carries the console protocol (docs/VMM.md): polled
//! output and input, no interrupts. Also the `log` sink, so warnings reach the console as
//! `probe: warning: ...` lines.

use core::fmt;

use crate::port::{inb, outb};

/// I/O base of COM1.
pub const COM1: u16 = 0x3F8;

/// Register offsets from the base.
const DATA: u16 = 0; // THR on write, RBR on read
const INTERRUPT_ENABLE: u16 = 1;
const LINE_CONTROL: u16 = 3;
const LINE_STATUS: u16 = 5;

/// Line status bits.
const DATA_READY: u8 = 1 << 0;
const TRANSMIT_EMPTY: u8 = 1 << 5;

/// How many line-status reads to wait for room before sending anyway; an emulated UART is
/// ready at once, and a stuck one must not hang the probe.
const TRANSMIT_SPINS: u32 = 100_000;

/// The COM1 UART. It holds no state: every method talks to the hardware.
#[derive(Clone, Copy, Debug, Default)]
pub struct Uart;

impl Uart {
    /// Interrupts off (the probe polls) and 8N1 framing.
    ///
    /// The FIFO control register is left alone on purpose: toggling the FIFO enable bit clears
    /// the receive FIFO, which would drop input typed before the probe started.
    pub fn init(&self) {
        // SAFETY: COM1 is the console UART of docs/VMM.md; these writes only change its
        // interrupt enables (to none) and framing.
        unsafe {
            outb(COM1 + INTERRUPT_ENABLE, 0x00);
            outb(COM1 + LINE_CONTROL, 0x03);
        }
    }

    /// Sends one byte, waiting (boundedly) for room in the transmitter.
    pub fn write_byte(&self, byte: u8) {
        for _ in 0..TRANSMIT_SPINS {
            if self.line_status() & TRANSMIT_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing the COM1 data register transmits the byte; nothing else.
        unsafe { outb(COM1 + DATA, byte) };
    }

    /// The next received byte, if one is waiting.
    pub fn try_read_byte(&self) -> Option<u8> {
        let status = self.line_status();
        // All ones: nothing decodes the port (no UART), not "data ready".
        if status == 0xFF || status & DATA_READY == 0 {
            return None;
        }
        // SAFETY: reading the COM1 data register consumes the byte the line status says is
        // waiting; that is the intent.
        Some(unsafe { inb(COM1 + DATA) })
    }

    fn line_status(&self) -> u8 {
        // SAFETY: reading the COM1 line status register has no side effect the probe cares
        // about (it clears error bits, which the probe does not use).
        unsafe { inb(COM1 + LINE_STATUS) }
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        text.bytes().for_each(|byte| self.write_byte(byte));
        Ok(())
    }
}

/// Writes `log` records to COM1 as `probe: <level>: <message>` lines.
#[derive(Debug)]
pub struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            let _ = fmt::Write::write_fmt(
                &mut Uart,
                format_args!("probe: {level}: {}\n", record.args()),
            );
        }
    }

    fn flush(&self) {}
}

/// Routes `log` to the console, warnings and errors only: the console protocol's lines must
/// not drown in chatter.
pub fn install_logger() {
    // An error means a logger is already installed (a second call): keep it.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Displays an error followed by its `source()` chain: `outer: inner: innermost`.
#[derive(Clone, Copy, Debug)]
pub struct ErrorChain<'a>(pub &'a dyn core::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::PhysError;
    use crate::start_info::StartInfoError;
    use std::string::ToString;

    #[test]
    fn error_chain_shows_every_source() {
        let error = StartInfoError::Unreadable {
            addr: 0,
            source: PhysError::OutsideMap { addr: 0, len: 48 },
        };
        let shown = ErrorChain(&error).to_string();
        assert!(
            shown.starts_with("cannot read hvm_start_info at 0x0"),
            "{shown}"
        );
        assert!(
            shown.contains(": physical range 0x0+0x30 is outside"),
            "{shown}"
        );
    }
}
