//! The guest PCI segment on this machine's /dev/kvm (no VFIO here): the probe boots with the
//! host bridge present, finds it at 00:00.0 through mechanism 1, and `peek` refuses it (no
//! BARs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Scratch, Spec, TestVm, cores, serial_guard};
use probe_image::console::{PROMPT, READY, pci_lines};

const BOOT: Duration = Duration::from_secs(15);

#[test]
fn probe_lists_the_host_bridge_at_00_00_0_and_nothing_else() {
    let _guard = serial_guard();
    let scratch = Scratch::new();
    let spec = Spec::new("pci-bridge", probe_image::path(), &cores()[..1]);
    let mut vm = TestVm::spawn(spec, scratch.dir.path());
    let console = vm.wait_console(&format!("{READY}\n{PROMPT}"), BOOT);
    let lines: Vec<&str> = pci_lines(&console).collect();
    assert_eq!(
        lines,
        ["pci 0000:00:00.0 1b36:0008 class=060000"],
        "{console}"
    );
    assert!(!console.contains("warning"), "{console}");

    vm.type_text("peek 00:00.0 0 0x0\n");
    let console = vm.wait_console_count(PROMPT, 2, BOOT);
    assert!(
        console.contains("error: 0000:00:00.0 has no BAR 0"),
        "{console}"
    );
}
