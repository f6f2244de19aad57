//! The loopback check's real send/receive path: AF_PACKET frames over veth pairs in a network
//! namespace this test creates and removes. Needs root and `ip` (iproute2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::process::Command;

use hw_tests::checks::run_suite;
use hw_tests::machine::Machine;
use hw_tests::profile::Profile;
use hw_tests::report::Outcome;

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("hwt-{tag}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "cannot create netns {name}: this test needs root and iproute2 (`ip`)"
        );
        Netns(name)
    }

    fn ip(&self, args: &str) {
        let status = Command::new("ip")
            .args(["-n", &self.0])
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args} failed", self.0);
    }

    /// Runs `f` on a thread that lives in this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn loopback_profile(a: &str, b: &str, frames: u32) -> Profile {
    let text = format!(
        "sku = \"veth\"\n[[cabling]]\na = \"{a}\"\nb = \"{b}\"\nframes = {frames}\nlink_timeout_secs = 2\n"
    );
    Profile::parse(&text, std::path::Path::new("veth.toml")).unwrap()
}

#[test]
fn frames_cross_a_wired_pair_and_links_are_left_as_found() {
    let ns = Netns::new("wired");
    ns.ip("link add lb0 type veth peer name lb1");
    let report = ns.run(|| {
        run_suite(
            &loopback_profile("lb0", "lb1", 1000),
            &Machine::real(),
            |_| {},
        )
    });
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "nic_loopback")
        .unwrap();
    assert_eq!(
        check.outcome,
        Outcome::Pass,
        "{} {:?}",
        check.reason,
        check.details
    );
    assert!(
        check.details[0].contains("1000/1000 frames, 0 duplicated, 0 corrupt"),
        "{:?}",
        check.details
    );
    assert!(report.passed);
    // Both links were down before; the check puts them back.
    let links = Command::new("ip")
        .args(["-n", &ns.0, "-o", "link", "show", "up"])
        .output()
        .unwrap();
    let up = String::from_utf8_lossy(&links.stdout);
    assert!(
        !up.contains("lb0") && !up.contains("lb1"),
        "links left up: {up}"
    );
}

#[test]
fn an_unwired_pair_fails_and_says_to_check_the_cable() {
    let ns = Netns::new("unwired");
    // Two pairs: lc0 and ld0 each have a live peer, but nothing joins them.
    ns.ip("link add lc0 type veth peer name lc1");
    ns.ip("link add ld0 type veth peer name ld1");
    ns.ip("link set lc1 up");
    ns.ip("link set ld1 up");
    let report = ns.run(|| {
        run_suite(
            &loopback_profile("lc0", "ld0", 50),
            &Machine::real(),
            |_| {},
        )
    });
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "nic_loopback")
        .unwrap();
    assert_eq!(check.outcome, Outcome::Fail);
    assert!(
        check.reason.contains("0/50 frames") && check.reason.contains("check the cable"),
        "{}",
        check.reason
    );
    assert!(!report.passed);
}

#[test]
fn a_port_without_a_peer_has_no_link_and_fails_naming_it() {
    let ns = Netns::new("nolink");
    ns.ip("link add le0 type veth peer name le1");
    ns.ip("link add lf0 type veth peer name lf1");
    // le1 stays down, so le0 never gets a carrier.
    ns.ip("link set lf1 up");
    let report = ns.run(|| {
        run_suite(
            &loopback_profile("le0", "lf0", 10),
            &Machine::real(),
            |_| {},
        )
    });
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "nic_loopback")
        .unwrap();
    assert_eq!(check.outcome, Outcome::Fail);
    assert!(
        check.reason.starts_with("no link on le0 within 2 s"),
        "{}",
        check.reason
    );
}
