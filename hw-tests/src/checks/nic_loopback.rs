//! `nic_loopback`: for each pair of ports the profile says are cabled to each other, 1000
//! (or the profile's number of) unique frames sent from A with AF_PACKET all arrive at B,
//! once each and intact.
//!
//! The sender keeps at most [`WINDOW`] frames in flight (sent and not yet received), far
//! below any NIC's receive ring: a frame lost here is a defect (cable, port, driver), not
//! a receiver that fell behind a burst, as an emulated NIC on a loaded host does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sriov::PciAddress;
use sriov::netlink::{LinkInfo, RouteSocket, ifindex};

use super::not_in_profile;
use crate::loopback_frame::{self, ETHERTYPE, Received};
use crate::machine::Machine;
use crate::packet_socket::PacketSocket;
use crate::profile::{CablePair, Profile};
use crate::report::CheckResult;

const NAME: &str = "nic_loopback";
/// How long the receiver waits for stragglers after the last frame is sent.
const DRAIN: Duration = Duration::from_secs(2);
/// Frames sent and not yet received, at most.
const WINDOW: u32 = 32;
/// How long the sender waits for the window to open before it sends the rest without waiting
/// (frames were lost: the tally will say how many).
const STALL: Duration = Duration::from_millis(500);

/// A port by its netdev name: a PCI address resolves through sysfs.
fn netdev_of(m: &Machine, port: &str) -> Result<String, String> {
    let Ok(addr) = port.parse::<PciAddress>() else {
        return Ok(port.to_string());
    };
    let dir = m.sys(&format!("bus/pci/devices/{addr}/net"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| {
            format!(
                "port {addr} has no network interface ({}: {e}); is its driver loaded?",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| format!("port {addr} has no network interface; is its driver loaded?"))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What one pair's run saw.
#[derive(Debug, Default)]
struct Tally {
    unique: BTreeSet<u32>,
    duplicates: u32,
    corrupt: u32,
    foreign: u32,
}

/// Runs one cabled pair; returns its detail line or why it failed.
fn test_pair(m: &Machine, pair: &CablePair, run_id: u64) -> Result<String, String> {
    let names = (netdev_of(m, &pair.a)?, netdev_of(m, &pair.b)?);
    let index_a = ifindex(&names.0).map_err(|e| e.to_string())?;
    let index_b = ifindex(&names.1).map_err(|e| e.to_string())?;
    let mut rtnl = RouteSocket::open().map_err(|e| e.to_string())?;
    let before_a = rtnl.link_info(index_a).map_err(|e| e.to_string())?;
    let before_b = rtnl.link_info(index_b).map_err(|e| e.to_string())?;

    let result = (|| {
        let (a, b) = bring_up(&mut rtnl, index_a, index_b, pair)?;
        let (dst, src) = (
            b.mac.ok_or(format!("{} has no MAC address", b.name))?,
            a.mac.ok_or(format!("{} has no MAC address", a.name))?,
        );
        send_and_count(index_a, index_b, dst, src, run_id, pair.frames)
            .map(|(tally, secs)| (a, b, tally, secs))
    })();

    // Leave the links as they were found.
    for before in [&before_a, &before_b] {
        if !before.admin_up {
            let _ = rtnl.set_link_up(before.ifindex, false);
        }
    }
    let (a, b, tally, secs) = result?;
    let n = pair.frames;
    let got = u32::try_from(tally.unique.len()).unwrap_or(u32::MAX);
    let line = format!(
        "{} ({} {}) -> {} ({} {}): {got}/{n} frames, {} duplicated, {} corrupt, {} other frames ignored, {:.2} s",
        pair.a,
        a.name,
        a.mac.map(mac_text).unwrap_or_default(),
        pair.b,
        b.name,
        b.mac.map(mac_text).unwrap_or_default(),
        tally.duplicates,
        tally.corrupt,
        tally.foreign,
        secs
    );
    if got != n || tally.duplicates > 0 || tally.corrupt > 0 {
        let cause = if got == 0 {
            "check the cable between them".to_string()
        } else if tally.corrupt > 0 {
            "frames were damaged: check the cable and the transceivers".to_string()
        } else if tally.duplicates > 0 {
            "frames came twice: a loop on the test fixture".to_string()
        } else {
            format!(
                "{} frames lost: check the cable and the port counters (ethtool -S)",
                n - got
            )
        };
        return Err(format!("{line}; {cause}"));
    }
    Ok(line)
}

fn bring_up(
    rtnl: &mut RouteSocket,
    a: u32,
    b: u32,
    pair: &CablePair,
) -> Result<(LinkInfo, LinkInfo), String> {
    rtnl.set_link_up(a, true).map_err(|e| e.to_string())?;
    rtnl.set_link_up(b, true).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(pair.link_timeout_secs.into());
    let start = Instant::now();
    loop {
        let (ia, ib) = (
            rtnl.link_info(a).map_err(|e| e.to_string())?,
            rtnl.link_info(b).map_err(|e| e.to_string())?,
        );
        if ia.carrier && ib.carrier {
            return Ok((ia, ib));
        }
        if start.elapsed() > timeout {
            let down: Vec<&str> = [&ia, &ib]
                .iter()
                .filter(|i| !i.carrier)
                .map(|i| i.name.as_str())
                .collect();
            return Err(format!(
                "no link on {} within {} s: check the cable between {} and {}",
                down.join(" and "),
                timeout.as_secs(),
                pair.a,
                pair.b
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn send_and_count(
    index_a: u32,
    index_b: u32,
    dst: [u8; 6],
    src: [u8; 6],
    run_id: u64,
    n: u32,
) -> Result<(Tally, f64), String> {
    let rx = PacketSocket::bind(index_b, ETHERTYPE)
        .map_err(|e| format!("cannot open a packet socket on ifindex {index_b}: {e}"))?;
    // Room for every frame even if the receiver thread falls behind (as root).
    let _ = rx.set_receive_buffer(16 << 20);
    rx.set_receive_timeout(Duration::from_millis(100))
        .map_err(|e| e.to_string())?;
    let tx = PacketSocket::bind(index_a, ETHERTYPE)
        .map_err(|e| format!("cannot open a packet socket on ifindex {index_a}: {e}"))?;
    let start = Instant::now();
    let received = Arc::new(AtomicU32::new(0));
    let receiver = thread::Builder::new()
        .name("loopback-rx".into())
        .spawn({
            let received = received.clone();
            move || receive(&rx, run_id, n, &received)
        })
        .map_err(|e| format!("cannot start the receiver thread: {e}"))?;
    let mut send_error = None;
    let mut windowed = true;
    for seq in 0..n {
        if windowed {
            windowed = wait_for_window(seq, &received);
        }
        let frame = loopback_frame::build(dst, src, run_id, seq, n);
        // A full transmit queue is back-pressure, not failure: wait and retry.
        let mut tries = 0;
        loop {
            match tx.send(&frame) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && tries < 100 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    send_error = Some(format!("sending frame {seq} failed: {e}"));
                    break;
                }
            }
        }
        if send_error.is_some() {
            break;
        }
    }
    let tally = receiver
        .join()
        .map_err(|_| "the receiver thread panicked".to_string())??;
    match send_error {
        Some(e) => Err(e),
        None => Ok((tally, start.elapsed().as_secs_f64())),
    }
}

/// Waits until frame `seq` would be at most [`WINDOW`] ahead of the frames received: true,
/// or false once [`STALL`] has passed without that.
fn wait_for_window(seq: u32, received: &AtomicU32) -> bool {
    let waiting = Instant::now();
    while seq >= received.load(Ordering::Acquire) + WINDOW {
        if waiting.elapsed() >= STALL {
            return false;
        }
        thread::sleep(Duration::from_micros(50));
    }
    true
}

fn receive(rx: &PacketSocket, run_id: u64, n: u32, received: &AtomicU32) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let mut buf = [0u8; 2048];
    let mut last_progress = Instant::now();
    // Waits for every frame, or for DRAIN after the last one that arrived (the sender keeps
    // frames coming at well under that interval).
    while tally.unique.len() < n as usize && last_progress.elapsed() < DRAIN {
        let Some(len) = rx
            .recv(&mut buf)
            .map_err(|e| format!("receive failed: {e}"))?
        else {
            continue;
        };
        match loopback_frame::classify(&buf[..len], run_id, n) {
            Received::Ours { seq } => {
                if tally.unique.insert(seq) {
                    received.fetch_add(1, Ordering::Release);
                } else {
                    tally.duplicates += 1;
                }
                last_progress = Instant::now();
            }
            Received::Corrupt => tally.corrupt += 1,
            Received::Foreign => tally.foreign += 1,
        }
    }
    Ok(tally)
}

pub(super) fn run(profile: &Profile, m: &Machine) -> CheckResult {
    if profile.cabling.is_empty() {
        return not_in_profile(NAME, profile, "cabled port pairs");
    }
    let run_id = u64::from(std::process::id()) << 32
        | u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    let mut details = Vec::new();
    let mut failures = Vec::new();
    for pair in &profile.cabling {
        match test_pair(m, pair, run_id) {
            Ok(line) => details.push(line),
            Err(reason) => {
                details.push(reason.clone());
                failures.push(reason);
            }
        }
    }
    let frames: u32 = profile.cabling.iter().map(|p| p.frames).sum();
    match failures.first() {
        None => CheckResult::pass(
            NAME,
            format!(
                "{} cabled pairs, {frames} frames, none lost or damaged",
                profile.cabling.len()
            ),
        )
        .with_details(details),
        Some(first) => CheckResult::fail(NAME, first.clone()).with_details(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use crate::test_support::{FakeMachine, profile};

    #[test]
    fn a_pci_port_without_a_netdev_fails_naming_it() {
        let f = FakeMachine::with_sim(&sriov::sim::SimSpec::two_igb_ports());
        let r = run(
            &profile("[[cabling]]\na = \"0000:07:00.0\"\nb = \"0000:02:00.0\"\n"),
            &f.machine(),
        );
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason
                .contains("port 0000:07:00.0 has no network interface"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn pci_ports_resolve_to_their_netdev() {
        let f = FakeMachine::with_sim(&sriov::sim::SimSpec::two_igb_ports());
        let m = f.machine();
        assert_eq!(netdev_of(&m, "0000:02:00.0").unwrap(), "eth1");
        assert_eq!(netdev_of(&m, "veth7").unwrap(), "veth7");
    }

    #[test]
    fn an_unknown_interface_fails_with_advice() {
        let f = FakeMachine::new();
        let r = run(
            &profile("[[cabling]]\na = \"nosuch0\"\nb = \"nosuch1\"\n"),
            &f.machine(),
        );
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("nosuch0") && r.reason.contains("ip link"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn no_cabling_is_a_skip() {
        let f = FakeMachine::new();
        assert_eq!(run(&profile(""), &f.machine()).outcome, Outcome::Skip);
    }
}
