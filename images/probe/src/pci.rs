//! PCI through configuration mechanism 1 (ports 0xCF8/0xCFC): enumeration of bus 0 and the
//! buses behind bridges, BAR kinds and sizes, the MSI-X table size, and `peek` reads of a BAR.
//!
//! The logic works on the [`ConfigSpace`] trait so unit tests can run it against a fake bus;
//! [`Mechanism1`] is the real one.

use core::fmt;

use thiserror::Error;

use crate::port::{inl, outl};

/// Configuration address port of mechanism 1.
const CONFIG_ADDRESS: u16 = 0xCF8;
/// Configuration data port of mechanism 1.
const CONFIG_DATA: u16 = 0xCFC;

/// Register offsets of the configuration header.
const VENDOR_DEVICE: u8 = 0x00;
const COMMAND_STATUS: u8 = 0x04;
const CLASS_REVISION: u8 = 0x08;
const HEADER_TYPE_DWORD: u8 = 0x0C;
const BAR0: u8 = 0x10;
const BRIDGE_BUSES: u8 = 0x18;
const CAPABILITIES_POINTER: u8 = 0x34;

/// Command register bits.
const COMMAND_IO: u32 = 1 << 0;
const COMMAND_MEMORY: u32 = 1 << 1;
/// Status register bit: the function has a capability list.
const STATUS_CAPABILITIES: u32 = 1 << 4;
/// Capability ID of MSI-X.
const CAPABILITY_MSIX: u32 = 0x11;

/// A function address on segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl Bdf {
    /// Parses `bb:dd.f` or `0000:bb:dd.f` (hex, as the pci lines print it).
    pub fn parse(text: &str) -> Option<Self> {
        let text = match text.split_once(':') {
            Some((segment, rest)) if rest.contains(':') => {
                (u16::from_str_radix(segment, 16).ok()? == 0).then_some(rest)?
            }
            _ => text,
        };
        let (bus, rest) = text.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        let bdf = Self {
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
            function: u8::from_str_radix(function, 16).ok()?,
        };
        (bdf.device < 32 && bdf.function < 8).then_some(bdf)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// Access to configuration space (dword-aligned registers).
pub trait ConfigSpace {
    /// Reads the dword at `offset` (a multiple of 4) of `bdf`; all ones when absent.
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32;
    /// Writes the dword at `offset` (a multiple of 4) of `bdf`.
    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32);
}

/// Configuration mechanism 1 through ports 0xCF8 / 0xCFC.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mechanism1;

impl Mechanism1 {
    fn address(bdf: Bdf, offset: u8) -> u32 {
        0x8000_0000
            | u32::from(bdf.bus) << 16
            | u32::from(bdf.device & 0x1F) << 11
            | u32::from(bdf.function & 0x7) << 8
            | u32::from(offset & 0xFC)
    }
}

impl ConfigSpace for Mechanism1 {
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
        // SAFETY: 0xCF8/0xCFC are the mechanism 1 ports of docs/VMM.md; selecting a register
        // and reading it has no side effect on any register the probe relies on, and a
        // machine without PCI returns all ones, which reads as "no function".
        unsafe {
            outl(CONFIG_ADDRESS, Self::address(bdf, offset));
            inl(CONFIG_DATA)
        }
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        // SAFETY: as in read32; the callers in this module only write the command register
        // and BARs, restoring BARs to their original value after sizing.
        unsafe {
            outl(CONFIG_ADDRESS, Self::address(bdf, offset));
            outl(CONFIG_DATA, value);
        }
    }
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Mem32,
    /// Memory anywhere (two BAR registers).
    Mem64,
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Io => "io",
            Self::Mem32 => "mem32",
            Self::Mem64 => "mem64",
        })
    }
}

/// An implemented BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// The address (or port) it is programmed with.
    pub base: u64,
    /// Its size in bytes (a power of two).
    pub size: u64,
}

/// A size printed the way the pci lines show it: `16K`, `4M`, `1G` when a whole multiple,
/// else plain bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "T"),
            (1 << 30, "G"),
            (1 << 20, "M"),
            (1 << 10, "K"),
        ];
        for (unit, suffix) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// One PCI function, as the probe reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code, subclass and programming interface (`cccccc`).
    pub class: u32,
    /// Implemented BARs by register index (the upper half of a 64-bit BAR is `None`).
    pub bars: [Option<Bar>; 6],
    /// MSI-X table size, when the function has MSI-X.
    pub msix_vectors: Option<u16>,
}

impl fmt::Display for Function {
    /// The console protocol's pci line (docs/VMM.md).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pci {} {:04x}:{:04x} class={:06x}",
            self.bdf, self.vendor, self.device, self.class
        )?;
        for (index, bar) in self.bars.iter().enumerate() {
            if let Some(bar) = bar {
                write!(f, " bar{index}={}:{}", bar.kind, Size(bar.size))?;
            }
        }
        if let Some(vectors) = self.msix_vectors {
            write!(f, " msix={vectors}")?;
        }
        Ok(())
    }
}

/// Calls `visit` for every function on bus 0 and on the buses behind its bridges.
pub fn for_each_function(cfg: &mut impl ConfigSpace, visit: &mut impl FnMut(&Function)) {
    scan_bus(cfg, 0, visit);
}

fn scan_bus(cfg: &mut impl ConfigSpace, bus: u8, visit: &mut impl FnMut(&Function)) {
    for device in 0..32 {
        for function in 0..8 {
            let bdf = Bdf {
                bus,
                device,
                function,
            };
            let vendor_device = cfg.read32(bdf, VENDOR_DEVICE);
            if vendor_device & 0xFFFF == 0xFFFF {
                if function == 0 {
                    break; // no device here at all
                }
                continue;
            }
            let header_type = (cfg.read32(bdf, HEADER_TYPE_DWORD) >> 16) as u8;
            visit(&describe(cfg, bdf, vendor_device, header_type));
            if header_type & 0x7F == 1 {
                // A bridge: its secondary bus is numbered above it (firmware or VMM assigned
                // it); requiring "above" also guarantees the recursion ends.
                let secondary = (cfg.read32(bdf, BRIDGE_BUSES) >> 8) as u8;
                if secondary > bus {
                    scan_bus(cfg, secondary, visit);
                }
            }
            if function == 0 && header_type & 0x80 == 0 {
                break; // single-function device
            }
        }
    }
}

/// Number of BAR registers for a header type (0: endpoint, 1: bridge).
fn bar_count(header_type: u8) -> u8 {
    match header_type & 0x7F {
        0 => 6,
        1 => 2,
        _ => 0,
    }
}

fn describe(cfg: &mut impl ConfigSpace, bdf: Bdf, vendor_device: u32, header_type: u8) -> Function {
    let mut bars = [None; 6];
    let count = bar_count(header_type);
    let mut index = 0;
    while index < count {
        let bar = probe_bar(cfg, bdf, index, count);
        if let Some(slot) = bars.get_mut(usize::from(index)) {
            *slot = bar;
        }
        index += if bar.is_some_and(|bar| bar.kind == BarKind::Mem64) {
            2
        } else {
            1
        };
    }
    Function {
        bdf,
        vendor: vendor_device as u16,
        device: (vendor_device >> 16) as u16,
        class: cfg.read32(bdf, CLASS_REVISION) >> 8,
        bars,
        msix_vectors: msix_table_size(cfg, bdf),
    }
}

/// Decodes and sizes BAR `index` (of `count`): writes all ones, reads the size mask back and
/// restores the original value, with the function's decoding turned off meanwhile so the
/// all-ones address never claims a real range.
fn probe_bar(cfg: &mut impl ConfigSpace, bdf: Bdf, index: u8, count: u8) -> Option<Bar> {
    let offset = BAR0 + 4 * index;
    let original = cfg.read32(bdf, offset);
    let is_io = original & 1 == 1;
    let is_64 = !is_io && (original >> 1) & 0x3 == 0x2 && index + 1 < count;
    let original_high = if is_64 {
        cfg.read32(bdf, offset + 4)
    } else {
        0
    };

    // Only the low half is written back: the status half is write-one-to-clear.
    let command = cfg.read32(bdf, COMMAND_STATUS) & 0xFFFF;
    cfg.write32(
        bdf,
        COMMAND_STATUS,
        command & !(COMMAND_IO | COMMAND_MEMORY),
    );
    cfg.write32(bdf, offset, 0xFFFF_FFFF);
    let mask_low = cfg.read32(bdf, offset);
    let mask_high = if is_64 {
        cfg.write32(bdf, offset + 4, 0xFFFF_FFFF);
        let high = cfg.read32(bdf, offset + 4);
        cfg.write32(bdf, offset + 4, original_high);
        high
    } else {
        0
    };
    cfg.write32(bdf, offset, original);
    cfg.write32(bdf, COMMAND_STATUS, command);

    let (kind, base, mask) = if is_io {
        // 16-bit I/O BARs may read their upper half as zero: treat it as all ones.
        let low = mask_low & !0x3;
        let mask = if low & 0xFFFF_0000 == 0 {
            low | 0xFFFF_0000
        } else {
            low
        };
        (
            BarKind::Io,
            u64::from(original & !0x3),
            u64::from(mask) | 0xFFFF_FFFF_0000_0000,
        )
    } else if is_64 {
        let base = u64::from(original_high) << 32 | u64::from(original & !0xF);
        (
            BarKind::Mem64,
            base,
            u64::from(mask_high) << 32 | u64::from(mask_low & !0xF),
        )
    } else {
        (
            BarKind::Mem32,
            u64::from(original & !0xF),
            u64::from(mask_low & !0xF) | 0xFFFF_FFFF_0000_0000,
        )
    };
    let size = (!mask).wrapping_add(1);
    let implemented = if is_io {
        mask_low & !0x3 != 0
    } else {
        mask_low & !0xF != 0 || mask_high != 0
    };
    (implemented && size != 0).then_some(Bar { kind, base, size })
}

/// The MSI-X table size from the capability list, if the function has MSI-X.
fn msix_table_size(cfg: &mut impl ConfigSpace, bdf: Bdf) -> Option<u16> {
    if (cfg.read32(bdf, COMMAND_STATUS) >> 16) & STATUS_CAPABILITIES == 0 {
        return None;
    }
    let mut pointer = (cfg.read32(bdf, CAPABILITIES_POINTER) & 0xFC) as u8;
    // 48 capabilities fill the 192 bytes after the header: more means a loop.
    for _ in 0..48 {
        if pointer < 0x40 {
            return None;
        }
        let header = cfg.read32(bdf, pointer);
        if header & 0xFF == CAPABILITY_MSIX {
            return Some(((header >> 16) & 0x7FF) as u16 + 1);
        }
        pointer = ((header >> 8) & 0xFC) as u8;
    }
    None
}

/// Where a `peek` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeekTarget {
    /// A 32-bit I/O port.
    Port(u16),
    /// A guest-physical address inside the identity map.
    Memory(u64),
}

/// Why a `peek` cannot be done.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PeekError {
    /// Nothing answers at the address.
    #[error("no PCI function at {bdf}: use an address from the pci lines")]
    NoFunction {
        /// The address asked for.
        bdf: Bdf,
    },
    /// The function has no such BAR.
    #[error("{bdf} has no BAR {index}: use a barN shown on its pci line")]
    NoBar {
        /// The function.
        bdf: Bdf,
        /// The BAR asked for.
        index: u8,
    },
    /// The BAR is implemented but not programmed.
    #[error("{bdf} BAR {index} is not assigned an address: the VMM or firmware must program it")]
    Unassigned {
        /// The function.
        bdf: Bdf,
        /// The BAR.
        index: u8,
    },
    /// The offset is misaligned or past the BAR.
    #[error("offset {offset:#x} is not a 4-byte aligned offset inside the {size:#x}-byte BAR")]
    BadOffset {
        /// The offset asked for.
        offset: u64,
        /// The BAR's size.
        size: u64,
    },
    /// The address is outside the probe's identity map or the port space.
    #[error("{addr:#x} is outside what the probe maps (memory below 4 GiB, ports below 64K)")]
    Unreachable {
        /// The address.
        addr: u64,
    },
}

/// Resolves `peek <bdf> <index> <offset>` to the port or address to read, turning on the
/// function's I/O or memory decoding if it was off.
pub fn locate_peek(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    index: u8,
    offset: u64,
) -> Result<PeekTarget, PeekError> {
    if cfg.read32(bdf, VENDOR_DEVICE) & 0xFFFF == 0xFFFF {
        return Err(PeekError::NoFunction { bdf });
    }
    let header_type = (cfg.read32(bdf, HEADER_TYPE_DWORD) >> 16) as u8;
    let count = bar_count(header_type);
    let no_bar = PeekError::NoBar { bdf, index };
    // Walk from BAR 0 so that the upper half of a 64-bit BAR is not taken for a BAR.
    let mut at = 0;
    let bar = loop {
        if at >= count || at > index {
            return Err(no_bar);
        }
        let bar = probe_bar(cfg, bdf, at, count);
        if at == index {
            break bar.ok_or(no_bar)?;
        }
        at += if bar.is_some_and(|bar| bar.kind == BarKind::Mem64) {
            2
        } else {
            1
        };
    };
    if bar.base == 0 {
        return Err(PeekError::Unassigned { bdf, index });
    }
    let fits = offset % 4 == 0 && offset.checked_add(4).is_some_and(|end| end <= bar.size);
    if !fits {
        return Err(PeekError::BadOffset {
            offset,
            size: bar.size,
        });
    }
    let addr = bar.base + offset;
    let (target, decode) = match bar.kind {
        BarKind::Io => {
            let port = u16::try_from(addr)
                .ok()
                .filter(|port| *port <= u16::MAX - 3);
            (
                PeekTarget::Port(port.ok_or(PeekError::Unreachable { addr })?),
                COMMAND_IO,
            )
        }
        BarKind::Mem32 | BarKind::Mem64 => {
            if addr
                .checked_add(4)
                .is_none_or(|end| end > crate::phys::IDENTITY_MAP_END)
            {
                return Err(PeekError::Unreachable { addr });
            }
            (PeekTarget::Memory(addr), COMMAND_MEMORY)
        }
    };
    let command = cfg.read32(bdf, COMMAND_STATUS) & 0xFFFF;
    if command & decode == 0 {
        cfg.write32(bdf, COMMAND_STATUS, command | decode);
    }
    Ok(target)
}

/// Reads the 32-bit value at a target from [`locate_peek`].
pub fn read_peek(target: PeekTarget) -> u32 {
    match target {
        // SAFETY: the port lies inside an I/O BAR whose decoding locate_peek turned on: the
        // device owns it, and the probe accepts whatever a read of its register does.
        PeekTarget::Port(port) => unsafe { inl(port) },
        // SAFETY: locate_peek checked the address is 4-byte aligned (BAR bases are aligned to
        // at least 16 bytes, the offset to 4), non-null, inside the identity map (below
        // 4 GiB, mapped uncached from 3 GiB on) and inside a memory BAR whose decoding is on;
        // a volatile read is how device registers must be read.
        PeekTarget::Memory(addr) => unsafe {
            core::ptr::read_volatile(addr as usize as *const u32)
        },
    }
}

#[cfg(test)]
pub mod fake;

#[cfg(test)]
mod tests {
    use super::fake::{FakeConfigSpace, FakeFunction};
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    const fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf {
            bus,
            device,
            function,
        }
    }

    /// QEMU's igb PF: BAR0 128K mmio, BAR1 128K flash, BAR2 32 ports, BAR3 16K MSI-X.
    fn igb(at: Bdf) -> FakeFunction {
        FakeFunction::new(at, 0x8086, 0x10c9, 0x020000, 0x80)
            .bar(0, 128 << 10, 0, 0xFEA0_0000)
            .bar(1, 128 << 10, 0, 0xFEA2_0000)
            .bar(2, 32, 1, 0xC000)
            .bar(3, 16 << 10, 0, 0xFEA4_0000)
            .msix(10)
    }

    fn lines(cfg: &mut FakeConfigSpace) -> Vec<String> {
        let mut lines = Vec::new();
        for_each_function(cfg, &mut |function| lines.push(function.to_string()));
        lines
    }

    #[test]
    fn formats_the_igb_line_of_the_console_protocol() {
        let mut cfg = FakeConfigSpace {
            functions: std::vec![igb(bdf(0, 2, 0))],
            ..Default::default()
        };
        assert_eq!(
            lines(&mut cfg),
            [
                "pci 0000:00:02.0 8086:10c9 class=020000 bar0=mem32:128K bar1=mem32:128K \
                 bar2=io:32 bar3=mem32:16K msix=10"
            ]
        );
    }

    #[test]
    fn sizing_restores_bars_and_command_register() {
        let mut function = igb(bdf(0, 2, 0));
        function.regs[1] = 0x0010_0007; // decoding on, capability list
        let before = function.regs;
        let mut cfg = FakeConfigSpace {
            functions: std::vec![function],
            ..Default::default()
        };
        lines(&mut cfg);
        assert_eq!(cfg.functions[0].regs, before);
        // Decoding was off while a BAR held all ones.
        let first_all_ones = cfg.writes.iter().position(|w| w.2 == 0xFFFF_FFFF).unwrap();
        assert!(cfg.writes[..first_all_ones].contains(&(bdf(0, 2, 0), 0x04, 0x0004)));
    }

    #[test]
    fn decodes_64_bit_bars_and_skips_their_upper_half() {
        let nvme = FakeFunction::new(bdf(0, 4, 0), 0x1b36, 0x0010, 0x010802, 0)
            .bar(0, 16 << 10, 0x4, 0x8_0000_0000)
            .bar(2, 8 << 30, 0xC, 0x10_0000_0000);
        let mut cfg = FakeConfigSpace {
            functions: std::vec![nvme],
            ..Default::default()
        };
        assert_eq!(
            lines(&mut cfg),
            ["pci 0000:00:04.0 1b36:0010 class=010802 bar0=mem64:16K bar2=mem64:8G"]
        );
    }

    #[test]
    fn finds_functions_behind_bridges_and_in_multifunction_devices() {
        let mut bridge = FakeFunction::new(bdf(0, 1, 0), 0x1b36, 0x000c, 0x060400, 0x01);
        bridge.regs[6] = 0x0000_0100 | 0x0001_0000; // primary 0, secondary 1, subordinate 1
        let mut cfg = FakeConfigSpace {
            functions: std::vec![
                FakeFunction::new(bdf(0, 0, 0), 0x8086, 0x29c0, 0x060000, 0),
                bridge,
                igb(bdf(1, 0, 0)),
                FakeFunction::new(bdf(0, 0x1f, 0), 0x8086, 0x2918, 0x060100, 0x80),
                FakeFunction::new(bdf(0, 0x1f, 3), 0x8086, 0x2930, 0x0c0500, 0),
                // Function 1 of a single-function device is not scanned.
                FakeFunction::new(bdf(0, 0, 1), 0xdead, 0xbeef, 0, 0),
            ],
            ..Default::default()
        };
        let found: Vec<String> = lines(&mut cfg)
            .iter()
            .map(|l| l[4..16].to_string())
            .collect();
        assert_eq!(
            found,
            [
                "0000:00:00.0",
                "0000:00:01.0",
                "0000:01:00.0",
                "0000:00:1f.0",
                "0000:00:1f.3"
            ]
        );
    }

    #[test]
    fn empty_bus_has_no_lines() {
        assert!(lines(&mut FakeConfigSpace::default()).is_empty());
    }

    #[test]
    fn bridge_pointing_back_does_not_loop() {
        let mut bridge = FakeFunction::new(bdf(0, 1, 0), 0x1b36, 0x000c, 0x060400, 0x01);
        bridge.regs[6] = 0; // secondary bus 0: itself
        let mut cfg = FakeConfigSpace {
            functions: std::vec![bridge],
            ..Default::default()
        };
        assert_eq!(lines(&mut cfg).len(), 1);
    }

    #[test]
    fn sizes_print_in_the_largest_whole_unit() {
        let shown: Vec<String> = [32, 1024, 16 << 10, 1536, 4 << 20, 1 << 30, 3 << 40]
            .iter()
            .map(|s| Size(*s).to_string())
            .collect();
        assert_eq!(shown, ["32", "1K", "16K", "1536", "4M", "1G", "3T"]);
    }

    #[test]
    fn parses_bdf_with_and_without_segment() {
        assert_eq!(Bdf::parse("00:03.0"), Some(bdf(0, 3, 0)));
        assert_eq!(Bdf::parse("0000:01:1f.7"), Some(bdf(1, 0x1f, 7)));
        assert_eq!(Bdf::parse("0001:00:03.0"), None);
        assert_eq!(Bdf::parse("00:20.0"), None);
        assert_eq!(Bdf::parse("00:03.8"), None);
        assert_eq!(Bdf::parse("nonsense"), None);
    }

    #[test]
    fn peek_locates_memory_and_io_registers_and_turns_decoding_on() {
        let mut cfg = FakeConfigSpace {
            functions: std::vec![igb(bdf(0, 2, 0))],
            ..Default::default()
        };
        assert_eq!(
            locate_peek(&mut cfg, bdf(0, 2, 0), 0, 0x8),
            Ok(PeekTarget::Memory(0xFEA0_0008))
        );
        assert_eq!(cfg.functions[0].regs[1] & 0x3, COMMAND_MEMORY);
        assert_eq!(
            locate_peek(&mut cfg, bdf(0, 2, 0), 2, 0x4),
            Ok(PeekTarget::Port(0xC004))
        );
        assert_eq!(cfg.functions[0].regs[1] & 0x3, COMMAND_MEMORY | COMMAND_IO);
    }

    #[test]
    fn peek_refuses_bad_requests() {
        let nvme = FakeFunction::new(bdf(0, 4, 0), 0x1b36, 0x0010, 0x010802, 0)
            .bar(0, 16 << 10, 0x4, 0x8_0000_0000)
            .bar(2, 4096, 0x0, 0);
        let mut cfg = FakeConfigSpace {
            functions: std::vec![igb(bdf(0, 2, 0)), nvme],
            ..Default::default()
        };
        let igb_at = bdf(0, 2, 0);
        let nvme_at = bdf(0, 4, 0);
        assert_eq!(
            locate_peek(&mut cfg, bdf(0, 9, 0), 0, 0),
            Err(PeekError::NoFunction { bdf: bdf(0, 9, 0) })
        );
        assert_eq!(
            locate_peek(&mut cfg, igb_at, 4, 0),
            Err(PeekError::NoBar {
                bdf: igb_at,
                index: 4
            })
        );
        assert_eq!(
            locate_peek(&mut cfg, igb_at, 0, 2),
            Err(PeekError::BadOffset {
                offset: 2,
                size: 128 << 10
            })
        );
        assert_eq!(
            locate_peek(&mut cfg, igb_at, 0, 128 << 10),
            Err(PeekError::BadOffset {
                offset: 128 << 10,
                size: 128 << 10
            })
        );
        // BAR 1 of the NVMe is the upper half of its 64-bit BAR 0.
        assert_eq!(
            locate_peek(&mut cfg, nvme_at, 1, 0),
            Err(PeekError::NoBar {
                bdf: nvme_at,
                index: 1
            })
        );
        assert_eq!(
            locate_peek(&mut cfg, nvme_at, 0, 0),
            Err(PeekError::Unreachable {
                addr: 0x8_0000_0000
            })
        );
        assert_eq!(
            locate_peek(&mut cfg, nvme_at, 2, 0),
            Err(PeekError::Unassigned {
                bdf: nvme_at,
                index: 2
            })
        );
    }
}
