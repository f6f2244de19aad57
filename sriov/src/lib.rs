//! SR-IOV control of physical functions (PFs) and virtual functions (VFs).
//!
//! Everything hostd and the factory suite do to SR-IOV devices goes through this crate:
//! discovery ([`list_pfs`], [`read_pf`]), the VF count ([`set_num_vfs`]), driver binding
//! ([`bind_to_vfio`], [`bind_to_host_driver`]), IOMMU group viability
//! ([`group_viability`]) and VF settings through the PF's driver ([`configure_vf`]). The kernel is reached through a [`Host`]: the real `/sys` and
//! `/proc`, or the simulated host of [`sim`] that the tests and `hostd --sim` use.
//!
//! ```no_run
//! let host = sriov::Host::real();
//! for pf in sriov::list_pfs(&host)? {
//!     println!("{} {} VFs of {}", pf.function.addr, pf.num_vfs, pf.total_vfs);
//! }
//! # Ok::<(), sriov::SriovError>(())
//! ```

mod binding;
mod discovery;
mod error;
mod host;
mod iommu;
pub mod netlink;
mod numvfs;
mod pci_address;
pub mod sim;
mod vf_config;
mod vf_netlink;
mod vf_settings;

pub use binding::{bind_to_host_driver, bind_to_vfio, unbind};
pub use discovery::{
    Driver, Netdev, PciFunction, PhysicalFunction, VFIO_PCI, VirtualFunction, list_pfs, pf_of,
    read_function, read_pf, vf_address, vf_addresses,
};
pub use error::{SriovError, VfUse};
pub use host::{Host, KernelWriter, RealKernel};
pub use iommu::{IommuGroup, Viability, group_viability, iommu_group_of};
pub use numvfs::{NumVfsOptions, set_num_vfs, vfs_in_use};
pub use pci_address::{PciAddress, PciAddressError};
pub use vf_config::{VfControl, clear_vf_mac, configure_vf, read_vf_states};
pub use vf_netlink::NetlinkVfControl;
pub use vf_settings::{
    LinkState, MacAddr, SettingError, TxRate, VfSetting, VfSettings, VfState, VfVlan, VlanProto,
};
