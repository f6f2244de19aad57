//! Builds the probe guest (`images/probe`, a separate no_std package with its own workspace,
//! profile and link step) with the same cargo that runs this build, and copies the ELF to
//! `$OUT_DIR/probe.elf` for `probe_image::ELF` / `probe_image::path()`.
//!
//! The nested build gets a clean environment: the variables cargo sets for build scripts and
//! the ones a caller may set for the outer build (RUSTFLAGS, a clippy or sccache wrapper, a
//! `--target`) must not leak into a guest image with its own flags. Its target directory is
//! shared by every build of the same outer profile (check, clippy, test, build), so the
//! guest is compiled once per profile, not once per build-script run.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Why the probe could not be built.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    /// Cargo did not set a variable every build script gets.
    #[error("cargo did not set {name} for the build script: run this through cargo")]
    MissingEnv {
        /// The variable.
        name: &'static str,
    },
    /// Cargo could not be started.
    #[error("cannot run {cargo:?} to build the probe guest in {dir}")]
    Spawn {
        /// The cargo binary.
        cargo: OsString,
        /// The probe package.
        dir: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// The nested build failed; its messages are above this one.
    #[error("building the probe guest in {dir} failed ({status}): see the compiler output above")]
    Failed {
        /// The probe package.
        dir: String,
        /// Cargo's exit status.
        status: ExitStatus,
    },
    /// The built ELF could not be copied to OUT_DIR.
    #[error("cannot copy the probe ELF {from} to {to}")]
    Copy {
        /// The built file.
        from: String,
        /// The destination.
        to: String,
        /// Why the copy failed.
        #[source]
        source: io::Error,
    },
}

/// Variables the nested cargo must not inherit (see the module comment).
const SCRUBBED_ENV: [&str; 12] = [
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
];

/// Prefixes of variables the nested cargo must not inherit: outer profile overrides and
/// per-target flags.
const SCRUBBED_ENV_PREFIXES: [&str; 2] =
    ["CARGO_PROFILE_", "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_"];

fn env_path(name: &'static str) -> Result<PathBuf, BuildError> {
    env::var_os(name)
        .map(PathBuf::from)
        .ok_or(BuildError::MissingEnv { name })
}

/// `<target>/<profile>/probe-guest` when OUT_DIR has cargo's usual shape
/// (`<target>/<profile>/build/<package>-<hash>/out`), else a directory inside OUT_DIR.
fn nested_target_dir(out_dir: &Path) -> PathBuf {
    let build_dir = out_dir.ancestors().nth(2);
    match (build_dir, out_dir.ancestors().nth(3)) {
        (Some(build), Some(profile)) if build.file_name() == Some("build".as_ref()) => {
            profile.join("probe-guest")
        }
        _ => out_dir.join("probe-guest"),
    }
}

fn main() -> Result<(), BuildError> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let out_dir = env_path("OUT_DIR")?;
    let probe_dir = manifest_dir.join("..").join("probe");
    for input in ["Cargo.toml", "Cargo.lock", "build.rs", "linker.ld", "src"] {
        println!("cargo:rerun-if-changed={}", probe_dir.join(input).display());
    }

    let target_dir = nested_target_dir(&out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        // Cargo reads configuration from the working directory: build from the probe's own.
        .current_dir(&probe_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "probe",
            "--target-dir",
        ])
        .arg(&target_dir);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        if SCRUBBED_ENV_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
    let dir = probe_dir.display().to_string();
    let status = command.status().map_err(|source| BuildError::Spawn {
        cargo: cargo.clone(),
        dir: dir.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Failed { dir, status });
    }

    let built = target_dir.join("release").join("probe");
    let elf = out_dir.join("probe.elf");
    fs::copy(&built, &elf).map_err(|source| BuildError::Copy {
        from: built.display().to_string(),
        to: elf.display().to_string(),
        source,
    })?;
    Ok(())
}
