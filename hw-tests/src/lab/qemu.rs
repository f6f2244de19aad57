//! The emulated appliance's QEMU command line.
//!
//! q35 with a split irqchip and an Intel IOMMU with interrupt remapping (which needs the split
//! irqchip), `-cpu max` under TCG so the guest sees SVM and gets `/dev/kvm`, and two igb ports
//! (82576, 7 VFs each) behind their own PCIe root ports (on one bus their VFs' routing ids
//! collide), cabled to each other through QEMU hub 0.

use std::path::PathBuf;

/// What the emulated appliance is made of.
#[derive(Debug, Clone)]
pub struct LabMachine {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Kernel image.
    pub kernel: PathBuf,
    /// The appliance image (initramfs).
    pub initrd: PathBuf,
    /// A raw disk image for the data disk, if any.
    pub data_disk: Option<PathBuf>,
    /// vCPUs.
    pub cpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
}

/// The kernel command line: serial console, IOMMU on with passthrough for host devices, and
/// only warnings from the kernel while booting.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 intel_iommu=on iommu=pt loglevel=4";

impl LabMachine {
    /// QEMU's arguments. The serial console is QEMU's stdin/stdout.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine",
            "q35,kernel-irqchip=split",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            // The IOMMU must come before the devices it translates for.
            "-device",
            "intel-iommu,intremap=on,caching-mode=on",
            "-device",
            "pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x2",
            "-device",
            "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x3",
            "-netdev",
            "hubport,id=port0,hubid=0",
            "-device",
            "igb,netdev=port0,bus=rp1",
            "-netdev",
            "hubport,id=port1,hubid=0",
            "-device",
            "igb,netdev=port1,bus=rp2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
        ]);
        if let Some(disk) = &self.data_disk {
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id=data,format=raw", disk.display()),
                "-device".into(),
                "virtio-blk-pci,drive=data,addr=0x4".into(),
            ]);
        }
        a.extend([
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            KERNEL_CMDLINE.into(),
        ]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iommu_precedes_the_nics_and_each_nic_has_its_own_root_port() {
        let m = LabMachine {
            qemu: "qemu".into(),
            kernel: "vmlinuz".into(),
            initrd: "image".into(),
            data_disk: Some("data.img".into()),
            cpus: 2,
            memory_mib: 1536,
        };
        let args = m.args();
        let pos = |needle: &str| {
            args.iter()
                .position(|a| a.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle}"))
        };
        assert!(pos("intel-iommu") < pos("igb,netdev=port0"));
        assert!(args.contains(&"igb,netdev=port0,bus=rp1".to_string()));
        assert!(args.contains(&"igb,netdev=port1,bus=rp2".to_string()));
        assert!(args.contains(&"q35,kernel-irqchip=split".to_string()));
        assert_eq!(args[pos("-append") + 1], KERNEL_CMDLINE);
        assert!(args.contains(&"file=data.img,if=none,id=data,format=raw".to_string()));
        assert_eq!(args[pos("-smp") + 1], "2");
    }
}
