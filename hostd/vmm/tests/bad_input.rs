//! Bad input: each is refused with a clear error and its documented exit code, and nothing
//! is left behind (no process, no socket, no core lock).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Scratch, Spec, TestVm, alive, cores, serial_guard};
use vmm::control::exit_code;

const START: Duration = Duration::from_secs(10);

/// Starts a VMM that must refuse to start; returns its stderr.
fn refused(spec: Spec, scratch: &Scratch, code: i32) -> String {
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

fn core() -> usize {
    cores()[0]
}

#[test]
fn missing_kernel_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let spec = Spec::new("nokernel", &scratch.path("vmlinuz-missing"), &[core()]);
    let stderr = refused(spec, &scratch, exit_code::BAD_KERNEL);
    assert!(
        stderr.contains("vmlinuz-missing") && stderr.contains("kernel.path"),
        "{stderr}"
    );
}

#[test]
fn a_start_failure_is_written_to_the_exit_record() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let record = scratch.path("exit");
    std::fs::write(&record, "0\nstale record of an earlier run\n").unwrap();
    let mut spec = Spec::new("record", &scratch.path("vmlinuz-missing"), &[core()]);
    spec.extra = format!("exit_record = \"{}\"", record.display());
    refused(spec, &scratch, exit_code::BAD_KERNEL);
    let text = std::fs::read_to_string(&record).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("3"), "{text}");
    assert!(lines.next().unwrap().contains("vmlinuz-missing"), "{text}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let text = scratch.path("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
    let stderr = refused(
        Spec::new("text", &text, &[core()]),
        &scratch,
        exit_code::BAD_KERNEL,
    );
    assert!(stderr.contains("is not a kernel"), "{stderr}");
}

#[test]
fn a_core_that_is_not_present_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let spec = Spec::new("nocore", &scratch.mini(), &[1000]);
    let stderr = refused(spec, &scratch, exit_code::CORES_UNAVAILABLE);
    assert!(stderr.contains("host core 1000 is not present"), "{stderr}");
}

#[test]
fn a_core_pinned_by_another_vm_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let runtime = scratch.path("run");
    let mut first = Spec::new("owner", &scratch.mini(), &[core()]);
    first.runtime_dir = Some(runtime.clone());
    let mut owner = TestVm::spawn(first, scratch.dir.path());
    owner.wait_console("mini: up", START);

    let mut second = Spec::new("intruder", &scratch.mini(), &[core()]);
    second.runtime_dir = Some(runtime);
    let stderr = refused(second, &scratch, exit_code::CORES_UNAVAILABLE);
    assert!(
        stderr.contains("already pinned by another VM") && stderr.contains("vm owner"),
        "{stderr}"
    );
    assert!(
        owner.try_exit().is_none(),
        "the refused VMM disturbed the running one"
    );
}

fn meminfo_mib(field: &str) -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib >> 10
}

#[test]
fn memory_beyond_what_is_available_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut spec = Spec::new("huge", &scratch.mini(), &[core()]);
    spec.memory_mib = meminfo_mib("MemAvailable:") + 1024;
    let stderr = refused(spec, &scratch, exit_code::MEMORY_UNAVAILABLE);
    assert!(
        stderr.contains("larger than the host's available memory"),
        "{stderr}"
    );
}

#[test]
fn memory_beyond_the_reserved_hugepages_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut spec = Spec::new("hugepages", &scratch.mini(), &[core()]);
    spec.hugepages = true;
    // One more 2 MiB page than are free (none are reserved on a fresh machine).
    let free_pages = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    let page_mib = (meminfo_mib("Hugepagesize:")).max(1);
    spec.memory_mib = ((free_pages + 1) * page_mib).max(64);
    let stderr = refused(spec, &scratch, exit_code::MEMORY_UNAVAILABLE);
    assert!(
        stderr.contains("free huge pages") && stderr.contains("nr_hugepages"),
        "{stderr}"
    );
}

#[test]
fn a_missing_disk_image_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut spec = Spec::new("nodisk", &scratch.mini(), &[core()]);
    spec.disk = Some((scratch.path("missing.raw"), true));
    let stderr = refused(spec, &scratch, exit_code::BAD_DISK);
    assert!(stderr.contains("missing.raw does not exist"), "{stderr}");
}

#[test]
fn a_read_only_disk_image_asked_read_write_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let image = scratch.path("ro.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut spec = Spec::new("rodisk", &scratch.mini(), &[core()]);
    spec.disk = Some((image.clone(), false));
    let stderr = refused(spec.clone(), &scratch, exit_code::BAD_DISK);
    assert!(
        stderr.contains("is read-only") && stderr.contains("disk.read_only = true"),
        "{stderr}"
    );

    // The same image read-only is fine.
    spec.disk = Some((image, true));
    let mut vm = TestVm::spawn(spec, scratch.dir.path());
    vm.wait_console("mini: up", START);
}

#[test]
fn an_invalid_config_is_refused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut spec = Spec::new("badcfg", &scratch.mini(), &[core()]);
    spec.extra = "memory_gb = 4".into();
    let stderr = refused(spec, &scratch, exit_code::BAD_CONFIG);
    assert!(stderr.contains("memory_gb"), "{stderr}");
}
