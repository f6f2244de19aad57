//! The factory suite on the emulated appliance (QEMU: q35, VT-d, SVM, two igb SR-IOV ports
//! cabled to each other, a data disk), through `hw-qemu`: every check must pass, with the
//! evidence the factory relies on; and the crates' lab tests (sriov on igb, a Linux guest
//! under our VMM) must pass there too. Needs `hw-tests/setup.sh` to have run (QEMU, the kernel);
//! fails saying so otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use hw_tests::report::{Outcome, Report};

#[test]
fn the_suite_passes_on_the_emulated_appliance() {
    let manifest = initramfs::inputs::default_manifest();
    assert!(
        manifest.exists(),
        "no lab inputs at {}: run `hw-tests/setup.sh` (as root) first",
        manifest.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let junit_path = dir.path().join("report.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_hw-qemu"))
        .arg("--report")
        .arg(&report_path)
        .arg("--junit")
        .arg(&junit_path)
        // Kept after the test, for a failure's whole story.
        .arg("--console-log")
        .arg(initramfs::binaries::workspace_root().join("target/hw-qemu/qemu_lab-console.log"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hw-qemu failed ({}):\n{}",
        out.status,
        after_the_build(&stderr)
    );

    let report =
        Report::from_json_checked(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert!(report.passed);
    assert_eq!(report.sku, "qemu-lab");
    for check in &report.checks {
        assert_eq!(
            check.outcome,
            Outcome::Pass,
            "{}: {} {:?}",
            check.name,
            check.reason,
            check.details
        );
    }
    let details = |name: &str| {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .details
            .join("\n")
    };
    let sriov = details("sriov");
    assert_eq!(
        sriov.matches("7/7 VFs created on igbvf").count(),
        2,
        "{sriov}"
    );
    assert_eq!(sriov.matches("VFIO read 8086:10ca").count(), 2, "{sriov}");
    assert_eq!(sriov.matches("restored to 0 VFs").count(), 2, "{sriov}");
    assert!(details("nic_loopback").contains("1000/1000 frames, 0 duplicated, 0 corrupt"));
    assert!(details("cpu_virt").contains("VM created, vCPU 0 created"));
    // The JSON printed on stdout is the same report.
    let printed = Report::from_json_checked(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed, report);
    assert!(
        std::fs::read_to_string(&junit_path)
            .unwrap()
            .contains("tests=\"6\"")
    );
    assert!(stderr.contains("boot to ready"), "{stderr}");
    // The crates' lab tests ran in the guest and passed.
    for test in initramfs::binaries::LAB_TESTS {
        let line = format!("hw-qemu: lab test {}: passed", test.file_name());
        assert!(stderr.contains(&line), "no `{line}` in:\n{stderr}");
    }
}

/// hw-qemu's stderr from the image line on: the build's cargo output before it says nothing
/// about the lab, and would push what went wrong out of a CI log's excerpt.
fn after_the_build(stderr: &str) -> &str {
    stderr
        .find("hw-qemu: image ")
        .map_or(stderr, |at| &stderr[at..])
}
