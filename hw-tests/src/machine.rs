//! Where the checks look: `/proc`, `/sys` and `/dev` on a unit; a fake tree (and the sriov
//! crate's simulated kernel) in unit tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vfio::{RealVfio, VfioOpener};

/// The machine under test.
#[derive(Debug, Clone)]
pub struct Machine {
    /// sysfs and procfs, and the writer for sysfs (the sriov crate's seam).
    pub host: sriov::Host,
    /// The `/dev` directory.
    pub dev: PathBuf,
    /// Opens VFIO devices.
    pub vfio: Arc<dyn VfioOpener>,
}

impl Machine {
    /// The machine this runs on.
    pub fn real() -> Self {
        Self {
            host: sriov::Host::real(),
            dev: PathBuf::from("/dev"),
            vfio: Arc::new(RealVfio),
        }
    }

    /// `<proc>/<rel>`.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.host.proc().join(rel)
    }

    /// `<sys>/<rel>`.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.host.sys().join(rel)
    }

    /// `<dev>/<rel>`.
    pub fn dev(&self, rel: &str) -> PathBuf {
        self.dev.join(rel)
    }

    /// Reads a text file, or says which one could not be read.
    pub fn read(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}
