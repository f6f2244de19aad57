//! Power: the ACPI power button (PM1 status/enable), power-off (ACPI S5, else the debug exit
//! port), reset (i8042, else a triple fault), and the panic exit.

use core::arch::asm;
use core::fmt::Write as _;
use core::panic::PanicInfo;

use thiserror::Error;

use crate::acpi::{AcpiError, Fadt};
use crate::aml::AmlError;
use crate::console::Uart;
use crate::port::{inw, outb, outw};

/// The debug exit port (docs/VMM.md; QEMU's `isa-debug-exit,iobase=0xf4,iosize=1`).
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Debug exit code after a panic (QEMU exits with status 7).
pub const PANIC_EXIT_CODE: u8 = 3;
/// i8042 command port; writing [`I8042_RESET`] pulses the CPU reset line.
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xFE;

/// PM1 status / enable bit of the power button.
const PWRBTN: u16 = 1 << 8;
/// PM1 control bits.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;

/// How long to wait for a power-off or reset request to take effect before trying the next
/// way: 2^28 TSC cycles, about 0.1 s at 2.7 GHz. QEMU handles an S5 write asynchronously
/// (the vCPU keeps running for a moment), so falling through at once would race it.
const SETTLE_CYCLES: u64 = 1 << 28;

/// The PM1 registers of the FADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pm1Registers {
    /// PM1a_EVT_BLK: 16-bit status, then 16-bit enable.
    pub evt_blk: u16,
    /// Length of PM1a_EVT_BLK.
    pub evt_len: u8,
    /// PM1a_CNT_BLK.
    pub cnt_blk: u16,
}

/// Why a power function is unavailable or failed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PowerError {
    /// No usable FADT.
    #[error("no ACPI FADT: no power button, and off uses the debug exit port")]
    NoFadt(#[source] AcpiError),
    /// The FADT has no PM1 blocks (hardware-reduced ACPI, like QEMU's microvm).
    #[error(
        "the FADT has no PM1a event and control blocks (hardware-reduced: {hardware_reduced}): \
         no power button, and off uses the debug exit port"
    )]
    NoPm1Blocks {
        /// The FADT's HW_REDUCED_ACPI flag.
        hardware_reduced: bool,
    },
    /// The DSDT cannot be read.
    #[error("no DSDT, so no \\_S5: off uses the debug exit port")]
    NoDsdt(#[source] AcpiError),
    /// The DSDT has no usable `\_S5`.
    #[error("no \\_S5 sleep type: off uses the debug exit port")]
    NoS5(#[source] AmlError),
}

impl Pm1Registers {
    /// The PM1 registers a FADT names, if it has them.
    pub fn from_fadt(fadt: &Fadt) -> Result<Self, PowerError> {
        if fadt.pm1a_evt_blk == 0 || fadt.pm1a_cnt_blk == 0 || fadt.pm1_evt_len < 4 {
            return Err(PowerError::NoPm1Blocks {
                hardware_reduced: fadt.hardware_reduced,
            });
        }
        Ok(Self {
            evt_blk: fadt.pm1a_evt_blk,
            evt_len: fadt.pm1_evt_len,
            cnt_blk: fadt.pm1a_cnt_blk,
        })
    }

    /// The PM1 enable register: the second half of the event block.
    pub fn enable_port(&self) -> u16 {
        self.evt_blk + u16::from(self.evt_len / 2)
    }
}

/// The value that, written to PM1a_CNT, enters sleep state `slp_typ` (S5: off), keeping the
/// other bits of `control`.
pub fn sleep_control_value(control: u16, slp_typ: u8) -> u16 {
    (control & !SLP_TYP_MASK) | (u16::from(slp_typ & 0x7) << SLP_TYP_SHIFT) | SLP_EN
}

/// What a power button press led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ButtonPress {
    /// Honoured: the caller powers off.
    PowerOff,
    /// `ignore-power` was given.
    Ignored,
}

/// The machine's power controls.
#[derive(Debug)]
pub struct Power {
    pm1: Option<Pm1Registers>,
    slp_typ: Option<u8>,
    honour_button: bool,
}

impl Power {
    /// Controls from what the platform discovery found.
    pub fn new(pm1: Option<Pm1Registers>, slp_typ: Option<u8>) -> Self {
        Self {
            pm1,
            slp_typ,
            honour_button: true,
        }
    }

    /// Enables the power button event, without which QEMU does not report presses.
    ///
    /// The probe does not switch the machine into ACPI mode through SMI_CMD: it polls
    /// PWRBTN_STS instead of taking the SCI, QEMU sets the status bit regardless of SCI_EN,
    /// and on q35 the switch runs SeaBIOS's SMM handler, after which this machine's nested KVM
    /// stalled the idle loop to a few iterations per second. Our VMM has no SMI_CMD at all.
    ///
    /// PWRBTN_STS is not cleared here: a press that came before the probe started (a
    /// graceful stop requested during boot) must still be honoured.
    pub fn arm_power_button(&self) {
        if let Some(pm1) = self.pm1 {
            let enable = pm1.enable_port();
            // SAFETY: the port is the enable half of the FADT's PM1a_EVT_BLK; setting
            // PWRBTN_EN there only lets the power button report, which the probe wants.
            unsafe { outw(enable, inw(enable) | PWRBTN) };
        }
    }

    /// Stops honouring the power button (`ignore-power`).
    pub fn ignore_power_button(&mut self) {
        self.honour_button = false;
    }

    /// Checks (and clears) PWRBTN_STS.
    pub fn poll_power_button(&self) -> Option<ButtonPress> {
        let pm1 = self.pm1?;
        // SAFETY: PM1 status is the FADT's PM1a_EVT_BLK; reading it has no side effect and
        // writing PWRBTN back clears just that bit (write-one-to-clear).
        let pressed = unsafe {
            let pressed = inw(pm1.evt_blk) & PWRBTN != 0;
            if pressed {
                outw(pm1.evt_blk, PWRBTN);
            }
            pressed
        };
        pressed.then_some(if self.honour_button {
            ButtonPress::PowerOff
        } else {
            ButtonPress::Ignored
        })
    }

    /// Powers off: ACPI S5 when the tables allow it, else the debug exit port with code 0;
    /// halts if neither ends the machine.
    pub fn power_off(&self) -> ! {
        if let (Some(pm1), Some(slp_typ)) = (self.pm1, self.slp_typ) {
            // SAFETY: writing SLP_EN with the \_S5 SLP_TYP to the FADT's PM1a_CNT_BLK is the
            // ACPI power-off; that is what the caller asked for.
            unsafe {
                let control = inw(pm1.cnt_blk);
                outw(pm1.cnt_blk, sleep_control_value(control, slp_typ));
            }
            spin_cycles(SETTLE_CYCLES);
            log::warn!("ACPI S5 (SLP_TYP {slp_typ}) did not power off; trying the debug exit port");
        }
        debug_exit(0);
        spin_cycles(SETTLE_CYCLES);
        log::error!(
            "power-off failed: neither ACPI S5 nor the debug exit port (0xf4) ended the machine; \
             halting"
        );
        halt_forever()
    }
}

/// Resets the machine: the i8042 reset line, else a triple fault (docs/VMM.md: both reset).
pub fn reset() -> ! {
    // SAFETY: writing 0xFE to the i8042 command port pulses reset, which the caller asked for.
    unsafe { outb(I8042_COMMAND, I8042_RESET) };
    spin_cycles(SETTLE_CYCLES);
    log::warn!("the i8042 reset did not take; forcing a triple fault");
    // SAFETY: boot.rs loaded an IDT with limit 0, so the #UD from `ud2` cannot be delivered
    // and the CPU triple-faults, which resets the machine: the intent. Nothing runs after it.
    unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
}

/// Writes `code` to the debug exit port; the VMM ends the machine with that guest exit code
/// (QEMU exits with status `code << 1 | 1`).
pub fn debug_exit(code: u8) {
    // SAFETY: port 0xF4 is the debug exit port of docs/VMM.md; writing it ends the machine,
    // and where nothing decodes it the write is dropped.
    unsafe { outb(DEBUG_EXIT_PORT, code) };
}

/// Prints the panic and ends the machine through the debug exit port with
/// [`PANIC_EXIT_CODE`], so a test sees the failure at once instead of a hung guest.
pub fn panic_exit(info: &PanicInfo<'_>) -> ! {
    let _ = writeln!(Uart, "\nprobe: panic: {info}");
    debug_exit(PANIC_EXIT_CODE);
    halt_forever()
}

/// Stops doing anything, for good. The probe runs at CPL 3 (boot.rs), where `hlt` is not
/// allowed, so this spins on `pause`.
pub fn halt_forever() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Busy-waits about `cycles` TSC cycles.
pub(crate) fn spin_cycles(cycles: u64) {
    let start = tsc();
    while tsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

fn tsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: `rdtsc` reads the time-stamp counter into edx:eax and touches nothing else.
    unsafe {
        asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    u64::from(high) << 32 | u64::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm1_registers_come_from_the_fadt_or_not_at_all() {
        let fadt = Fadt {
            pm1a_evt_blk: 0x600,
            pm1_evt_len: 4,
            pm1a_cnt_blk: 0x604,
            ..Default::default()
        };
        let pm1 = Pm1Registers::from_fadt(&fadt).unwrap();
        assert_eq!(pm1.enable_port(), 0x602);
        let microvm = Fadt {
            hardware_reduced: true,
            ..Default::default()
        };
        assert_eq!(
            Pm1Registers::from_fadt(&microvm),
            Err(PowerError::NoPm1Blocks {
                hardware_reduced: true
            })
        );
    }

    #[test]
    fn sleep_control_sets_slp_typ_and_slp_en_and_keeps_sci_en() {
        assert_eq!(sleep_control_value(0x0001, 5), 0x3401);
        assert_eq!(sleep_control_value(0x1C01, 0), 0x2001);
        assert_eq!(sleep_control_value(0, 0xFF), 0x3C00);
    }
}
