//! What the kernel says about SR-IOV physical functions (PFs) and their virtual functions
//! (VFs): ids and names, drivers, NUMA placement, netdevs, VF counts and IOMMU groups.

use std::path::PathBuf;

use serde::Serialize;

use crate::PciAddress;
use crate::error::SriovError;
use crate::host::Host;
use crate::iommu::{IommuGroup, iommu_group_of};

/// Which driver holds a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Driver {
    /// No driver: the device is idle.
    None,
    /// vfio-pci: the device can be handed to a guest.
    Vfio,
    /// A host kernel driver such as `igb` or `igbvf`.
    Kernel(String),
}

impl Driver {
    pub(crate) fn from_link(name: Option<String>) -> Self {
        match name.as_deref() {
            None => Driver::None,
            Some(VFIO_PCI) => Driver::Vfio,
            Some(other) => Driver::Kernel(other.to_string()),
        }
    }

    /// The driver's name, `none` when unbound.
    pub fn name(&self) -> &str {
        match self {
            Driver::None => "none",
            Driver::Vfio => VFIO_PCI,
            Driver::Kernel(name) => name,
        }
    }
}

/// The name of the VFIO PCI driver in sysfs.
pub const VFIO_PCI: &str = "vfio-pci";

/// A network interface on a PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Netdev {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// `operstate`: `up`, `down`, `unknown`, ...
    pub operstate: String,
    /// MAC address, as the kernel prints it.
    pub mac: Option<String>,
}

/// What every PCI function reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciFunction {
    /// Its address.
    pub addr: PciAddress,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// Vendor name from the PCI ID database, when known.
    pub vendor_name: Option<&'static str>,
    /// Device name from the PCI ID database, when known.
    pub device_name: Option<&'static str>,
    /// The driver holding it.
    pub driver: Driver,
    /// NUMA node, `None` when the platform has no NUMA information.
    pub numa_node: Option<u32>,
    /// CPUs local to the device, as the kernel lists them (`0-7,16-23`).
    pub local_cpus: Option<String>,
    /// Its network interfaces (none while bound to vfio-pci).
    pub netdevs: Vec<Netdev>,
}

/// An SR-IOV physical function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhysicalFunction {
    /// The PCI function.
    pub function: PciFunction,
    /// `sriov_totalvfs`: how many VFs it can have.
    pub total_vfs: u32,
    /// `sriov_numvfs`: how many it has now.
    pub num_vfs: u32,
    /// `sriov_drivers_autoprobe`: whether new VFs bind to a host driver at once.
    pub drivers_autoprobe: bool,
    /// Its VFs, by index.
    pub vfs: Vec<VirtualFunction>,
}

/// An SR-IOV virtual function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualFunction {
    /// Index under its PF (`virtfn<index>`).
    pub index: u32,
    /// The PCI function.
    pub function: PciFunction,
    /// Its IOMMU group, `None` without an IOMMU.
    pub iommu_group: Option<IommuGroup>,
}

/// `<sys>/bus/pci/devices/<addr>`.
pub(crate) fn device_dir(host: &Host, addr: PciAddress) -> PathBuf {
    host.pci_bus().join("devices").join(addr.to_string())
}

/// Reads one PCI function.
pub fn read_function(host: &Host, addr: PciAddress) -> Result<PciFunction, SriovError> {
    let dir = device_dir(host, addr);
    if !dir.exists() {
        return Err(SriovError::NoSuchDevice { addr, path: dir });
    }
    let vendor_id = host.read_hex_u16(&dir.join("vendor"))?;
    let device_id = host.read_hex_u16(&dir.join("device"))?;
    let (vendor_name, device_name) = names(vendor_id, device_id);
    let numa_node = match host.read_optional_attr(&dir.join("numa_node"))? {
        Some(n) => n.parse::<i64>().ok().and_then(|n| u32::try_from(n).ok()),
        None => None,
    };
    let mut netdevs = Vec::new();
    for name in host.list_dir(&dir.join("net"))? {
        let net_dir = dir.join("net").join(&name);
        let operstate = host
            .read_optional_attr(&net_dir.join("operstate"))?
            .unwrap_or_else(|| "unknown".into());
        let mac = host.read_optional_attr(&net_dir.join("address"))?;
        netdevs.push(Netdev {
            name,
            operstate,
            mac,
        });
    }
    Ok(PciFunction {
        addr,
        vendor_id,
        device_id,
        vendor_name,
        device_name,
        driver: Driver::from_link(host.link_name(&dir.join("driver"))?),
        numa_node,
        local_cpus: host.read_optional_attr(&dir.join("local_cpulist"))?,
        netdevs,
    })
}

/// Vendor and device names from the PCI ID database compiled into the binary.
fn names(vendor_id: u16, device_id: u16) -> (Option<&'static str>, Option<&'static str>) {
    match pci_ids::Device::from_vid_pid(vendor_id, device_id) {
        Some(d) => (Some(d.vendor().name()), Some(d.name())),
        None => (
            pci_ids::Vendors::iter()
                .find(|v| v.id() == vendor_id)
                .map(|v| v.name()),
            None,
        ),
    }
}

/// Lists every SR-IOV capable PF, sorted by address.
pub fn list_pfs(host: &Host) -> Result<Vec<PhysicalFunction>, SriovError> {
    let mut pfs = Vec::new();
    for name in host.list_dir(&host.pci_bus().join("devices"))? {
        let Ok(addr) = name.parse::<PciAddress>() else {
            continue;
        };
        if device_dir(host, addr).join("sriov_totalvfs").exists() {
            pfs.push(read_pf(host, addr)?);
        }
    }
    Ok(pfs)
}

/// Reads one PF and its VFs.
pub fn read_pf(host: &Host, addr: PciAddress) -> Result<PhysicalFunction, SriovError> {
    let function = read_function(host, addr)?;
    let dir = device_dir(host, addr);
    if !dir.join("sriov_totalvfs").exists() {
        return Err(SriovError::NotSriovCapable { addr });
    }
    let total_vfs = host.read_u32(&dir.join("sriov_totalvfs"))?;
    let num_vfs = host.read_u32(&dir.join("sriov_numvfs"))?;
    let drivers_autoprobe = host
        .read_optional_attr(&dir.join("sriov_drivers_autoprobe"))?
        .as_deref()
        != Some("0");
    let mut vfs = Vec::new();
    for (index, vf_addr) in vf_addresses(host, addr)? {
        vfs.push(VirtualFunction {
            index,
            function: read_function(host, vf_addr)?,
            iommu_group: iommu_group_of(host, vf_addr)?,
        });
    }
    Ok(PhysicalFunction {
        function,
        total_vfs,
        num_vfs,
        drivers_autoprobe,
        vfs,
    })
}

/// The PF's VFs as (index, address), sorted by index, from its `virtfnN` links.
pub fn vf_addresses(host: &Host, pf: PciAddress) -> Result<Vec<(u32, PciAddress)>, SriovError> {
    let dir = device_dir(host, pf);
    let mut vfs = Vec::new();
    for name in host.list_dir(&dir)? {
        let Some(index) = name
            .strip_prefix("virtfn")
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let link = dir.join(&name);
        let target = host.link_name(&link)?.unwrap_or_default();
        let vf = target
            .parse::<PciAddress>()
            .map_err(|_| SriovError::Malformed {
                path: link,
                value: target,
                expected: "a link to a PCI device",
            })?;
        vfs.push((index, vf));
    }
    vfs.sort();
    Ok(vfs)
}

/// The address of VF `index` of `pf`.
pub fn vf_address(host: &Host, pf: PciAddress, index: u32) -> Result<PciAddress, SriovError> {
    let vfs = vf_addresses(host, pf)?;
    vfs.iter()
        .find(|(i, _)| *i == index)
        .map(|(_, a)| *a)
        .ok_or(SriovError::VfIndexOutOfRange {
            pf,
            index,
            num_vfs: u32::try_from(vfs.len()).unwrap_or(u32::MAX),
        })
}

/// The PF a VF belongs to (its `physfn` link), `None` for a device that is not a VF.
pub fn pf_of(host: &Host, vf: PciAddress) -> Result<Option<PciAddress>, SriovError> {
    Ok(host
        .link_name(&device_dir(host, vf).join("physfn"))?
        .and_then(|n| n.parse().ok()))
}
