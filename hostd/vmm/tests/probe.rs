//! The host-KVM tests with the probe guest (images/probe): what the guest sees
//! (banner), and stop, pause, reboot and console as the probe's console protocol shows them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Scratch, Spec, TestVm, cores, read_for, serial_guard};
use probe_image::console::{
    BANNER_PREFIX, POWER_BUTTON, POWER_BUTTON_IGNORED, PROMPT, READY, parse_banner, parse_ticks,
};
use vmm::api::{RebootMode, Request, Response, VmState};

const BOOT: Duration = Duration::from_secs(15);

fn two_cores() -> Vec<usize> {
    let cores = cores();
    assert!(
        cores.len() >= 2,
        "these tests need 2 host cores, this process has {cores:?}"
    );
    cores[..2].to_vec()
}

/// Starts the probe and waits for its prompt.
fn boot(
    name: &str,
    scratch: &Scratch,
    vcpu_cores: &[usize],
    tweak: impl FnOnce(&mut Spec),
) -> TestVm {
    let mut spec = Spec::new(name, probe_image::path(), vcpu_cores);
    tweak(&mut spec);
    let mut vm = TestVm::spawn(spec, scratch.dir.path());
    vm.wait_console(&format!("{READY}\n{PROMPT}"), BOOT);
    vm
}

/// Runs `ticks` (the `nth` time on this console) and returns the count.
fn ticks(vm: &mut TestVm, nth: usize) -> u64 {
    vm.type_text("ticks\n");
    let text = vm.wait_console_count("ticks=", nth, BOOT);
    // Wait for the end of the line.
    let line_end = |text: &str| {
        text.rsplit("ticks=")
            .next()
            .is_some_and(|l| l.contains('\n'))
    };
    let text = if line_end(&text) {
        text
    } else {
        std::thread::sleep(Duration::from_millis(200));
        vm.console()
    };
    let line = text
        .lines()
        .filter(|l| l.contains("ticks="))
        .nth(nth - 1)
        .unwrap();
    let at = line.find("ticks=").unwrap();
    parse_ticks(&line[at..]).unwrap_or_else(|| panic!("bad ticks line {line:?}"))
}

#[test]
fn probe_sees_2_cpus_and_64_mib_on_pinned_cores_with_locked_memory() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let cores = two_cores();
    let vm = boot("banner", &scratch, &cores, |_| {});
    let console = vm.console();
    let banner = console
        .lines()
        .find(|l| l.starts_with(BANNER_PREFIX))
        .unwrap();
    let banner = parse_banner(banner).unwrap();
    assert_eq!((banner.cpus, banner.ram_mib), (2, 64), "{console}");

    let threads = vm.threads();
    for (index, core) in cores.iter().enumerate() {
        let name = format!("vcpu{index}");
        let (_, allowed) = threads.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(*allowed, core.to_string(), "{name} affinity");
    }
    assert!(
        vm.proc_status_kib("VmLck:") >= 64 * 1024,
        "guest RAM not locked"
    );
}

#[test]
fn probe_powers_off_on_a_graceful_stop() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = boot("probe-graceful", &scratch, &two_cores()[..1], |_| {});
    assert_eq!(vm.request(&Request::StopGraceful), Response::Ok);
    assert_eq!(vm.wait_exit(BOOT).code(), Some(0), "{}", vm.stderr());
    assert!(
        vm.console().contains(&format!("{POWER_BUTTON}\n")),
        "{}",
        vm.console()
    );
}

#[test]
fn probe_ignoring_the_power_button_is_stopped_by_force() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = boot("probe-forced", &scratch, &two_cores()[..1], |spec| {
        spec.graceful_timeout_ms = 500;
    });
    vm.type_text("ignore-power\n");
    vm.wait_console_count(PROMPT, 2, BOOT);
    assert_eq!(vm.request(&Request::StopGraceful), Response::Ok);
    vm.wait_console(POWER_BUTTON_IGNORED, BOOT);
    assert_eq!(vm.wait_exit(BOOT).code(), Some(10), "{}", vm.stderr());
}

#[test]
fn probe_ticks_do_not_advance_while_paused() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = boot("probe-pause", &scratch, &two_cores()[..1], |_| {});
    let before_pause = ticks(&mut vm, 1);
    assert_eq!(vm.request(&Request::Pause), Response::Ok);
    assert_eq!(vm.status().state, VmState::Paused);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vm.request(&Request::Resume), Response::Ok);
    let after_pause = ticks(&mut vm, 2);
    std::thread::sleep(Duration::from_secs(1));
    let after_run = ticks(&mut vm, 3);
    let paused_span = after_pause - before_pause;
    let running_span = after_run - after_pause;
    // Both spans include one `ticks` round trip; only the second includes a second of running.
    assert!(
        paused_span * 2 < running_span,
        "ticks advanced while paused: {before_pause} -> {after_pause} (paused 1 s), {after_pause} -> {after_run} (ran 1 s)"
    );
}

#[test]
fn probe_restarts_on_its_own_reset_and_on_reboot_requests() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let mut vm = boot("probe-reboot", &scratch, &two_cores(), |_| {});
    vm.type_text("reset\n");
    vm.wait_console_count(READY, 2, BOOT);
    assert_eq!(vm.request(&Request::Reboot(RebootMode::Hard)), Response::Ok);
    vm.wait_console_count(READY, 3, BOOT);
    assert_eq!(vm.request(&Request::Reboot(RebootMode::Soft)), Response::Ok);
    let text = vm.wait_console_count(READY, 4, BOOT);
    assert!(text.contains(&format!("{POWER_BUTTON}\n")), "{text}");
    assert_eq!(text.matches(BANNER_PREFIX).count(), 4);
    assert_eq!(vm.status().resets, 3);
}

#[test]
fn probe_echoes_what_the_attached_console_types() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let vm = boot("probe-echo", &scratch, &two_cores()[..1], |_| {});
    let mut console = vm.attach();
    std::thread::sleep(Duration::from_millis(50));
    console.write_all(b"hello probe").unwrap();
    let echoed = read_for(&mut console, Duration::from_secs(1));
    assert_eq!(echoed, "hello probe");
}

#[test]
fn killing_one_probe_vm_leaves_the_other_running() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let cores = two_cores();
    let mut a = boot("probe-a", &scratch, &cores[..1], |_| {});
    let mut b = boot("probe-b", &scratch, &cores[1..2], |_| {});
    a.child.kill().unwrap();
    a.wait_exit(BOOT);
    let first = ticks(&mut b, 1);
    let second = ticks(&mut b, 2);
    assert!(second > first, "the surviving VM stopped running");
}
