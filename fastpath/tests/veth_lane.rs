//! The kernel flow lane over veth, end to end: flows decided by the pipeline are forwarded by
//! the tc program (the stats say how many), counters stay exact, and configuration changes
//! (an ACL deny, a VLAN move) are in force for the kernel's frames as soon as the change is
//! acknowledged. Plus the lane's map bookkeeping against a real kernel.
//!
//! Needs root, iproute2 and ethtool; fails (never skips) without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{FastpathProc, Lab, run, udp};
use fastpath::control::messages::{
    AclAction, AclRule, Direction, DropReason, Request, Response, VlanMode,
};
use fastpath::lane::{FlowLane, LaneKey, Offer, Target};

/// host A (a0) -- fa [fastpath, AF_PACKET ports, flow lane] fb -- (b0) host B, IPv4 only.
fn lane_lab(net: u8) -> (Lab, String, String, String) {
    let mut lab = Lab::new("lane");
    let a = lab.ns("a");
    let b = lab.ns("b");
    let fw = lab.ns("fw");
    for ns in [&a, &b, &fw] {
        // No IPv6 chatter (fw's own interfaces would send some straight to A and B): every
        // frame A and B receive is one the test sent, or ARP.
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
    }
    lab.veth(&a, "a0", &fw, "fa");
    lab.veth(&b, "b0", &fw, "fb");
    // The user-space path forwards frames as they are (see docs/FASTPATH.md, checksums).
    lab.tx_checksum_off(&a, "a0");
    lab.tx_checksum_off(&b, "b0");
    lab.addr(&a, "a0", &format!("10.214.{net}.1/24"));
    lab.addr(&b, "b0", &format!("10.214.{net}.2/24"));
    (lab, a, b, fw)
}

const CONFIG: &str = "[[ports]]\nname = \"fa\"\nbackend = { af_packet = { ifname = \"fa\" } }\nvlan = { access = { vlan = 1 } }\n\n\
[[ports]]\nname = \"fb\"\nbackend = { af_packet = { ifname = \"fb\" } }\nvlan = { access = { vlan = 1 } }\n\n\
[[cores]]\ncpu = 0\nports = [\"fa\", \"fb\"]\nidle = \"sleep\"\nflow_offload = true\n";

fn applied(reply: Response) {
    assert!(matches!(reply, Response::Applied { .. }), "{reply:?}");
}

#[test]
fn lane_forwards_decided_flows_and_config_changes_apply_at_once() {
    let (lab, a, b, fw) = lane_lab(1);
    let fp = FastpathProc::start(&fw, CONFIG);
    let dst = IpAddr::V4(Ipv4Addr::new(10, 214, 1, 2));

    assert_eq!(udp(&lab, &a, &b, dst, 5000, 40), 40, "UDP A -> B");
    let fa = fp.stats("fa");
    let fb = fp.stats("fb");
    assert!(
        fa.lane_rx_packets >= 30 && fb.lane_tx_packets >= 30,
        "most datagrams went through the kernel lane: {fa:?} {fb:?}"
    );
    assert!(fa.lane_rx_packets <= fa.rx_packets, "{fa:?}");
    // Counters are exact: everything B received came out of fb, and the reverse.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let fb = fp.stats("fb");
    let fa = fp.stats("fa");
    assert_eq!(lab.counter(&b, "b0", "rx_packets"), fb.tx_packets, "{fb:?}");
    assert_eq!(lab.counter(&a, "a0", "rx_packets"), fa.tx_packets, "{fa:?}");
    assert_eq!(fa.rx_packets, fb.tx_packets, "A's frames all went to B");
    // Bytes as user space counts them (MAC header included) for the kernel's frames too.
    assert_eq!(lab.counter(&a, "a0", "tx_bytes"), fa.rx_bytes, "{fa:?}");
    assert_eq!(fa.rx_bytes, fb.tx_bytes);

    // An ACL deny is in force for the kernel's frames once acknowledged.
    let deny = AclRule {
        id: 10,
        action: AclAction::Deny,
        src: None,
        dst: None,
        protocol: Some(17),
        src_ports: None,
        dst_ports: Some(fastpath::control::messages::PortRange { lo: 5000, hi: 5000 }),
    };
    applied(fp.request(&Request::SetAclRule {
        port: "fa".into(),
        direction: Direction::In,
        rule: deny,
    }));
    assert_eq!(
        udp(&lab, &a, &b, dst, 5000, 5),
        0,
        "denied right after the change"
    );
    assert!(fp.stats("fa").dropped(DropReason::AclIn) >= 5);

    // Without the rule the flow is offered again.
    applied(fp.request(&Request::DeleteAclRule {
        port: "fa".into(),
        direction: Direction::In,
        id: 10,
    }));
    let before = fp.stats("fa").lane_rx_packets;
    assert_eq!(udp(&lab, &a, &b, dst, 5000, 20), 20);
    assert!(
        fp.stats("fa").lane_rx_packets > before,
        "back in the lane after the deny went"
    );

    // VLAN isolation: B's port moves to VLAN 2; nothing crosses, kernel lane included.
    applied(fp.request(&Request::SetVlan {
        port: "fb".into(),
        vlan: VlanMode::Access { vlan: 2 },
    }));
    let b_before = lab.counter(&b, "b0", "rx_packets");
    assert_eq!(
        udp(&lab, &a, &b, dst, 5000, 5),
        0,
        "VLANs are isolated at once"
    );
    assert_eq!(lab.counter(&b, "b0", "rx_packets"), b_before);
}

#[test]
fn lane_map_bookkeeping_against_the_kernel() {
    common::require_root_and_ip();
    let mut lane = FlowLane::new(2).expect("flow lane maps (needs root)");
    lane.set_target(
        1,
        Target {
            ifindex: 1,
            peer: false,
        },
    );
    let offer = Offer {
        key: LaneKey {
            dst: [2, 0, 0, 0, 0, 2],
            src: [2, 0, 0, 0, 0, 1],
            tci: 0,
            in_port: 0,
        },
        out: 1,
        src_fdb: 11,
        dst_fdb: 22,
    };
    lane.offer(&offer);
    lane.offer(&offer);
    assert_eq!(lane.len(), 1, "a flow is added once");
    let to_port_0 = Offer { out: 0, ..offer };
    lane.offer(&Offer {
        key: LaneKey {
            in_port: 1,
            ..offer.key
        },
        ..to_port_0
    });
    assert_eq!(lane.len(), 1, "port 0 is no destination");
    lane.forget(&[33]);
    assert_eq!(lane.len(), 1);
    lane.forget(&[22]);
    assert!(lane.is_empty(), "a changed destination removes the flow");
    lane.offer(&offer);
    let swept: Vec<u64> = (1000..1100).chain([11]).collect();
    lane.forget(&swept);
    assert!(
        lane.is_empty(),
        "a changed source among many (an aging sweep) removes it"
    );
    lane.offer(&offer);
    let mut refreshed = 0;
    lane.sweep(|_, _| {
        refreshed += 1;
        true
    });
    assert_eq!(refreshed, 0, "no hits, no refresh");
    lane.clear();
    assert!(lane.is_empty());
    assert_eq!(lane.counters().read(0), Default::default());
}
