//! `hostd --sim`: simulated hardware for the main job on any machine. The NIC is the
//! `sriov` crate's simulated host (two igb ports, 7 VFs each) in the state directory,
//! reopened after a restart; cores and RAM are the real machine's; guests boot the probe
//! image (embedded in hostd) on the real /dev/kvm; a `probe` template is defined on first
//! start.

use std::path::{Path, PathBuf};

use hostd_proto::{TemplateSpec, bounded, text};
use sriov::sim::{SimHost, SimSpec};

/// Errors preparing the simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The simulated NIC cannot be made or opened.
    #[error("cannot set up the simulated NIC in {path}: delete the directory to start afresh")]
    Nic {
        /// Its directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The probe image cannot be written.
    #[error("cannot write the probe guest image to {path}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Opens (or makes, with all VFs enabled) the simulated NIC under `state_dir`.
pub fn nic(state_dir: &Path) -> Result<sriov::Host, SimError> {
    let root = state_dir.join("sriov-sim");
    let err = |source| SimError::Nic {
        path: root.clone(),
        source,
    };
    let host = if root.join("sim-spec.json").exists() {
        SimHost::open(&root).map_err(err)?
    } else {
        let _ = std::fs::remove_dir_all(&root);
        let sim = SimHost::create(&root, &SimSpec::two_igb_ports()).map_err(err)?;
        crate::inventory::enable_vfs(&sim.host());
        sim
    };
    Ok(host.host())
}

/// Writes the probe guest under `state_dir/images` (when it changed) and returns its path.
pub fn probe_image(state_dir: &Path) -> Result<PathBuf, SimError> {
    let path = state_dir.join("images").join("probe.elf");
    let err = |source| SimError::Image {
        path: path.clone(),
        source,
    };
    if std::fs::read(&path).ok().as_deref() != Some(probe_image::ELF) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(&path, probe_image::ELF).map_err(err)?;
    }
    Ok(path)
}

/// The `probe` template: 1 vCPU, 64 MiB, the probe guest.
pub fn probe_template(kernel: &Path) -> TemplateSpec {
    TemplateSpec {
        description: text("probe guest (test payload): banner, then a prompt"),
        kernel: bounded(&kernel.to_string_lossy()),
        initramfs: None,
        cmdline: text(""),
        vcpus: 1,
        ram_mib: 64,
        disk_gib: 0,
        hugepages: false,
        vfs: 0,
        ha: false,
        graceful_stop_timeout_ms: 3000,
    }
}
