//! The simulated kernel's reactions to sysfs writes.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{ModelLock, SimPf, SimSpec, tree};
use crate::PciAddress;
use crate::host::KernelWriter;

/// Offset and stride of VF routing ids after the PF's, as on the 82576 (igb).
const VF_OFFSET: u8 = 0x80;
const VF_STRIDE: u8 = 2;

/// The model of the kernel behind a [`super::SimHost`].
#[derive(Debug)]
pub struct SimKernel {
    root: PathBuf,
    spec: SimSpec,
    /// Held for each write, like the kernel's device lock; holds an injected fault, if any.
    lock: ModelLock,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl SimKernel {
    pub(super) fn new(root: PathBuf, spec: SimSpec) -> Self {
        Self {
            root,
            spec,
            lock: Mutex::new(None),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Option<(String, i32)>> {
        // A panic while holding the lock leaves the tree as consistent as the fs is: go on.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn fail_next_write(&self, attr: &str, code: i32) {
        *self.lock() = Some((attr.to_string(), code));
    }

    fn pf_spec(&self, addr: PciAddress) -> Option<&SimPf> {
        self.spec.pfs.iter().find(|p| p.addr == addr)
    }

    fn physfn(&self, addr: PciAddress) -> Option<&SimPf> {
        let target = fs::read_link(tree::dev_dir(&self.root, addr).join("physfn")).ok()?;
        let pf: PciAddress = target.file_name()?.to_str()?.parse().ok()?;
        self.pf_spec(pf)
    }

    /// The driver the kernel would match for a device without an override.
    fn default_driver(&self, addr: PciAddress) -> Option<String> {
        if let Some(pf) = self.pf_spec(addr) {
            return Some(pf.driver.clone());
        }
        self.physfn(addr).map(|pf| pf.vf_driver.clone())
    }

    fn is_network_driver(&self, driver: &str) -> bool {
        self.spec
            .pfs
            .iter()
            .any(|p| p.driver == driver || p.vf_driver == driver)
    }

    fn exists(&self, addr: PciAddress) -> bool {
        tree::dev_dir(&self.root, addr).is_dir()
    }

    fn read(&self, addr: PciAddress, attr: &str) -> io::Result<String> {
        Ok(
            fs::read_to_string(tree::dev_dir(&self.root, addr).join(attr))?
                .trim_end()
                .to_string(),
        )
    }

    fn store(&self, addr: PciAddress, attr: &str, value: &str) -> io::Result<()> {
        fs::write(
            tree::dev_dir(&self.root, addr).join(attr),
            format!("{value}\n"),
        )
    }

    fn attach(&self, addr: PciAddress, driver: &str) -> io::Result<()> {
        tree::bind(&self.root, addr, driver)?;
        if self.is_network_driver(driver) {
            let name = match self.pf_spec(addr) {
                Some(pf) => pf.netdev.clone(),
                None => tree::next_netdev_name(&self.root)?,
            };
            tree::add_netdev(&self.root, addr, &name)?;
        }
        Ok(())
    }

    fn device_attr(&self, addr: PciAddress, attr: &str, value: &str) -> io::Result<()> {
        if !self.exists(addr) {
            return Err(errno(libc::ENOENT));
        }
        match attr {
            "sriov_numvfs" => self.set_num_vfs(addr, value),
            "sriov_drivers_autoprobe" => match value.trim() {
                v @ ("0" | "1") => self.store(addr, attr, v),
                _ => Err(errno(libc::EINVAL)),
            },
            "driver_override" => {
                let v = value.trim();
                self.store(addr, attr, if v.is_empty() { "(null)" } else { v })
            }
            _ => Err(errno(libc::EACCES)),
        }
    }

    fn set_num_vfs(&self, pf_addr: PciAddress, value: &str) -> io::Result<()> {
        let pf = self.pf_spec(pf_addr).ok_or_else(|| errno(libc::ENOENT))?;
        let n: u32 = value.trim().parse().map_err(|_| errno(libc::EINVAL))?;
        if n > pf.total_vfs {
            return Err(errno(libc::ERANGE));
        }
        let current: u32 = self
            .read(pf_addr, "sriov_numvfs")?
            .parse()
            .map_err(|_| errno(libc::EIO))?;
        if n == current {
            return Ok(());
        }
        if tree::driver_of(&self.root, pf_addr)?.is_none() {
            return Err(errno(libc::ENOENT));
        }
        if n == 0 {
            return self.remove_vfs(pf, current);
        }
        if current != 0 {
            return Err(errno(libc::EBUSY));
        }
        self.create_vfs(pf, n)
    }

    fn vf_addr(pf: &SimPf, index: u32) -> io::Result<PciAddress> {
        let offset = u8::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(VF_STRIDE))
            .and_then(|o| o.checked_add(VF_OFFSET));
        let devfn = offset
            .and_then(|o| pf.addr.devfn().checked_add(o))
            .ok_or_else(|| errno(libc::ENOSPC))?;
        Ok(pf.addr.with_devfn(devfn))
    }

    fn create_vfs(&self, pf: &SimPf, n: u32) -> io::Result<()> {
        let autoprobe = self.read(pf.addr, "sriov_drivers_autoprobe")? == "1";
        let shared_group = if pf.vfs_share_pf_group {
            tree::group_of(&self.root, pf.addr)?
        } else {
            None
        };
        for index in 0..n {
            let vf = Self::vf_addr(pf, index)?;
            tree::add_device(
                &self.root,
                vf,
                pf.vendor_id,
                pf.vf_device_id,
                None,
                shared_group,
            )?;
            self.store(
                vf,
                "numa_node",
                &pf.numa_node.map_or("-1".to_string(), |n| n.to_string()),
            )?;
            self.store(vf, "local_cpulist", &pf.local_cpus)?;
            let pf_dir = tree::dev_dir(&self.root, pf.addr);
            std::os::unix::fs::symlink(
                format!("../{}", pf.addr),
                tree::dev_dir(&self.root, vf).join("physfn"),
            )?;
            std::os::unix::fs::symlink(format!("../{vf}"), pf_dir.join(format!("virtfn{index}")))?;
            if autoprobe && tree::driver_loaded(&self.root, &pf.vf_driver) {
                self.attach(vf, &pf.vf_driver)?;
            }
        }
        self.store(pf.addr, "sriov_numvfs", &n.to_string())
    }

    fn remove_vfs(&self, pf: &SimPf, current: u32) -> io::Result<()> {
        let vfs = (0..current)
            .map(|i| Self::vf_addr(pf, i))
            .collect::<io::Result<Vec<_>>>()?;
        for vf in &vfs {
            // The real kernel blocks here until the VFIO user lets go; we refuse instead.
            if tree::driver_of(&self.root, *vf)?.as_deref() == Some("vfio-pci") {
                if let Some(group) = tree::group_of(&self.root, *vf)? {
                    if self.group_held_open(group) {
                        return Err(errno(libc::EBUSY));
                    }
                }
            }
        }
        // The driver forgets the VFs' settings with them.
        let config = tree::dev_dir(&self.root, pf.addr).join(super::vf::VF_CONFIG_DIR);
        if config.exists() {
            fs::remove_dir_all(config)?;
        }
        for (index, vf) in vfs.iter().enumerate() {
            tree::remove_device(&self.root, *vf)?;
            fs::remove_file(tree::dev_dir(&self.root, pf.addr).join(format!("virtfn{index}")))?;
        }
        self.store(pf.addr, "sriov_numvfs", "0")
    }

    fn group_held_open(&self, group: u32) -> bool {
        let wanted = format!("/dev/vfio/{group}");
        let Ok(procs) = fs::read_dir(self.root.join("proc")) else {
            return false;
        };
        procs.flatten().any(|p| {
            fs::read_dir(p.path().join("fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == wanted.as_str())
                    })
                })
                .unwrap_or(false)
        })
    }

    fn unbind(&self, driver: &str, value: &str) -> io::Result<()> {
        let addr: PciAddress = value.trim().parse().map_err(|_| errno(libc::ENODEV))?;
        if !self.exists(addr) || tree::driver_of(&self.root, addr)?.as_deref() != Some(driver) {
            return Err(errno(libc::ENODEV));
        }
        tree::unbind(&self.root, addr)
    }

    fn bind(&self, driver: &str, value: &str) -> io::Result<()> {
        let addr: PciAddress = value.trim().parse().map_err(|_| errno(libc::ENODEV))?;
        if !self.exists(addr) {
            return Err(errno(libc::ENODEV));
        }
        if tree::driver_of(&self.root, addr)?.is_some() {
            return Err(errno(libc::EBUSY));
        }
        let override_ = self.read(addr, "driver_override")?;
        let matches = override_ == driver
            || (override_ == "(null)" && self.default_driver(addr).as_deref() == Some(driver));
        if !matches {
            return Err(errno(libc::ENODEV));
        }
        self.attach(addr, driver)
    }

    fn probe(&self, value: &str) -> io::Result<()> {
        let addr: PciAddress = value.trim().parse().map_err(|_| errno(libc::ENODEV))?;
        if !self.exists(addr) {
            return Err(errno(libc::ENODEV));
        }
        if tree::driver_of(&self.root, addr)?.is_some() {
            return Ok(());
        }
        let override_ = self.read(addr, "driver_override")?;
        let target = if override_ == "(null)" {
            self.default_driver(addr)
        } else {
            Some(override_)
        };
        match target {
            Some(driver) if tree::driver_loaded(&self.root, &driver) => self.attach(addr, &driver),
            // No matching driver is loaded: the device stays unbound and the write succeeds.
            _ => Ok(()),
        }
    }
}

impl KernelWriter for SimKernel {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut fault = self.lock();
        if let Some((attr, code)) = fault.as_ref() {
            if path.file_name().is_some_and(|n| n == attr.as_str()) {
                let code = *code;
                *fault = None;
                return Err(errno(code));
            }
        }
        let rel = path
            .strip_prefix(tree::sys(&self.root))
            .map_err(|_| errno(libc::ENOENT))?;
        let parts: Vec<&str> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let addr = |s: &str| s.parse::<PciAddress>().map_err(|_| errno(libc::ENOENT));
        match parts.as_slice() {
            ["bus", "pci", "devices", dev, attr] | ["devices", "pci0000:00", dev, attr] => {
                self.device_attr(addr(dev)?, attr, value)
            }
            ["bus", "pci", "drivers", driver, "unbind"]
                if tree::driver_loaded(&self.root, driver) =>
            {
                self.unbind(driver, value)
            }
            ["bus", "pci", "drivers", driver, "bind"]
                if tree::driver_loaded(&self.root, driver) =>
            {
                self.bind(driver, value)
            }
            ["bus", "pci", "drivers_probe"] => self.probe(value),
            _ => Err(errno(libc::ENOENT)),
        }
    }
}
