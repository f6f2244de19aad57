//! Requests and replies of the control socket.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{AclRule, Config, Direction, DropReason, MirrorConfig, RateLimit, StaticMac, VlanMode};

/// A control request. Each edit is applied to a copy of the running configuration, which is
/// validated as a whole; on error the running configuration stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Return the running configuration.
    GetConfig,
    /// Replace the whole configuration (the port set and backends must stay the same).
    ReplaceConfig(Config),
    /// Set a port's VLAN mode.
    SetVlan {
        /// Port name.
        port: String,
        /// New mode.
        vlan: VlanMode,
    },
    /// Set whether a port faces a guest (default deny in its ACLs).
    SetGuestFacing {
        /// Port name.
        port: String,
        /// New value.
        guest_facing: bool,
    },
    /// Insert a rule, or replace the rule with the same id.
    SetAclRule {
        /// Port name.
        port: String,
        /// Which list.
        direction: Direction,
        /// The rule.
        rule: AclRule,
    },
    /// Remove a rule by id.
    DeleteAclRule {
        /// Port name.
        port: String,
        /// Which list.
        direction: Direction,
        /// Rule id.
        id: u32,
    },
    /// Set or clear a port's rate limit.
    SetRateLimit {
        /// Port name.
        port: String,
        /// Which direction.
        direction: Direction,
        /// New limit, `None` to remove it.
        limit: Option<RateLimit>,
    },
    /// Add a mirror, or replace the mirror of the same name.
    SetMirror(MirrorConfig),
    /// Remove a mirror by name.
    DeleteMirror {
        /// Mirror name.
        name: String,
    },
    /// Add or replace a static L2 entry (key: MAC + VLAN).
    SetStaticMac(StaticMac),
    /// Remove a static L2 entry.
    DeleteStaticMac {
        /// MAC address.
        mac: String,
        /// VLAN id.
        vlan: u16,
    },
    /// Return per-port counters.
    GetStats,
}

/// A control reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The request was applied; the new configuration generation.
    Applied {
        /// Generation number of the configuration now in force.
        generation: u64,
    },
    /// The running configuration.
    Config(Config),
    /// Counters of every port, in port order.
    Stats(Vec<PortStats>),
    /// The request was refused; nothing changed.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

/// Counters of one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortStats {
    /// Port name.
    pub name: String,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent (including mirror copies and floods).
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops attributed to this port, by reason (only non-zero reasons).
    pub drops: Vec<(DropReason, u64)>,
    /// Of `rx_packets`: frames the kernel flow lane forwarded without user space.
    #[serde(default)]
    pub lane_rx_packets: u64,
    /// Of `tx_packets`: frames the kernel flow lane sent.
    #[serde(default)]
    pub lane_tx_packets: u64,
}

impl PortStats {
    /// Drops of one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}
