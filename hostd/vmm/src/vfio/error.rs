//! Why a device cannot be passed through: one variant per refusal, each naming the device
//! and what the operator (or hostd) should do, with its process exit code.

use std::path::PathBuf;

use vfio_ioctls::VfioError;

use super::bars;
use crate::control::exit_code;
use crate::pci::PciError;

/// Why a device cannot be passed through. Each kind has its exit code (docs/VMM.md).
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// No such PCI function.
    #[error(
        "passthrough device {device}: no such PCI function on this host ({path} does not exist): check the address; a VF exists only while its PF's sriov_numvfs covers it"
    )]
    DeviceMissing {
        /// As the config names it.
        device: String,
        /// The sysfs path looked at.
        path: PathBuf,
    },
    /// The function is bound to another driver, or none.
    #[error(
        "passthrough device {address} is bound to {}, not vfio-pci: bind it first (hostd does this for the VFs it assigns); by hand: modprobe vfio-pci; echo vfio-pci > /sys/bus/pci/devices/{address}/driver_override; {}echo {address} > /sys/bus/pci/drivers_probe",
        driver.as_deref().unwrap_or("no driver"),
        if driver.is_some() { format!("echo {address} > /sys/bus/pci/devices/{address}/driver/unbind; ") } else { String::new() }
    )]
    NotOnVfioPci {
        /// The function.
        address: String,
        /// Its driver now.
        driver: Option<String>,
    },
    /// The function has no IOMMU group: the host runs without an IOMMU.
    #[error(
        "passthrough device {address} has no IOMMU group: the host runs without an IOMMU; enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on (or amd_iommu=on)"
    )]
    NoIommuGroup {
        /// The function.
        address: String,
    },
    /// VFIO's device nodes are missing or cannot be opened.
    #[error(
        "VFIO is not available: {path} cannot be opened; load vfio-pci (modprobe vfio-pci), boot with the IOMMU on, and give the VMM /dev/vfio if it runs in a container"
    )]
    VfioUnavailable {
        /// The node.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Other members of the IOMMU group are on host drivers.
    #[error(
        "IOMMU group {group} of passthrough device {address} is not viable: {} must be bound to vfio-pci or unbound first (a group is passed through as a whole)",
        blockers_text(blockers)
    )]
    GroupNotViable {
        /// The function.
        address: String,
        /// Its group.
        group: u32,
        /// The blocking members: (address, driver).
        blockers: Vec<(String, String)>,
    },
    /// Another process holds the group (another VM has the device).
    #[error(
        "passthrough device {address} is in use: its IOMMU group {group} is open in {}; a device is passed through to one VM at a time: stop that VM or pick another VF",
        if holders.is_empty() { "another process".to_string() } else { holders.join(", ") }
    )]
    DeviceBusy {
        /// The function.
        address: String,
        /// Its group.
        group: u32,
        /// Who holds it: `pid <n> (<name>)`.
        holders: Vec<String>,
    },
    /// KVM has no VFIO device.
    #[error("KVM cannot create its VFIO device: is the kvm module built with CONFIG_KVM_VFIO?")]
    KvmVfio(#[source] kvm_ioctls::Error),
    /// A VFIO operation on the device failed.
    #[error("passthrough device {address}: VFIO cannot {what}")]
    Setup {
        /// The function.
        address: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: VfioError,
    },
    /// The BARs do not fit in the BAR window.
    #[error(
        "passthrough device {address}: BAR {bar} ({size:#x} bytes) does not fit in what is left of the {window_mib} MiB PCI BAR window: pass fewer or smaller devices"
    )]
    BarWindowFull {
        /// The function.
        address: String,
        /// BAR index.
        bar: usize,
        /// Its size.
        size: u64,
        /// The window's size.
        window_mib: u64,
    },
    /// A BAR could not be mapped.
    #[error("passthrough device {address}: cannot map its BARs")]
    BarMap {
        /// The function.
        address: String,
        /// Why.
        #[source]
        source: bars::BarMapError,
    },
    /// No GSIs or eventfds left for the vectors.
    #[error("passthrough device {address}: cannot set up its {vectors} interrupt vectors")]
    Vectors {
        /// The function.
        address: String,
        /// Vectors wanted.
        vectors: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two config entries name the same function.
    #[error("passthrough device {address} is listed twice in [[vfio]]: list each device once")]
    Duplicate {
        /// The function.
        address: String,
    },
    /// The guest slot is not free.
    #[error("passthrough device {address}")]
    Slot {
        /// The function.
        address: String,
        /// Why.
        #[source]
        source: PciError,
    },
    /// Guest RAM could not be mapped for DMA.
    #[error(
        "cannot map guest RAM for the passthrough devices' DMA: VFIO pins it and counts it against RLIMIT_MEMLOCK; run as root (CAP_IPC_LOCK) or raise the limit"
    )]
    DmaMap(#[source] VfioError),
}

fn blockers_text(blockers: &[(String, String)]) -> String {
    let named: Vec<String> = blockers
        .iter()
        .map(|(address, driver)| format!("{address} (on {driver})"))
        .collect();
    named.join(", ")
}

impl PassthroughError {
    /// The process exit code of this refusal (docs/VMM.md "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::DeviceMissing { .. } | Self::NotOnVfioPci { .. } => {
                exit_code::VFIO_DEVICE_UNAVAILABLE
            }
            Self::GroupNotViable { .. } => exit_code::VFIO_GROUP_NOT_VIABLE,
            Self::NoIommuGroup { .. } | Self::VfioUnavailable { .. } | Self::KvmVfio(_) => {
                exit_code::VFIO_UNSUPPORTED
            }
            Self::DeviceBusy { .. } => exit_code::VFIO_DEVICE_BUSY,
            Self::Slot { .. } | Self::Duplicate { .. } => exit_code::BAD_CONFIG,
            Self::Setup { .. }
            | Self::BarWindowFull { .. }
            | Self::BarMap { .. }
            | Self::Vectors { .. }
            | Self::DmaMap(_) => exit_code::VFIO_SETUP_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_their_own_exit_codes_apart_from_the_others() {
        let codes = [
            exit_code::POWERED_OFF,
            exit_code::RUNTIME_FAILURE,
            exit_code::BAD_CONFIG,
            exit_code::BAD_KERNEL,
            exit_code::CORES_UNAVAILABLE,
            exit_code::MEMORY_UNAVAILABLE,
            exit_code::BAD_DISK,
            exit_code::KVM_UNAVAILABLE,
            exit_code::SOCKET_UNAVAILABLE,
            exit_code::VFIO_DEVICE_UNAVAILABLE,
            exit_code::FORCED_STOP,
            exit_code::VFIO_GROUP_NOT_VIABLE,
            exit_code::VFIO_UNSUPPORTED,
            exit_code::VFIO_DEVICE_BUSY,
            exit_code::VFIO_SETUP_FAILED,
        ];
        let mut sorted = codes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len(), "{codes:?}");
        assert!(codes.iter().all(|&c| c < exit_code::GUEST_EXIT_BASE));

        let busy = PassthroughError::DeviceBusy {
            address: "0000:01:10.0".into(),
            group: 7,
            holders: vec!["pid 42 (hostd-vmm)".into()],
        };
        assert_eq!(busy.exit_code(), 13);
        assert!(
            busy.to_string().contains("open in pid 42 (hostd-vmm)"),
            "{busy}"
        );
        let not_viable = PassthroughError::GroupNotViable {
            address: "0000:00:1f.3".into(),
            group: 5,
            blockers: vec![("0000:00:1f.2".into(), "ahci".into())],
        };
        assert_eq!(not_viable.exit_code(), 11);
        assert!(not_viable.to_string().contains("0000:00:1f.2 (on ahci)"));
        let unbound = PassthroughError::NotOnVfioPci {
            address: "0000:01:10.0".into(),
            driver: None,
        };
        let text = unbound.to_string();
        assert!(
            text.contains("bound to no driver") && !text.contains("unbind"),
            "{text}"
        );
    }
}
