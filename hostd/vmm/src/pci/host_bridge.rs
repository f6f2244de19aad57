//! The host bridge at `00:00.0`. It has no BARs and no capabilities; it exists because
//! guests expect one: Linux's mechanism-1 check (`pci_sanity_check`, used when there is no
//! DMI table, as here) accepts the configuration ports only if bus 0 holds a function of class
//! "host bridge" (or an Intel or Compaq one). Without it Linux reports "PCI: Fatal: No config
//! space access function found".

use super::function::PciFunction;
use super::{merge_dword, regs};

/// Red Hat's ID for a generic virtual PCIe host bridge (QEMU's `gpex`): a virtual machine's
/// bridge, not a model of real silicon.
pub const VENDOR_ID: u16 = 0x1b36;
/// See [`VENDOR_ID`].
pub const DEVICE_ID: u16 = 0x0008;
/// Class 06 (bridge), subclass 00 (host bridge), programming interface 00.
pub const CLASS_CODE: u32 = 0x06_00_00;

/// Command bits the bridge keeps (it decodes nothing itself; a guest may still set them).
const COMMAND_WRITABLE: u16 = regs::COMMAND_IO | regs::COMMAND_MEMORY | regs::COMMAND_BUS_MASTER;

/// The host bridge's configuration space: constant but for the command register.
#[derive(Debug, Default)]
pub struct HostBridge {
    command: u16,
}

impl PciFunction for HostBridge {
    fn read_config(&mut self, register: u16) -> u32 {
        match register {
            regs::VENDOR_DEVICE => u32::from(DEVICE_ID) << 16 | u32::from(VENDOR_ID),
            regs::COMMAND_STATUS => u32::from(self.command),
            regs::CLASS_REVISION => CLASS_CODE << 8,
            // Header type 0, single function; everything else (BARs, capabilities, extended
            // space) reads as zero: none implemented.
            _ => 0,
        }
    }

    fn write_config(&mut self, register: u16, offset: u8, data: &[u8]) {
        if register == regs::COMMAND_STATUS {
            let dword = merge_dword(u32::from(self.command), offset, data);
            self.command = dword as u16 & COMMAND_WRITABLE;
        }
    }

    fn reset(&mut self) {
        self.command = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_a_host_bridge_and_keeps_only_the_command_register() {
        let mut bridge = HostBridge::default();
        assert_eq!(bridge.read_config(0x00), 0x0008_1b36);
        assert_eq!(bridge.read_config(0x08) >> 8, 0x06_00_00);
        assert_eq!((bridge.read_config(0x0C) >> 16) & 0xFF, 0, "type 0");
        bridge.write_config(0x04, 0, &[0x07, 0x00]);
        // Status bits are not writable; writing the whole dword keeps them zero.
        bridge.write_config(0x04, 0, &0xFFFF_0006u32.to_le_bytes());
        assert_eq!(bridge.read_config(0x04), 0x0000_0006);
        bridge.write_config(0x10, 0, &[0xFF; 4]);
        assert_eq!(bridge.read_config(0x10), 0, "no BARs");
        assert_eq!(bridge.read_config(0x100), 0, "no extended capabilities");
        bridge.reset();
        assert_eq!(bridge.read_config(0x04), 0);
    }
}
