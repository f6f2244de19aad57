//! The kernel flow lane: a decision cache executed in the kernel for AF_PACKET ports.
//!
//! On veth (and any netdev whose frames arrive as skbs), a user-space forwarder pays a copy
//! into user space and an skb allocation plus a copy on transmit for every frame, while the
//! kernel's own forwarders hand the same skb on. The lane keeps user space as the only place
//! where decisions are made, and lets the kernel repeat the simple ones:
//!
//! - the pipeline (`Switch`) offers a flow once it has forwarded one of its frames to a known
//!   unicast destination on a kernel port, with nothing on the way that needs user space (no
//!   ACL on either port, no mirror, no rate limit, no tag change, source learned on the in
//!   port): key = (in port, destination MAC, source MAC, 802.1Q TCI or 0);
//! - the poll thread puts it into a BPF hash map; the tc program of the in port (see
//!   `program`) forwards later frames of the flow itself and counts them in a per-CPU array
//!   that `Fastpath::stats` adds to the port counters;
//! - every event that could change such a decision removes the entries built on it before
//!   user space acts on the new state: an FDB entry that moved or was removed (aging, VLAN
//!   change), and any plan change (the whole map is cleared before the poll thread reports
//!   the new generation as adopted);
//! - the source of an offloaded flow keeps being learned: once per aging sweep the poll
//!   thread reads each entry's hit count and refreshes the source's FDB entry if it moved.
//!
//! Misses (and only misses) reach the AF_PACKET socket: see `program` for how one tc lookup
//! decides each frame once.

pub mod program;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::config::plan::PortId;
use crate::port::af_xdp::bpf::{
    BPF_LINK_CREATE, BPF_MAP_CREATE, BPF_MAP_DELETE_ELEM, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM,
    LinkCreateAttr, MapCreateAttr, MapUpdateAttr, bpf, name16, owned,
};

/// Most flows the lane holds per poll thread (further offers are ignored until entries go).
pub const LANE_FLOWS: u32 = 4096;

const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_TCX_INGRESS: u32 = 46;

/// Flow-map key, as the tc program builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct LaneKey {
    /// Destination MAC, frame byte order.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// 802.1Q TCI (host order) of a tagged frame, 0 for an untagged one.
    pub tci: u16,
    /// In port.
    pub in_port: u16,
}

/// Flow-map value.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct LaneValue {
    ifindex: u32,
    out_port: u16,
    flags: u16,
    hits: u64,
}

/// A flow the pipeline decided and found fit for the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Its key.
    pub key: LaneKey,
    /// Where its frames go.
    pub out: PortId,
    /// FDB key of the source (refreshed from the hit count).
    pub src_fdb: u64,
    /// FDB key of the destination.
    pub dst_fdb: u64,
}

/// What the poll thread remembers of an entry it put into the kernel.
#[derive(Debug, Clone, Copy)]
struct Shadow {
    src_fdb: u64,
    dst_fdb: u64,
    hits: u64,
}

/// A kernel port as a lane destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Interface index.
    pub ifindex: u32,
    /// A veth whose peer is in another network namespace: frames go straight into the
    /// peer's receive path (`bpf_redirect_peer`), skipping the transmit and backlog steps.
    pub peer: bool,
}

/// Errors setting up the lane.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// A map could not be created.
    #[error("cannot create the flow-lane BPF map {name}; run as root with CAP_BPF")]
    Map {
        /// Map name.
        name: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A program did not load.
    #[error(transparent)]
    Load(#[from] program::LoadError),
    /// The tc program could not be attached.
    #[error(
        "cannot attach the flow-lane tc program to {ifname} (tcx ingress, Linux >= 6.6); another tcx program may be in the way"
    )]
    Attach {
        /// Interface.
        ifname: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The socket filter could not be attached.
    #[error("cannot attach the flow-lane filter to port {port}'s AF_PACKET socket")]
    Filter {
        /// Port.
        port: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One map element command; `value` is the address of the value buffer (read for updates,
/// written for lookups, 0 for deletes).
fn map_op<K>(
    cmd: libc::c_long,
    map: &OwnedFd,
    key: &K,
    value: u64,
    flags: u64,
) -> std::io::Result<()> {
    let mut u = MapUpdateAttr {
        map_fd: map.as_raw_fd() as u32,
        key: std::ptr::from_ref(key) as u64,
        value,
        flags,
        ..Default::default()
    };
    bpf(cmd, &mut u).map(|_| ())
}

fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &'static str,
) -> Result<OwnedFd, LaneError> {
    let mut m = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: name16(name),
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut m)
        .map(owned)
        .map_err(|source| LaneError::Map { name, source })
}

/// Number of possible CPUs (the per-CPU map value count), from sysfs.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut n = 0;
    for part in text.trim().split(',') {
        let mut ends = part
            .split('-')
            .filter_map(|x| x.trim().parse::<usize>().ok());
        match (ends.next(), ends.next()) {
            (Some(a), Some(b)) => n = n.max(b + 1).max(a + 1),
            (Some(a), None) => n = n.max(a + 1),
            _ => {}
        }
    }
    n.max(1)
}

/// The per-port packet and byte counts of frames the kernel forwarded (a per-CPU array,
/// summed when read). Shared with the control side.
#[derive(Debug)]
pub struct LaneCounters {
    map: OwnedFd,
    cpus: usize,
}

/// Kernel-forwarded frames of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneCounts {
    /// Frames received on the port and forwarded by the lane.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames the lane sent out of the port.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
}

impl LaneCounters {
    /// Sums `port`'s counters over every CPU (zero when unreadable).
    pub fn read(&self, port: PortId) -> LaneCounts {
        let key = u32::from(port);
        let mut values = vec![[0u64; 4]; self.cpus];
        if map_op(
            BPF_MAP_LOOKUP_ELEM,
            &self.map,
            &key,
            values.as_mut_ptr() as u64,
            0,
        )
        .is_err()
        {
            return LaneCounts::default();
        }
        values
            .iter()
            .fold(LaneCounts::default(), |acc, v| LaneCounts {
                rx_packets: acc.rx_packets + v[0],
                rx_bytes: acc.rx_bytes + v[1],
                tx_packets: acc.tx_packets + v[2],
                tx_bytes: acc.tx_bytes + v[3],
            })
    }
}

/// The lane of one poll thread.
#[derive(Debug)]
pub struct FlowLane {
    flows: OwnedFd,
    counters: Arc<LaneCounters>,
    filter: OwnedFd,
    /// tcx links (the programs detach when they close).
    links: Vec<OwnedFd>,
    /// Per port id: its netdev when the port is a kernel port.
    targets: Vec<Option<Target>>,
    shadow: HashMap<LaneKey, Shadow>,
    /// Offers refused because the lane was full (logged once per sweep).
    full: u64,
}

impl FlowLane {
    /// Creates the maps and the socket filter for a thread with `ports` ports.
    pub fn new(ports: usize) -> Result<Self, LaneError> {
        let flows = create_map(
            MAP_TYPE_HASH,
            std::mem::size_of::<LaneKey>() as u32,
            std::mem::size_of::<LaneValue>() as u32,
            LANE_FLOWS,
            "fp_lane_flows",
        )?;
        let counters = create_map(
            MAP_TYPE_PERCPU_ARRAY,
            4,
            32,
            ports.max(1) as u32,
            "fp_lane_count",
        )?;
        let filter = program::load_socket_filter()?;
        Ok(Self {
            flows,
            counters: Arc::new(LaneCounters {
                map: counters,
                cpus: possible_cpus(),
            }),
            filter,
            links: Vec::new(),
            targets: vec![None; ports],
            shadow: HashMap::with_capacity(LANE_FLOWS as usize),
            full: 0,
        })
    }

    /// The counters, for the control side.
    pub fn counters(&self) -> Arc<LaneCounters> {
        self.counters.clone()
    }

    /// Attaches the miss-only filter to an AF_PACKET socket of port `port`. Do this before
    /// `attach_port`: the other order would deliver frames twice in between.
    pub fn attach_filter(&self, port: &str, socket: &OwnedFd) -> Result<(), LaneError> {
        let fd: libc::c_int = self.filter.as_raw_fd();
        crate::port::sys::setsockopt(socket, libc::SOL_SOCKET, libc::SO_ATTACH_BPF, &fd).map_err(
            |source| LaneError::Filter {
                port: port.to_string(),
                source,
            },
        )
    }

    /// Loads and attaches the tc program of in-port `port` on `ifname`.
    pub fn attach_port(
        &mut self,
        port: PortId,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), LaneError> {
        let prog = program::load_tc(port, &self.flows, &self.counters.map)?;
        let mut l = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_TCX_INGRESS,
            flags: 0,
        };
        let link = bpf(BPF_LINK_CREATE, &mut l).map_err(|source| LaneError::Attach {
            ifname: ifname.to_string(),
            source,
        })?;
        self.links.push(owned(link));
        log::info!("flow lane: tc program on {ifname} for port {port}");
        Ok(())
    }

    /// Makes `port` a possible destination.
    pub fn set_target(&mut self, port: PortId, target: Target) {
        if let Some(t) = self.targets.get_mut(usize::from(port)) {
            *t = Some(target);
        }
    }

    /// Whether `port` is a kernel port the lane can send to.
    pub fn is_target(&self, port: PortId) -> bool {
        self.targets
            .get(usize::from(port))
            .is_some_and(Option::is_some)
    }

    /// Flows in the kernel map.
    pub fn len(&self) -> usize {
        self.shadow.len()
    }

    /// Whether the kernel map is empty.
    pub fn is_empty(&self) -> bool {
        self.shadow.is_empty()
    }

    /// Puts an offered flow into the kernel (once; ignored when full).
    pub fn offer(&mut self, offer: &Offer) {
        if self.shadow.contains_key(&offer.key) {
            return;
        }
        let Some(Some(target)) = self.targets.get(usize::from(offer.out)).copied() else {
            return;
        };
        if self.shadow.len() >= LANE_FLOWS as usize {
            self.full += 1;
            return;
        }
        let value = LaneValue {
            ifindex: target.ifindex,
            out_port: offer.out,
            flags: if target.peer { program::FLAG_PEER } else { 0 },
            hits: 0,
        };
        match map_op(
            BPF_MAP_UPDATE_ELEM,
            &self.flows,
            &offer.key,
            std::ptr::from_ref(&value) as u64,
            0,
        ) {
            Ok(()) => {
                self.shadow.insert(
                    offer.key,
                    Shadow {
                        src_fdb: offer.src_fdb,
                        dst_fdb: offer.dst_fdb,
                        hits: 0,
                    },
                );
            }
            Err(e) => log::warn!("flow lane: cannot add a flow: {e}"),
        }
    }

    fn delete(&self, key: &LaneKey) {
        // ENOENT cannot happen (we only delete what we added); anything else is logged.
        if let Err(e) = map_op(BPF_MAP_DELETE_ELEM, &self.flows, key, 0, 0) {
            log::warn!("flow lane: cannot delete a flow: {e}");
        }
    }

    /// Removes every flow whose source or destination FDB key is in `changed`.
    pub fn forget(&mut self, changed: &[u64]) {
        if changed.is_empty() || self.shadow.is_empty() {
            return;
        }
        // A burst changes a few keys; an aging sweep may remove thousands at once.
        let many: Option<std::collections::HashSet<u64>> =
            (changed.len() > 16).then(|| changed.iter().copied().collect());
        let hit = |k: u64| match &many {
            Some(set) => set.contains(&k),
            None => changed.contains(&k),
        };
        let gone: Vec<LaneKey> = self
            .shadow
            .iter()
            .filter(|(_, s)| hit(s.src_fdb) || hit(s.dst_fdb))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.delete(&key);
            self.shadow.remove(&key);
        }
    }

    /// Removes every flow (before a plan change takes effect).
    pub fn clear(&mut self) {
        let keys: Vec<LaneKey> = self.shadow.keys().copied().collect();
        for key in &keys {
            self.delete(key);
        }
        self.shadow.clear();
    }

    /// For every flow with hits since the last call, calls `refresh(src_fdb, in_port)`; a
    /// flow whose source is no longer learned on its in port (`refresh` returns false) is
    /// removed.
    pub fn sweep(&mut self, mut refresh: impl FnMut(u64, PortId) -> bool) {
        let mut gone = Vec::new();
        for (key, shadow) in &mut self.shadow {
            let mut value = LaneValue::default();
            if map_op(
                BPF_MAP_LOOKUP_ELEM,
                &self.flows,
                key,
                std::ptr::from_mut(&mut value) as u64,
                0,
            )
            .is_err()
            {
                continue;
            }
            if value.hits != shadow.hits {
                shadow.hits = value.hits;
                if !refresh(shadow.src_fdb, key.in_port) {
                    gone.push(*key);
                }
            }
        }
        for key in gone {
            self.delete(&key);
            self.shadow.remove(&key);
        }
        if self.full > 0 {
            log::warn!(
                "flow lane: {} offers refused, the lane holds {LANE_FLOWS} flows",
                self.full
            );
            self.full = 0;
        }
    }
}

/// Whether `ifname` is a veth whose peer lives in another network namespace (then
/// `bpf_redirect_peer` may hand frames straight to the peer).
pub fn veth_peer_elsewhere(ifname: &str) -> bool {
    let read =
        |path: String| -> Option<u32> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    if !is_veth(ifname) {
        return false;
    }
    let Some(me) = read(format!("/sys/class/net/{ifname}/ifindex")) else {
        return false;
    };
    let Some(peer) = read(format!("/sys/class/net/{ifname}/iflink")) else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return false;
    };
    // The peer is here if a device of this namespace has its index and points back at us.
    !dir.flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        read(format!("/sys/class/net/{n}/ifindex")) == Some(peer)
            && read(format!("/sys/class/net/{n}/iflink")) == Some(me)
    })
}

/// Whether the driver of `ifname` is veth (ETHTOOL_GDRVINFO).
fn is_veth(ifname: &str) -> bool {
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let Ok(sock) = crate::port::sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) else {
        return false;
    };
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    let b = ifname.as_bytes();
    req.name[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
    // SAFETY: SIOCETHTOOL with an ifreq whose data points to a live ethtool_drvinfo-sized
    // buffer; the kernel writes at most sizeof(struct ethtool_drvinfo) = 196 bytes into it.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    r == 0 && info.driver.starts_with(b"veth\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_value_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LaneKey>(), 16);
        assert_eq!(std::mem::size_of::<LaneValue>(), 16);
        let k = LaneKey {
            dst: [1, 2, 3, 4, 5, 6],
            src: [7, 8, 9, 10, 11, 12],
            tci: 0x0102,
            in_port: 3,
        };
        // SAFETY: LaneKey is repr(C) plain bytes without padding (16 = 6 + 6 + 2 + 2).
        let bytes: [u8; 16] = unsafe { std::mem::transmute(k) };
        assert_eq!(&bytes[..12], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&bytes[12..], &[2, 1, 3, 0]);
    }

    #[test]
    fn possible_cpus_is_at_least_one() {
        assert!(possible_cpus() >= 1);
    }
}
