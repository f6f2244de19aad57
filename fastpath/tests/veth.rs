//! End-to-end tests over veth pairs in network namespaces the tests create (and always
//! remove): ICMP and UDP between two hosts through fastpath over AF_XDP and over AF_PACKET,
//! a denied flow that stays denied across configuration changes, a mirror namespace that sees
//! the copies, and a bad configuration that is refused while the running one stays.
//!
//! Needs root and iproute2; fails (never skips) without them.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{FastpathProc, Lab, ping, udp};
use fastpath::control::messages::{AclAction, AclRule, Direction, Request, Response, VlanMode};

struct Topology {
    lab: Lab,
    a: String,
    b: String,
    m: String,
    fw: String,
}

/// host A (a0) -- fa [fastpath fw] fb -- (b0) host B; fm -- (m0) mirror namespace.
fn topology(tag: &str, net: u8) -> Topology {
    let mut lab = Lab::new(tag);
    let a = lab.ns("a");
    let b = lab.ns("b");
    let m = lab.ns("m");
    let fw = lab.ns("fw");
    lab.veth(&a, "a0", &fw, "fa");
    lab.veth(&b, "b0", &fw, "fb");
    lab.veth(&m, "m0", &fw, "fm");
    lab.tx_checksum_off(&a, "a0");
    lab.tx_checksum_off(&b, "b0");
    lab.addr(&a, "a0", &format!("10.213.{net}.1/24"));
    lab.addr(&b, "b0", &format!("10.213.{net}.2/24"));
    lab.addr(&a, "a0", &format!("fd00:213:{net}::1/64"));
    lab.addr(&b, "b0", &format!("fd00:213:{net}::2/64"));
    Topology { lab, a, b, m, fw }
}

fn config(backend: &str) -> String {
    let port = |name: &str, vlan: u16| {
        let be = match backend {
            "af_xdp" => format!("{{ af_xdp = {{ ifname = \"{name}\" }} }}"),
            _ => format!("{{ af_packet = {{ ifname = \"{name}\" }} }}"),
        };
        format!(
            "[[ports]]\nname = \"{name}\"\nbackend = {be}\nvlan = {{ access = {{ vlan = {vlan} }} }}\n"
        )
    };
    format!(
        "{}acl_in = [ {{ id = 10, action = \"deny\", protocol = 17, dst_ports = {{ lo = 9999, hi = 9999 }} }} ]\n\n{}\n{}\n\
         [[cores]]\ncpu = 0\nports = [\"fa\", \"fb\", \"fm\"]\nidle = \"sleep\"\n\n\
         [[mirrors]]\nname = \"tap\"\nsource = \"fa\"\ndirection = \"both\"\ndestination = \"fm\"\n",
        port("fa", 1),
        port("fb", 1),
        port("fm", 99)
    )
}

fn forwarding_scenario(backend: &str, net: u8) {
    let t = topology(backend, net);
    let fp = FastpathProc::start(&t.fw, &config(backend));
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 213, net, 2));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x213, u16::from(net), 0, 0, 0, 0, 2));
    let mirror_before = t.lab.counter(&t.m, "m0", "rx_packets");

    assert_eq!(
        ping(&t.lab, &t.a, v4, 3),
        3,
        "IPv4 ping A -> B through fastpath ({backend})"
    );
    assert_eq!(
        ping(&t.lab, &t.a, v6, 3),
        3,
        "IPv6 ping A -> B through fastpath ({backend})"
    );
    assert_eq!(
        udp(&t.lab, &t.a, &t.b, v4, 5000, 5),
        5,
        "UDP A -> B port 5000"
    );
    assert_eq!(
        udp(&t.lab, &t.a, &t.b, v6, 5001, 5),
        5,
        "UDP over IPv6 A -> B port 5001"
    );
    assert_eq!(
        udp(&t.lab, &t.a, &t.b, v4, 9999, 3),
        0,
        "UDP to port 9999 is denied by fa's acl_in"
    );
    assert!(
        fp.stats("fa")
            .dropped(fastpath::control::messages::DropReason::AclIn)
            >= 3
    );

    // The mirror namespace saw the copies of fa's rx and tx (pings, replies, datagrams).
    let mirrored = t.lab.counter(&t.m, "m0", "rx_packets") - mirror_before;
    assert!(mirrored >= 2 * 6 + 10, "mirror saw only {mirrored} frames");

    // A bad configuration is refused and the running one stays in force.
    let mut bad = match fp.request(&Request::GetConfig) {
        Response::Config(c) => c,
        other => panic!("{other:?}"),
    };
    bad.ports[1].vlan = VlanMode::Access { vlan: 5000 };
    match fp.request(&Request::ReplaceConfig(bad)) {
        Response::Error { message } => assert!(message.contains("VLAN 5000"), "{message}"),
        other => panic!("bad config accepted: {other:?}"),
    }
    let rule = AclRule {
        id: 10,
        action: AclAction::Allow,
        src: Some("10.213.0.0/33".into()),
        dst: None,
        protocol: None,
        src_ports: None,
        dst_ports: None,
    };
    let reply = fp.request(&Request::SetAclRule {
        port: "fa".into(),
        direction: Direction::In,
        rule,
    });
    assert!(
        matches!(reply, Response::Error { .. }),
        "malformed prefix accepted: {reply:?}"
    );
    // A valid change elsewhere: the denied flow stays denied, the allowed one still flows.
    let other = AclRule {
        id: 20,
        action: AclAction::Allow,
        src: None,
        dst: None,
        protocol: Some(6),
        src_ports: None,
        dst_ports: None,
    };
    let reply = fp.request(&Request::SetAclRule {
        port: "fa".into(),
        direction: Direction::In,
        rule: other,
    });
    assert!(
        matches!(reply, Response::Applied { generation: 2 }),
        "{reply:?}"
    );
    assert_eq!(
        udp(&t.lab, &t.a, &t.b, v4, 9999, 3),
        0,
        "denied flow stays denied after a change"
    );
    assert_eq!(
        udp(&t.lab, &t.a, &t.b, v4, 5000, 3),
        3,
        "allowed flow still forwarded"
    );
}

#[test]
fn af_xdp_forwards_ping_and_udp_with_acl_and_mirror() {
    forwarding_scenario("af_xdp", 1);
}

#[test]
fn af_packet_forwards_ping_and_udp_with_acl_and_mirror() {
    forwarding_scenario("af_packet", 2);
}

/// Host A sends 802.1Q-tagged frames (VLAN 10) into fastpath's trunk port; host B is
/// untagged on an access port of VLAN 10 and must receive the datagrams untagged. On the
/// AF_PACKET port the kernel moves the tag into metadata before the socket sees the frame, so
/// this checks that the port puts it back; AF_XDP sees the tag in the frame.
fn vlan_trunk_scenario(backend: &str, net: u8) {
    let mut lab = Lab::new(&format!("{backend}v"));
    let a = lab.ns("a");
    let b = lab.ns("b");
    let fw = lab.ns("fw");
    lab.veth(&a, "a0", &fw, "fa");
    lab.veth(&b, "b0", &fw, "fb");
    lab.addr(&b, "b0", &format!("10.213.{net}.2/24"));
    let be = |name: &str| match backend {
        "af_xdp" => format!("{{ af_xdp = {{ ifname = \"{name}\" }} }}"),
        _ => format!("{{ af_packet = {{ ifname = \"{name}\" }} }}"),
    };
    let config = format!(
        "[[ports]]\nname = \"fa\"\nbackend = {}\nvlan = {{ trunk = {{ allowed = [10] }} }}\n\n\
         [[ports]]\nname = \"fb\"\nbackend = {}\nvlan = {{ access = {{ vlan = 10 }} }}\n\n\
         [[cores]]\ncpu = 0\nports = [\"fa\", \"fb\"]\nidle = \"sleep\"\n",
        be("fa"),
        be("fb")
    );
    let fp = FastpathProc::start(&fw, &config);
    let b_mac = common::mac_of(&b, "b0");
    let a_mac = common::mac_of(&a, "a0");
    let sip = [10, 213, net, 1];
    let dip = [10, 213, net, 2];
    let got = common::udp_receive_while(&lab, &b, 6000, 3, || {
        for _ in 0..3 {
            common::send_raw(
                &lab,
                &a,
                "a0",
                common::tagged_udp4(b_mac, a_mac, 10, sip, dip, 6000),
            );
        }
    });
    assert_eq!(
        got, 3,
        "tagged VLAN 10 datagrams reach the access port untagged ({backend})"
    );
    // VLAN 20 is not allowed on the trunk: dropped and counted.
    let got = common::udp_receive_while(&lab, &b, 6001, 1, || {
        common::send_raw(
            &lab,
            &a,
            "a0",
            common::tagged_udp4(b_mac, a_mac, 20, sip, dip, 6001),
        );
    });
    assert_eq!(got, 0, "VLAN 20 is not on the trunk");
    // At least that frame; host A's own untagged IPv6 chatter (no native VLAN) counts too.
    let fa = fp.stats("fa");
    assert!(
        fa.dropped(fastpath::control::messages::DropReason::Vlan) >= 1,
        "{fa:?}"
    );
}

#[test]
fn af_packet_trunk_reinserts_vlan_tags() {
    vlan_trunk_scenario("af_packet", 3);
}

#[test]
fn af_xdp_trunk_carries_vlan_tags() {
    vlan_trunk_scenario("af_xdp", 4);
}
