//! What the switch offers to the kernel flow lane, and the FDB events that withdraw offers:
//! the user-space half of the lane, without a kernel (the kernel half is in tests/veth_lane.rs).

use super::tests::{A, B, BCAST, C, Harness, access, config, frame, port};
use crate::control::messages::*;
use crate::lane::Offer;

/// Three access ports in VLAN 10, all kernel ports with the lane attached.
fn lane_harness(c: Config) -> Harness {
    let mut h = Harness::new(c);
    let n = h.plan.ports.len();
    h.sw.enable_lane(&h.plan, vec![true; n], vec![true; n]);
    h
}

fn three_ports() -> Config {
    config(vec![
        port("p0", access(10)),
        port("p1", access(10)),
        port("p2", access(10)),
    ])
}

fn offers(h: &mut Harness) -> Vec<Offer> {
    for p in 0..h.plan.ports.len() as u16 {
        h.out(p);
    }
    h.sw.take_offers().collect()
}

fn changes(h: &mut Harness) -> Vec<u64> {
    let mut v = Vec::new();
    h.sw.take_fdb_changes(&mut v);
    v
}

#[test]
fn known_unicast_is_offered_once_the_source_is_learned() {
    let mut h = lane_harness(three_ports());
    h.send(1, &frame(A, B), 0); // B learned on p1; A unknown: flooded to two ports
    assert!(
        offers(&mut h).is_empty(),
        "a flood to two ports is not offered"
    );
    h.send(0, &frame(B, A), 0); // A learned now (same frame); B known on p1
    let o = offers(&mut h);
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].key.in_port, o[0].out, o[0].key.tci), (0, 1, 0));
    assert_eq!(o[0].key.dst, [2, 0, 0, 0, 0, 0x0b]);
    assert_eq!(o[0].key.src, [2, 0, 0, 0, 0, 0x0a]);
    assert_eq!(
        changes(&mut h),
        vec![
            crate::config::plan::fdb_key(B, 10),
            crate::config::plan::fdb_key(A, 10)
        ],
        "both learns are reported (the poll thread drops offers built on this burst's learns)"
    );
    h.send(0, &frame(B, A), 0);
    assert_eq!(
        offers(&mut h).len(),
        1,
        "offered again until the lane has it"
    );
    assert!(
        changes(&mut h).is_empty(),
        "a known station changes nothing"
    );
}

#[test]
fn a_flood_to_a_single_port_is_offered() {
    let mut h = lane_harness(config(vec![port("p0", access(10)), port("p1", access(10))]));
    h.send(0, &frame(C, A), 0);
    h.send(0, &frame(C, A), 0);
    let o = offers(&mut h);
    assert!(!o.is_empty());
    assert!(
        o.iter()
            .all(|o| o.out == 1 && o.dst_fdb == crate::config::plan::fdb_key(C, 10))
    );
    h.send(0, &frame(BCAST, A), 0);
    assert_eq!(
        offers(&mut h).len(),
        1,
        "broadcast to the one other member too"
    );
    h.send(1, &frame(A, C), 0);
    assert!(
        changes(&mut h).contains(&crate::config::plan::fdb_key(C, 10)),
        "learning C ends the flood decision"
    );
}

#[test]
fn nothing_that_needs_user_space_is_offered() {
    // ACL in, ACL out, rx mirror, tx mirror, rx and tx limit: each on its own.
    let rule = AclRule {
        id: 1,
        action: AclAction::Allow,
        src: None,
        dst: None,
        protocol: None,
        src_ports: None,
        dst_ports: None,
    };
    let limit = RateLimit {
        bits_per_sec: Some(1_000_000_000),
        packets_per_sec: None,
        burst_ms: None,
    };
    type Edit<'a> = Box<dyn Fn(&mut Config) + 'a>;
    let variants: Vec<Edit> = vec![
        Box::new(|c| c.ports[0].acl_in = vec![rule.clone()]),
        Box::new(|c| c.ports[1].acl_out = vec![rule.clone()]),
        Box::new(|c| c.ports[0].rx_limit = Some(limit)),
        Box::new(|c| c.ports[1].tx_limit = Some(limit)),
        Box::new(|c| {
            c.mirrors.push(MirrorConfig {
                name: "m".into(),
                source: "p0".into(),
                direction: MirrorDirection::Rx,
                destination: "p2".into(),
            })
        }),
        Box::new(|c| {
            c.mirrors.push(MirrorConfig {
                name: "m".into(),
                source: "p1".into(),
                direction: MirrorDirection::Tx,
                destination: "p2".into(),
            })
        }),
    ];
    for (i, edit) in variants.iter().enumerate() {
        let mut c = three_ports();
        c.ports[2].vlan = access(99);
        edit(&mut c);
        let mut h = lane_harness(c);
        h.send(1, &frame(A, B), 0);
        h.send(0, &frame(B, A), 0);
        h.send(0, &frame(B, A), 0);
        // p1 -> p0 floods to one port and may be offered; p0 -> p1 crosses the feature.
        let o = offers(&mut h);
        assert!(
            !o.iter().any(|o| o.key.in_port == 0 && o.out == 1),
            "variant {i} was offered: {o:?}"
        );
    }
}

#[test]
fn tag_changes_and_non_kernel_ports_are_not_offered() {
    let trunk = VlanMode::Trunk {
        allowed: vec![10],
        native: None,
    };
    let mut h = lane_harness(config(vec![port("trunk", trunk), port("acc", access(10))]));
    let tagged = super::parse::tests::udp4(A, B, Some(10), [1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
    h.send(1, &frame(B, A), 0);
    h.send(0, &tagged, 0);
    h.send(0, &tagged, 0);
    assert!(offers(&mut h).is_empty(), "trunk -> access pops the tag");
    // Same traffic between two trunks keeps the tag: offered, with the TCI in the key.
    let trunk2 = VlanMode::Trunk {
        allowed: vec![10],
        native: None,
    };
    let mut h = lane_harness(config(vec![port("t0", trunk2.clone()), port("t1", trunk2)]));
    h.send(0, &tagged, 0);
    h.send(0, &tagged, 0);
    let o = offers(&mut h);
    assert!(o.iter().any(|o| o.key.tci == 10 && o.out == 1), "{o:?}");
    // Ports the lane cannot send to (memory ports) are never destinations.
    let mut h = Harness::new(three_ports());
    let n = h.plan.ports.len();
    h.sw.enable_lane(&h.plan, vec![true; n], vec![true, false, true]);
    h.send(1, &frame(A, B), 0);
    h.send(0, &frame(B, A), 0);
    h.send(0, &frame(B, A), 0);
    assert!(offers(&mut h).is_empty());
}

#[test]
fn a_plan_change_withdraws_offers_and_refresh_keeps_sources_alive() {
    let mut c = three_ports();
    c.fdb.aging_secs = 2;
    let mut h = lane_harness(c.clone());
    h.send(1, &frame(A, B), 0);
    h.send(0, &frame(B, A), 0);
    for p in 0..3 {
        h.out(p);
    }
    h.sw.apply_plan(&h.plan, 0);
    assert!(
        h.sw.take_offers().next().is_none(),
        "pending offers die with the plan"
    );
    // The lane forwarded A's frames without user space: refreshing A keeps it from aging.
    let a = crate::config::plan::fdb_key(A, 10);
    assert!(h.sw.refresh_learned(a, 0, 3_000_000_000));
    h.sw.age(4_000_000_000);
    let _ = changes(&mut h);
    h.send(1, &frame(A, B), 4_000_000_000);
    assert_eq!(
        h.out(0).len(),
        1,
        "A is still known on p0 (refreshed at 3 s)"
    );
    assert!(!h.sw.refresh_learned(a, 1, 4_000_000_000), "A is not on p1");
    h.sw.age(7_000_000_000);
    assert!(changes(&mut h).contains(&a), "aging A out is reported");
}
