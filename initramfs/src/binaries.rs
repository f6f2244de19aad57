//! Our own programs for the image, built as static executables: the initramfs has no libc.
//!
//! Rust's `x86_64-unknown-linux-gnu` target links glibc statically with `+crt-static`. The flag
//! goes only to that target (with `--target`), so build scripts and proc macros, which run on
//! the host, stay dynamic. Paths are remapped so the binaries do not depend on where the
//! checkout is, and stripped of symbols (the image is loaded into RAM at every boot). The
//! build has a target directory of its own (`target/appliance`): it may run
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
pub const APPLIANCE_BINARIES: &[OurBinary] = &[
    OurBinary {
        package: "hw-tests",
        bin: "hw-test",
        dest: "usr/bin/hw-test",
    },
    OurBinary {
        package: "vmm",
        bin: "hostd-vmm",
        dest: "usr/bin/hostd-vmm",
    },
    OurBinary {
        package: "hostd",
        bin: "hostd",
        dest: "usr/bin/hostd",
    },
    OurBinary {
        package: "hostd",
        bin: "hostctl",
        dest: "usr/bin/hostctl",
    },
    OurBinary {
        package: "fastpath",
        bin: "fastpath",
        dest: "usr/bin/fastpath",
    },
];

/// A test target of ours that needs the QEMU lab's hardware: built with its package's `lab`
/// feature, as a static executable, into the lab image, where `hw-qemu` runs it.
#[derive(Debug, Clone, Copy)]
pub struct LabTest {
    /// Cargo package.
    pub package: &'static str,
    /// Test target name.
    pub test: &'static str,
}

impl LabTest {
    /// Its file name in the lab image: `<package>-<test>`.
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.package, self.test)
    }
}

/// The lab tests: the sriov crate on real igb NICs, a Linux guest under our VMM.
pub const LAB_TESTS: &[LabTest] = &[
    LabTest {
        package: "sriov",
        test: "lab_igb",
    },
    LabTest {
        package: "vmm",
        test: "lab_linux",
    },
    LabTest {
        package: "vmm",
        test: "lab_vfio",
    },
    LabTest {
        package: "hostd",
        test: "lab_assign",
    },
];

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
    /// cargo's build report named no executable for a lab test.
    #[error("cargo built no executable for test `{test}` of {package}")]
    NoTestExecutable {
        /// Package.
        package: String,
        /// Test target.
        test: String,
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

/// How our programs are compiled for the image: static, checkout-independent paths, in a
/// target directory of their own.
struct StaticBuild {
    workspace: PathBuf,
    cargo: String,
    rustflags: String,
    target_dir: PathBuf,
}

impl StaticBuild {
    fn new() -> Self {
        let workspace = workspace_root();
        let cargo_home = std::env::var("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
            });
        let rustflags = format!(
            "-C target-feature=+crt-static -C strip=symbols --remap-path-prefix={}=/src --remap-path-prefix={}=/cargo",
            workspace.display(),
            cargo_home.display()
        );
        Self {
            target_dir: workspace.join("target/appliance"),
            cargo: std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            workspace,
            rustflags,
        }
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.workspace)
            .args([subcommand, "--release", "--target", TARGET])
            .arg("--target-dir")
            .arg(&self.target_dir)
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                &self.rustflags,
            );
        cmd
    }

    fn spawn_err(&self) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
        move |source| BuildError::Spawn {
            cargo: self.cargo.clone(),
            source,
        }
    }
}

/// Builds `bins` statically in release mode; returns the directory holding them.
pub fn build_static(bins: &[OurBinary]) -> Result<PathBuf, BuildError> {
    let build = StaticBuild::new();
    let mut cmd = build.command("build");
    for b in bins {
        cmd.args(["-p", b.package, "--bin", b.bin]);
    }
    log::info!("building static binaries: {cmd:?}");
    let status = cmd.status().map_err(build.spawn_err())?;
    if !status.success() {
        return Err(BuildError::Failed { status });
    }
    Ok(build.target_dir.join(TARGET).join("release"))
}

/// Builds each lab test statically (with its package's `lab` feature); returns the test
/// executables with their names in the image.
pub fn build_static_tests(tests: &[LabTest]) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let build = StaticBuild::new();
    let mut built = Vec::new();
    for t in tests {
        let mut cmd = build.command("test");
        cmd.args(["--no-run", "-p", t.package, "--test", t.test, "--features"])
            .arg(format!("{}/lab", t.package))
            // Diagnostics to stderr as usual; the JSON artifact records (with the path of the
            // test executable) to stdout.
            .arg("--message-format=json-render-diagnostics")
            .stdout(std::process::Stdio::piped());
        log::info!("building lab test: {cmd:?}");
        let out = cmd.output().map_err(build.spawn_err())?;
        if !out.status.success() {
            return Err(BuildError::Failed { status: out.status });
        }
        let executable = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == t.test)
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .ok_or_else(|| BuildError::NoTestExecutable {
                package: t.package.into(),
                test: t.test.into(),
            })?;
        built.push((t.file_name(), executable));
    }
    Ok(built)
}
