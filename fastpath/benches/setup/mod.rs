//! Shared by the criterion benchmark (`benches/pipeline.rs`) and the instruction-count
//! driver (`examples/pipeline_count.rs`): the benchmark configurations, frames, and one
//! burst through the switch.

use std::hint::black_box;
use std::sync::Arc;

use fastpath::config::{Plan, compile};
use fastpath::control::messages::*;
use fastpath::pipeline::counters::Counters;
use fastpath::pipeline::{BURST, Switch};
use fastpath::pool::{Frame, FramePool};

pub fn port(name: &str, vlan: VlanMode) -> PortConfig {
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

/// 64 rules that do not match the benchmark traffic, then one that allows it.
pub fn acl64() -> Vec<AclRule> {
    let mut rules: Vec<AclRule> = (0..63u32)
        .map(|i| AclRule {
            id: i,
            action: AclAction::Deny,
            src: Some(format!("192.168.{i}.0/24")),
            dst: None,
            protocol: Some(if i % 2 == 0 { 6 } else { 17 }),
            src_ports: None,
            dst_ports: Some(PortRange {
                lo: 1000 + i as u16 * 10,
                hi: 1005 + i as u16 * 10,
            }),
        })
        .collect();
    rules.push(AclRule {
        id: 1000,
        action: AclAction::Allow,
        src: Some("10.0.0.0/8".into()),
        dst: Some("10.0.0.0/8".into()),
        protocol: Some(17),
        src_ports: None,
        dst_ports: Some(PortRange { lo: 1, hi: 65535 }),
    });
    rules
}

pub struct Variant {
    pub name: &'static str,
    pub config: Config,
    pub tagged: bool,
    pub flows: u16,
}

pub fn variant(name: &'static str, vlan: bool, acl: bool, mirror: bool, flows: u16) -> Variant {
    let in_mode = if vlan {
        VlanMode::Trunk {
            allowed: vec![10],
            native: None,
        }
    } else {
        VlanMode::Access { vlan: 10 }
    };
    let mut p_in = port("in", in_mode);
    if acl {
        p_in.acl_in = acl64();
    }
    let mut ports = vec![p_in, port("out", VlanMode::Access { vlan: 10 })];
    let mut mirrors = vec![];
    if mirror {
        ports.push(port("mon", VlanMode::Access { vlan: 99 }));
        mirrors.push(MirrorConfig {
            name: "m".into(),
            source: "in".into(),
            direction: MirrorDirection::Rx,
            destination: "mon".into(),
        });
    }
    let names = ports.iter().map(|p| p.name.clone()).collect();
    Variant {
        name,
        config: Config {
            ports,
            cores: vec![CoreConfig {
                cpu: 0,
                ports: names,
                idle: IdlePolicy::Spin,
                napi_threads: false,
                flow_offload: false,
            }],
            mirrors,
            ..Config::default()
        },
        tagged: vlan,
        flows,
    }
}

/// A 64-byte frame (60 + the FCS a wire would add) of flow `i`.
pub fn frame(tagged: bool, i: u16) -> Vec<u8> {
    let dst = [2, 0, 0, 1, (i >> 8) as u8, i as u8];
    let src = [2, 0, 0, 2, (i >> 8) as u8, i as u8];
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if tagged {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 10]);
    }
    f.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 1, 2,
    ]);
    f.extend_from_slice(&(5000 + i).to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.resize(60, 0);
    f
}

pub struct Bench {
    plan: Plan,
    pool: FramePool,
    sw: Switch,
    frames: Vec<Vec<u8>>,
    next_flow: usize,
    burst: [Frame; BURST],
}

impl Bench {
    pub fn new(v: &Variant) -> Self {
        let plan = compile(&v.config).expect("benchmark config is valid");
        let counters = Arc::new(Counters::new(plan.ports.len()));
        let mut sw = Switch::new(&plan, counters, 0);
        let mut pool = FramePool::new(8192).expect("frame pool");
        let frames: Vec<Vec<u8>> = (0..v.flows).map(|i| frame(v.tagged, i)).collect();
        // Teach the switch where every destination lives (as replies would).
        for i in 0..v.flows {
            let mut reply = frame(false, i);
            reply[..6].copy_from_slice(&[0xff; 6]);
            reply[6..12].copy_from_slice(&[2, 0, 0, 1, (i >> 8) as u8, i as u8]);
            let f = pool.write_frame(&reply).expect("pool has room");
            let out = 1;
            sw.process(&plan, &mut pool, out, &[f], 0);
            for p in 0..plan.ports.len() as u16 {
                let q: Vec<Frame> = sw.tx_queue(p).drain(..).collect();
                q.into_iter().for_each(|f| pool.free(f.addr));
            }
        }
        Self {
            plan,
            pool,
            sw,
            frames,
            next_flow: 0,
            burst: [Frame::default(); BURST],
        }
    }

    /// Writes the next 32 frames into pool buffers (not timed).
    pub fn fill(&mut self) {
        for slot in self.burst.iter_mut() {
            let data = &self.frames[self.next_flow];
            self.next_flow = (self.next_flow + 1) % self.frames.len();
            *slot = self
                .pool
                .write_frame(data)
                .expect("pool never runs dry: every burst is freed");
        }
    }

    /// One burst through the pipeline and back to the pool (timed).
    pub fn run(&mut self) {
        self.sw
            .process(&self.plan, &mut self.pool, 0, black_box(&self.burst), 1);
        for p in 0..self.plan.ports.len() as u16 {
            let q = self.sw.tx_queue(p);
            for f in q.iter() {
                self.pool.free(f.addr);
            }
            q.clear();
        }
    }
}

/// The benchmark's variants, in report order.
pub fn variants() -> Vec<Variant> {
    vec![
        variant("l2", false, false, false, 1),
        variant("l2_vlan", true, false, false, 1),
        variant("l2_vlan_acl64", true, true, false, 1),
        variant("l2_vlan_acl64_mirror", true, true, true, 1),
        variant("l2_vlan_acl64_1024flows", true, true, false, 1024),
    ]
}
