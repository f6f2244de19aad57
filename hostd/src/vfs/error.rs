//! Why a VF cannot be given to a guest. Every message names the VF (address, port, index,
//! PF) and says what to do; they fit the API's 240-byte message.

use std::fmt;
use std::path::PathBuf;

use hostd_proto::{ApiError, ErrorCode, Resource, Shortfall, text};
use sriov::{PciAddress, SriovError};

/// A VF as the operator finds it: `VF 0000:01:10.0 (eth0 VF 0, PF 0000:01:00.0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfName {
    /// PCI address.
    pub addr: String,
    /// Port (PF netdev).
    pub port: String,
    /// Index under the PF.
    pub index: u32,
    /// PF PCI address.
    pub pf: String,
}

impl fmt::Display for VfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VF {} ({} VF {}, PF {})",
            self.addr, self.port, self.index, self.pf
        )
    }
}

/// A VF cannot be picked or prepared for a guest.
#[derive(Debug, thiserror::Error)]
pub enum VfError {
    /// Every VF of the port is held by another instance, open by another process, or gone.
    #[error("no free VF on port {port} (PF {pf}) for {instance}: {detail}")]
    NoFreeVf {
        /// The instance.
        instance: String,
        /// Port.
        port: String,
        /// PF address.
        pf: String,
        /// Who holds them, and what to do.
        detail: String,
        /// Some VF is held open by a process hostd did not start (a VF in use, rather than
        /// too few VFs).
        in_use: bool,
    },
    /// The PF cannot be read (gone, or its driver does not answer).
    #[error("port {port} (PF {pf}) cannot be read: {source}")]
    Pf {
        /// Port.
        port: String,
        /// PF address.
        pf: String,
        /// Why.
        #[source]
        source: SriovError,
    },
    /// The PF's driver refused a setting.
    #[error("{vf}: {source}")]
    Configure {
        /// The VF.
        vf: VfName,
        /// Why.
        #[source]
        source: SriovError,
    },
    /// Binding to vfio-pci failed.
    #[error("{vf} cannot be bound to vfio-pci: {source}")]
    Bind {
        /// The VF.
        vf: VfName,
        /// Why.
        #[source]
        source: SriovError,
    },
    /// Other members of the VF's IOMMU group are on host drivers that do DMA.
    #[error(
        "{vf}: IOMMU group {group} is not viable: {} on host drivers; unbind them or bind them to vfio-pci",
        list_blockers(.blockers)
    )]
    NotViable {
        /// The VF.
        vf: VfName,
        /// Its group.
        group: u32,
        /// The members in the way and their drivers.
        blockers: Vec<(PciAddress, String)>,
    },
    /// The VF has no IOMMU group: there is no IOMMU.
    #[error(
        "{vf} has no IOMMU group: no IOMMU; enable VT-d/AMD-Vi and boot with intel_iommu=on, or use no VFs"
    )]
    NoIommu {
        /// The VF.
        vf: VfName,
    },
    /// A VFIO device node is missing.
    #[error("{vf}: {} is missing: VFIO is not available; load vfio-pci", .path.display())]
    NoVfioNode {
        /// The VF.
        vf: VfName,
        /// The node.
        path: PathBuf,
    },
}

fn list_blockers(list: &[(PciAddress, String)]) -> String {
    list.iter()
        .map(|(addr, driver)| format!("{addr} ({driver})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl VfError {
    /// The refusal a client gets: `insufficient_resources` (with the numbers) when a port
    /// simply has too few VFs now, `vf_unavailable` for everything else.
    pub fn to_api(&self) -> ApiError {
        let message = text(&self.to_string());
        match self {
            Self::NoFreeVf { in_use: false, .. } => ApiError {
                code: ErrorCode::InsufficientResources,
                message,
                shortfall: Some(Shortfall {
                    resource: Resource::Vfs,
                    needed: 1,
                    available: 0,
                }),
            },
            _ => ApiError {
                code: ErrorCode::VfUnavailable,
                message,
                shortfall: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vf() -> VfName {
        VfName {
            addr: "0000:01:10.2".into(),
            port: "eth0".into(),
            index: 1,
            pf: "0000:01:00.0".into(),
        }
    }

    #[test]
    fn messages_name_the_vf_the_pf_and_what_to_do_within_the_api_limit() {
        let errors = [
            VfError::NotViable {
                vf: vf(),
                group: 17,
                blockers: vec![
                    ("0000:00:1f.2".parse().unwrap(), "ahci".into()),
                    ("0000:00:1f.0".parse().unwrap(), "lpc_ich".into()),
                ],
            },
            VfError::NoIommu { vf: vf() },
            VfError::Bind {
                vf: vf(),
                source: SriovError::VfioPciUnavailable {
                    path: "/sys/bus/pci/drivers/vfio-pci".into(),
                },
            },
            VfError::NoVfioNode {
                vf: vf(),
                path: "/dev/vfio/vfio".into(),
            },
        ];
        for err in &errors {
            let message = err.to_string();
            assert!(
                message.starts_with("VF 0000:01:10.2 (eth0 VF 1, PF 0000:01:00.0)"),
                "{message}"
            );
            assert!(message.len() <= 240, "{} bytes: {message}", message.len());
            assert_eq!(err.to_api().code, ErrorCode::VfUnavailable);
        }
        assert!(
            errors[0]
                .to_string()
                .contains("0000:00:1f.2 (ahci), 0000:00:1f.0 (lpc_ich) on host drivers")
        );
        assert!(errors[2].to_string().contains("modprobe vfio-pci"));
    }

    #[test]
    fn too_few_vfs_is_an_admission_refusal_and_a_vf_in_use_is_not() {
        let short = VfError::NoFreeVf {
            instance: "a".into(),
            port: "eth0".into(),
            pf: "0000:01:00.0".into(),
            detail: "1 VF, held by b (0000:01:10.0)".into(),
            in_use: false,
        };
        let api = short.to_api();
        assert_eq!(api.code, ErrorCode::InsufficientResources);
        assert_eq!(api.shortfall.map(|s| s.resource), Some(Resource::Vfs));
        let busy = VfError::NoFreeVf {
            instance: "a".into(),
            port: "eth0".into(),
            pf: "0000:01:00.0".into(),
            detail: "0000:01:10.0 open by pid 7 (qemu)".into(),
            in_use: true,
        };
        assert_eq!(busy.to_api().code, ErrorCode::VfUnavailable);
    }
}
