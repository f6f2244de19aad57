//! A Linux guest under our VMM, on a real kernel's KVM: inside the QEMU lab's emulated
//! appliance, whose /dev/kvm is nested SVM (Linux does not boot on the development machine's
//! paravirtual KVM). Built only with `--features lab`; `hw-qemu` runs it in the appliance,
//! where the lab image holds `hostd-vmm`, the Debian kernel and a small guest initramfs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const LAB: &str = "/usr/lib/hostd-lab";
/// What the guest initramfs's init prints first (initramfs::image::GUEST_INIT_LINE).
const GUEST_INIT_LINE: &str = "lab-guest: init started";

#[test]
fn a_linux_guest_boots_to_init_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let config = format!(
        r#"
name = "lab-linux"
memory_mib = 256
vcpu_cores = [1]
housekeeping_cores = [0]
runtime_dir = "{dir}/run"
control_socket = "{dir}/ctl"
[kernel]
path = "{LAB}/vmlinuz"
initramfs = "{LAB}/guest-initramfs.cpio.zst"
cmdline = "console=ttyS0 panic=-1 rdinit=/init"
[console]
log = "{log}"
"#,
        dir = dir.path().display(),
        log = console.display()
    );
    let config_path = dir.path().join("linux.toml");
    std::fs::write(&config_path, config).unwrap();
    assert!(
        Path::new(LAB).join("vmlinuz").exists(),
        "no guest kernel in {LAB}: this test runs in the lab image (hw-qemu)"
    );

    let start = Instant::now();
    let out = Command::new("/usr/bin/hostd-vmm")
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        out.status.success(),
        "hostd-vmm ended {}: {}\nconsole:\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("Linux version"),
        "the kernel's banner is on our console log:\n{log}"
    );
    assert!(
        log.contains(GUEST_INIT_LINE),
        "init's first line is on our console log:\n{log}"
    );
    // For docs/PERF.md: hw-qemu prints the lab tests' output.
    println!("lab-linux: VMM start to guest power-off in {secs:.1} s");
}
