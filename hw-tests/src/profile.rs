//! The factory profile: what one SKU must have. A TOML file; a missing section means the SKU
//! lacks that hardware, so its check is skipped, never failed.
//!
//! ```toml
//! sku = "qemu-lab"
//! [cpu]
//! min_cores = 2
//! virtualization = true
//! [memory]
//! min_total_mib = 1024
//! pattern_test_mib = 64
//! [iommu]
//! min_groups = 1
//! [sriov]
//! pfs = 2
//! vfs_per_pf = 7
//! [[cabling]]
//! a = "0000:01:00.0"
//! b = "0000:02:00.0"
//! [storage]
//! path = "/data"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One SKU's requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The SKU's name, echoed in reports.
    pub sku: String,
    /// CPU and hardware virtualization.
    pub cpu: Option<CpuSpec>,
    /// RAM.
    pub memory: Option<MemorySpec>,
    /// The IOMMU.
    pub iommu: Option<IommuSpec>,
    /// SR-IOV NIC ports.
    pub sriov: Option<SriovSpec>,
    /// Ports cabled to each other, for the loopback test.
    #[serde(default)]
    pub cabling: Vec<CablePair>,
    /// The data disk.
    pub storage: Option<StorageSpec>,
}

/// CPU requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Online CPUs at least.
    pub min_cores: u32,
    /// svm/vmx, /dev/kvm and KVM_CREATE_VM must work.
    #[serde(default = "yes")]
    pub virtualization: bool,
}

/// Memory requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// `MemTotal` at least, in MiB.
    pub min_total_mib: u64,
    /// How much RAM the pattern test writes and verifies, in MiB.
    #[serde(default = "default_pattern_mib")]
    pub pattern_test_mib: u64,
}

/// IOMMU requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IommuSpec {
    /// IOMMU groups at least.
    #[serde(default = "one")]
    pub min_groups: u32,
}

/// SR-IOV requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SriovSpec {
    /// SR-IOV capable PFs at least.
    pub pfs: u32,
    /// VFs each PF must support and create.
    pub vfs_per_pf: u32,
    /// Bind one VF per PF to vfio-pci and open it through VFIO.
    #[serde(default = "yes")]
    pub vfio_bind: bool,
}

/// Two ports cabled to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CablePair {
    /// Sending port: a PCI address (`0000:01:00.0`) or an interface name.
    pub a: String,
    /// Receiving port, likewise.
    pub b: String,
    /// Frames to send.
    #[serde(default = "default_frames")]
    pub frames: u32,
    /// How long the links may take to come up (autonegotiation), in seconds.
    #[serde(default = "default_link_timeout")]
    pub link_timeout_secs: u32,
}

/// Data disk requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// Where the data disk is mounted.
    pub path: PathBuf,
    /// Size of the test file, in MiB.
    #[serde(default = "default_storage_mib")]
    pub test_mib: u64,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_pattern_mib() -> u64 {
    64
}
fn default_frames() -> u32 {
    1000
}
fn default_link_timeout() -> u32 {
    15
}
fn default_storage_mib() -> u64 {
    16
}

/// The profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file cannot be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML for a profile.
    #[error("profile {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why (names the line and the field).
        #[source]
        source: toml::de::Error,
    },
    /// Valid TOML with a value out of range.
    #[error("profile {path}: {field} = {value} is out of range ({allowed})")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// The value.
        value: String,
        /// The allowed range.
        allowed: &'static str,
    },
}

impl Profile {
    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates profile text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        profile.validate(path)?;
        Ok(profile)
    }

    fn validate(&self, path: &Path) -> Result<(), ProfileError> {
        let range = |field: &str, value: u64, lo: u64, hi: u64, allowed: &'static str| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(ProfileError::OutOfRange {
                    path: path.to_path_buf(),
                    field: field.into(),
                    value: value.to_string(),
                    allowed,
                })
            }
        };
        if let Some(cpu) = &self.cpu {
            range("cpu.min_cores", cpu.min_cores.into(), 1, 4096, "1 to 4096")?;
        }
        if let Some(m) = &self.memory {
            range(
                "memory.min_total_mib",
                m.min_total_mib,
                1,
                64 << 20,
                "1 MiB to 64 TiB",
            )?;
            range(
                "memory.pattern_test_mib",
                m.pattern_test_mib,
                0,
                m.min_total_mib / 2,
                "0 to half of min_total_mib",
            )?;
        }
        if let Some(s) = &self.sriov {
            range("sriov.pfs", s.pfs.into(), 1, 64, "1 to 64")?;
            range("sriov.vfs_per_pf", s.vfs_per_pf.into(), 1, 256, "1 to 256")?;
        }
        for (i, c) in self.cabling.iter().enumerate() {
            range(
                &format!("cabling[{i}].frames"),
                c.frames.into(),
                1,
                1_000_000,
                "1 to 1000000",
            )?;
            if c.a == c.b {
                return Err(ProfileError::OutOfRange {
                    path: path.to_path_buf(),
                    field: format!("cabling[{i}].b"),
                    value: c.b.clone(),
                    allowed: "a port other than `a`",
                });
            }
        }
        if let Some(s) = &self.storage {
            range("storage.test_mib", s.test_mib, 1, 1 << 20, "1 MiB to 1 TiB")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(text, Path::new("sku.toml"))
    }

    #[test]
    fn the_shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert!(seen >= 2);
    }

    #[test]
    fn defaults_fill_in_and_absent_sections_stay_absent() {
        let p = parse("sku = \"x\"\n[memory]\nmin_total_mib = 1024\n[[cabling]]\na = \"eth0\"\nb = \"eth1\"\n").unwrap();
        assert_eq!(p.memory.unwrap().pattern_test_mib, 64);
        assert_eq!(p.cabling[0].frames, 1000);
        assert!(p.cpu.is_none() && p.sriov.is_none() && p.storage.is_none());
    }

    #[test]
    fn unknown_fields_and_wrong_types_name_the_field() {
        let err = parse("sku = \"x\"\n[cpu]\nmin_cores = 2\nmin_corez = 3\n").unwrap_err();
        assert!(err.to_string().contains("min_corez"), "{err}");
        let err = parse("sku = \"x\"\n[sriov]\npfs = \"two\"\nvfs_per_pf = 7\n").unwrap_err();
        assert!(err.to_string().contains("pfs"), "{err}");
        let err = parse("[cpu]\nmin_cores = 2\n").unwrap_err();
        assert!(err.to_string().contains("sku"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        let err = parse("sku = \"x\"\n[sriov]\npfs = 1\nvfs_per_pf = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "profile sku.toml: sriov.vfs_per_pf = 0 is out of range (1 to 256)"
        );
        let err = parse("sku = \"x\"\n[memory]\nmin_total_mib = 100\npattern_test_mib = 80\n")
            .unwrap_err();
        assert!(err.to_string().contains("half of min_total_mib"), "{err}");
        let err = parse("sku = \"x\"\n[[cabling]]\na = \"eth0\"\nb = \"eth0\"\n").unwrap_err();
        assert!(err.to_string().contains("cabling[0].b"), "{err}");
    }
}
