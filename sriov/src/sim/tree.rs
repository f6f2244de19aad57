//! Building and changing the simulated sysfs tree: device directories, attribute files and the
//! symlinks the kernel keeps between devices, drivers, IOMMU groups and netdevs.
//!
//! The layout mirrors the kernel's: devices live under `sys/devices/pci0000:00/`, and
//! `sys/bus/pci/devices/<addr>` links to them, as do driver directories and groups.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::{SimPf, SimSpec};
use crate::PciAddress;

pub(super) fn sys(root: &Path) -> PathBuf {
    root.join("sys")
}

pub(super) fn dev_dir(root: &Path, addr: PciAddress) -> PathBuf {
    sys(root).join("devices/pci0000:00").join(addr.to_string())
}

fn driver_dir(root: &Path, driver: &str) -> PathBuf {
    sys(root).join("bus/pci/drivers").join(driver)
}

fn group_dir(root: &Path, group: u32) -> PathBuf {
    sys(root)
        .join("kernel/iommu_groups")
        .join(group.to_string())
}

/// Creates the tree for `spec`.
pub(super) fn build(root: &Path, spec: &SimSpec) -> io::Result<()> {
    for dir in [
        "devices/pci0000:00",
        "bus/pci/devices",
        "bus/pci/drivers",
        "kernel/iommu_groups",
        "class/net",
    ] {
        fs::create_dir_all(sys(root).join(dir))?;
    }
    fs::create_dir_all(root.join("proc"))?;
    fs::write(sys(root).join("bus/pci/drivers_probe"), "")?;
    for driver in &spec.drivers {
        load_driver(root, driver)?;
    }
    for pf in &spec.pfs {
        add_pf(root, pf)?;
    }
    Ok(())
}

fn add_pf(root: &Path, pf: &SimPf) -> io::Result<()> {
    add_device(root, pf.addr, pf.vendor_id, pf.device_id, None, None)?;
    let dir = dev_dir(root, pf.addr);
    write_attr(
        &dir,
        "numa_node",
        &pf.numa_node.map_or("-1".to_string(), |n| n.to_string()),
    )?;
    write_attr(&dir, "local_cpulist", &pf.local_cpus)?;
    write_attr(&dir, "sriov_totalvfs", &pf.total_vfs.to_string())?;
    write_attr(&dir, "sriov_numvfs", "0")?;
    write_attr(&dir, "sriov_drivers_autoprobe", "1")?;
    if driver_dir(root, &pf.driver).exists() {
        bind(root, pf.addr, &pf.driver)?;
        add_netdev(root, pf.addr, &pf.netdev)?;
    }
    Ok(())
}

fn write_attr(dir: &Path, name: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(name), format!("{value}\n"))
}

/// Creates a device with its bus link and IOMMU group membership; binds `driver` if given.
pub(super) fn add_device(
    root: &Path,
    addr: PciAddress,
    vendor_id: u16,
    device_id: u16,
    driver: Option<&str>,
    group: Option<u32>,
) -> io::Result<()> {
    let dir = dev_dir(root, addr);
    fs::create_dir_all(&dir)?;
    write_attr(&dir, "vendor", &format!("0x{vendor_id:04x}"))?;
    write_attr(&dir, "device", &format!("0x{device_id:04x}"))?;
    write_attr(&dir, "numa_node", "-1")?;
    write_attr(&dir, "local_cpulist", "0-1")?;
    write_attr(&dir, "driver_override", "(null)")?;
    symlink(
        format!("../../../devices/pci0000:00/{addr}"),
        sys(root).join("bus/pci/devices").join(addr.to_string()),
    )?;
    let group = match group {
        Some(g) => g,
        None => next_group(root)?,
    };
    let members = group_dir(root, group).join("devices");
    fs::create_dir_all(&members)?;
    symlink(
        format!("../../../../devices/pci0000:00/{addr}"),
        members.join(addr.to_string()),
    )?;
    symlink(
        format!("../../../kernel/iommu_groups/{group}"),
        dir.join("iommu_group"),
    )?;
    if let Some(driver) = driver {
        load_driver(root, driver)?;
        bind(root, addr, driver)?;
    }
    Ok(())
}

/// "Loads" a driver: its directory under `bus/pci/drivers`, with `bind` and `unbind`.
pub(super) fn load_driver(root: &Path, driver: &str) -> io::Result<()> {
    let dir = driver_dir(root, driver);
    fs::create_dir_all(&dir)?;
    for file in ["bind", "unbind"] {
        if !dir.join(file).exists() {
            fs::write(dir.join(file), "")?;
        }
    }
    Ok(())
}

/// Removes a device, its links, its group membership and its netdevs.
pub(super) fn remove_device(root: &Path, addr: PciAddress) -> io::Result<()> {
    unbind(root, addr)?;
    let dir = dev_dir(root, addr);
    if let Some(group) = group_of(root, addr)? {
        let members = group_dir(root, group).join("devices");
        fs::remove_file(members.join(addr.to_string()))?;
        if fs::read_dir(&members)?.next().is_none() {
            fs::remove_dir_all(group_dir(root, group))?;
        }
    }
    fs::remove_file(sys(root).join("bus/pci/devices").join(addr.to_string()))?;
    fs::remove_dir_all(dir)
}

/// The device's IOMMU group number.
pub(super) fn group_of(root: &Path, addr: PciAddress) -> io::Result<Option<u32>> {
    match fs::read_link(dev_dir(root, addr).join("iommu_group")) {
        Ok(target) => Ok(target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The driver a device is bound to.
pub(super) fn driver_of(root: &Path, addr: PciAddress) -> io::Result<Option<String>> {
    match fs::read_link(dev_dir(root, addr).join("driver")) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a driver is loaded.
pub(super) fn driver_loaded(root: &Path, driver: &str) -> bool {
    driver_dir(root, driver).is_dir()
}

/// Binds a device to a driver: the device's `driver` link and the driver's link back.
pub(super) fn bind(root: &Path, addr: PciAddress, driver: &str) -> io::Result<()> {
    symlink(
        format!("../../../bus/pci/drivers/{driver}"),
        dev_dir(root, addr).join("driver"),
    )?;
    symlink(
        format!("../../../../devices/pci0000:00/{addr}"),
        driver_dir(root, driver).join(addr.to_string()),
    )
}

/// Unbinds a device from its driver, if any; the driver's netdevs go with it.
pub(super) fn unbind(root: &Path, addr: PciAddress) -> io::Result<()> {
    let Some(driver) = driver_of(root, addr)? else {
        return Ok(());
    };
    fs::remove_file(dev_dir(root, addr).join("driver"))?;
    fs::remove_file(driver_dir(root, &driver).join(addr.to_string()))?;
    let net = dev_dir(root, addr).join("net");
    if net.exists() {
        for entry in fs::read_dir(&net)? {
            let name = entry?.file_name();
            fs::remove_file(sys(root).join("class/net").join(&name))?;
        }
        fs::remove_dir_all(net)?;
    }
    Ok(())
}

/// Gives a device a netdev, the way a network driver's probe does.
pub(super) fn add_netdev(root: &Path, addr: PciAddress, name: &str) -> io::Result<()> {
    let dir = dev_dir(root, addr).join("net").join(name);
    fs::create_dir_all(&dir)?;
    write_attr(&dir, "operstate", "down")?;
    // Locally administered, derived from the address so it is stable across runs.
    let mac = format!(
        "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
        addr.domain & 0xff,
        addr.bus,
        addr.device,
        addr.function
    );
    write_attr(&dir, "address", &mac)?;
    symlink(
        format!("../../devices/pci0000:00/{addr}/net/{name}"),
        sys(root).join("class/net").join(name),
    )
}

/// The lowest `eth<N>` name not in use.
pub(super) fn next_netdev_name(root: &Path) -> io::Result<String> {
    let mut n = 0;
    while sys(root).join("class/net").join(format!("eth{n}")).exists() {
        n += 1;
    }
    Ok(format!("eth{n}"))
}

fn next_group(root: &Path) -> io::Result<u32> {
    let mut max = None;
    for entry in fs::read_dir(sys(root).join("kernel/iommu_groups"))? {
        if let Some(n) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        {
            max = max.max(Some(n));
        }
    }
    Ok(max.map_or(0, |m| m + 1))
}
