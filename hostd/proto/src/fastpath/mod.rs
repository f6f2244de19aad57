//! fastpath's wire types: the forwarder's configuration (its config file, and what
//! `replace_config` carries), the requests and replies of its control socket, per-port
//! counters, and the control socket's framing (docs/FASTPATH.md, "Control protocol").
//! fastpath serves them; hostd reads the config file with them and asks for counters.
//!
//! **Behind the `alloc` feature** (which `std` turns on), apart from [`DropReason`]. These
//! types use `alloc`'s `String` and `Vec`, not the fixed-capacity `heapless` types of the
//! rest of this crate: a forwarder's configuration (ports, ACL rules with prefixes, mirrors,
//! static MACs) bounded for the worst case would be hundreds of KiB per value, and
//! fixed-capacity values live on the stack. The front panel, which links this crate without
//! an allocator, never handles fastpath configurations: it sees the fast path only through
//! hostd's own [`FastpathStatus`](crate::FastpathStatus), which is fixed-capacity and uses
//! [`DropReason`] (so that one stays outside the feature).

mod drops;

pub use drops::DropReason;

#[cfg(feature = "alloc")]
mod config;
#[cfg(feature = "alloc")]
mod control;
#[cfg(feature = "alloc")]
mod framing;

#[cfg(feature = "alloc")]
pub use config::{
    AclAction, AclRule, Config, CoreConfig, Direction, FdbConfig, IdlePolicy, MirrorConfig,
    MirrorDirection, PortBackend, PortConfig, PortRange, RateLimit, StaticMac, VlanMode, XdpAttach,
};
#[cfg(feature = "alloc")]
pub use control::{PortStats, Request, Response};
#[cfg(feature = "alloc")]
pub use framing::{Codec, FrameError, MAX_FRAME, decode_body, encode_frame, frame_length};
