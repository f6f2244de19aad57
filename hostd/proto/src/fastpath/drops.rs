//! Why the forwarder dropped a frame: no allocation, so hostd's own (fixed-capacity) status
//! replies can carry per-reason counts without the `alloc` feature.

use serde::{Deserialize, Serialize};

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Too short or truncated headers.
    Malformed,
    /// VLAN not allowed on the port, or tagged frame on an access port.
    Vlan,
    /// Denied by the receive port's ACL.
    AclIn,
    /// Denied by the sending port's ACL.
    AclOut,
    /// Over the receive rate limit.
    RateLimitIn,
    /// Over the transmit rate limit.
    RateLimitOut,
    /// Destination is the receive port itself, or no other port is in the VLAN.
    NoDestination,
    /// The port's transmit ring was full.
    TxFull,
    /// No free frame buffer for a flood or mirror copy.
    NoBuffer,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::Vlan,
        DropReason::AclIn,
        DropReason::AclOut,
        DropReason::RateLimitIn,
        DropReason::RateLimitOut,
        DropReason::NoDestination,
        DropReason::TxFull,
        DropReason::NoBuffer,
    ];

    /// The snake_case name (as in JSON and in fastpath's logs).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Vlan => "vlan",
            DropReason::AclIn => "acl_in",
            DropReason::AclOut => "acl_out",
            DropReason::RateLimitIn => "rate_limit_in",
            DropReason::RateLimitOut => "rate_limit_out",
            DropReason::NoDestination => "no_destination",
            DropReason::TxFull => "tx_full",
            DropReason::NoBuffer => "no_buffer",
        }
    }
}
