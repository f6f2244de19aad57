//! IOMMU groups: which devices share DMA isolation with a VF, and whether the group can be
//! handed to VFIO (it is "viable" when every member is unbound or on a driver that leaves DMA
//! ownership to VFIO).

use serde::Serialize;

use crate::PciAddress;
use crate::discovery::{Driver, device_dir};
use crate::error::SriovError;
use crate::host::Host;

/// An IOMMU group and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IommuGroup {
    /// Group number: `/dev/vfio/<id>` once a member is bound to vfio-pci.
    pub id: u32,
    /// Every PCI device in the group, the device itself included.
    pub members: Vec<PciAddress>,
}

/// Drivers the kernel lets share a group with VFIO users: they never do DMA of their own
/// (the kernel marks them `driver_managed_dma`).
const DMA_SAFE_DRIVERS: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

/// The IOMMU group of a device, `None` when there is no IOMMU.
pub fn iommu_group_of(host: &Host, addr: PciAddress) -> Result<Option<IommuGroup>, SriovError> {
    let link = device_dir(host, addr).join("iommu_group");
    let Some(name) = host.link_name(&link)? else {
        return Ok(None);
    };
    let id = name.parse::<u32>().map_err(|_| SriovError::Malformed {
        path: link,
        value: name.clone(),
        expected: "a link to an IOMMU group",
    })?;
    let dir = host
        .sys()
        .join("kernel/iommu_groups")
        .join(&name)
        .join("devices");
    let members = host
        .list_dir(&dir)?
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    Ok(Some(IommuGroup { id, members }))
}

/// Whether a device's IOMMU group can be opened by VFIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Viability {
    /// Every member is unbound or on a DMA-safe driver.
    Viable {
        /// The group.
        group: IommuGroup,
    },
    /// Members still on host drivers that do DMA: they must be unbound or moved to vfio-pci.
    NotViable {
        /// The group.
        group: IommuGroup,
        /// Each offending member and its driver.
        offenders: Vec<(PciAddress, String)>,
    },
}

impl Viability {
    /// True when the group can be used.
    pub fn is_viable(&self) -> bool {
        matches!(self, Viability::Viable { .. })
    }
}

/// Checks the viability of the IOMMU group `addr` belongs to.
pub fn group_viability(host: &Host, addr: PciAddress) -> Result<Viability, SriovError> {
    let group = iommu_group_of(host, addr)?.ok_or(SriovError::NoIommuGroup { addr })?;
    let mut offenders = Vec::new();
    for member in &group.members {
        let driver = Driver::from_link(host.link_name(&device_dir(host, *member).join("driver"))?);
        match driver {
            Driver::None | Driver::Vfio => {}
            Driver::Kernel(name) if DMA_SAFE_DRIVERS.contains(&name.as_str()) => {}
            Driver::Kernel(name) => offenders.push((*member, name)),
        }
    }
    Ok(if offenders.is_empty() {
        Viability::Viable { group }
    } else {
        Viability::NotViable { group, offenders }
    })
}
