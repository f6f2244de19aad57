//! Passthrough refusals on a machine without VFIO (this one's /dev/kvm, no IOMMU, no
//! /dev/vfio): each `[[vfio]]` device that cannot be passed through is refused before the VM
//! starts, with its documented exit code and a message saying what to do, and nothing is
//! left behind. Devices other than a missing one are fake sysfs trees (the config accepts a
//! sysfs path), so the tests do not depend on this machine's PCI devices. The QEMU lab runs
//! the same refusals on real VFs (tests/lab_vfio.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Scratch, Spec, TestVm, alive, cores, serial_guard};
use vmm::control::exit_code;

const START: Duration = Duration::from_secs(10);

/// Starts a VMM with `[[vfio]] device = <device>` that must refuse to start; returns stderr.
fn refused(scratch: &Scratch, name: &str, device: &str, code: i32) -> String {
    let mut spec = Spec::new(name, probe_image::path(), &cores()[..1]);
    spec.extra = format!("[[vfio]]\ndevice = \"{device}\"\n");
    let mut vm = TestVm::spawn(spec, scratch.dir.path());
    let status = vm.wait_exit(START);
    let stderr = vm.stderr();
    assert_eq!(status.code(), Some(code), "exit code; stderr:\n{stderr}");
    assert!(!alive(vm.pid()), "VMM process left behind");
    assert!(!vm.control_socket().exists(), "control socket left behind");
    assert!(!vm.console_socket().exists(), "console socket left behind");
    assert!(stderr.contains("hostd-vmm: error:"), "{stderr}");
    stderr
}

/// A fake PCI function in `root`'s sysfs: bound to `driver`, in IOMMU group `group` (shared
/// with the other functions given the same group). Returns its sysfs directory.
fn fake_function(root: &Path, address: &str, driver: Option<&str>, group: u32) -> PathBuf {
    let device = root.join("sys/bus/pci/devices").join(address);
    std::fs::create_dir_all(&device).unwrap();
    if let Some(driver) = driver {
        let driver_dir = root.join("sys/bus/pci/drivers").join(driver);
        std::fs::create_dir_all(&driver_dir).unwrap();
        symlink(&driver_dir, device.join("driver")).unwrap();
    }
    let group_dir = root.join(format!("sys/kernel/iommu_groups/{group}"));
    std::fs::create_dir_all(group_dir.join("devices")).unwrap();
    symlink(&group_dir, device.join("iommu_group")).unwrap();
    symlink(&device, group_dir.join("devices").join(address)).unwrap();
    device
}

#[test]
fn a_device_that_does_not_exist_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    // Device 1f function 7 of a bus nobody has.
    let stderr = refused(
        &scratch,
        "vfio-missing",
        "0000:fe:1f.7",
        exit_code::VFIO_DEVICE_UNAVAILABLE,
    );
    assert!(
        stderr.contains("0000:fe:1f.7: no such PCI function on this host"),
        "{stderr}"
    );
}

#[test]
fn a_device_on_a_host_driver_is_refused_with_how_to_bind_it() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let vf = fake_function(scratch.dir.path(), "0000:01:10.0", Some("igbvf"), 4242);
    let stderr = refused(
        &scratch,
        "vfio-igbvf",
        vf.to_str().unwrap(),
        exit_code::VFIO_DEVICE_UNAVAILABLE,
    );
    assert!(
        stderr.contains("0000:01:10.0 is bound to igbvf, not vfio-pci"),
        "{stderr}"
    );
    assert!(
        stderr.contains("echo vfio-pci > /sys/bus/pci/devices/0000:01:10.0/driver_override"),
        "{stderr}"
    );
}

#[test]
fn a_group_with_a_member_on_a_host_driver_is_refused_naming_it() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let root = scratch.dir.path();
    let vf = fake_function(root, "0000:01:10.0", Some("vfio-pci"), 4243);
    fake_function(root, "0000:01:00.0", Some("igb"), 4243);
    let stderr = refused(
        &scratch,
        "vfio-group",
        vf.to_str().unwrap(),
        exit_code::VFIO_GROUP_NOT_VIABLE,
    );
    assert!(
        stderr.contains("IOMMU group 4243 of passthrough device 0000:01:10.0 is not viable")
            && stderr.contains("0000:01:00.0 (on igb)"),
        "{stderr}"
    );
}

#[test]
fn a_ready_device_without_vfio_nodes_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let vf = fake_function(scratch.dir.path(), "0000:01:10.0", Some("vfio-pci"), 4244);
    // This machine has no /dev/vfio at all; a lab machine has no group 4244.
    let stderr = refused(
        &scratch,
        "vfio-nodes",
        vf.to_str().unwrap(),
        exit_code::VFIO_UNSUPPORTED,
    );
    assert!(stderr.contains("VFIO is not available"), "{stderr}");
    assert!(stderr.contains("modprobe vfio-pci"), "{stderr}");
}

#[test]
fn a_device_without_an_iommu_group_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let root = scratch.dir.path();
    let vf = fake_function(root, "0000:01:10.0", Some("vfio-pci"), 4245);
    std::fs::remove_file(vf.join("iommu_group")).unwrap();
    let stderr = refused(
        &scratch,
        "vfio-noiommu",
        vf.to_str().unwrap(),
        exit_code::VFIO_UNSUPPORTED,
    );
    assert!(
        stderr.contains("has no IOMMU group") && stderr.contains("intel_iommu=on"),
        "{stderr}"
    );
}
