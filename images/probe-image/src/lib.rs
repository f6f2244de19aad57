//! The probe guest (images/probe): the tiny PVH payload every host-KVM test boots, built from
//! source by this crate's build script (see images/README.md).
//!
//! ```no_run
//! // Boot it under any loader that takes a file...
//! let path = probe_image::path();
//! // ...or load the bytes yourself.
//! assert_eq!(&probe_image::ELF[..4], b"\x7fELF");
//! # let _ = path;
//! ```
//!
//! [`console`] holds the strings of its console protocol (docs/VMM.md).

use std::path::Path;

/// The probe ELF: one PT_LOAD segment at 2 MiB and a `XEN_ELFNOTE_PHYS32_ENTRY` note.
pub const ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));

/// Where the probe ELF is on disk (in the target directory), for loaders that take a file
/// (QEMU's `-kernel`, a VMM config).
pub fn path() -> &'static Path {
    Path::new(concat!(env!("OUT_DIR"), "/probe.elf"))
}

pub mod console {
    //! The probe's console protocol (docs/VMM.md, "The probe guest's console protocol"):
    //! lines are separated by `\n` alone; the prompt has no newline.

    /// Start of the banner line: `probe: cpus=<n> ram=<MiB>MiB`.
    pub const BANNER_PREFIX: &str = "probe: cpus=";
    /// The line after the pci lines.
    pub const READY: &str = "probe: ready";
    /// The prompt, printed after `probe: ready` and after each command's output.
    pub const PROMPT: &str = "> ";
    /// Printed (as a whole line) when the power button is honoured, before powering off.
    pub const POWER_BUTTON: &str = "probe: power button";
    /// Printed (as a whole line) when the power button is pressed after `ignore-power`.
    pub const POWER_BUTTON_IGNORED: &str = "probe: power button ignored";
    /// Printed after `ignore-power`.
    pub const IGNORING_POWER_BUTTON: &str = "ignoring the power button from now on";
    /// Debug-exit code of a probe panic (QEMU then exits with status 7).
    pub const PANIC_EXIT_CODE: u8 = 3;

    /// The banner's figures.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Banner {
        /// Enabled CPUs in the MADT (or MP table).
        pub cpus: u32,
        /// RAM in the boot memory map, rounded to the nearest MiB.
        pub ram_mib: u64,
    }

    /// Parses a banner line (surrounding whitespace allowed).
    pub fn parse_banner(line: &str) -> Option<Banner> {
        let rest = line.trim().strip_prefix(BANNER_PREFIX)?;
        let (cpus, ram) = rest.split_once(" ram=")?;
        Some(Banner {
            cpus: cpus.parse().ok()?,
            ram_mib: ram.strip_suffix("MiB")?.parse().ok()?,
        })
    }

    /// Parses the reply to `ticks` (`ticks=<n>`).
    pub fn parse_ticks(line: &str) -> Option<u64> {
        line.trim().strip_prefix("ticks=")?.parse().ok()
    }

    /// The pci lines (`pci ...`) in console output.
    pub fn pci_lines(output: &str) -> impl Iterator<Item = &str> {
        output
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("pci "))
    }
}

#[cfg(test)]
mod tests {
    use super::console::*;
    use super::*;

    #[test]
    fn elf_is_a_static_x86_64_executable_with_the_protocol_strings() {
        assert_eq!(&ELF[..4], b"\x7fELF");
        assert_eq!(ELF[4], 2, "ELFCLASS64");
        assert_eq!(u16::from_le_bytes([ELF[16], ELF[17]]), 2, "ET_EXEC");
        assert_eq!(u16::from_le_bytes([ELF[18], ELF[19]]), 62, "EM_X86_64");
        assert_eq!(std::fs::read(path()).unwrap(), ELF);
        // The constants above must match what the probe prints.
        for text in [
            READY,
            POWER_BUTTON_IGNORED,
            IGNORING_POWER_BUTTON,
            "cpus=",
            " ram=",
            "ticks=",
        ] {
            assert!(
                ELF.windows(text.len()).any(|w| w == text.as_bytes()),
                "{text:?} not in the probe"
            );
        }
    }

    #[test]
    fn parses_banner_ticks_and_pci_lines() {
        assert_eq!(
            parse_banner("probe: cpus=2 ram=64MiB\r"),
            Some(Banner {
                cpus: 2,
                ram_mib: 64
            })
        );
        assert_eq!(parse_banner("probe: cpus=two ram=64MiB"), None);
        assert_eq!(parse_banner("probe: ready"), None);
        assert_eq!(parse_ticks("ticks=42"), Some(42));
        assert_eq!(parse_ticks("> ticks"), None);
        let output =
            "probe: cpus=1 ram=64MiB\npci 0000:00:00.0 8086:29c0 class=060000\nprobe: ready\n";
        assert_eq!(
            pci_lines(output).collect::<Vec<_>>(),
            ["pci 0000:00:00.0 8086:29c0 class=060000"]
        );
    }
}
