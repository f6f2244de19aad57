//! Fakes for the checks' unit tests: a machine rooted in a temp dir, optionally with the sriov
//! crate's simulated kernel, and a VFIO opener that answers what it is told.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::machine::Machine;
use crate::profile::Profile;
use crate::vfio::{VfioOpener, VfioProbe};

/// A profile with `sku = "test"` and the given sections.
pub fn profile(sections: &str) -> Profile {
    Profile::parse(
        &format!("sku = \"test\"\n{sections}"),
        Path::new("test.toml"),
    )
    .unwrap()
}

/// A VFIO opener that records what it opened and answers `answer`.
#[derive(Debug)]
pub struct FakeVfio {
    pub answer: Result<VfioProbe, String>,
    pub opened: Mutex<Vec<PathBuf>>,
}

impl VfioOpener for FakeVfio {
    fn probe(&self, sysfs_dev: &Path) -> Result<VfioProbe, String> {
        self.opened.lock().unwrap().push(sysfs_dev.to_path_buf());
        self.answer.clone()
    }
}

/// A machine in a temp dir.
pub struct FakeMachine {
    pub dir: tempfile::TempDir,
    pub sim: Option<sriov::sim::SimHost>,
    pub vfio: Arc<FakeVfio>,
}

impl FakeMachine {
    /// Empty `sys`, `proc` and `dev`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["sys", "proc", "dev"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Self {
            dir,
            sim: None,
            vfio: Arc::new(FakeVfio::igb_vf()),
        }
    }

    /// With the sriov crate's simulated kernel for `spec`.
    pub fn with_sim(spec: &sriov::sim::SimSpec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        let sim = sriov::sim::SimHost::create(&dir.path().join("host"), spec).unwrap();
        Self {
            dir,
            sim: Some(sim),
            vfio: Arc::new(FakeVfio::igb_vf()),
        }
    }

    pub fn machine(&self) -> Machine {
        let host = match &self.sim {
            Some(sim) => sim.host(),
            None => sriov::Host::new(
                self.dir.path().join("sys"),
                self.dir.path().join("proc"),
                Arc::new(sriov::RealKernel),
            ),
        };
        Machine {
            host,
            dev: self.dir.path().join("dev"),
            vfio: self.vfio.clone(),
        }
    }

    /// Writes a file under the root (`proc/meminfo`, ...), creating its directory.
    pub fn write(&self, rel: &str, text: &str) {
        let root = match &self.sim {
            Some(sim) if rel.starts_with("sys/") || rel.starts_with("proc/") => {
                sim.root().to_path_buf()
            }
            _ => self.dir.path().to_path_buf(),
        };
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

impl FakeVfio {
    /// Answers like an igb VF.
    pub fn igb_vf() -> Self {
        Self {
            answer: Ok(VfioProbe {
                vendor_id: 0x8086,
                device_id: 0x10ca,
                bar0_size: 16384,
                max_interrupts: 3,
            }),
            opened: Mutex::new(Vec::new()),
        }
    }
}
