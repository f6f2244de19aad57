//! Pipeline tests on a single switch with an injected clock: every feature, deterministic.

use std::sync::Arc;

use super::Switch;
use super::counters::Counters;
use super::parse::parse_eth;
use super::parse::tests::udp4;
use crate::config::{Plan, PortId, compile};
use crate::control::messages::*;
use crate::pool::FramePool;

pub(super) const A: u64 = 0x0200_0000_000a;
pub(super) const B: u64 = 0x0200_0000_000b;
pub(super) const C: u64 = 0x0200_0000_000c;
pub(super) const BCAST: u64 = 0xffff_ffff_ffff;

pub(super) fn port(name: &str, vlan: VlanMode) -> PortConfig {
    PortConfig {
        name: name.into(),
        backend: PortBackend::Memory,
        vlan,
        guest_facing: false,
        acl_in: vec![],
        acl_out: vec![],
        rx_limit: None,
        tx_limit: None,
    }
}

pub(super) fn access(v: u16) -> VlanMode {
    VlanMode::Access { vlan: v }
}

pub(super) fn config(ports: Vec<PortConfig>) -> Config {
    let names = ports.iter().map(|p| p.name.clone()).collect();
    Config {
        ports,
        cores: vec![CoreConfig {
            cpu: 0,
            ports: names,
            idle: IdlePolicy::Spin,
            napi_threads: false,
            flow_offload: false,
        }],
        ..Config::default()
    }
}

pub(super) struct Harness {
    pub(super) plan: Plan,
    pub(super) pool: FramePool,
    pub(super) sw: Switch,
    pub(super) counters: Arc<Counters>,
}

impl Harness {
    pub(super) fn new(c: Config) -> Self {
        let plan = compile(&c).unwrap();
        let counters = Arc::new(Counters::new(plan.ports.len()));
        let sw = Switch::new(&plan, counters.clone(), 0);
        Self {
            plan,
            pool: FramePool::new(4096).unwrap(),
            sw,
            counters,
        }
    }

    pub(super) fn reconfigure(&mut self, c: Config, now_ns: u64) {
        self.plan = compile(&c).unwrap();
        self.sw.apply_plan(&self.plan, now_ns);
    }

    pub(super) fn send(&mut self, port: PortId, data: &[u8], now_ns: u64) {
        let f = self.pool.write_frame(data).unwrap();
        self.sw
            .process(&self.plan, &mut self.pool, port, &[f], now_ns);
    }

    /// Drains a port's output queue into byte vectors (and frees the frames).
    pub(super) fn out(&mut self, port: PortId) -> Vec<Vec<u8>> {
        let frames: Vec<_> = self.sw.tx_queue(port).drain(..).collect();
        frames
            .into_iter()
            .map(|f| {
                let v = self.pool.bytes(f).to_vec();
                self.pool.free(f.addr);
                v
            })
            .collect()
    }

    pub(super) fn drops(&self, port: PortId, reason: DropReason) -> u64 {
        self.counters
            .port(usize::from(port))
            .read("")
            .dropped(reason)
    }
}

pub(super) fn frame(dst: u64, src: u64) -> Vec<u8> {
    udp4(dst, src, None, [10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000)
}

#[test]
fn unknown_unicast_floods_then_learned_address_goes_to_one_port() {
    let mut h = Harness::new(config(vec![
        port("p0", access(10)),
        port("p1", access(10)),
        port("p2", access(10)),
    ]));
    h.send(0, &frame(B, A), 0);
    assert_eq!(h.out(1).len(), 1, "unknown destination floods to p1");
    assert_eq!(h.out(2).len(), 1, "and to p2");
    assert!(h.out(0).is_empty(), "never back to the ingress port");
    h.send(1, &frame(A, B), 0);
    assert_eq!(h.out(0).len(), 1, "A was learned on p0");
    assert!(h.out(2).is_empty());
    h.send(0, &frame(B, A), 0);
    assert_eq!(h.out(1).len(), 1, "B was learned on p1");
    assert!(h.out(2).is_empty());
    assert_eq!(h.pool.available(), 4096, "no frame leaked");
}

#[test]
fn broadcast_floods_within_the_vlan_only() {
    let mut h = Harness::new(config(vec![
        port("p0", access(10)),
        port("p1", access(10)),
        port("p2", access(20)),
    ]));
    h.send(0, &frame(BCAST, A), 0);
    assert_eq!(h.out(1).len(), 1);
    assert!(h.out(2).is_empty(), "p2 is in VLAN 20");
}

#[test]
fn vlans_are_isolated_even_for_learned_addresses() {
    let mut h = Harness::new(config(vec![port("p0", access(10)), port("p1", access(20))]));
    h.send(1, &frame(A, B), 0); // B learned in VLAN 20
    h.send(0, &frame(B, A), 0);
    assert!(h.out(1).is_empty(), "VLAN 10 frame must not reach VLAN 20");
    assert_eq!(h.drops(0, DropReason::NoDestination), 1);
}

#[test]
fn trunk_tags_access_untags_and_disallowed_vlans_drop() {
    let trunk = VlanMode::Trunk {
        allowed: vec![10, 20],
        native: Some(20),
    };
    let mut h = Harness::new(config(vec![
        port("acc10", access(10)),
        port("trunk", trunk),
        port("acc30", access(30)),
    ]));
    // Access -> trunk: tagged with 10.
    h.send(0, &frame(BCAST, A), 0);
    let out = h.out(1);
    assert_eq!(parse_eth(&out[0]).unwrap().tci, Some(10));
    // Trunk tagged 10 -> access: untagged, same payload as the original untagged frame.
    let tagged = udp4(A, B, Some(10), [10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000);
    h.send(1, &tagged, 0);
    let out = h.out(0);
    assert_eq!(
        out[0],
        frame(A, B)[..56],
        "tag removed (the 60-byte tagged frame becomes 56 bytes)"
    );
    // Untagged on the trunk = native VLAN 20: nobody else in 20, so no destination.
    h.send(1, &frame(BCAST, C), 0);
    assert!(h.out(0).is_empty() && h.out(2).is_empty());
    // Tag 30 is not allowed on the trunk.
    h.send(
        1,
        &udp4(BCAST, B, Some(30), [1, 1, 1, 1], [2, 2, 2, 2], 1, 2),
        0,
    );
    assert!(h.out(2).is_empty());
    assert_eq!(h.drops(1, DropReason::Vlan), 1);
    // A tagged frame on an access port is dropped.
    h.send(
        0,
        &udp4(BCAST, A, Some(10), [1, 1, 1, 1], [2, 2, 2, 2], 1, 2),
        0,
    );
    assert_eq!(h.drops(0, DropReason::Vlan), 1);
}

#[test]
fn learned_entries_age_out_and_static_entries_stay() {
    let mut c = config(vec![
        port("p0", access(10)),
        port("p1", access(10)),
        port("p2", access(10)),
    ]);
    c.fdb.aging_secs = 2;
    c.static_macs.push(StaticMac {
        mac: "02:00:00:00:00:0c".into(),
        vlan: 10,
        port: "p2".into(),
    });
    let mut h = Harness::new(c);
    let s = 1_000_000_000;
    h.send(1, &frame(BCAST, B), 0);
    h.out(0);
    h.out(2);
    h.send(0, &frame(B, A), s);
    assert_eq!(h.out(1).len(), 1);
    assert!(h.out(2).is_empty());
    h.sw.age(2 * s); // 2 s since B was last seen
    h.send(0, &frame(B, A), 2 * s);
    assert_eq!(h.out(2).len(), 1, "B aged out: flooded again");
    h.out(1);
    // Static C never ages and is not moved by a frame from C on another port.
    h.send(1, &frame(BCAST, C), 3 * s);
    h.out(0);
    h.out(2);
    h.sw.age(100 * s);
    h.send(0, &frame(C, A), 100 * s);
    assert_eq!(h.out(2).len(), 1);
    assert!(h.out(1).is_empty());
}

fn rule(id: u32, action: AclAction) -> AclRule {
    AclRule {
        id,
        action,
        src: None,
        dst: None,
        protocol: None,
        src_ports: None,
        dst_ports: None,
    }
}

#[test]
fn acl_rules_apply_in_id_order_and_guest_ports_deny_by_default() {
    let mut guest = port("vm", access(10));
    guest.guest_facing = true;
    let mut allow_dns = rule(20, AclAction::Allow);
    allow_dns.protocol = Some(17);
    allow_dns.dst_ports = Some(PortRange { lo: 53, hi: 53 });
    let mut deny_host = rule(10, AclAction::Deny);
    deny_host.src = Some("10.0.0.66".into());
    guest.acl_in = vec![allow_dns, deny_host];
    let mut h = Harness::new(config(vec![guest, port("up", access(10))]));
    let dns = |src| udp4(BCAST, A, None, src, [10, 0, 0, 2], 5000, 53);
    h.send(0, &dns([10, 0, 0, 1]), 0);
    assert_eq!(h.out(1).len(), 1, "rule 20 allows DNS");
    h.send(0, &dns([10, 0, 0, 66]), 0);
    assert!(
        h.out(1).is_empty(),
        "rule 10 (lower id) denies this host first"
    );
    h.send(
        0,
        &udp4(BCAST, A, None, [10, 0, 0, 1], [10, 0, 0, 2], 5000, 80),
        0,
    );
    assert!(h.out(1).is_empty(), "default deny on a guest-facing port");
    assert_eq!(h.drops(0, DropReason::AclIn), 2);
    // ARP passes a default-deny port so addresses resolve.
    let mut arp = vec![0u8; 60];
    arp[..6].copy_from_slice(&BCAST.to_be_bytes()[2..]);
    arp[6..12].copy_from_slice(&A.to_be_bytes()[2..]);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    h.send(0, &arp, 0);
    assert_eq!(h.out(1).len(), 1);
    // The guest port's empty acl_out denies by default too.
    h.send(1, &frame(BCAST, B), 0);
    assert!(h.out(0).is_empty());
    assert_eq!(h.drops(0, DropReason::AclOut), 1);
}

#[test]
fn mirror_copies_rx_and_tx_as_seen_on_the_wire() {
    let trunk = VlanMode::Trunk {
        allowed: vec![10],
        native: None,
    };
    let mut c = config(vec![
        port("src", access(10)),
        port("dst", trunk),
        port("mon", access(99)),
    ]);
    c.mirrors.push(MirrorConfig {
        name: "m".into(),
        source: "src".into(),
        direction: MirrorDirection::Both,
        destination: "mon".into(),
    });
    let mut h = Harness::new(c);
    h.send(0, &frame(BCAST, A), 0);
    assert_eq!(h.out(1).len(), 1);
    let copies = h.out(2);
    assert_eq!(
        copies,
        vec![frame(BCAST, A)],
        "rx copy, untagged as received"
    );
    h.send(
        1,
        &udp4(A, B, Some(10), [10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000),
        0,
    );
    assert_eq!(h.out(0).len(), 1);
    assert_eq!(
        h.out(2),
        vec![frame(A, B)[..56].to_vec()],
        "tx copy as sent on the access port (untagged)"
    );
    assert_eq!(h.pool.available(), 4096);
}

#[test]
fn rate_limit_is_accurate_within_ten_percent() {
    let mut p0 = port("p0", access(10));
    p0.rx_limit = Some(RateLimit {
        bits_per_sec: Some(10_000_000),
        packets_per_sec: None,
        burst_ms: None,
    });
    let mut p1 = port("p1", access(10));
    p1.tx_limit = Some(RateLimit {
        bits_per_sec: None,
        packets_per_sec: Some(2_000),
        burst_ms: None,
    });
    let mut h = Harness::new(config(vec![p0, p1, port("p2", access(10))]));
    // 1 s at 10 kpps of 500-byte frames (40 Mbit/s offered) into p0, limited to 10 Mbit/s.
    let mut f = frame(BCAST, A);
    f.resize(500, 0);
    let mut passed = 0;
    for i in 0..10_000u64 {
        h.send(0, &f, i * 100_000);
        passed += h.out(2).len();
        h.out(1);
    }
    let expected = 10_000_000 / 8 / 500; // 2500 frames
    assert!(
        (passed as f64 - expected as f64).abs() <= expected as f64 * 0.1,
        "passed {passed}, expected {expected}"
    );
    // p1's tx limit: 2000 pps out of the 10 kpps sent from p2.
    let mut out = 0;
    for i in 0..10_000u64 {
        h.send(2, &frame(BCAST, C), 2_000_000_000 + i * 100_000);
        out += h.out(1).len();
        h.out(0);
    }
    assert!(
        (out as i64 - 2000).abs() <= 200,
        "p1 sent {out}, expected 2000"
    );
    assert!(h.drops(1, DropReason::RateLimitOut) > 7000);
}

#[test]
fn plan_change_takes_effect_on_the_next_burst() {
    let mut c = config(vec![port("p0", access(10)), port("p1", access(10))]);
    let mut h = Harness::new(c.clone());
    h.send(0, &frame(BCAST, A), 0);
    assert_eq!(h.out(1).len(), 1);
    c.ports[0].acl_in = vec![rule(1, AclAction::Deny)];
    h.reconfigure(c, 0);
    h.send(0, &frame(BCAST, A), 0);
    assert!(h.out(1).is_empty());
}

#[test]
fn malformed_frames_are_counted() {
    let mut h = Harness::new(config(vec![port("p0", access(10)), port("p1", access(10))]));
    h.send(0, &[0u8; 10], 0);
    assert_eq!(h.drops(0, DropReason::Malformed), 1);
    assert_eq!(h.pool.available(), 4096);
}
