//! What the host has: online CPUs, RAM, huge pages (from the real machine, also under
//! `--sim`), and SR-IOV NIC ports with their VFs (through the `sriov` crate: the real sysfs,
//! or the simulated host of `sriov::sim` under `--sim`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sriov::{Host, PciAddress};

use crate::cpulist;

/// Errors reading the host.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A /proc or /sys file cannot be read.
    #[error("cannot read {path}: hostd needs /proc and /sys mounted")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The online CPU list does not parse.
    #[error("the kernel's online CPU list is not readable")]
    Cpus(#[source] cpulist::CpuListError),
    /// /proc/meminfo lacks a field.
    #[error("/proc/meminfo has no {field} line")]
    Meminfo {
        /// The field.
        field: &'static str,
    },
}

/// One SR-IOV port (PF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// PF netdev name (`eth0`), or the PCI address when it has none.
    pub name: String,
    /// PF address.
    pub pf: PciAddress,
    /// PF driver.
    pub driver: String,
    /// Device name (PCI ID database).
    pub device: String,
    /// `sriov_totalvfs`.
    pub total_vfs: u32,
    /// The VFs that exist: index and address.
    pub vfs: Vec<(u32, PciAddress)>,
    /// NUMA node of the PF, when the platform reports one.
    pub numa_node: Option<u32>,
    /// CPUs local to the PF (`local_cpulist`), when reported: an instance whose cores are
    /// all among them gets its VFs here rather than from a remote port.
    pub local_cpus: Option<BTreeSet<u16>>,
}

/// The host's resources.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Online CPUs.
    pub online: BTreeSet<u16>,
    /// RAM, MiB.
    pub mem_total_mib: u64,
    /// Default huge page size, KiB (0: none).
    pub hugepage_kib: u64,
    /// Huge pages in the pool.
    pub hugepages_total: u64,
    /// SR-IOV ports.
    pub ports: Vec<Port>,
}

/// Online CPUs of this machine.
pub fn online_cpus() -> Result<BTreeSet<u16>, InventoryError> {
    let path = Path::new("/sys/devices/system/cpu/online");
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_owned(),
        source,
    })?;
    cpulist::parse(&text).map_err(InventoryError::Cpus)
}

fn meminfo_kib(text: &str, field: &'static str) -> Result<u64, InventoryError> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or(InventoryError::Meminfo { field })
}

/// Reads everything. SR-IOV discovery failures leave the port list empty (a box without
/// SR-IOV NICs still runs guests) and are logged.
pub fn read(nic: &Host) -> Result<Inventory, InventoryError> {
    let online = online_cpus()?;
    let path = Path::new("/proc/meminfo");
    let meminfo = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mem_total_mib = meminfo_kib(&meminfo, "MemTotal")? / 1024;
    let hugepage_kib = meminfo_kib(&meminfo, "Hugepagesize").unwrap_or(0);
    let hugepages_total = meminfo_kib(&meminfo, "HugePages_Total").unwrap_or(0);
    Ok(Inventory {
        online,
        mem_total_mib,
        hugepage_kib,
        hugepages_total,
        ports: read_ports(nic),
    })
}

/// The SR-IOV ports, each with the VFs that exist.
pub fn read_ports(nic: &Host) -> Vec<Port> {
    let pfs = match sriov::list_pfs(nic) {
        Ok(pfs) => pfs,
        Err(err) => {
            log::warn!("SR-IOV discovery failed, no VFs available: {err}");
            return Vec::new();
        }
    };
    pfs.into_iter()
        .map(|pf| {
            let function = &pf.function;
            Port {
                name: function
                    .netdevs
                    .first()
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| function.addr.to_string()),
                pf: function.addr,
                driver: function.driver.name().to_owned(),
                device: function.device_name.unwrap_or("").to_owned(),
                total_vfs: pf.total_vfs,
                vfs: pf
                    .vfs
                    .iter()
                    .map(|vf| (vf.index, vf.function.addr))
                    .collect(),
                numa_node: function.numa_node,
                local_cpus: function
                    .local_cpus
                    .as_deref()
                    .and_then(|list| cpulist::parse(list).ok()),
            }
        })
        .collect()
}

/// Makes every PF that has no VFs create all it can (`sriov_totalvfs`), so the VF pool is
/// full; PFs that already have VFs are left as they are (their count is the operator's).
pub fn enable_vfs(nic: &Host) {
    let Ok(pfs) = sriov::list_pfs(nic) else {
        return;
    };
    for pf in pfs.iter().filter(|pf| pf.num_vfs == 0 && pf.total_vfs > 0) {
        let options = sriov::NumVfsOptions::default();
        match sriov::set_num_vfs(nic, pf.function.addr, pf.total_vfs, &options) {
            Ok(()) => log::info!("PF {}: created {} VFs", pf.function.addr, pf.total_vfs),
            Err(err) => log::warn!("PF {}: VFs not created: {err}", pf.function.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_kib() {
        let text =
            "MemTotal:       24684100 kB\nHugePages_Total:       4\nHugepagesize:       2048 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal").unwrap(), 24_684_100);
        assert_eq!(meminfo_kib(text, "HugePages_Total").unwrap(), 4);
        assert!(meminfo_kib(text, "MemFree").is_err());
    }

    #[test]
    fn the_simulated_nic_has_two_ports_of_seven_vfs_once_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let sim = sriov::sim::SimHost::create(
            &dir.path().join("sim"),
            &sriov::sim::SimSpec::two_igb_ports(),
        )
        .unwrap();
        let host = sim.host();
        assert!(read_ports(&host).iter().all(|p| p.vfs.is_empty()));
        enable_vfs(&host);
        let ports = read_ports(&host);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name, "eth0");
        assert_eq!(ports[0].vfs.len(), 7);
        assert_eq!(ports[1].total_vfs, 7);
    }
}
