//! The forwarding pipeline of one poll thread (a "switch"): for each received burst,
//! rx mirror -> rx policer -> parse -> VLAN ingress -> ingress ACL -> learn -> lookup or
//! flood -> per output port: egress ACL -> tx policer -> VLAN egress -> tx mirror -> queue.
//!
//! The pipeline never allocates: frames come from the thread's `FramePool`, output queues
//! and tables are sized when the switch is built.

pub mod acl;
pub mod counters;
pub mod fdb;
pub mod parse;
pub mod ratelimit;
pub mod vlan;

use std::sync::Arc;

use crate::config::plan::{Plan, PortId, fdb_key};
use crate::control::messages::{AclAction, DropReason};
use crate::lane::{LaneKey, Offer};
use crate::pool::{Frame, FramePool};
use acl::{Acl, FlowCache};
use counters::Counters;
use fdb::Fdb;
use parse::{EthHeader, L3, is_multicast, parse_eth, parse_l3};
use ratelimit::TokenBucket;

/// Most frames a port hands over per poll.
pub const BURST: usize = 32;
/// Capacity of one port's output queue between two flushes.
pub const TX_QUEUE_CAP: usize = 256;

/// Per-port data-path state that the plan does not hold (it changes per packet).
#[derive(Debug, Default)]
struct PortState {
    acl_in_cache: FlowCache,
    acl_out_cache: FlowCache,
    rx_bucket: Option<TokenBucket>,
    tx_bucket: Option<TokenBucket>,
}

/// One poll thread's switch state.
#[derive(Debug)]
pub struct Switch {
    fdb: Fdb,
    ports: Vec<PortState>,
    counters: Arc<Counters>,
    tx: Vec<Vec<Frame>>,
    lane: LaneState,
}

/// What the switch knows of the kernel flow lane (`crate::lane`).
#[derive(Debug, Default)]
struct LaneState {
    /// Per port: the lane's tc program runs on its netdev.
    attached: Vec<bool>,
    /// Per port: a kernel netdev the lane can send to.
    target: Vec<bool>,
    /// Per port, under the current plan: flows coming in here may be offered.
    offer_in: Vec<bool>,
    /// Per port, under the current plan: flows going out here may be offered.
    offer_out: Vec<bool>,
    /// Flows offered during the last `process` calls, taken by the poll thread.
    offers: Vec<Offer>,
}

/// Verdict of an ACL for a frame, using (and filling) the port's flow cache.
#[inline(always)]
fn acl_allows(acl: &Acl, cache: &mut FlowCache, l3: &L3) -> bool {
    match l3 {
        L3::Ip(key) => cache.classify(acl, key) == AclAction::Allow,
        L3::Resolution => true,
        L3::Other | L3::Malformed => acl.default_action() == AclAction::Allow,
    }
}

impl Switch {
    /// A switch for `plan`, with counters shared with the control side.
    pub fn new(plan: &Plan, counters: Arc<Counters>, now_ns: u64) -> Self {
        let mut s = Self {
            fdb: Fdb::new(
                plan.fdb.max_entries as usize,
                plan.static_macs.len(),
                plan.fdb.aging_secs,
            ),
            ports: (0..plan.ports.len())
                .map(|_| PortState::default())
                .collect(),
            counters,
            tx: (0..plan.ports.len())
                .map(|_| Vec::with_capacity(TX_QUEUE_CAP))
                .collect(),
            lane: LaneState::default(),
        };
        s.apply_plan(plan, now_ns);
        s
    }

    /// Adopts a new plan (same port set): statics, limits, fresh ACL caches and policers,
    /// and forgets learned entries on ports that left their VLAN.
    pub fn apply_plan(&mut self, plan: &Plan, now_ns: u64) {
        self.fdb.set_config(
            &plan.static_macs,
            plan.fdb.max_entries as usize,
            plan.fdb.aging_secs,
        );
        self.fdb.retain_learned(|key, port| {
            plan.ports
                .get(usize::from(port))
                .is_some_and(|p| p.vlan.allowed.contains((key >> 48) as u16))
        });
        self.lane_eligibility(plan);
        for (state, p) in self.ports.iter_mut().zip(&plan.ports) {
            state.acl_in_cache.ensure(p.acl_in.is_some());
            state.acl_out_cache.ensure(p.acl_out.is_some());
            state.acl_in_cache.clear();
            state.acl_out_cache.clear();
            state.rx_bucket = p.rx_limit.as_ref().map(|l| TokenBucket::new(l, now_ns));
            state.tx_bucket = p.tx_limit.as_ref().map(|l| TokenBucket::new(l, now_ns));
        }
    }

    /// Turns on offers to the kernel flow lane: `attached[p]` when the lane's tc program runs
    /// on port p's netdev, `target[p]` when the lane can send to it.
    pub fn enable_lane(&mut self, plan: &Plan, attached: Vec<bool>, target: Vec<bool>) {
        self.lane.attached = attached;
        self.lane.target = target;
        self.lane.offers = Vec::with_capacity(BURST);
        self.fdb.track_changes(true);
        self.lane_eligibility(plan);
    }

    /// Which ports may take part in offered flows under `plan`: nothing on the way that needs
    /// user space for every frame (ACL, mirror, policer).
    fn lane_eligibility(&mut self, plan: &Plan) {
        let lane = &mut self.lane;
        lane.offer_in = plan
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                lane.attached.get(i).copied().unwrap_or(false)
                    && p.acl_in.is_none()
                    && p.mirror_rx.is_empty()
                    && p.rx_limit.is_none()
            })
            .collect();
        lane.offer_out = plan
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                lane.target.get(i).copied().unwrap_or(false)
                    && p.acl_out.is_none()
                    && p.mirror_tx.is_empty()
                    && p.tx_limit.is_none()
            })
            .collect();
        lane.offers.clear();
    }

    /// Flows offered to the kernel lane since the last call.
    pub fn take_offers(&mut self) -> impl Iterator<Item = Offer> + '_ {
        self.lane.offers.drain(..)
    }

    /// FDB keys learned, moved or removed since the last call (only while the lane is on).
    pub fn take_fdb_changes(&mut self, out: &mut Vec<u64>) {
        out.clear();
        if self.fdb.has_changes() {
            out.extend(self.fdb.take_changes());
        }
    }

    /// Refreshes a learned FDB entry the lane saw traffic from; false if `key` is no longer
    /// on `port`.
    pub fn refresh_learned(&mut self, key: u64, port: PortId, now_ns: u64) -> bool {
        self.fdb.refresh(key, port, (now_ns / 1_000_000_000) as u32)
    }

    /// Learned L2 entries.
    pub fn learned_macs(&self) -> usize {
        self.fdb.learned()
    }

    /// Removes aged L2 entries.
    pub fn age(&mut self, now_ns: u64) {
        self.fdb.age((now_ns / 1_000_000_000) as u32);
    }

    /// The output queue of `port`: frames to send, owned by the caller once taken.
    pub fn tx_queue(&mut self, port: PortId) -> &mut Vec<Frame> {
        &mut self.tx[usize::from(port)]
    }

    /// Ports whose output queue is not empty.
    pub fn pending_ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.tx
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .filter_map(|(i, _)| PortId::try_from(i).ok())
    }

    fn drop_frame(&self, pool: &mut FramePool, port: PortId, frame: Frame, reason: DropReason) {
        self.counters.port(usize::from(port)).drop(reason, 1);
        pool.free(frame.addr);
    }

    /// Queues `frame` on `port`, or drops it if the queue is full.
    #[inline]
    fn enqueue(&mut self, pool: &mut FramePool, port: PortId, frame: Frame) {
        let q = &mut self.tx[usize::from(port)];
        if q.len() < TX_QUEUE_CAP {
            q.push(frame);
        } else {
            self.drop_frame(pool, port, frame, DropReason::TxFull);
        }
    }

    /// Queues a copy of `frame` on each mirror destination.
    #[inline]
    fn mirror(&mut self, pool: &mut FramePool, dests: &[PortId], frame: Frame) {
        for &m in dests {
            match pool.copy_frame(frame) {
                Some(copy) => self.enqueue(pool, m, copy),
                None => self
                    .counters
                    .port(usize::from(m))
                    .drop(DropReason::NoBuffer, 1),
            }
        }
    }

    /// Processes one burst received on `in_port`. Frames end up in output queues or freed.
    pub fn process(
        &mut self,
        plan: &Plan,
        pool: &mut FramePool,
        in_port: PortId,
        frames: &[Frame],
        now_ns: u64,
    ) {
        let ip = usize::from(in_port);
        let Some(pp) = plan.ports.get(ip) else {
            frames.iter().for_each(|f| pool.free(f.addr));
            return;
        };
        let now_s = (now_ns / 1_000_000_000) as u32;
        // Frames of a burst often share source and destination: remember the last source
        // learned and the last destination looked up (invalidated by every real learn).
        let mut last_learned: Option<u64> = None;
        let mut last_lookup: Option<(u64, Option<PortId>)> = None;
        let rx_bytes: u64 = frames.iter().map(|f| u64::from(f.len)).sum();
        self.counters.port(ip).rx(frames.len() as u64, rx_bytes);
        for &frame in frames {
            if !pp.mirror_rx.is_empty() {
                self.mirror(pool, &pp.mirror_rx, frame);
            }
            if let Some(b) = &mut self.ports[ip].rx_bucket
                && !b.admit(usize::from(frame.len), now_ns)
            {
                self.drop_frame(pool, in_port, frame, DropReason::RateLimitIn);
                continue;
            }
            let data = pool.bytes(frame);
            let Some(eth) = parse_eth(data) else {
                self.drop_frame(pool, in_port, frame, DropReason::Malformed);
                continue;
            };
            let vlan = match eth.tci.map(|t| t & 0x0fff) {
                Some(vid) if vid != 0 => {
                    if pp.vlan.access || !pp.vlan.allowed.contains(vid) {
                        None
                    } else {
                        Some(vid)
                    }
                }
                _ => pp.vlan.untagged,
            };
            let Some(vlan) = vlan else {
                self.drop_frame(pool, in_port, frame, DropReason::Vlan);
                continue;
            };
            // L3 is parsed once, only when an ACL needs it.
            let mut l3: Option<L3> = None;
            if let Some(acl) = &pp.acl_in {
                let parsed = *l3.get_or_insert_with(|| parse_l3(data, &eth));
                if !acl_allows(acl, &mut self.ports[ip].acl_in_cache, &parsed) {
                    self.drop_frame(pool, in_port, frame, DropReason::AclIn);
                    continue;
                }
            }
            if !is_multicast(eth.src) {
                let key = fdb_key(eth.src, vlan);
                if last_learned != Some(key) {
                    self.fdb.learn(key, in_port, now_s);
                    last_learned = Some(key);
                    last_lookup = None;
                }
            }
            let has_tag = eth.tci.is_some();
            let known = if is_multicast(eth.dst) {
                None
            } else {
                let key = fdb_key(eth.dst, vlan);
                match last_lookup {
                    Some((k, port)) if k == key => port,
                    _ => {
                        let port = self.fdb.lookup(key);
                        last_lookup = Some((key, port));
                        port
                    }
                }
            };
            match known {
                Some(out) if out == in_port => {
                    self.drop_frame(pool, in_port, frame, DropReason::NoDestination)
                }
                Some(out) => {
                    if self.lane.offer_in.get(ip).copied() == Some(true)
                        && self.lane.offer_out.get(usize::from(out)).copied() == Some(true)
                    {
                        self.offer(plan, in_port, out, &eth, vlan);
                    }
                    self.egress(plan, pool, out, frame, vlan, has_tag, &mut l3, now_ns)
                }
                None => {
                    let members = plan.flood_members(vlan);
                    let others = members.iter().filter(|&&m| m != in_port).count();
                    if others == 0 {
                        self.drop_frame(pool, in_port, frame, DropReason::NoDestination);
                        continue;
                    }
                    if others == 1 && self.lane.offer_in.get(ip).copied() == Some(true) {
                        // A flood to exactly one port is a single forward: the kernel lane
                        // can repeat it until the destination is learned or the VLAN's
                        // membership changes.
                        if let Some(&out) = members.iter().find(|&&m| m != in_port)
                            && self.lane.offer_out.get(usize::from(out)).copied() == Some(true)
                        {
                            self.offer(plan, in_port, out, &eth, vlan);
                        }
                    }
                    let mut left = others;
                    for &out in members.iter().filter(|&&m| m != in_port) {
                        left -= 1;
                        let f = if left == 0 {
                            frame
                        } else {
                            match pool.copy_frame(frame) {
                                Some(c) => c,
                                None => {
                                    self.counters
                                        .port(usize::from(out))
                                        .drop(DropReason::NoBuffer, 1);
                                    continue;
                                }
                            }
                        };
                        self.egress(plan, pool, out, f, vlan, has_tag, &mut l3, now_ns);
                    }
                }
            }
        }
    }

    /// Offers a forwarded flow (known unicast, or flooded to a single port) to the kernel
    /// lane if its egress leaves the tag as it is and its source is learned on the in port
    /// (so the kernel's copy of the decision is the pipeline's).
    #[cold]
    fn offer(&mut self, plan: &Plan, in_port: PortId, out: PortId, eth: &EthHeader, vlan: u16) {
        let Some(op) = plan.ports.get(usize::from(out)) else {
            return;
        };
        let tagged_out = op.vlan.untagged != Some(vlan);
        if eth.tci.is_some() != tagged_out || is_multicast(eth.src) {
            return;
        }
        let src_fdb = fdb_key(eth.src, vlan);
        if self.fdb.lookup(src_fdb) != Some(in_port) {
            return;
        }
        let mac = |m: u64| {
            let b = m.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        };
        let offer = Offer {
            key: LaneKey {
                dst: mac(eth.dst),
                src: mac(eth.src),
                tci: eth.tci.unwrap_or(0),
                in_port,
            },
            out,
            src_fdb,
            dst_fdb: fdb_key(eth.dst, vlan),
        };
        if self.lane.offers.last() != Some(&offer) && self.lane.offers.len() < BURST {
            self.lane.offers.push(offer);
        }
    }

    /// Output stage for one frame on one port.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn egress(
        &mut self,
        plan: &Plan,
        pool: &mut FramePool,
        out: PortId,
        frame: Frame,
        vlan: u16,
        has_tag: bool,
        l3: &mut Option<L3>,
        now_ns: u64,
    ) {
        let op_index = usize::from(out);
        let Some(op) = plan.ports.get(op_index) else {
            pool.free(frame.addr);
            return;
        };
        if let Some(acl) = &op.acl_out {
            let parsed = match l3 {
                Some(p) => *p,
                None => {
                    let data = pool.bytes(frame);
                    let p = parse_eth(data).map_or(L3::Malformed, |eth| parse_l3(data, &eth));
                    *l3 = Some(p);
                    p
                }
            };
            if !acl_allows(acl, &mut self.ports[op_index].acl_out_cache, &parsed) {
                self.drop_frame(pool, out, frame, DropReason::AclOut);
                return;
            }
        }
        if let Some(b) = &mut self.ports[op_index].tx_bucket
            && !b.admit(usize::from(frame.len), now_ns)
        {
            self.drop_frame(pool, out, frame, DropReason::RateLimitOut);
            return;
        }
        let want = if op.vlan.untagged == Some(vlan) {
            None
        } else {
            Some(vlan)
        };
        let Some(frame) = vlan::set_tag(pool, frame, has_tag, want) else {
            self.drop_frame(pool, out, frame, DropReason::Malformed);
            return;
        };
        if !op.mirror_tx.is_empty() {
            self.mirror(pool, &op.mirror_tx, frame);
        }
        self.enqueue(pool, out, frame);
    }
}

#[cfg(test)]
mod lane_tests;
#[cfg(test)]
mod tests;
