//! Every way an SR-IOV operation fails, each naming the device, the sysfs file or netlink
//! operation, and what the operator should do about it.

use std::io;
use std::path::PathBuf;

use crate::PciAddress;

/// Errors of the `sriov` crate.
#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    /// A sysfs attribute could not be read.
    #[error("cannot read {path}: {source} ({advice})", advice = read_advice(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// A sysfs attribute held something the kernel never writes there.
    #[error("{path} holds `{value}`, expected {expected}; is this a sysfs tree?")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content.
        value: String,
        /// What was expected.
        expected: &'static str,
    },

    /// No PCI device has this address.
    #[error("no PCI device {addr} (looked in {path}); check the address with `lspci -D`")]
    NoSuchDevice {
        /// The address asked for.
        addr: PciAddress,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// The device exists but is not an SR-IOV physical function.
    #[error(
        "{addr} is not an SR-IOV physical function (no sriov_totalvfs); pick a PF from `hostctl nic list`"
    )]
    NotSriovCapable {
        /// The device.
        addr: PciAddress,
    },

    /// More VFs were asked for than the PF supports; nothing was written.
    #[error("PF {pf} supports at most {total} VFs, {requested} were asked for")]
    TooManyVfs {
        /// The PF.
        pf: PciAddress,
        /// What was asked for.
        requested: u32,
        /// `sriov_totalvfs`.
        total: u32,
    },

    /// A VF index past the VFs that exist.
    #[error("PF {pf} has {num_vfs} VFs, so VF index {index} does not exist")]
    VfIndexOutOfRange {
        /// The PF.
        pf: PciAddress,
        /// The index asked for.
        index: u32,
        /// `sriov_numvfs`.
        num_vfs: u32,
    },

    /// The VF count cannot change while VFs are in use; nothing was written.
    #[error("cannot change the VF count of PF {pf}: {}", describe_in_use(vfs))]
    VfsInUse {
        /// The PF.
        pf: PciAddress,
        /// Each VF in use and why.
        vfs: Vec<(PciAddress, VfUse)>,
    },

    /// A sysfs write was refused by the kernel.
    #[error("writing `{value}` to {path} failed: {source} ({advice})")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
        /// What the errno means here.
        advice: String,
    },

    /// vfio-pci is not loaded, so nothing can be bound to it. The crate loads nothing itself.
    #[error("the vfio-pci driver is not available (no {path}); load it with `modprobe vfio-pci`")]
    VfioPciUnavailable {
        /// The driver directory that is missing.
        path: PathBuf,
    },

    /// A bind or unbind did not leave the device on the driver asked for.
    #[error(
        "{addr} should now be bound to {wanted} but is bound to {actual}; see `dmesg` for the driver's complaint"
    )]
    BindFailed {
        /// The device.
        addr: PciAddress,
        /// The driver asked for (`none` for unbound).
        wanted: String,
        /// The driver it has.
        actual: String,
    },

    /// The device has no IOMMU group: the IOMMU is off or absent.
    #[error(
        "{addr} has no IOMMU group: enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on)"
    )]
    NoIommuGroup {
        /// The device.
        addr: PciAddress,
    },

    /// A netlink request was refused.
    #[error("netlink: {op} failed: {source} ({advice})")]
    Netlink {
        /// What was asked.
        op: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
        /// What the errno means here.
        advice: String,
    },

    /// A netlink reply made no sense.
    #[error("netlink: {op}: unexpected reply: {detail}")]
    NetlinkProtocol {
        /// What was asked.
        op: String,
        /// What was wrong.
        detail: String,
    },

    /// No network interface by that name.
    #[error("no network interface `{name}` ({source}); list them with `ip link`")]
    NoSuchInterface {
        /// The name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// A VF setting is malformed or out of range; nothing was written.
    #[error(transparent)]
    InvalidSetting(#[from] crate::vf_settings::SettingError),

    /// The PF has no netdev, so its VFs cannot be configured.
    #[error(
        "PF {pf} has no network interface (driver {driver}); VF settings go through the PF's netdev: bind it to its network driver"
    )]
    PfHasNoNetdev {
        /// The PF.
        pf: PciAddress,
        /// Its driver.
        driver: String,
    },

    /// The PF's driver does not support a VF setting.
    #[error(
        "PF {pf}: driver {driver} does not support setting `{setting}` on VF {index} ({source})"
    )]
    VfSettingUnsupported {
        /// The PF.
        pf: PciAddress,
        /// Its driver.
        driver: String,
        /// VF index.
        index: u32,
        /// The setting's name.
        setting: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// The PF's driver rejected a VF setting's value.
    #[error(
        "PF {pf}: driver {driver} rejected `{setting}` on VF {index} ({source}); the driver may not support that value"
    )]
    VfSettingRejected {
        /// The PF.
        pf: PciAddress,
        /// Its driver.
        driver: String,
        /// VF index.
        index: u32,
        /// The setting and its value.
        setting: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// The driver accepted a setting but reports something else: never a silent success.
    #[error("PF {pf}: driver {driver} accepted `{setting}` on VF {index} but reports {reported}")]
    VfSettingNotApplied {
        /// The PF.
        pf: PciAddress,
        /// Its driver.
        driver: String,
        /// VF index.
        index: u32,
        /// The setting and its value.
        setting: String,
        /// What the driver reports.
        reported: String,
    },

    /// VFs did not appear or disappear in time after a count change.
    #[error(
        "PF {pf}: expected {expected} VFs after writing sriov_numvfs, saw {seen} after {waited_ms} ms; see `dmesg`"
    )]
    VfsDidNotSettle {
        /// The PF.
        pf: PciAddress,
        /// The count written.
        expected: u32,
        /// The count seen.
        seen: u32,
        /// How long we waited.
        waited_ms: u64,
    },
}

/// Errors of netlink requests live here too: one enum for the crate.
impl SriovError {
    /// The errno behind an error, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SriovError::Read { source, .. }
            | SriovError::Write { source, .. }
            | SriovError::Netlink { source, .. }
            | SriovError::NoSuchInterface { source, .. }
            | SriovError::VfSettingUnsupported { source, .. }
            | SriovError::VfSettingRejected { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Why a VF counts as in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfUse {
    /// Bound to vfio-pci and assigned to a guest by the caller.
    Assigned,
    /// Its VFIO group device is held open by a process.
    OpenBy {
        /// The process.
        pid: u32,
    },
}

fn describe_in_use(vfs: &[(PciAddress, VfUse)]) -> String {
    let parts: Vec<String> = vfs
        .iter()
        .map(|(vf, why)| match why {
            VfUse::Assigned => {
                format!("VF {vf} is still bound to vfio-pci and assigned; stop its VM first")
            }
            VfUse::OpenBy { pid } => {
                format!("VF {vf} is open by process {pid}; stop that process first")
            }
        })
        .collect();
    parts.join("; ")
}

fn read_advice(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "the device or attribute is gone, or the driver does not provide it"
        }
        io::ErrorKind::PermissionDenied => "run as root",
        _ => "see `dmesg`",
    }
}

/// What an errno from a sysfs write means for the operator, per attribute.
pub(crate) fn write_advice(attr: &str, e: &io::Error) -> String {
    let errno = e.raw_os_error().unwrap_or(0);
    let text = match (attr, errno) {
        (_, libc::EACCES) | (_, libc::EPERM) => "run as root",
        ("sriov_numvfs", libc::EBUSY) => {
            "VFs are already enabled: the count must go through 0, which needs every VF idle"
        }
        ("sriov_numvfs", libc::ERANGE) => "more VFs than sriov_totalvfs",
        ("sriov_numvfs", libc::ENOENT) => {
            "no driver is bound to the PF; load its driver (e.g. igb) first"
        }
        ("sriov_numvfs", libc::ENOMEM) | ("sriov_numvfs", libc::ENOSPC) => {
            "the PF could not get resources for the VFs (bus numbers or MMIO); check firmware SR-IOV settings"
        }
        ("bind" | "drivers_probe", libc::ENODEV) => "the driver refused the device",
        ("bind" | "drivers_probe", libc::EBUSY) => "the device is already bound to a driver",
        ("unbind", libc::ENODEV) => "the device is not bound to that driver",
        (_, libc::ENOENT) => "the attribute is gone: was the device removed?",
        (_, libc::EINVAL) => "the kernel rejected the value",
        _ => "see `dmesg`",
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_message_tells_the_operator_what_to_do() {
        let vf: PciAddress = "0000:00:12.0".parse().unwrap();
        let err = SriovError::VfsInUse {
            pf: "0000:00:11.0".parse().unwrap(),
            vfs: vec![(vf, VfUse::Assigned), (vf, VfUse::OpenBy { pid: 42 })],
        };
        let text = err.to_string();
        assert!(
            text.contains(
                "VF 0000:00:12.0 is still bound to vfio-pci and assigned; stop its VM first"
            ),
            "{text}"
        );
        assert!(text.contains("open by process 42"), "{text}");
    }

    #[test]
    fn errno_advice_is_specific_to_the_attribute() {
        let busy = io::Error::from_raw_os_error(libc::EBUSY);
        assert!(write_advice("sriov_numvfs", &busy).contains("through 0"));
        assert!(write_advice("bind", &busy).contains("already bound"));
        let perm = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(write_advice("driver_override", &perm), "run as root");
    }
}
