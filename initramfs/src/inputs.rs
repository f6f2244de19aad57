//! The lab's inputs manifest (`inputs.toml`), written by `hw-tests/setup.sh`: where the kernel,
//! its modules, busybox and QEMU are on this machine.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What `hw-tests/setup.sh` fetched, and where it put it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabInputs {
    /// Kernel release, e.g. `6.12.95+deb12-amd64`.
    pub kernel_version: String,
    /// Debian package and version the kernel came from.
    pub kernel_package: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked kernel package, with a `modules.dep`.
    pub modules_dir: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `mkfs.ext4`, for the lab's data disk.
    pub mkfs_ext4: PathBuf,
}

/// The inputs manifest is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// No manifest: setup has not run.
    #[error(
        "no lab inputs at {path}: run `hw-tests/setup.sh` (as root) first; it installs QEMU from bookworm-backports and fetches the kernel"
    )]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The manifest cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not what setup writes.
    #[error("{path} is not a valid inputs manifest ({source}); rerun `hw-tests/setup.sh`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A file the manifest names is gone.
    #[error(
        "{what} {path} (named in {manifest}) does not exist: install {package}, or rerun `hw-tests/setup.sh` which does"
    )]
    Gone {
        /// Which input.
        what: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// Its path.
        path: PathBuf,
        /// The manifest.
        manifest: PathBuf,
    },
}

/// The default cache directory: `$HOSTD_LAB_CACHE`, else `$XDG_CACHE_HOME/hostd-lab`, else
/// `~/.cache/hostd-lab` (the same rule as `setup.sh`).
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOSTD_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("hostd-lab")
}

/// The default manifest path: `<cache>/inputs.toml`.
pub fn default_manifest() -> PathBuf {
    default_cache_dir().join("inputs.toml")
}

impl LabInputs {
    /// Loads and checks a manifest: every file it names must exist.
    pub fn load(path: &Path) -> Result<Self, InputsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InputsError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(InputsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let inputs: LabInputs = toml::from_str(&text).map_err(|source| InputsError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        for (what, package, file) in [
            (
                "kernel image",
                "linux-image-amd64 from bookworm-backports",
                &inputs.vmlinuz,
            ),
            (
                "modules directory",
                "linux-image-amd64 from bookworm-backports",
                &inputs.modules_dir,
            ),
            ("busybox", "busybox-static", &inputs.busybox),
            (
                "QEMU",
                "qemu-system-x86 from bookworm-backports",
                &inputs.qemu,
            ),
            ("mkfs.ext4", "e2fsprogs", &inputs.mkfs_ext4),
        ] {
            if !file.exists() {
                return Err(InputsError::Gone {
                    what,
                    package,
                    path: file.clone(),
                    manifest: path.to_path_buf(),
                });
            }
        }
        Ok(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, qemu: &Path) -> PathBuf {
        let existing = dir.display();
        let text = format!(
            "kernel_version = \"6.12\"\nkernel_package = \"linux-image x\"\nvmlinuz = \"{existing}\"\nmodules_dir = \"{existing}\"\n\
             busybox = \"{existing}\"\nqemu = \"{}\"\nmkfs_ext4 = \"{existing}\"\n",
            qemu.display()
        );
        let path = dir.join("inputs.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_missing_manifest_says_to_run_setup() {
        let err = LabInputs::load(Path::new("/nonexistent/inputs.toml")).unwrap_err();
        assert!(err.to_string().contains("run `hw-tests/setup.sh`"), "{err}");
    }

    #[test]
    fn a_missing_qemu_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let path = manifest(dir.path(), &dir.path().join("no-qemu"));
        let err = LabInputs::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("install qemu-system-x86 from bookworm-backports"),
            "{err}"
        );
        let path = manifest(dir.path(), dir.path());
        assert_eq!(LabInputs::load(&path).unwrap().kernel_version, "6.12");
    }

    #[test]
    fn a_manifest_with_unknown_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = manifest(dir.path(), dir.path());
        let text = std::fs::read_to_string(&path).unwrap() + "surprise = 1\n";
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            LabInputs::load(&path),
            Err(InputsError::Parse { .. })
        ));
    }
}
