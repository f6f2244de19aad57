//! VF passthrough on real VFIO: the QEMU lab's igb (82576) VFs behind VT-d, under hostd-vmm
//! on the lab's /dev/kvm (nested SVM). Built only with `--features lab`; `hw-qemu` runs it
//! inside the emulated appliance, whose image holds `/usr/bin/hostd-vmm`. The probe guest is
//! embedded in this executable.
//!
//! Each test prepares the VFs it needs with the `sriov` crate (hostd's job in production)
//! and leaves the PF with no VFs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Scratch, Spec, TestVm, alive, serial_guard};
use probe_image::console::{PROMPT, READY, pci_lines};
use sriov::{Driver, Host, NumVfsOptions, PciAddress};
use vmm::api::{InterruptMode, RebootMode, Request, Response};
use vmm::control::exit_code;

/// Boot of the probe on the lab's nested KVM, and a start that must be refused.
const BOOT: Duration = Duration::from_secs(60);
const PF: &str = "0000:01:00.0";
/// The igb VF's device ID and the probe line of a VF at 00:01.0: two 64-bit 16 KiB BARs
/// (registers, MSI-X), 3 MSI-X vectors.
const VF_LINE: &str =
    "pci 0000:00:01.0 8086:10ca class=020000 bar0=mem64:16K bar3=mem64:16K msix=3";

/// The VMM under test: the lab image's, or `$HOSTD_VMM` (a build copied into the lab by hand).
fn vmm_binary() -> PathBuf {
    std::env::var_os("HOSTD_VMM").map_or_else(|| PathBuf::from("/usr/bin/hostd-vmm"), PathBuf::from)
}

/// The PF with `count` VFs, the first `on_vfio` of them bound to vfio-pci; back to no VFs
/// (and the VFs back on igbvf) when dropped.
struct Vfs {
    host: Host,
    vfs: Vec<PciAddress>,
}

impl Vfs {
    fn new(count: u32, on_vfio: usize) -> Self {
        let host = Host::real();
        let pf: PciAddress = PF.parse().unwrap();
        sriov::set_num_vfs(&host, pf, count, &NumVfsOptions::default())
            .expect("creating the igb VFs (is this the QEMU lab?)");
        let vfs: Vec<PciAddress> = (0..count)
            .map(|i| sriov::vf_address(&host, pf, i).unwrap())
            .collect();
        for vf in &vfs[..on_vfio] {
            sriov::bind_to_vfio(&host, *vf).unwrap();
        }
        Self { host, vfs }
    }
}

impl Drop for Vfs {
    fn drop(&mut self) {
        for vf in &self.vfs {
            let on_vfio =
                sriov::read_function(&self.host, *vf).is_ok_and(|f| f.driver == Driver::Vfio);
            if on_vfio {
                let _ = sriov::bind_to_host_driver(&self.host, *vf, Some("igbvf"));
            }
        }
        let _ = sriov::set_num_vfs(
            &self.host,
            PF.parse().unwrap(),
            0,
            &NumVfsOptions::default(),
        );
    }
}

/// Writes the embedded probe into `scratch`.
fn probe(scratch: &Scratch) -> PathBuf {
    let path = scratch.path("probe.elf");
    std::fs::write(&path, probe_image::ELF).unwrap();
    path
}

/// A probe VM on `core` with the given VFs passed through.
fn spec(scratch: &Scratch, name: &str, core: usize, vfs: &[PciAddress]) -> Spec {
    let mut spec = Spec::new(name, &probe(scratch), &[core]);
    spec.vmm = vmm_binary();
    spec.extra = format!("housekeeping_cores = [{}]\n", 1 - core);
    for vf in vfs {
        spec.extra
            .push_str(&format!("[[vfio]]\ndevice = \"{vf}\"\n"));
    }
    spec
}

fn boot(scratch: &Scratch, name: &str, core: usize, vfs: &[PciAddress]) -> TestVm {
    let start = Instant::now();
    let mut vm = TestVm::spawn(spec(scratch, name, core, vfs), scratch.dir.path());
    vm.wait_console(&format!("{READY}\n{PROMPT}"), BOOT);
    println!(
        "lab-vfio: {name}: VMM start to probe ready in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    vm
}

/// Runs `peek <bdf> <bar> <offset>` (the `nth` peek on this console) and returns the value.
fn peek(vm: &mut TestVm, nth: usize, what: &str) -> u32 {
    vm.type_text(&format!("peek {what}\n"));
    let deadline = Instant::now() + BOOT;
    loop {
        let console = vm.console();
        // Whole lines only: the reply may be half written.
        let complete = &console[..console.rfind('\n').map_or(0, |end| end + 1)];
        let replies: Vec<&str> = complete
            .lines()
            .filter(|l| l.starts_with("peek 0000:") || l.starts_with("error:"))
            .collect();
        if let Some(reply) = replies.get(nth - 1) {
            let value = reply
                .rsplit("= 0x")
                .next()
                .and_then(|v| u32::from_str_radix(v.trim(), 16).ok());
            return value.unwrap_or_else(|| panic!("peek {what} answered {reply:?}\n{console}"));
        }
        assert!(
            Instant::now() < deadline,
            "no answer to peek {what}:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks an igb VF's STATUS register (BAR0 + 0x8) as QEMU's 82576 emulation sets it, e.g.
/// `0x800c4483`: full duplex and link up (bits 0, 1: the lab's ports are cabled), 1000 Mb/s
/// (bits 7:6 = 0b10), SR-IOV mode (bit 18), the PF's VF count in bits 17:14, bus mastering
/// (bit 19). All ones would be an unmapped BAR or a dead device; the VF count shows the read
/// reached this PF's VF.
fn assert_plausible_status(status: u32, pf_vfs: u32) {
    println!("lab-vfio: VF STATUS (BAR0+0x8) = {status:#010x}");
    assert_ne!(
        status,
        u32::MAX,
        "all ones: the BAR is not mapped or the VF is gone"
    );
    assert_eq!(status & 0x3, 0x3, "full duplex, link up: {status:#x}");
    assert_eq!((status >> 6) & 0x3, 0b10, "1000 Mb/s: {status:#x}");
    assert_ne!(status & (1 << 18), 0, "SR-IOV mode: {status:#x}");
    assert_eq!(
        (status >> 14) & 0xF,
        pf_vfs,
        "the PF's VF count: {status:#x}"
    );
}

#[test]
fn the_probe_sees_the_vf_reads_its_status_register_and_a_reboot_or_stop_resets_it() {
    let _guard = serial_guard();
    let vfs = Vfs::new(1, 1);
    let scratch = Scratch::new();
    // For docs/PERF.md: the same probe without a VF, then with one.
    let mut plain = boot(&scratch, "no-vf-probe", 1, &[]);
    assert_eq!(plain.request(&Request::StopForced), Response::Ok);
    plain.wait_exit(BOOT);
    let mut vm = boot(&scratch, "vf-probe", 1, &vfs.vfs);
    let assigned = vm
        .stderr()
        .lines()
        .find(|l| l.contains("assigned in"))
        .map(str::to_owned);
    println!(
        "lab-vfio: {}",
        assigned.unwrap_or_else(|| "no assignment line".into())
    );
    let console = vm.console();
    let lines: Vec<&str> = pci_lines(&console).collect();
    assert_eq!(
        lines,
        ["pci 0000:00:00.0 1b36:0008 class=060000", VF_LINE],
        "{console}"
    );
    let mmio_exits = |vm: &TestVm| vm.status().vcpus[0].mmio_exits;
    let before = mmio_exits(&vm);
    assert_plausible_status(peek(&mut vm, 1, "00:01.0 0 0x8"), 1);
    assert_eq!(
        mmio_exits(&vm),
        before,
        "BAR0 is mapped into the guest: reading it does not exit to the VMM"
    );
    // The MSI-X table (BAR3's first page) is trapped and emulated: entry 0 reads as the VMM
    // holds it, masked (vector control = 1) until a driver sets it up.
    assert_eq!(peek(&mut vm, 2, "00:01.0 3 0x0"), 0, "entry 0 address");
    assert_eq!(
        peek(&mut vm, 3, "00:01.0 3 0xc"),
        1,
        "entry 0 vector control"
    );
    assert_eq!(mmio_exits(&vm), before + 2, "the table reads trapped");

    let status = vm.status();
    let vf = &status.passthrough[0];
    assert_eq!(
        (vf.host_address.as_str(), vf.guest_address.as_str()),
        ("0000:01:10.0", "0000:00:01.0")
    );
    assert_eq!(
        (vf.vendor_id, vf.device_id, vf.msix_vectors),
        (0x8086, 0x10ca, 3)
    );
    assert_eq!((vf.interrupts, vf.resets), (InterruptMode::None, 0));

    // A hard reboot resets the VF; the probe finds it again and reads it again.
    assert_eq!(vm.request(&Request::Reboot(RebootMode::Hard)), Response::Ok);
    vm.wait_console_count(READY, 2, BOOT);
    assert_eq!(vm.status().passthrough[0].resets, 1);
    assert_plausible_status(peek(&mut vm, 4, "00:01.0 0 0x8"), 1);

    // A stop resets the VF and lets it go: still on vfio-pci, and a new VM can have it.
    assert_eq!(vm.request(&Request::StopGraceful), Response::Ok);
    assert_eq!(vm.wait_exit(BOOT).code(), Some(0), "{}", vm.stderr());
    assert!(
        vm.stderr().contains("0000:01:10.0: reset and released"),
        "{}",
        vm.stderr()
    );
    assert_eq!(
        sriov::read_function(&vfs.host, vfs.vfs[0]).unwrap().driver,
        Driver::Vfio
    );
    let mut again = boot(&scratch, "vf-probe-again", 1, &vfs.vfs);
    assert!(again.console().contains(VF_LINE), "{}", again.console());
    assert_plausible_status(peek(&mut again, 1, "00:01.0 0 0x8"), 1);
}

#[test]
fn two_vms_have_one_vf_each_and_a_third_asking_for_a_taken_vf_is_refused() {
    let _guard = serial_guard();
    let vfs = Vfs::new(2, 2);
    let scratch = Scratch::new();
    let mut a = boot(&scratch, "vf-a", 1, &vfs.vfs[..1]);
    let mut b = boot(&scratch, "vf-b", 0, &vfs.vfs[1..2]);
    for vm in [&mut a, &mut b] {
        assert!(vm.console().contains(VF_LINE), "{}", vm.console());
        assert_plausible_status(peek(vm, 1, "00:01.0 0 0x8"), 2);
    }
    assert_eq!(
        a.status().passthrough[0].host_address,
        vfs.vfs[0].to_string()
    );
    assert_eq!(
        b.status().passthrough[0].host_address,
        vfs.vfs[1].to_string()
    );
    // B stops (its core is the only one left for the next VM) and lets its VF go.
    assert_eq!(b.request(&Request::StopForced), Response::Ok);
    assert_eq!(b.wait_exit(BOOT).code(), Some(exit_code::FORCED_STOP));

    // VF 0 is A's: a VM asking for it is refused, naming A's process, and A goes on.
    let mut thief = TestVm::spawn(
        spec(&scratch, "vf-thief", 0, &vfs.vfs[..1]),
        scratch.dir.path(),
    );
    let code = thief.wait_exit(BOOT).code();
    let stderr = thief.stderr();
    assert_eq!(code, Some(exit_code::VFIO_DEVICE_BUSY), "{stderr}");
    assert!(
        !thief.control_socket().exists(),
        "control socket left behind"
    );
    assert!(
        stderr.contains(&format!("pid {} (hostd-vmm)", a.pid())) && stderr.contains("is in use"),
        "{stderr}"
    );
    assert!(
        a.try_exit().is_none() && alive(a.pid()),
        "the refused VMM disturbed A"
    );
    assert_plausible_status(peek(&mut a, 2, "00:01.0 0 0x8"), 2);
}

#[test]
fn devices_that_cannot_be_passed_through_are_refused_with_their_exit_codes() {
    let _guard = serial_guard();
    // VF 1 stays on igbvf.
    let vfs = Vfs::new(2, 1);
    let scratch = Scratch::new();
    let refused = |name: &str, device: &str| -> (Option<i32>, String) {
        let mut spec = spec(&scratch, name, 1, &[]);
        spec.extra
            .push_str(&format!("[[vfio]]\ndevice = \"{device}\"\n"));
        let mut vm = TestVm::spawn(spec, scratch.dir.path());
        let code = vm.wait_exit(BOOT).code();
        assert!(!vm.control_socket().exists(), "control socket left behind");
        (code, vm.stderr())
    };

    let (code, stderr) = refused("vf-igbvf", &vfs.vfs[1].to_string());
    assert_eq!(code, Some(exit_code::VFIO_DEVICE_UNAVAILABLE), "{stderr}");
    assert!(
        stderr.contains("is bound to igbvf, not vfio-pci"),
        "{stderr}"
    );

    let (code, stderr) = refused("vf-pf", PF);
    assert_eq!(code, Some(exit_code::VFIO_DEVICE_UNAVAILABLE), "{stderr}");
    assert!(stderr.contains("is bound to igb, not vfio-pci"), "{stderr}");

    // q35's ICH9 functions share IOMMU group: with the SMBus controller on vfio-pci, the
    // SATA controller next to it (ahci) blocks the group.
    let host = Host::real();
    let smbus: PciAddress = "0000:00:1f.3".parse().unwrap();
    let before = sriov::bind_to_vfio(&host, smbus).unwrap();
    let (code, stderr) = refused("vf-group", "0000:00:1f.3");
    let restored = sriov::bind_to_host_driver(&host, smbus, None);
    assert_eq!(code, Some(exit_code::VFIO_GROUP_NOT_VIABLE), "{stderr}");
    assert!(
        stderr.contains("is not viable") && stderr.contains("0000:00:1f.2 (on ahci)"),
        "{stderr}"
    );
    assert!(restored.is_ok(), "{restored:?}; it had {before:?}");
}

/// The Linux guest's init for the igbvf test (`rdinit=/vfinit`), next to the lab guest
/// initramfs's busybox: load igbvf, bring eth0 up, ping the PF side, show the interrupts.
const VF_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys
mount -t proc proc /proc
mount -t sysfs sys /sys
insmod /igbvf.ko
for i in $(seq 1 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
ip link set eth0 up
for i in $(seq 1 50); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.2; done
echo "lab-guest: eth0 carrier=$(cat /sys/class/net/eth0/carrier 2>/dev/null)"
ip addr add 10.99.0.2/24 dev eth0
ping -c 3 -W 2 10.99.0.1
grep eth0 /proc/interrupts
poweroff -f
"#;
const LAB: &str = "/usr/lib/hostd-lab";

/// Runs a command of the lab's busybox and returns its stdout.
fn run(
    program: &str,
    args: &[&str],
    dir: Option<&std::path::Path>,
    stdin: Option<&str>,
) -> Vec<u8> {
    use std::io::Write;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

/// The PF's network interface name.
fn netdev(pf: &str) -> String {
    let dir = format!("/sys/bus/pci/devices/{pf}/net");
    let entry = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
    entry.file_name().to_string_lossy().into_owned()
}

/// The PF side for the guest to ping: both PFs up (PF 0 carries the VF's frames, the lab
/// cables it to PF 1), 10.99.0.1/24 on PF 1; the address goes when dropped.
struct PfSide {
    pf1: String,
}

impl PfSide {
    fn new() -> Self {
        let (pf0, pf1) = (netdev(PF), netdev("0000:02:00.0"));
        run("ip", &["link", "set", &pf0, "up"], None, None);
        run("ip", &["link", "set", &pf1, "up"], None, None);
        run(
            "ip",
            &["addr", "add", "10.99.0.1/24", "dev", &pf1],
            None,
            None,
        );
        Self { pf1 }
    }
}

impl Drop for PfSide {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["addr", "del", "10.99.0.1/24", "dev", &self.pf1])
            .status();
    }
}

#[test]
fn a_linux_guest_with_igbvf_brings_the_vf_link_up_and_pings_the_pf_side() {
    let _guard = serial_guard();
    let vfs = Vfs::new(1, 1);
    let _pf_side = PfSide::new();
    let scratch = Scratch::new();
    // The guest initramfs: ours (vfinit, igbvf.ko) then the lab guest's (busybox), concatenated
    // as the kernel allows; uncompressed first, like early microcode.
    let files = scratch.path("vfinit-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("vfinit"), VF_INIT).unwrap();
    std::fs::set_permissions(
        files.join("vfinit"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::copy("/lib/modules/igbvf.ko", files.join("igbvf.ko"))
        .expect("igbvf.ko in the lab image's /lib/modules");
    let mut initramfs = run(
        "cpio",
        &["-o", "-H", "newc"],
        Some(&files),
        Some("vfinit\nigbvf.ko\n"),
    );
    initramfs.extend(std::fs::read(format!("{LAB}/guest-initramfs.cpio.zst")).unwrap());
    let initramfs_path = scratch.path("vfguest.img");
    std::fs::write(&initramfs_path, initramfs).unwrap();

    let mut spec = spec(&scratch, "vf-linux", 1, &vfs.vfs);
    spec.kernel = PathBuf::from(format!("{LAB}/vmlinuz"));
    spec.initramfs = Some(initramfs_path);
    spec.cmdline = "console=ttyS0 panic=-1 rdinit=/vfinit".into();
    spec.memory_mib = 256;
    let start = Instant::now();
    let mut vm = TestVm::spawn(spec, scratch.dir.path());
    let code = vm.wait_exit(Duration::from_secs(90)).code();
    let secs = start.elapsed().as_secs_f64();
    let console = vm.console();
    assert_eq!(code, Some(0), "{}\nconsole:\n{console}", vm.stderr());
    for expected in [
        "pci 0000:00:01.0: [8086:10ca] type 00 class 0x020000",
        "igbvf 0000:00:01.0: Link is Up 1000 Mbps Full Duplex",
        "lab-guest: eth0 carrier=1",
        "3 packets transmitted, 3 packets received",
    ] {
        assert!(
            console.contains(expected),
            "{expected:?} not on the console:\n{console}"
        );
    }
    // MSI-X through the irqfds: the receive vector fired.
    let rx = console
        .lines()
        .find(|l| l.contains("eth0-rx-0"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    assert!(
        rx.is_some_and(|n| n > 0),
        "no receive interrupts:\n{console}"
    );
    assert!(vm.stderr().contains("interrupts Msix"), "{}", vm.stderr());
    println!(
        "lab-vfio: Linux guest with igbvf: VMM start to power-off in {secs:.1} s, {} rx interrupts",
        rx.unwrap_or(0)
    );
}
