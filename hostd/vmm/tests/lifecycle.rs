//! VMM process mechanics on this machine's /dev/kvm, with the mini payload
//! (tests/guest/mini.S): pinning, locked memory, stop, pause, reboot, console, isolation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Scratch, Spec, TestVm, alive, cores, read_for, serial_guard};
use vmm::api::{RebootMode, Request, Response, VmState};

const BOOT: Duration = Duration::from_secs(10);

fn two_cores() -> Vec<usize> {
    let cores = cores();
    assert!(
        cores.len() >= 2,
        "these tests need 2 host cores, this process has {cores:?}"
    );
    cores[..2].to_vec()
}

fn ticks(vm: &mut TestVm, nth: usize) -> u64 {
    vm.type_text("T");
    let text = vm.wait_console_count("ticks=", nth, BOOT);
    let last = text.rsplit("ticks=").next().unwrap();
    // Wait for the full 8 digits.
    if last.len() < 8 {
        std::thread::sleep(Duration::from_millis(100));
        return ticks_from(&vm.console(), nth);
    }
    u64::from_str_radix(&last[..8], 16).unwrap()
}

fn ticks_from(text: &str, nth: usize) -> u64 {
    let part = text.split("ticks=").nth(nth).unwrap();
    u64::from_str_radix(&part[..8], 16).unwrap()
}

#[test]
fn vcpu_threads_are_pinned_and_guest_memory_is_locked() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let cores = two_cores();
    let mut vm = TestVm::spawn(
        Spec::new("pinned", &scratch.mini(), &cores),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);

    let threads = vm.threads();
    for (index, core) in cores.iter().enumerate() {
        let name = format!("vcpu{index}");
        let (_, allowed) = threads
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no thread {name} in {threads:?}"));
        assert_eq!(*allowed, core.to_string(), "{name} affinity");
    }
    // The guest's 64 MiB are resident and locked.
    assert!(
        vm.proc_status_kib("VmLck:") >= 64 * 1024,
        "VmLck below guest RAM"
    );
    assert!(vm.proc_status_kib("VmRSS:") >= 64 * 1024);

    let status = vm.status();
    assert_eq!(status.state, VmState::Running);
    let status_cores: Vec<u32> = status.vcpus.iter().map(|v| v.host_core).collect();
    assert_eq!(
        status_cores,
        cores.iter().map(|&c| c as u32).collect::<Vec<_>>()
    );
    assert!(status.vcpus[0].io_exits > 0, "vCPU 0 has run the guest");
    assert!(status.locked_bytes >= 64 << 20);
    assert_eq!(vm.request(&Request::StopForced), Response::Ok);
    assert_eq!(vm.wait_exit(BOOT).code(), Some(10));
}

#[test]
fn graceful_stop_presses_the_power_button_and_the_guest_powers_off() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = TestVm::spawn(
        Spec::new("graceful", &scratch.mini(), &two_cores()[..1]),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);
    assert_eq!(vm.request(&Request::StopGraceful), Response::Ok);
    let status = vm.wait_exit(BOOT);
    assert!(
        vm.console().contains("mini: power button\n"),
        "{}",
        vm.console()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "S5 power-off exits 0: {}",
        vm.stderr()
    );
    assert!(!vm.control_socket().exists(), "control socket left behind");
}

#[test]
fn forced_stop_ends_a_guest_that_ignores_the_power_button() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut spec = Spec::new("forced", &scratch.mini(), &two_cores()[..1]);
    spec.graceful_timeout_ms = 400;
    let mut vm = TestVm::spawn(spec, scratch.dir.path());
    vm.wait_console("mini: up", BOOT);
    vm.type_text("I");
    vm.wait_console("I", BOOT);
    assert_eq!(vm.request(&Request::StopGraceful), Response::Ok);
    vm.wait_console("mini: power button ignored", BOOT);
    assert_eq!(vm.status().state, VmState::Stopping);
    // The graceful timeout turns into a forced stop.
    assert_eq!(vm.wait_exit(BOOT).code(), Some(10), "{}", vm.stderr());

    // And a forced stop request ends a running guest at once.
    let mut vm = TestVm::spawn(
        Spec::new("forced2", &scratch.mini(), &two_cores()[..1]),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);
    assert_eq!(vm.request(&Request::StopForced), Response::Ok);
    assert_eq!(vm.wait_exit(Duration::from_secs(2)).code(), Some(10));
}

#[test]
fn paused_vcpus_do_not_run_until_resumed() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = TestVm::spawn(
        Spec::new("pause", &scratch.mini(), &two_cores()[..1]),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);
    let before = ticks(&mut vm, 1);

    assert_eq!(vm.request(&Request::Pause), Response::Ok);
    let paused = vm.status();
    assert_eq!(paused.state, VmState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    let still = vm.status();
    assert_eq!(
        paused.vcpus[0].exits, still.vcpus[0].exits,
        "a paused vCPU left the guest"
    );
    // Input typed while paused is not echoed until the guest runs again.
    vm.type_text("T");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        vm.console().matches("ticks=").count(),
        1,
        "the guest ran while paused"
    );

    assert_eq!(vm.request(&Request::Resume), Response::Ok);
    vm.wait_console_count("ticks=", 2, BOOT);
    std::thread::sleep(Duration::from_millis(100));
    let after = ticks_from(&vm.console(), 2);
    assert!(
        after > before,
        "ticks did not advance after resume: {before} -> {after}"
    );
    assert!(vm.status().vcpus[0].exits > still.vcpus[0].exits);
}

#[test]
fn guest_resets_and_reboot_requests_restart_from_the_boot_state() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = TestVm::spawn(
        Spec::new("reboot", &scratch.mini(), &two_cores()),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);
    // Soft: a guest-initiated reset (i8042) is honoured: the guest boots again.
    vm.type_text("I"); // state that a reboot must forget
    vm.type_text("R");
    vm.wait_console_count("mini: up", 2, BOOT);
    // Hard: restart now.
    assert_eq!(vm.request(&Request::Reboot(RebootMode::Hard)), Response::Ok);
    vm.wait_console_count("mini: up", 3, BOOT);
    // Soft request: power button, and the guest's power-off becomes a restart. The guest
    // honours the button again, so the `ignore` flag did not survive the resets.
    assert_eq!(vm.request(&Request::Reboot(RebootMode::Soft)), Response::Ok);
    let text = vm.wait_console_count("mini: up", 4, BOOT);
    assert!(text.contains("mini: power button\n"), "{text}");
    let status = vm.status();
    assert_eq!(status.resets, 3);
    assert_eq!(status.state, VmState::Running);
    assert!(vm.try_exit().is_none(), "the VMM exited on a reboot");
}

#[test]
fn attached_console_echoes_input() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = TestVm::spawn(
        Spec::new("echo", &scratch.mini(), &two_cores()[..1]),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);
    let mut console = vm.attach();
    std::thread::sleep(Duration::from_millis(50));
    // Longer than the UART's 64-byte FIFO: the VMM must feed it as the guest drains it.
    let line = "hello from the console, long enough to overflow one 16550 fifo of input\n";
    console.write_all(line.as_bytes()).unwrap();
    let echoed = read_for(&mut console, Duration::from_secs(2));
    assert_eq!(echoed, line);
    // A second client replaces the first.
    let mut second = vm.attach();
    std::thread::sleep(Duration::from_millis(50));
    second.write_all(b"2").unwrap();
    assert_eq!(read_for(&mut second, Duration::from_millis(500)), "2");
}

#[test]
fn killing_one_vm_leaves_the_other_running() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let cores = two_cores();
    let runtime = scratch.path("run");
    let mut spec_a = Spec::new("a", &scratch.mini(), &cores[..1]);
    spec_a.runtime_dir = Some(runtime.clone());
    let mut spec_b = Spec::new("b", &scratch.mini(), &cores[1..2]);
    spec_b.runtime_dir = Some(runtime.clone());
    let mut a = TestVm::spawn(spec_a.clone(), scratch.dir.path());
    let mut b = TestVm::spawn(spec_b, scratch.dir.path());
    a.wait_console("mini: up", BOOT);
    b.wait_console("mini: up", BOOT);

    a.child.kill().unwrap();
    a.wait_exit(BOOT);
    let b_before = b.status().vcpus[0].exits;
    std::thread::sleep(Duration::from_millis(200));
    assert!(b.status().vcpus[0].exits > b_before, "VM b stopped running");
    b.type_text("T");
    b.wait_console("ticks=", BOOT);
    // The killed VM's core is free again (its lock died with it); b's is still taken.
    let mut again = TestVm::spawn(spec_a, scratch.dir.path());
    again.wait_console("mini: up", BOOT);
    assert!(alive(b.pid()));
}

#[test]
fn debug_exit_ends_the_vm_with_the_guest_code() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = TestVm::spawn(
        Spec::new("exit", &scratch.mini(), &two_cores()[..1]),
        scratch.dir.path(),
    );
    vm.wait_console("mini: up", BOOT);
    vm.type_text("X");
    assert_eq!(vm.wait_exit(BOOT).code(), Some(103));
}
