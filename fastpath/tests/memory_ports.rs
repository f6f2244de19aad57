//! The running forwarder (pinned poll thread, RCU plan swap, control socket) driven through
//! in-process memory ports.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastpath::control::client::ControlClient;
use fastpath::control::messages::*;
use fastpath::port::memory::MemPortHandle;
use fastpath::runtime::{ApplyError, Fastpath};

/// These tests start poll threads that spin; running them one at a time keeps the timing
/// test honest on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const BCAST: [u8; 6] = [0xff; 6];

fn udp(dst: [u8; 6], src: [u8; 6], dport: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f.extend_from_slice(&1234u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.resize(len.max(f.len()), 0);
    f
}

fn port(name: &str, vlan: u16) -> PortConfig {
    PortConfig {
        name: name.into(),
        backend: PortBackend::Memory,
        vlan: VlanMode::Access { vlan },
        guest_facing: false,
        acl_in: vec![],
        acl_out: vec![],
        rx_limit: None,
        tx_limit: None,
    }
}

fn config(ports: Vec<PortConfig>) -> Config {
    let names = ports.iter().map(|p| p.name.clone()).collect();
    // CPU 0 exists on every machine; the thread spins so timing tests see it react at once.
    Config {
        ports,
        cores: vec![CoreConfig {
            cpu: 0,
            ports: names,
            idle: IdlePolicy::Yield,
            napi_threads: false,
            flow_offload: false,
        }],
        ..Config::default()
    }
}

/// Waits up to 2 s for one frame on `h`.
fn recv(h: &mut MemPortHandle) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Some(f) = h.recv() {
            return Some(f);
        }
        std::thread::yield_now();
    }
    None
}

/// Gives the poll thread time to forward whatever is queued, then counts what arrived.
fn settle_and_drain(h: &mut MemPortHandle) -> usize {
    std::thread::sleep(Duration::from_millis(50));
    h.drain()
}

#[test]
fn frames_are_forwarded_by_the_poll_thread() {
    let _serial = serial();
    let fp = Fastpath::start(config(vec![port("p0", 10), port("p1", 10)])).unwrap();
    let mut p0 = fp.take_memory_port("p0").unwrap();
    let mut p1 = fp.take_memory_port("p1").unwrap();
    let f = udp(BCAST, A, 53, 64);
    assert!(p0.send(&f));
    assert_eq!(recv(&mut p1), Some(f));
    let back = udp(A, B, 53, 64);
    assert!(p1.send(&back));
    assert_eq!(recv(&mut p0), Some(back), "A was learned on p0");
    let stats = fp.stats();
    assert_eq!((stats[0].rx_packets, stats[0].tx_packets), (1, 1));
    fp.stop();
}

#[test]
fn acl_change_takes_effect_within_a_burst_or_two_and_bad_config_is_refused() {
    let _serial = serial();
    let fp = Fastpath::start(config(vec![port("p0", 10), port("p1", 10)])).unwrap();
    let mut p0 = fp.take_memory_port("p0").unwrap();
    let mut p1 = fp.take_memory_port("p1").unwrap();
    let dns = udp(BCAST, A, 53, 64);
    assert!(p0.send(&dns));
    assert!(recv(&mut p1).is_some());

    let deny = AclRule {
        id: 1,
        action: AclAction::Deny,
        src: None,
        dst: None,
        protocol: Some(17),
        src_ports: None,
        dst_ports: Some(PortRange { lo: 53, hi: 53 }),
    };
    let generation = fp
        .update(|c| {
            c.ports[0].acl_in.push(deny.clone());
            Ok(())
        })
        .unwrap();
    assert!(
        fp.wait_adopted(generation, Duration::from_millis(100)),
        "poll thread adopted the new plan"
    );
    for _ in 0..10 {
        assert!(p0.send(&dns));
    }
    assert_eq!(settle_and_drain(&mut p1), 0, "denied right after the swap");

    // Bad configurations: each is refused and the running one (with the deny) stays.
    type Edit = Box<dyn Fn(&mut Config)>;
    let bad_edits: Vec<(&str, Edit)> = vec![
        (
            "unknown port",
            Box::new(|c: &mut Config| {
                c.mirrors.push(MirrorConfig {
                    name: "m".into(),
                    source: "p0".into(),
                    direction: MirrorDirection::Rx,
                    destination: "ghost".into(),
                })
            }),
        ),
        (
            "VLAN > 4094",
            Box::new(|c: &mut Config| c.ports[1].vlan = VlanMode::Access { vlan: 4095 }),
        ),
        (
            "overlapping rule ids",
            Box::new(move |c: &mut Config| {
                let r = c.ports[0].acl_in[0].clone();
                c.ports[0].acl_in.push(r)
            }),
        ),
        (
            "malformed prefix",
            Box::new(|c: &mut Config| c.ports[0].acl_in[0].src = Some("10.0.0.0/40".into())),
        ),
    ];
    for (what, edit) in bad_edits {
        let r = fp.update(|c| {
            edit(c);
            Ok(())
        });
        assert!(
            matches!(r, Err(ApplyError::Invalid(_))),
            "{what} accepted: {r:?}"
        );
        assert_eq!(
            fp.generation(),
            generation,
            "{what}: running generation unchanged"
        );
    }
    let r = fp.update(|c| {
        c.ports.pop();
        Ok(())
    });
    assert!(matches!(r, Err(ApplyError::NeedsRestart)), "{r:?}");
    assert!(p0.send(&dns));
    assert_eq!(settle_and_drain(&mut p1), 0, "still denied");
    assert!(p0.send(&udp(BCAST, A, 80, 64)));
    assert!(recv(&mut p1).is_some(), "other traffic still forwarded");
    fp.stop();
}

#[test]
fn rate_limit_holds_within_ten_percent_in_real_time() {
    let mut p0 = port("p0", 10);
    let _serial = serial();
    // A 250 ms bucket rides out the poll thread being descheduled on this shared machine:
    // tokens keep accruing while it waits, up to the bucket.
    p0.rx_limit = Some(RateLimit {
        bits_per_sec: None,
        packets_per_sec: Some(20_000),
        burst_ms: Some(250),
    });
    let mut c = config(vec![p0, port("p1", 10)]);
    // Its own CPU: the other tests' poll threads sit on CPU 0.
    c.cores[0].cpu = 1;
    let fp = Fastpath::start(c).unwrap();
    let mut tx = fp.take_memory_port("p0").unwrap();
    let mut rx = fp.take_memory_port("p1").unwrap();
    let f = udp(BCAST, A, 9, 64);
    // Keep p0's ring full for 1 s (far above the limit), so the limiter never waits for input
    // however this thread is scheduled.
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_millis(1000) {
        while tx.send(&f) {
            sent += 1;
        }
        rx.drain();
        std::thread::yield_now();
    }
    let elapsed = start.elapsed().as_secs_f64();
    settle_and_drain(&mut rx);
    // What the limiter let through, from p0's own counters: what arrived minus what it dropped
    // (independent of how fast this thread drained p1). Frames still in p0's ring were never
    // offered to the limiter.
    let stats = fp.stats();
    let p0 = stats.iter().find(|p| p.name == "p0").unwrap();
    let passed = p0.rx_packets - p0.dropped(DropReason::RateLimitIn);
    let expected = 20_000.0 * elapsed + 5000.0; // rate x time + the 250 ms bucket
    let err = (passed as f64 - expected).abs() / expected;
    assert!(
        err <= 0.10,
        "passed {passed}, expected {expected:.0} ({:.1} % off), offered {sent}, stats {stats:?}",
        err * 100.0,
    );
    assert!(
        sent as f64 > 2.0 * expected,
        "the limiter was not saturated: offered {sent}"
    );
    fp.stop();
}

#[test]
fn control_socket_speaks_postcard_and_json_lines() {
    let _serial = serial();
    let fp = Arc::new(Fastpath::start(config(vec![port("p0", 10), port("p1", 10)])).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fp.sock");
    fastpath::control::server::spawn(fp.clone(), &path).unwrap();

    let mut client = ControlClient::connect(&path).unwrap();
    let reply = client.request(&Request::SetRateLimit {
        port: "p1".into(),
        direction: Direction::Out,
        limit: Some(RateLimit {
            bits_per_sec: Some(1_000_000),
            packets_per_sec: None,
            burst_ms: None,
        }),
    });
    assert_eq!(reply.unwrap(), Response::Applied { generation: 2 });
    match client.request(&Request::GetConfig).unwrap() {
        Response::Config(c) => assert!(c.ports[1].tx_limit.is_some()),
        other => panic!("{other:?}"),
    }
    match client
        .request(&Request::DeleteMirror {
            name: "none".into(),
        })
        .unwrap()
    {
        Response::Error { message } => assert!(message.contains("no mirror named"), "{message}"),
        other => panic!("{other:?}"),
    }

    let mut json = UnixStream::connect(&path).unwrap();
    json.write_all(
        b"{\"set_vlan\":{\"port\":\"p1\",\"vlan\":{\"access\":{\"vlan\":5000}}}}\n\"get_stats\"\n",
    )
    .unwrap();
    let mut lines = BufReader::new(json).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("VLAN 5000 is out of range"), "{first}");
    let second = lines.next().unwrap().unwrap();
    assert!(second.starts_with("{\"stats\":"), "{second}");
    assert_eq!(
        fp.generation(),
        2,
        "refused VLAN change left generation 2 in force"
    );
}

fn tci_of(frame: &[u8]) -> Option<u16> {
    (frame[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

#[test]
fn vlans_are_isolated_and_trunks_tag_through_memory_ports() {
    let _serial = serial();
    let mut trunk = port("t", 1);
    trunk.vlan = VlanMode::Trunk {
        allowed: vec![10, 20],
        native: None,
    };
    let fp = Fastpath::start(config(vec![port("p10", 10), port("p20", 20), trunk])).unwrap();
    let mut p10 = fp.take_memory_port("p10").unwrap();
    let mut p20 = fp.take_memory_port("p20").unwrap();
    let mut t = fp.take_memory_port("t").unwrap();
    assert!(p10.send(&udp(BCAST, A, 53, 64)));
    let on_trunk = recv(&mut t).unwrap();
    assert_eq!(
        tci_of(&on_trunk),
        Some(10),
        "access VLAN 10 leaves the trunk tagged 10"
    );
    assert_eq!(
        settle_and_drain(&mut p20),
        0,
        "VLAN 10 broadcast never reaches VLAN 20"
    );
    let mut tagged20 = udp(BCAST, B, 53, 64);
    tagged20.splice(12..12, [0x81, 0x00, 0x00, 20]);
    assert!(t.send(&tagged20));
    let on_p20 = recv(&mut p20).unwrap();
    assert_eq!(tci_of(&on_p20), None, "untagged on the access port");
    assert_eq!(on_p20, udp(BCAST, B, 53, 64));
    assert_eq!(
        settle_and_drain(&mut p10),
        0,
        "VLAN 20 broadcast never reaches VLAN 10"
    );
    fp.stop();
}

#[test]
fn flooding_learning_and_aging_through_memory_ports() {
    let _serial = serial();
    let mut c = config(vec![port("p0", 10), port("p1", 10), port("p2", 10)]);
    c.fdb.aging_secs = 1;
    let fp = Fastpath::start(c).unwrap();
    let mut p0 = fp.take_memory_port("p0").unwrap();
    let mut p1 = fp.take_memory_port("p1").unwrap();
    let mut p2 = fp.take_memory_port("p2").unwrap();
    assert!(p0.send(&udp(B, A, 9, 64)));
    assert!(
        recv(&mut p1).is_some() && recv(&mut p2).is_some(),
        "unknown B flooded to p1 and p2"
    );
    assert!(p1.send(&udp(A, B, 9, 64)));
    assert!(recv(&mut p0).is_some(), "A learned on p0");
    assert_eq!(
        settle_and_drain(&mut p2),
        0,
        "known destination is not flooded"
    );
    assert!(p0.send(&udp(B, A, 9, 64)));
    assert!(recv(&mut p1).is_some());
    assert_eq!(settle_and_drain(&mut p2), 0, "B learned on p1");
    // B is silent for more than the 1 s aging time (swept once per second): flooded again.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(p0.send(&udp(B, A, 9, 64)));
    assert!(
        recv(&mut p2).is_some(),
        "B aged out, so its frames flood again"
    );
    fp.stop();
}

#[test]
fn guest_port_default_deny_and_mirror_through_memory_ports() {
    let _serial = serial();
    let mut vm = port("vm", 10);
    vm.guest_facing = true;
    vm.acl_in = vec![AclRule {
        id: 1,
        action: AclAction::Allow,
        src: None,
        dst: None,
        protocol: Some(17),
        src_ports: None,
        dst_ports: Some(PortRange { lo: 53, hi: 53 }),
    }];
    vm.acl_out = vec![AclRule {
        id: 1,
        action: AclAction::Allow,
        src: None,
        dst: None,
        protocol: None,
        src_ports: None,
        dst_ports: None,
    }];
    let mut c = config(vec![vm, port("up", 10), port("mon", 99)]);
    c.mirrors.push(MirrorConfig {
        name: "tap".into(),
        source: "vm".into(),
        direction: MirrorDirection::Both,
        destination: "mon".into(),
    });
    let fp = Fastpath::start(c).unwrap();
    let mut vm = fp.take_memory_port("vm").unwrap();
    let mut up = fp.take_memory_port("up").unwrap();
    let mut mon = fp.take_memory_port("mon").unwrap();
    let dns = udp(BCAST, A, 53, 64);
    assert!(vm.send(&dns));
    assert_eq!(recv(&mut up), Some(dns.clone()), "allowed by rule 1");
    assert_eq!(recv(&mut mon), Some(dns), "rx copy on the mirror port");
    assert!(vm.send(&udp(BCAST, A, 80, 64)));
    assert_eq!(
        settle_and_drain(&mut up),
        0,
        "default deny on the guest-facing port"
    );
    assert_eq!(
        settle_and_drain(&mut mon),
        1,
        "the mirror still sees what arrived (rx is copied as received)"
    );
    let reply = udp(A, B, 5353, 64);
    assert!(up.send(&reply));
    assert_eq!(
        recv(&mut vm),
        Some(reply.clone()),
        "acl_out allows everything to the guest"
    );
    assert_eq!(recv(&mut mon), Some(reply), "tx copy on the mirror port");
    let stats = fp.stats();
    assert_eq!(stats[0].dropped(DropReason::AclIn), 1);
    fp.stop();
}
