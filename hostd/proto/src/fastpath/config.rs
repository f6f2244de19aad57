//! The forwarder's configuration: what its config file holds and what
//! [`Request::ReplaceConfig`](super::Request::ReplaceConfig) carries.
//!
//! Only `String`, `Vec`, `Option` and integers: no `std`-only types (no `PathBuf`, `IpAddr`,
//! `HashMap`, `Duration`). Prefixes and MAC addresses travel as text and are parsed by
//! fastpath's validation, which names the field on error. Enums stay externally tagged
//! (serde's default) so postcard, JSON and TOML all accept them.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// The whole forwarder configuration: what the config file holds and what
/// [`Request::ReplaceConfig`](super::Request::ReplaceConfig) carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Config {
    /// Ports in order; a port's position is its index in statistics.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Poll threads: one per fast-path core, each owning the ports it lists.
    #[serde(default)]
    pub cores: Vec<CoreConfig>,
    /// Port mirrors (copy of a port's rx and/or tx to another port).
    #[serde(default)]
    pub mirrors: Vec<MirrorConfig>,
    /// Static L2 entries; they override learning.
    #[serde(default)]
    pub static_macs: Vec<StaticMac>,
    /// L2 table limits and aging.
    #[serde(default)]
    pub fdb: FdbConfig,
}

/// One poll thread pinned to one CPU. Each poll thread is its own switch: a VLAN may not
/// span ports of two cores (validation rejects it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreConfig {
    /// CPU number the thread is pinned to.
    pub cpu: u32,
    /// Names of the ports this thread polls.
    pub ports: Vec<String>,
    /// How the thread waits when no port had traffic.
    #[serde(default)]
    pub idle: IdlePolicy,
    /// Switch the ports' interfaces to threaded NAPI and pin those kernel threads to this
    /// CPU, so the kernel's receive work for these ports (on veth: the XDP run and the copy
    /// into the UMEM) runs on the fast-path core instead of the sender's.
    #[serde(default)]
    pub napi_threads: bool,
    /// Kernel flow lane for this core's AF_PACKET ports: flows the pipeline has decided
    /// (known unicast, no ACL, mirror, rate limit or tag change on the way) are forwarded by
    /// a tc program from then on, without a copy to user space (docs/FASTPATH.md).
    #[serde(default)]
    pub flow_offload: bool,
}

/// What a poll thread does after an empty poll round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdlePolicy {
    /// Spin without pause: lowest latency, burns the core even when idle.
    Spin,
    /// Spin a while, then `sched_yield` so kernel work (softirq, NAPI threads) pinned to
    /// the same core can run. The default: on veth the kernel's receive work shares the core.
    #[default]
    Yield,
    /// Spin a while, then sleep in `poll(2)` on the ports' descriptors (1 ms at most).
    Sleep,
}

/// L2 forwarding table settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbConfig {
    /// Seconds after which a learned entry that saw no traffic is removed.
    #[serde(default = "FdbConfig::default_aging_secs")]
    pub aging_secs: u32,
    /// Most learned entries per poll thread; beyond it new addresses are flooded, not learned.
    #[serde(default = "FdbConfig::default_max_entries")]
    pub max_entries: u32,
}

impl FdbConfig {
    fn default_aging_secs() -> u32 {
        300
    }
    fn default_max_entries() -> u32 {
        65_536
    }
}

impl Default for FdbConfig {
    fn default() -> Self {
        Self {
            aging_secs: Self::default_aging_secs(),
            max_entries: Self::default_max_entries(),
        }
    }
}

/// One switch port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// Unique port name, used by every other reference.
    pub name: String,
    /// Where frames come from and go to.
    pub backend: PortBackend,
    /// VLAN membership and tagging.
    pub vlan: VlanMode,
    /// A port towards a guest: its ACLs deny what no rule allows.
    #[serde(default)]
    pub guest_facing: bool,
    /// Rules for frames received from this port, evaluated in ascending id order.
    #[serde(default)]
    pub acl_in: Vec<AclRule>,
    /// Rules for frames sent out of this port, evaluated in ascending id order.
    #[serde(default)]
    pub acl_out: Vec<AclRule>,
    /// Policer on frames received from this port.
    #[serde(default)]
    pub rx_limit: Option<RateLimit>,
    /// Shaper-less policer on frames sent out of this port.
    #[serde(default)]
    pub tx_limit: Option<RateLimit>,
}

/// The kind of port and the kernel object behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortBackend {
    /// AF_XDP socket on a netdev queue; our own XDP program redirects that queue to it.
    AfXdp {
        /// Interface name.
        ifname: String,
        /// Receive queue to bind.
        #[serde(default)]
        queue: u32,
        /// Where the XDP program is attached.
        #[serde(default)]
        attach: XdpAttach,
        /// Preferred busy polling: the poll thread runs the device's NAPI receive itself
        /// (SO_PREFER_BUSY_POLL), so the kernel receive work runs on the fast-path core
        /// without interrupts or NAPI threads competing with it.
        #[serde(default)]
        busy_poll: bool,
    },
    /// AF_XDP (default attach, no busy polling) where it works, else AF_PACKET: the fallback
    /// for kernels or devices without AF_XDP.
    Auto {
        /// Interface name.
        ifname: String,
    },
    /// AF_PACKET socket with TPACKET_V3 rings and PACKET_QDISC_BYPASS.
    AfPacket {
        /// Interface name.
        ifname: String,
    },
    /// In-process SPSC rings, for tests and benchmarks.
    Memory,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum XdpAttach {
    /// Native (driver) mode, falling back to generic (skb) mode if the driver has none.
    #[default]
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// VLAN mode of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VlanMode {
    /// Untagged frames belong to `vlan`; tagged frames are dropped (except priority tags).
    Access {
        /// VLAN id, 1..=4094.
        vlan: u16,
    },
    /// Tagged frames of the allowed VLANs; untagged frames belong to `native` if set.
    Trunk {
        /// Allowed VLAN ids, 1..=4094.
        allowed: Vec<u16>,
        /// VLAN of untagged frames; sent untagged. Must be in `allowed`.
        #[serde(default)]
        native: Option<u16>,
    },
}

/// One ACL (security group) rule. Fields left out match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// Unique within one port's list; rules run in ascending id order.
    pub id: u32,
    /// What a match does.
    pub action: AclAction,
    /// Source prefix, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address means a host.
    #[serde(default)]
    pub src: Option<String>,
    /// Destination prefix.
    #[serde(default)]
    pub dst: Option<String>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP).
    #[serde(default)]
    pub protocol: Option<u8>,
    /// Source port range; needs protocol TCP, UDP or SCTP.
    #[serde(default)]
    pub src_ports: Option<PortRange>,
    /// Destination port range; needs protocol TCP, UDP or SCTP.
    #[serde(default)]
    pub dst_ports: Option<PortRange>,
}

/// Verdict of an ACL rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    /// Forward the frame.
    Allow,
    /// Drop the frame (counted as an ACL drop).
    Deny,
}

/// Inclusive L4 port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// Lowest port.
    pub lo: u16,
    /// Highest port (>= `lo`).
    pub hi: u16,
}

/// Token-bucket policer. At least one of the two rates must be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Bits per second of Ethernet frame (no FCS, preamble or gap).
    #[serde(default)]
    pub bits_per_sec: Option<u64>,
    /// Frames per second.
    #[serde(default)]
    pub packets_per_sec: Option<u64>,
    /// Bucket depth in milliseconds of rate (how long a burst may run); default 10 ms.
    #[serde(default)]
    pub burst_ms: Option<u32>,
}

/// Which traffic of a port a mirror copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorDirection {
    /// Frames received from the source port, as received.
    Rx,
    /// Frames sent out of the source port, as sent.
    Tx,
    /// Both.
    Both,
}

/// A port mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorConfig {
    /// Unique mirror name.
    pub name: String,
    /// Port whose traffic is copied.
    pub source: String,
    /// Which traffic.
    pub direction: MirrorDirection,
    /// Port that receives the copies.
    pub destination: String,
}

/// A static L2 entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticMac {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// VLAN id.
    pub vlan: u16,
    /// Port name.
    pub port: String,
}

/// Direction of a per-port setting (ACL list, rate limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Frames received from the port.
    In,
    /// Frames sent out of the port.
    Out,
}
