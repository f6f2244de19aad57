//! Our own programs for the image, built as static executables: the initramfs has no libc.
//!
//! Rust's `x86_64-unknown-linux-gnu` target links glibc statically with `+crt-static`. The flag
//! goes only to that target (with `--target`), so build scripts and proc macros, which run on
//! the host, stay dynamic. Paths are remapped so the binaries do not depend on where the
//! checkout is. The build has a target directory of its own (`target/appliance`): it may run
//! from inside another cargo command (`cargo run`, `cargo test`) that holds the lock on the
//! workspace's.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A program of ours that goes into the image.
#[derive(Debug, Clone, Copy)]
pub struct OurBinary {
    /// Cargo package.
    pub package: &'static str,
    /// Binary target name, also its file name in the image.
    pub bin: &'static str,
    /// Where it goes in the image.
    pub dest: &'static str,
}

/// The programs the appliance image carries.
pub const APPLIANCE_BINARIES: &[OurBinary] = &[OurBinary {
    package: "hw-tests",
    bin: "hw-test",
    dest: "usr/bin/hw-test",
}];

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Building our binaries failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run `{cargo}`: {source}; is the Rust toolchain installed?")]
    Spawn {
        /// The cargo command.
        cargo: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// cargo failed; its output went to our stderr.
    #[error(
        "`cargo build` of the appliance binaries failed ({status}); see the compiler output above"
    )]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

/// The workspace this builder belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds `bins` statically in release mode; returns the directory holding them.
pub fn build_static(bins: &[OurBinary]) -> Result<PathBuf, BuildError> {
    let workspace = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let rustflags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/src --remap-path-prefix={}=/cargo",
        workspace.display(),
        cargo_home.display()
    );
    let target_dir = workspace.join("target/appliance");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for b in bins {
        cmd.args(["-p", b.package, "--bin", b.bin]);
    }
    cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", rustflags);
    log::info!("building static binaries: {cmd:?}");
    let status = cmd.status().map_err(|source| BuildError::Spawn {
        cargo: cargo.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Failed { status });
    }
    Ok(target_dir.join(TARGET).join("release"))
}
