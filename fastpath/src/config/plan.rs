//! The compiled, immutable form of a validated `Config` that poll threads read.
//!
//! A `Plan` is built once per configuration change by `compile` and published through an
//! RCU-style swap (`crate::runtime::ConfigCell`); poll threads never see a half-applied edit.

use std::sync::Arc;

use crate::control::messages::{Config, FdbConfig, IdlePolicy, RateLimit};
use crate::pipeline::acl::Acl;

/// Index of a port in `Plan::ports` (the position in `Config::ports`).
pub type PortId = u16;

/// Number of 802.1Q VLAN ids (0..=4095).
pub const VLAN_COUNT: usize = 4096;

/// A set of VLAN ids as a 4096-bit bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanSet([u64; VLAN_COUNT / 64]);

impl Default for VlanSet {
    fn default() -> Self {
        Self([0; VLAN_COUNT / 64])
    }
}

impl VlanSet {
    /// Adds `vlan` (must be < 4096).
    pub fn insert(&mut self, vlan: u16) {
        let v = usize::from(vlan) & (VLAN_COUNT - 1);
        self.0[v / 64] |= 1 << (v % 64);
    }

    /// Whether `vlan` is in the set.
    #[inline]
    pub fn contains(&self, vlan: u16) -> bool {
        let v = usize::from(vlan) & (VLAN_COUNT - 1);
        self.0[v / 64] & (1 << (v % 64)) != 0
    }
}

/// VLAN behaviour of one port, ready for the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPlan {
    /// Access port: tagged frames (other than priority tags) are dropped.
    pub access: bool,
    /// VLANs the port carries.
    pub allowed: VlanSet,
    /// VLAN of untagged frames (the access VLAN, or the trunk's native VLAN), sent untagged.
    pub untagged: Option<u16>,
}

/// Per-port part of the plan.
#[derive(Debug, Clone)]
pub struct PortPlan {
    /// Port name (for logs and stats).
    pub name: String,
    /// Index into `Plan::cores` of the thread that polls this port.
    pub core: usize,
    /// VLAN handling.
    pub vlan: VlanPlan,
    /// ACL for received frames; `None` allows everything.
    pub acl_in: Option<Arc<Acl>>,
    /// ACL for sent frames; `None` allows everything.
    pub acl_out: Option<Arc<Acl>>,
    /// Receive policer.
    pub rx_limit: Option<RateLimit>,
    /// Transmit policer.
    pub tx_limit: Option<RateLimit>,
    /// Ports that get a copy of what this port receives.
    pub mirror_rx: Vec<PortId>,
    /// Ports that get a copy of what this port sends.
    pub mirror_tx: Vec<PortId>,
}

/// One poll thread of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    /// CPU to pin to.
    pub cpu: u32,
    /// Ports it polls.
    pub ports: Vec<PortId>,
    /// Idle behaviour.
    pub idle: IdlePolicy,
    /// Threaded NAPI pinned to `cpu` for the ports' interfaces.
    pub napi_threads: bool,
    /// Kernel flow lane for the AF_PACKET ports.
    pub flow_offload: bool,
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The source configuration, returned by `GetConfig`.
    pub config: Config,
    /// Ports, indexed by `PortId`.
    pub ports: Vec<PortPlan>,
    /// Poll threads.
    pub cores: Vec<CorePlan>,
    /// Flood list per VLAN id: member ports (all on one core by validation).
    pub flood: Vec<Box<[PortId]>>,
    /// Static L2 entries: (fdb key, port).
    pub static_macs: Vec<(u64, PortId)>,
    /// L2 table settings.
    pub fdb: FdbConfig,
}

impl Plan {
    /// Port id of a port name.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| PortId::try_from(i).ok())
    }

    /// Flood members of `vlan`.
    #[inline]
    pub fn flood_members(&self, vlan: u16) -> &[PortId] {
        self.flood.get(usize::from(vlan)).map_or(&[], |b| b)
    }
}

/// FDB key: 48-bit MAC in the low bits, VLAN id above.
#[inline]
pub fn fdb_key(mac: u64, vlan: u16) -> u64 {
    (mac & 0xffff_ffff_ffff) | (u64::from(vlan) << 48)
}
