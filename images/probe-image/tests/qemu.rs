//! Boots the probe under QEMU 10 (q35 with an igb NIC, and microvm) and checks its console
//! protocol (docs/VMM.md): banner, pci lines, echo, commands, power button, power-off.
//!
//! Every scenario runs under software emulation (TCG: a second for all of them here); the
//! boot-and-commands scenarios run under KVM as well, because the VMM's tests boot the probe
//! on this machine's (nested) KVM. Needs `qemu-system-x86_64`, and read-write `/dev/kvm` for
//! the `kvm_` tests; each fails with a clear message when what it needs is missing.

mod support;

use probe_image::console::{
    IGNORING_POWER_BUTTON, POWER_BUTTON, POWER_BUTTON_IGNORED, parse_banner, parse_ticks, pci_lines,
};
use support::{Accel, BOOT_TIMEOUT, Guest, Machine, REPLY_TIMEOUT};

/// QEMU's exit status for a guest-requested power-off (ACPI S5): 0.
const EXIT_POWER_OFF: i32 = 0;
/// QEMU's exit status for a debug-exit write of 0: `(0 << 1) | 1`.
const EXIT_DEBUG_EXIT_0: i32 = 1;

/// The igb PF as QEMU 10 models it, in the slot -nodefaults leaves first free on q35.
const IGB_LINE: &str = "pci 0000:00:01.0 8086:10c9 class=020000 bar0=mem32:128K bar1=mem32:128K \
                        bar2=io:32 bar3=mem64:16K msix=10";

fn ticks(guest: &mut Guest) -> u64 {
    let reply = guest.command("ticks");
    parse_ticks(&reply).unwrap_or_else(|| panic!("bad reply to ticks: {reply:?}"))
}

fn banner_of(output: &str) -> probe_image::console::Banner {
    output
        .lines()
        .find_map(parse_banner)
        .unwrap_or_else(|| panic!("no banner line in:\n{output}"))
}

#[test]
fn tcg_q35_reports_cpus_ram_and_the_igb_then_obeys_commands_and_powers_off_by_acpi() {
    q35_reports_cpus_ram_and_the_igb_then_obeys_commands_and_powers_off_by_acpi(Accel::Tcg);
}

#[test]
fn kvm_q35_reports_cpus_ram_and_the_igb_then_obeys_commands_and_powers_off_by_acpi() {
    q35_reports_cpus_ram_and_the_igb_then_obeys_commands_and_powers_off_by_acpi(Accel::Kvm);
}

fn q35_reports_cpus_ram_and_the_igb_then_obeys_commands_and_powers_off_by_acpi(accel: Accel) {
    let mut guest = Guest::boot(Machine::Q35, accel);
    let output = guest.output();

    let banner = banner_of(&output);
    assert_eq!(banner.cpus, 2, "{output}");
    // QEMU's PVH memory map of a 64 MiB q35 leaves out a few firmware pages.
    assert!(
        (62..=64).contains(&banner.ram_mib),
        "ram={} in:\n{output}",
        banner.ram_mib
    );
    assert!(
        output.starts_with("probe: cpus="),
        "the banner must be the first output:\n{output}"
    );
    let lines: Vec<&str> = pci_lines(&output).collect();
    assert!(
        lines.contains(&IGB_LINE),
        "no igb line {IGB_LINE:?} in:\n{output}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pci 0000:00:00.0 8086:29c0 ")),
        "no q35 host bridge:\n{output}"
    );

    // Echo and help.
    let help = guest.command("help");
    assert!(
        guest.output().contains("> help\n"),
        "help was not echoed:\n{}",
        guest.output()
    );
    for command in [
        "off",
        "reset",
        "ticks",
        "ignore-power",
        "pci",
        "peek",
        "help",
    ] {
        assert!(
            help.contains(&format!("  {command}")),
            "help lacks {command}:\n{help}"
        );
    }

    // The idle loop runs between commands.
    let first = ticks(&mut guest);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = ticks(&mut guest);
    assert!(
        second > first,
        "ticks did not advance: {first} then {second}"
    );

    // `pci` repeats the listing; `peek` reads igb registers through BAR 0 (CTRL and STATUS
    // are never all ones on a present device) and the I/O BAR.
    assert_eq!(guest.command("pci").lines().collect::<Vec<_>>(), lines);
    for offset in ["0x0", "0x8"] {
        let reply = guest.command(&format!("peek 00:01.0 0 {offset}"));
        let prefix = format!("peek 0000:00:01.0 bar0+{offset} = 0x");
        let value = reply
            .trim()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("peek reply {reply:?}"));
        assert_eq!(value.len(), 8, "{reply:?}");
        assert_ne!(value, "ffffffff", "BAR 0 not decoded: {reply:?}");
    }
    let reply = guest.command("peek 00:01.0 2 0x0");
    assert!(
        reply.starts_with("peek 0000:00:01.0 bar2+0x0 = 0x"),
        "{reply:?}"
    );
    let reply = guest.command("peek 00:01.0 0 0x20000");
    assert!(
        reply.starts_with("error: offset 0x20000 is not"),
        "{reply:?}"
    );
    let reply = guest.command("frobnicate");
    assert!(
        reply.starts_with("error: unknown command `frobnicate`"),
        "{reply:?}"
    );

    // `off`: QEMU's DSDT gives \_S5 = 0, so ACPI S5 powers off and QEMU exits with 0, not
    // with the debug-exit status.
    guest.type_text("off\r");
    assert_eq!(
        guest.wait_exit(REPLY_TIMEOUT).code(),
        Some(EXIT_POWER_OFF),
        "{}",
        guest.output()
    );
}

#[test]
fn tcg_q35_power_button_is_ignored_after_ignore_power_and_honoured_after_reset() {
    let mut guest = Guest::boot(Machine::Q35, Accel::Tcg);
    assert_eq!(guest.command("ignore-power").trim(), IGNORING_POWER_BUTTON);
    guest.qmp("system_powerdown");
    guest.wait_for(&format!("{POWER_BUTTON_IGNORED}\n"), REPLY_TIMEOUT);
    // Still alive and responsive.
    let ticks = guest.command("ticks");
    assert!(parse_ticks(&ticks).is_some(), "{ticks:?}");

    // `reset` reboots through the i8042: a second banner, and the new probe honours the
    // power button again.
    guest.type_text("reset\r");
    guest.wait_for("probe: resetting\n", REPLY_TIMEOUT);
    let output = guest.wait_for_count("probe: ready\n> ", 2, BOOT_TIMEOUT);
    assert_eq!(output.matches("probe: cpus=2 ").count(), 2, "{output}");
    guest.qmp("system_powerdown");
    let output = guest.wait_for(&format!("{POWER_BUTTON}\n"), REPLY_TIMEOUT);
    assert_eq!(output.matches(POWER_BUTTON_IGNORED).count(), 1, "{output}");
    assert_eq!(
        guest.wait_exit(REPLY_TIMEOUT).code(),
        Some(EXIT_POWER_OFF),
        "{}",
        guest.output()
    );
}

#[test]
fn tcg_microvm_boots_without_pci_and_powers_off_by_debug_exit() {
    microvm_boots_without_pci_and_powers_off_by_debug_exit(Accel::Tcg);
}

#[test]
fn kvm_microvm_boots_without_pci_and_powers_off_by_debug_exit() {
    microvm_boots_without_pci_and_powers_off_by_debug_exit(Accel::Kvm);
}

fn microvm_boots_without_pci_and_powers_off_by_debug_exit(accel: Accel) {
    let mut guest = Guest::boot(Machine::Microvm, accel);
    let output = guest.output();
    let banner = banner_of(&output);
    assert_eq!(banner.cpus, 2, "{output}");
    assert!(
        (62..=64).contains(&banner.ram_mib),
        "ram={} in:\n{output}",
        banner.ram_mib
    );
    assert_eq!(
        pci_lines(&output).count(),
        0,
        "microvm has no PCI:\n{output}"
    );
    assert_eq!(guest.command("pci"), "");
    // Hardware-reduced ACPI: no PM1 blocks, so `off` falls back to the debug exit port.
    guest.type_text("off\r");
    assert_eq!(
        guest.wait_exit(REPLY_TIMEOUT).code(),
        Some(EXIT_DEBUG_EXIT_0),
        "{}",
        guest.output()
    );
}
