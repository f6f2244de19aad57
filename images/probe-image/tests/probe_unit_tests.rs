//! Runs the probe's own unit tests (`images/probe` is outside the workspace: it needs its own
//! profile and link step), so `cargo test --workspace` covers them.

use std::path::Path;
use std::process::Command;

#[test]
fn probe_library_unit_tests_pass() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probe/Cargo.toml");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe-unit-tests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["test", "--locked", "--lib", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the workspace build must not reach the probe's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap_or_else(|error| panic!("cannot run {cargo:?}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "probe unit tests failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok."),
        "no test ran:\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("test result:"))
        .unwrap_or_default();
    eprintln!("images/probe unit tests: {summary}");
}
