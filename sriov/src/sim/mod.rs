//! A simulated SR-IOV host: a sysfs and procfs tree in a directory of the caller's, and a
//! model of how the kernel reacts to writes into it.
//!
//! The unit tests of this crate run on it, and `hostd --sim` uses it as its NIC when the
//! machine has none. All state lives in the tree (plus `sim-spec.json`, the NIC definitions), so
//! a restarted process reopens the same simulated host with [`SimHost::open`].
//!
//! What is modelled, after the kernel's `sriov_numvfs_store`, `driver_override` and
//! `drivers_probe` code: `ERANGE` above `sriov_totalvfs`, `ENOENT` without a PF driver,
//! `EBUSY` for a non-zero to non-zero change; VF entries (`virtfnN`, `physfn`, one IOMMU group
//! each, unless the PF shares its group) created and removed; autoprobe binding the VF driver
//! and creating its netdev; override, unbind and probe. One difference, on purpose: removing
//! VFs while one is open through VFIO fails with `EBUSY` here, where the real kernel blocks
//! until the device is released (which is why callers must check first).

mod kernel;
mod tree;
mod vf;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::PciAddress;
use crate::host::Host;

pub use kernel::SimKernel;
pub use vf::SimVfControl;

/// One simulated SR-IOV NIC port (a PF).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPf {
    /// Its PCI address.
    pub addr: PciAddress,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PF device id.
    pub device_id: u16,
    /// VF device id.
    pub vf_device_id: u16,
    /// `sriov_totalvfs`.
    pub total_vfs: u32,
    /// The PF's driver (bound at creation).
    pub driver: String,
    /// The host driver VFs bind to when autoprobed.
    pub vf_driver: String,
    /// The PF's netdev name.
    pub netdev: String,
    /// NUMA node (`None`: the platform reports -1).
    pub numa_node: Option<u32>,
    /// `local_cpulist`.
    pub local_cpus: String,
    /// VFs join the PF's IOMMU group instead of getting their own (no ACS): not viable while
    /// the PF keeps its driver.
    pub vfs_share_pf_group: bool,
}

impl SimPf {
    /// An Intel 82576 port (igb, 7 VFs on igbvf), like QEMU's `igb` device.
    pub fn igb(addr: PciAddress, netdev: &str) -> Self {
        Self {
            addr,
            vendor_id: 0x8086,
            device_id: 0x10c9,
            vf_device_id: 0x10ca,
            total_vfs: 7,
            driver: "igb".into(),
            vf_driver: "igbvf".into(),
            netdev: netdev.into(),
            numa_node: Some(0),
            local_cpus: "0-1".into(),
            vfs_share_pf_group: false,
        }
    }
}

/// What the simulated host is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSpec {
    /// The NIC ports.
    pub pfs: Vec<SimPf>,
    /// Drivers that are "loaded" (have a directory under `bus/pci/drivers`).
    pub drivers: Vec<String>,
}

impl SimSpec {
    /// Two igb ports with igb, igbvf and vfio-pci loaded: what the QEMU lab has.
    pub fn two_igb_ports() -> Self {
        let pf = |bus: u8, netdev: &str| {
            SimPf::igb(
                PciAddress {
                    domain: 0,
                    bus,
                    device: 0,
                    function: 0,
                },
                netdev,
            )
        };
        Self {
            pfs: vec![pf(1, "eth0"), pf(2, "eth1")],
            drivers: vec!["igb".into(), "igbvf".into(), "vfio-pci".into()],
        }
    }
}

const SPEC_FILE: &str = "sim-spec.json";

/// A simulated host rooted in a directory.
#[derive(Debug, Clone)]
pub struct SimHost {
    root: PathBuf,
    kernel: Arc<SimKernel>,
    vf_control: Arc<SimVfControl>,
}

impl SimHost {
    /// Builds a fresh tree for `spec` under `root` (which must be empty or absent).
    pub fn create(root: &Path, spec: &SimSpec) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        if fs::read_dir(root)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is not empty; use SimHost::open to reuse a simulated host",
                    root.display()
                ),
            ));
        }
        let json = serde_json::to_vec_pretty(spec).map_err(io::Error::other)?;
        fs::write(root.join(SPEC_FILE), json)?;
        tree::build(root, spec)?;
        Self::open(root)
    }

    /// Reopens a simulated host made earlier by [`SimHost::create`].
    pub fn open(root: &Path) -> io::Result<Self> {
        let json = fs::read(root.join(SPEC_FILE))?;
        let spec: SimSpec = serde_json::from_slice(&json).map_err(io::Error::other)?;
        let vf_control = Arc::new(SimVfControl::new(root.to_path_buf(), spec.clone()));
        let kernel = Arc::new(SimKernel::new(root.to_path_buf(), spec));
        Ok(Self {
            root: root.to_path_buf(),
            kernel,
            vf_control,
        })
    }

    /// The host handle the crate's functions take.
    pub fn host(&self) -> Host {
        Host::new(
            self.root.join("sys"),
            self.root.join("proc"),
            self.kernel.clone(),
        )
        .with_vf_control(self.vf_control.clone())
    }

    /// The model itself, to write to it as an outside program would.
    pub fn kernel(&self) -> &SimKernel {
        &self.kernel
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a plain PCI device (not SR-IOV) bound to `driver` (loaded if it is not), into
    /// IOMMU group `group` (a new group when `None`).
    pub fn add_device(
        &self,
        addr: PciAddress,
        vendor_id: u16,
        device_id: u16,
        driver: Option<&str>,
        group: Option<u32>,
    ) -> io::Result<()> {
        let _guard = self.kernel.lock();
        tree::add_device(&self.root, addr, vendor_id, device_id, driver, group)
    }

    /// Makes process `pid` hold `/dev/vfio/<group>` open (a fake `<proc>/<pid>/fd/` link).
    pub fn hold_vfio_group(&self, pid: u32, group: u32) -> io::Result<()> {
        let fd_dir = self.root.join("proc").join(pid.to_string()).join("fd");
        fs::create_dir_all(&fd_dir)?;
        std::os::unix::fs::symlink(format!("/dev/vfio/{group}"), fd_dir.join("7"))
    }

    /// Makes the next write to a file named `attr` fail with `errno` (fault injection).
    pub fn fail_next_write(&self, attr: &str, errno: i32) {
        self.kernel.fail_next_write(attr, errno);
    }
}

/// Serialises the model's reactions: one sysfs write at a time, like the device lock.
pub(crate) type ModelLock = Mutex<Option<(String, i32)>>;
