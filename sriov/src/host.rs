//! The seam between this crate and the kernel: the sysfs and procfs roots it reads, and the
//! writer its sysfs writes go through.
//!
//! Reads go straight to files under the roots, so a fake tree in a temp dir serves tests.
//! Writes go through [`KernelWriter`], so a model of the kernel (see [`crate::sim`]) can react
//! to them the way the kernel does (create VF entries, refuse with `EBUSY`, bind drivers).

use std::fmt::Debug;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{SriovError, write_advice};
use crate::vf_config::VfControl;
use crate::vf_netlink::NetlinkVfControl;

/// Applies sysfs writes. The real kernel reacts to them itself; a simulator models it.
pub trait KernelWriter: Send + Sync + Debug {
    /// Writes `value` to the sysfs attribute `path` (absolute, below the host's sysfs root).
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The running kernel: a plain write to the attribute file.
#[derive(Debug, Default)]
pub struct RealKernel;

impl KernelWriter for RealKernel {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        // sysfs attributes take one write(2) of the whole value; never create or truncate.
        let mut file = fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }
}

/// Where the kernel's state is read from and written to.
#[derive(Debug, Clone)]
pub struct Host {
    sys: PathBuf,
    proc: PathBuf,
    writer: Arc<dyn KernelWriter>,
    vf_control: Arc<dyn VfControl>,
}

impl Default for Host {
    fn default() -> Self {
        Self::real()
    }
}

impl Host {
    /// The running kernel: `/sys` and `/proc`.
    pub fn real() -> Self {
        Self::new("/sys", "/proc", Arc::new(RealKernel))
    }

    /// A host rooted elsewhere (a fake tree, a chroot) with its own writer.
    pub fn new(
        sys: impl Into<PathBuf>,
        proc: impl Into<PathBuf>,
        writer: Arc<dyn KernelWriter>,
    ) -> Self {
        Self {
            sys: sys.into(),
            proc: proc.into(),
            writer,
            vf_control: Arc::new(NetlinkVfControl),
        }
    }

    /// The same host with another VF control (the simulator's model).
    pub fn with_vf_control(mut self, vf_control: Arc<dyn VfControl>) -> Self {
        self.vf_control = vf_control;
        self
    }

    /// What VF settings go through.
    pub(crate) fn vf_control(&self) -> &dyn VfControl {
        &*self.vf_control
    }

    /// The sysfs root (`/sys` on a real host).
    pub fn sys(&self) -> &Path {
        &self.sys
    }

    /// The procfs root (`/proc` on a real host).
    pub fn proc(&self) -> &Path {
        &self.proc
    }

    /// `<sys>/bus/pci`.
    pub(crate) fn pci_bus(&self) -> PathBuf {
        self.sys.join("bus/pci")
    }

    /// Reads an attribute, trimmed of the trailing newline.
    pub(crate) fn read_attr(&self, path: &Path) -> Result<String, SriovError> {
        fs::read_to_string(path)
            .map(|s| s.trim_end().to_string())
            .map_err(|source| SriovError::Read {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Reads an attribute that may be absent (`None`), failing on any other error.
    pub(crate) fn read_optional_attr(&self, path: &Path) -> Result<Option<String>, SriovError> {
        match fs::read_to_string(path) {
            Ok(s) => Ok(Some(s.trim_end().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SriovError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads a decimal attribute such as `sriov_numvfs`.
    pub(crate) fn read_u32(&self, path: &Path) -> Result<u32, SriovError> {
        let text = self.read_attr(path)?;
        text.parse().map_err(|_| SriovError::Malformed {
            path: path.to_path_buf(),
            value: text,
            expected: "a decimal number",
        })
    }

    /// Reads a `0x`-prefixed hex attribute such as `vendor`.
    pub(crate) fn read_hex_u16(&self, path: &Path) -> Result<u16, SriovError> {
        let text = self.read_attr(path)?;
        text.strip_prefix("0x")
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or_else(|| SriovError::Malformed {
                path: path.to_path_buf(),
                value: text.clone(),
                expected: "a hex number such as 0x8086",
            })
    }

    /// The last component of a symlink's target (`driver` -> `igb`), `None` without the link.
    pub(crate) fn link_name(&self, path: &Path) -> Result<Option<String>, SriovError> {
        match fs::read_link(path) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SriovError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The names in a directory, sorted; empty when the directory does not exist.
    pub(crate) fn list_dir(&self, path: &Path) -> Result<Vec<String>, SriovError> {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SriovError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SriovError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Writes an attribute through the kernel writer, mapping the errno to advice.
    pub(crate) fn write_attr(&self, path: &Path, value: &str) -> Result<(), SriovError> {
        log::debug!("sysfs write {} <- {value:?}", path.display());
        self.writer.write_attr(path, value).map_err(|source| {
            let attr = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            SriovError::Write {
                path: path.to_path_buf(),
                value: value.to_string(),
                advice: write_advice(&attr, &source),
                source,
            }
        })
    }
}
