//! A Linux guest under our VMM, on a real kernel's KVM: inside the QEMU lab's emulated
//! appliance, whose /dev/kvm is nested SVM (Linux does not boot on the development machine's
//! paravirtual KVM). Built only with `--features lab`; `hw-qemu` runs it in the appliance,
//! where the lab image holds `hostd-vmm`, the Debian kernel and a small guest initramfs
//! (initramfs::image::GUEST_INIT) with the virtio-mmio disk drivers.
//!
//! The guest's RAM is backed by the appliance's huge pages (init reserves 64 x 2 MiB), and it
//! has a virtio disk it reads and writes, found through the DSDT (Debian's kernel has no
//! virtio-mmio command-line devices).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const LAB: &str = "/usr/lib/hostd-lab";
/// What the guest initramfs's init prints first (initramfs::image::GUEST_INIT_LINE).
const GUEST_INIT_LINE: &str = "lab-guest: init started";
/// The first 16 bytes of the disk, which the guest reads and prints.
const DISK_SIGNATURE: &[u8; 16] = b"HOSTD-LAB-DISK-1";
/// What the guest writes at byte 512 of the disk.
const GUEST_WROTE: &[u8] = b"written-by-guest";
/// All 64 huge pages the appliance reserves: 128 MiB.
const GUEST_MIB: u64 = 128;

fn hugepages_free() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_linux_guest_on_huge_pages_boots_to_init_uses_its_disk_and_powers_off() {
    assert!(
        Path::new(LAB).join("vmlinuz").exists(),
        "no guest kernel in {LAB}: this test runs in the lab image (hw-qemu)"
    );
    let free_before = hugepages_free();
    assert!(
        free_before * 2 >= GUEST_MIB,
        "the appliance reserves 64 huge pages; {free_before} are free"
    );

    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let disk = dir.path().join("disk.raw");
    let mut image = vec![0u8; 4 << 20];
    image[..16].copy_from_slice(DISK_SIGNATURE);
    std::fs::write(&disk, &image).unwrap();
    let config = format!(
        r#"
name = "lab-linux"
memory_mib = {GUEST_MIB}
hugepages = true
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
[disk]
path = "{disk}"
read_only = false
"#,
        dir = dir.path().display(),
        log = console.display(),
        disk = disk.display()
    );
    let config_path = dir.path().join("linux.toml");
    std::fs::write(&config_path, config).unwrap();

    let start = Instant::now();
    let mut vmm = Command::new("/usr/bin/hostd-vmm")
        .arg("--config")
        .arg(&config_path)
        .spawn()
        .unwrap();
    // While it runs, its RAM comes out of the huge page pool.
    let mut least_free = free_before;
    let status = loop {
        least_free = least_free.min(hugepages_free());
        if let Some(status) = vmm.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the guest did not power off in 180 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = start.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.success(),
        "hostd-vmm ended {status}\nconsole:\n{log}"
    );
    assert!(
        log.contains("Linux version"),
        "the kernel's banner is on our console log:\n{log}"
    );
    assert!(
        log.contains(GUEST_INIT_LINE),
        "init's first line is on our console log:\n{log}"
    );
    assert_eq!(
        least_free,
        free_before - GUEST_MIB / 2,
        "the guest's RAM was {GUEST_MIB} MiB of huge pages"
    );
    assert_eq!(
        hugepages_free(),
        free_before,
        "and they are back once it ended"
    );

    let signature = String::from_utf8_lossy(DISK_SIGNATURE);
    assert!(
        log.contains(&format!("lab-guest: disk says {signature}")),
        "the guest read its disk:\n{log}"
    );
    assert!(log.contains("lab-guest: disk written"), "{log}");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(
        &after[512..512 + GUEST_WROTE.len()],
        GUEST_WROTE,
        "the guest's write reached the image"
    );
    // For docs/PERF.md: hw-qemu prints the lab tests' output.
    println!("lab-linux: VMM start to guest power-off in {secs:.1} s");
}
