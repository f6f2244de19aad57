//! The host-side checks before a device is opened: it exists, it is bound to vfio-pci, it has
//! an IOMMU group whose other members do not block it, and VFIO's device nodes are there.
//! All from sysfs and `/dev`, before anything expensive happens, so each refusal names the
//! device and what to do. The paths are a seam: tests point them at a fake tree.
//!
//! The VMM never binds or unbinds anything itself (hostd does, through the `sriov` crate).

use std::path::{Path, PathBuf};

use super::PassthroughError;

/// Where the host's sysfs, device nodes and processes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// Device nodes (`/dev`).
    pub dev: PathBuf,
    /// procfs (`/proc`).
    pub proc: PathBuf,
}

impl HostPaths {
    /// The real host.
    pub fn real() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
        }
    }

    /// VFIO's container node.
    pub fn vfio_container(&self) -> PathBuf {
        self.dev.join("vfio/vfio")
    }

    /// The node of IOMMU group `group`.
    pub fn vfio_group(&self, group: u32) -> PathBuf {
        self.dev.join("vfio").join(group.to_string())
    }
}

/// A device that passed the host checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Its sysfs directory, canonical (what vfio-ioctls opens it by).
    pub sysfs: PathBuf,
    /// Its PCI address, e.g. `0000:01:10.0`.
    pub address: String,
    /// Its IOMMU group.
    pub group: u32,
}

/// `dddd:bb:dd.f` from `dddd:bb:dd.f` or `bb:dd.f` (domain 0), lower case; `None` when
/// `text` is not a PCI address.
pub fn normalize_address(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (domain, bus, rest) = match parts.as_slice() {
        [bus, rest] => ("0000", *bus, *rest),
        [domain, bus, rest] => (*domain, *bus, *rest),
        _ => return None,
    };
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str, digits: usize, max: u32| {
        (s.len() == digits)
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    let function = (function.len() == 1)
        .then(|| function.parse::<u32>().ok())
        .flatten()
        .filter(|f| *f < 8)?;
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{function}",
        hex(domain, 4, 0xFFFF)?,
        hex(bus, 2, 0xFF)?,
        hex(device, 2, 0x1F)?
    ))
}

/// The sysfs directory a config entry names: a path as given, or an address's directory.
pub fn sysfs_path(device: &str, host: &HostPaths) -> Option<PathBuf> {
    if device.starts_with('/') {
        return Some(PathBuf::from(device));
    }
    let address = normalize_address(device)?;
    Some(host.sys.join("bus/pci/devices").join(address))
}

/// The name of the driver `sysfs_dir` is bound to, if any.
fn driver_of(sysfs_dir: &Path) -> Option<String> {
    let link = std::fs::read_link(sysfs_dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Whether `driver` is vfio-pci or one of its device-specific variants.
fn is_vfio_driver(driver: &str) -> bool {
    driver == "vfio-pci" || driver.ends_with("_vfio_pci") || driver.ends_with("-vfio-pci")
}

/// Drivers that leave a group viable: VFIO's own, pci-stub (a placeholder), and PCIe port
/// services (bridges, which do no DMA of their own).
fn leaves_group_viable(driver: Option<&str>) -> bool {
    match driver {
        None => true,
        Some(d) => is_vfio_driver(d) || d == "pci-stub" || d == "pcieport",
    }
}

/// Members of `device`'s IOMMU group that block it: bound to a host driver that does DMA.
pub fn group_blockers(sysfs_dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(sysfs_dir.join("iommu_group/devices")) else {
        return Vec::new();
    };
    let mut blockers: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let driver = driver_of(&entry.path());
            (!leaves_group_viable(driver.as_deref())).then(|| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    driver.unwrap_or_default(),
                )
            })
        })
        .collect();
    blockers.sort();
    blockers
}

/// Checks the device a config entry names (see the module doc for the order).
pub fn check(device: &str, host: &HostPaths) -> Result<HostDevice, PassthroughError> {
    let missing = |path: PathBuf| PassthroughError::DeviceMissing {
        device: device.to_owned(),
        path,
    };
    let path = sysfs_path(device, host).ok_or_else(|| missing(PathBuf::from(device)))?;
    let sysfs = std::fs::canonicalize(&path).map_err(|_| missing(path.clone()))?;
    let address = sysfs
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| missing(path.clone()))?;

    let driver = driver_of(&sysfs);
    if !driver.as_deref().is_some_and(is_vfio_driver) {
        return Err(PassthroughError::NotOnVfioPci { address, driver });
    }
    let group = std::fs::read_link(sysfs.join("iommu_group"))
        .ok()
        .and_then(|link| link.file_name()?.to_str()?.parse::<u32>().ok())
        .ok_or_else(|| PassthroughError::NoIommuGroup {
            address: address.clone(),
        })?;
    let blockers = group_blockers(&sysfs);
    if !blockers.is_empty() {
        return Err(PassthroughError::GroupNotViable {
            address,
            group,
            blockers,
        });
    }
    for node in [host.vfio_container(), host.vfio_group(group)] {
        if !node.exists() {
            return Err(PassthroughError::VfioUnavailable {
                path: node,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
    }
    Ok(HostDevice {
        sysfs,
        address,
        group,
    })
}

/// The processes holding IOMMU group `group`'s node open, as `pid <n> (<name>)`: who has the
/// device when opening it says EBUSY.
pub fn group_holders(group: u32, host: &HostPaths) -> Vec<String> {
    let node = host.vfio_group(group);
    let Ok(processes) = std::fs::read_dir(&host.proc) else {
        return Vec::new();
    };
    let own = std::process::id().to_string();
    let mut holders = Vec::new();
    for process in processes.flatten() {
        let pid = process.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == node));
        if holds {
            let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            holders.push(match name.trim() {
                "" => format!("pid {pid}"),
                name => format!("pid {pid} ({name})"),
            });
        }
    }
    holders.sort();
    holders
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake host: sysfs with PCI devices (address, driver, group) and `/dev/vfio` nodes.
    pub struct FakeHost {
        /// Keeps the tree until the test ends.
        pub _dir: tempfile::TempDir,
        pub paths: HostPaths,
    }

    impl FakeHost {
        pub fn new(devices: &[(&str, Option<&str>, Option<u32>)], vfio_nodes: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let paths = HostPaths {
                sys: dir.path().join("sys"),
                dev: dir.path().join("dev"),
                proc: dir.path().join("proc"),
            };
            for (address, driver, group) in devices {
                let device = paths.sys.join("bus/pci/devices").join(address);
                std::fs::create_dir_all(&device).unwrap();
                if let Some(driver) = driver {
                    let driver_dir = paths.sys.join("bus/pci/drivers").join(driver);
                    std::fs::create_dir_all(&driver_dir).unwrap();
                    symlink(&driver_dir, device.join("driver")).unwrap();
                }
                if let Some(group) = group {
                    let group_dir = paths.sys.join(format!("kernel/iommu_groups/{group}"));
                    std::fs::create_dir_all(group_dir.join("devices")).unwrap();
                    symlink(&group_dir, device.join("iommu_group")).unwrap();
                    symlink(&device, group_dir.join("devices").join(address)).unwrap();
                }
            }
            std::fs::create_dir_all(paths.dev.join("vfio")).unwrap();
            for node in vfio_nodes {
                std::fs::write(paths.dev.join("vfio").join(node), "").unwrap();
            }
            std::fs::create_dir_all(&paths.proc).unwrap();
            Self { _dir: dir, paths }
        }
    }

    #[test]
    fn addresses_are_normalized_and_nonsense_refused() {
        assert_eq!(
            normalize_address("01:10.2").as_deref(),
            Some("0000:01:10.2")
        );
        assert_eq!(
            normalize_address("0000:0A:1f.7").as_deref(),
            Some("0000:0a:1f.7")
        );
        for bad in [
            "0000:01:20.0",
            "01:10.8",
            "1:10.0",
            "eth0",
            "0000:01:10",
            "",
        ] {
            assert_eq!(normalize_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_ready_vf_passes_and_is_found_by_address_or_path() {
        let host = FakeHost::new(
            &[("0000:01:10.0", Some("vfio-pci"), Some(7))],
            &["vfio", "7"],
        );
        let device = check("01:10.0", &host.paths).unwrap();
        assert_eq!((device.address.as_str(), device.group), ("0000:01:10.0", 7));
        let by_path = host.paths.sys.join("bus/pci/devices/0000:01:10.0");
        assert_eq!(
            check(by_path.to_str().unwrap(), &host.paths).unwrap(),
            device
        );
    }

    #[test]
    fn each_refusal_names_its_cause() {
        let host = FakeHost::new(
            &[
                ("0000:01:10.0", Some("igbvf"), Some(7)),
                ("0000:01:10.2", None, Some(8)),
                ("0000:01:10.4", Some("vfio-pci"), None),
                ("0000:01:10.6", Some("vfio-pci"), Some(9)),
            ],
            &["vfio"],
        );
        let err = check("0000:01:11.0", &host.paths).unwrap_err();
        assert!(
            matches!(err, PassthroughError::DeviceMissing { .. }),
            "{err}"
        );
        match check("0000:01:10.0", &host.paths).unwrap_err() {
            PassthroughError::NotOnVfioPci { address, driver } => {
                assert_eq!(
                    (address.as_str(), driver.as_deref()),
                    ("0000:01:10.0", Some("igbvf"))
                )
            }
            other => panic!("{other}"),
        }
        let err = check("0000:01:10.2", &host.paths).unwrap_err();
        assert!(
            matches!(err, PassthroughError::NotOnVfioPci { driver: None, .. }),
            "{err}"
        );
        let err = check("0000:01:10.4", &host.paths).unwrap_err();
        assert!(
            matches!(err, PassthroughError::NoIommuGroup { .. }),
            "{err}"
        );
        // Group 9's node is missing from /dev/vfio.
        match check("0000:01:10.6", &host.paths).unwrap_err() {
            PassthroughError::VfioUnavailable { path, .. } => {
                assert!(path.ends_with("vfio/9"), "{}", path.display())
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn group_members_on_host_drivers_block_it_and_are_named() {
        let host = FakeHost::new(
            &[
                ("0000:00:1f.0", Some("lpc_ich"), Some(3)),
                ("0000:00:1f.2", Some("ahci"), Some(3)),
                ("0000:00:1f.3", Some("vfio-pci"), Some(3)),
                ("0000:00:1c.0", Some("pcieport"), Some(3)),
                ("0000:00:1f.4", None, Some(3)),
            ],
            &["vfio", "3"],
        );
        match check("00:1f.3", &host.paths).unwrap_err() {
            PassthroughError::GroupNotViable {
                group, blockers, ..
            } => {
                assert_eq!(group, 3);
                assert_eq!(
                    blockers,
                    [
                        ("0000:00:1f.0".to_string(), "lpc_ich".to_string()),
                        ("0000:00:1f.2".to_string(), "ahci".to_string())
                    ]
                );
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn holders_of_a_group_node_are_found_in_proc() {
        let host = FakeHost::new(&[], &["vfio", "7"]);
        let process = host.paths.proc.join("4242");
        std::fs::create_dir_all(process.join("fd")).unwrap();
        std::fs::write(process.join("comm"), "hostd-vmm\n").unwrap();
        symlink(host.paths.vfio_group(7), process.join("fd/12")).unwrap();
        let other = host.paths.proc.join("4343/fd");
        std::fs::create_dir_all(&other).unwrap();
        symlink(host.paths.vfio_group(8), other.join("3")).unwrap();
        assert_eq!(group_holders(7, &host.paths), ["pid 4242 (hostd-vmm)"]);
        assert_eq!(group_holders(8, &host.paths), ["pid 4343"]);
        assert!(group_holders(9, &host.paths).is_empty());
    }
}
