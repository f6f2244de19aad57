//! Changing how many VFs a PF has.
//!
//! The kernel refuses to change a non-zero VF count (`EBUSY`), so a change goes through 0,
//! which destroys every VF. That is only done when no VF is in use: assigned to a guest by the
//! caller, or open through VFIO by some process. Out-of-range counts are refused before
//! anything is written.

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::PciAddress;
use crate::discovery::{Driver, device_dir, read_function, vf_addresses};
use crate::error::{SriovError, VfUse};
use crate::host::Host;
use crate::iommu::iommu_group_of;

/// How a VF count change is made.
#[derive(Debug, Clone, Default)]
pub struct NumVfsOptions {
    /// `Some(false)`: create the VFs with `sriov_drivers_autoprobe` off, so no host driver
    /// binds them first (the PF's previous setting is restored afterwards). `None`: leave it.
    pub autoprobe: Option<bool>,
    /// VFs the caller has assigned to guests: their PF's count must not change.
    pub assigned: BTreeSet<PciAddress>,
    /// How long to wait for the kernel to create or remove the VF entries.
    pub settle_timeout: Option<Duration>,
}

const DEFAULT_SETTLE: Duration = Duration::from_secs(10);

/// Sets the number of VFs of `pf` to `n`. A no-op when it already has `n`.
pub fn set_num_vfs(
    host: &Host,
    pf: PciAddress,
    n: u32,
    opts: &NumVfsOptions,
) -> Result<(), SriovError> {
    let dir = device_dir(host, pf);
    if !dir.exists() {
        return Err(SriovError::NoSuchDevice {
            addr: pf,
            path: dir,
        });
    }
    let total_path = dir.join("sriov_totalvfs");
    if !total_path.exists() {
        return Err(SriovError::NotSriovCapable { addr: pf });
    }
    let total = host.read_u32(&total_path)?;
    if n > total {
        return Err(SriovError::TooManyVfs {
            pf,
            requested: n,
            total,
        });
    }
    let numvfs_path = dir.join("sriov_numvfs");
    let current = host.read_u32(&numvfs_path)?;
    if current == n {
        return Ok(());
    }
    if current > 0 {
        let in_use = vfs_in_use(host, pf, &opts.assigned)?;
        if !in_use.is_empty() {
            return Err(SriovError::VfsInUse { pf, vfs: in_use });
        }
        log::info!("PF {pf}: removing {current} VFs before creating {n}");
        host.write_attr(&numvfs_path, "0")?;
        wait_for_vf_count(host, pf, 0, opts)?;
    }
    if n == 0 {
        return Ok(());
    }
    let autoprobe_path = dir.join("sriov_drivers_autoprobe");
    let previous_autoprobe = match opts.autoprobe {
        Some(wanted) => {
            let previous = host.read_attr(&autoprobe_path)?;
            host.write_attr(&autoprobe_path, if wanted { "1" } else { "0" })?;
            Some(previous)
        }
        None => None,
    };
    log::info!("PF {pf}: creating {n} VFs");
    let created = host
        .write_attr(&numvfs_path, &n.to_string())
        .and_then(|()| wait_for_vf_count(host, pf, n, opts));
    // Put the PF's autoprobe setting back whether or not the VFs came up.
    if let Some(previous) = previous_autoprobe {
        host.write_attr(&autoprobe_path, &previous)?;
    }
    created
}

/// The PF's VFs that are in use, and why.
pub fn vfs_in_use(
    host: &Host,
    pf: PciAddress,
    assigned: &BTreeSet<PciAddress>,
) -> Result<Vec<(PciAddress, VfUse)>, SriovError> {
    let mut in_use = Vec::new();
    for (_, vf) in vf_addresses(host, pf)? {
        if assigned.contains(&vf) {
            in_use.push((vf, VfUse::Assigned));
            continue;
        }
        if read_function(host, vf)?.driver != Driver::Vfio {
            continue;
        }
        if let Some(group) = iommu_group_of(host, vf)? {
            if let Some(pid) = process_holding(host, &format!("/dev/vfio/{}", group.id)) {
                in_use.push((vf, VfUse::OpenBy { pid }));
            }
        }
    }
    Ok(in_use)
}

/// A process with `device` open, found through `<proc>/<pid>/fd/*` links.
fn process_holding(host: &Host, device: &str) -> Option<u32> {
    let procs = fs::read_dir(host.proc()).ok()?;
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Processes come and go, and some fd tables are unreadable: skip, do not fail.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == device) {
                return Some(pid);
            }
        }
    }
    None
}

fn wait_for_vf_count(
    host: &Host,
    pf: PciAddress,
    n: u32,
    opts: &NumVfsOptions,
) -> Result<(), SriovError> {
    let timeout = opts.settle_timeout.unwrap_or(DEFAULT_SETTLE);
    let start = Instant::now();
    loop {
        let seen = u32::try_from(vf_addresses(host, pf)?.len()).unwrap_or(u32::MAX);
        if seen == n {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(SriovError::VfsDidNotSettle {
                pf,
                expected: n,
                seen,
                waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}
