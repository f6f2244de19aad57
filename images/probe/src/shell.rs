//! The probe's life after boot: banner, pci lines, `probe: ready`, then the idle loop that
//! counts ticks, echoes input, runs commands and watches the power button.

use core::fmt::Write as _;

use crate::command::{self, Command, HELP};
use crate::console::{self, Uart};
use crate::line::LineEditor;
use crate::pci::{self, Bdf, ConfigSpace, Mechanism1};
use crate::phys::IdentityMapped;
use crate::platform::Platform;
use crate::power::{self, ButtonPress, Power, spin_cycles};
use crate::start_info::mib_rounded;

/// The banner's first bytes, sent before anything else.
pub const BANNER_START: &str = "probe: ";
/// The line after the pci lines.
pub const READY: &str = "probe: ready";
/// The prompt.
pub const PROMPT: &str = "> ";

/// Runs the probe; `start_info` is the guest-physical address of `hvm_start_info`.
pub fn run(start_info: u64) -> ! {
    let mut console = Uart;
    // The start-time benchmark measures the first byte: send it before any table parsing.
    let _ = console.write_str(BANNER_START);
    console.init();

    let platform = Platform::discover(&IdentityMapped, start_info);
    let cpus = platform.cpus.as_ref().map_or(0, |cpus| *cpus);
    let ram_mib = platform
        .ram_bytes
        .as_ref()
        .map_or(0, |bytes| mib_rounded(*bytes));
    let _ = writeln!(console, "cpus={cpus} ram={ram_mib}MiB");
    console::install_logger();
    platform.report_problems();

    let power = Power::new(platform.pm1.ok(), platform.s5_sleep_type.ok());
    power.arm_power_button();
    let mut shell = Shell {
        console,
        pci: Mechanism1,
        power,
        editor: LineEditor::default(),
        ticks: 0,
    };
    shell.print_pci();
    let _ = write!(shell.console, "{READY}\n{PROMPT}");
    shell.idle_loop()
}

/// TSC cycles the idle loop waits (without leaving the guest) after a poll that found no
/// input. Each poll is two port reads, two exits to the VMM: polling back to back made the
/// vCPU thread one tight loop of exits to the VMM, and on the QEMU lab's emulated
/// SVM the host CPU running it stopped getting timer interrupts (an RCU stall that hung the
/// VMM's teardown: docs/VMM.md). About 50 us at 2 GHz; input waits in the UART until then.
const IDLE_POLL_CYCLES: u64 = 100_000;

/// The interactive part.
#[derive(Debug)]
struct Shell<C: ConfigSpace> {
    console: Uart,
    pci: C,
    power: Power,
    editor: LineEditor,
    /// Idle-loop iterations: it only advances while the vCPU runs.
    ticks: u64,
}

impl<C: ConfigSpace> Shell<C> {
    fn idle_loop(&mut self) -> ! {
        loop {
            self.ticks = self.ticks.wrapping_add(1);
            if let Some(byte) = self.console.try_read_byte() {
                if let Some(line) = self.editor.feed(byte, &mut self.console) {
                    self.execute(line.as_str());
                    let _ = self.console.write_str(PROMPT);
                }
            } else {
                spin_cycles(IDLE_POLL_CYCLES);
            }
            match self.power.poll_power_button() {
                Some(ButtonPress::PowerOff) => {
                    let _ = writeln!(self.console, "\nprobe: power button");
                    self.power.power_off();
                }
                Some(ButtonPress::Ignored) => {
                    let _ = write!(self.console, "\nprobe: power button ignored\n{PROMPT}");
                }
                None => {}
            }
            core::hint::spin_loop();
        }
    }

    fn execute(&mut self, line: &str) {
        let command = match command::parse(line) {
            Ok(Some(command)) => command,
            Ok(None) => return,
            Err(error) => {
                let _ = writeln!(self.console, "error: {error}");
                return;
            }
        };
        match command {
            Command::Off => {
                let _ = writeln!(self.console, "probe: powering off");
                self.power.power_off();
            }
            Command::Reset => {
                let _ = writeln!(self.console, "probe: resetting");
                power::reset();
            }
            Command::Ticks => {
                let _ = writeln!(self.console, "ticks={}", self.ticks);
            }
            Command::IgnorePower => {
                self.power.ignore_power_button();
                let _ = writeln!(self.console, "ignoring the power button from now on");
            }
            Command::Pci => self.print_pci(),
            Command::Peek { bdf, bar, offset } => self.peek(bdf, bar, offset),
            Command::Help => {
                let _ = self.console.write_str(HELP);
            }
        }
    }

    fn print_pci(&mut self) {
        let console = &mut self.console;
        pci::for_each_function(&mut self.pci, &mut |function| {
            let _ = writeln!(console, "{function}");
        });
    }

    fn peek(&mut self, bdf: Bdf, bar: u8, offset: u64) {
        match pci::locate_peek(&mut self.pci, bdf, bar, offset) {
            Ok(target) => {
                let value = pci::read_peek(target);
                let _ = writeln!(
                    self.console,
                    "peek {bdf} bar{bar}+{offset:#x} = {value:#010x}"
                );
            }
            Err(error) => {
                let _ = writeln!(self.console, "error: {error}");
            }
        }
    }
}
