//! Wire types of the control socket and of the configuration file. They live in
//! `hostd-proto` (module `fastpath`), which hostd shares to read the config file and to ask
//! for counters; re-exported here so the forwarder's code names them as before.

pub use hostd_proto::fastpath::{
    AclAction, AclRule, Config, CoreConfig, Direction, DropReason, FdbConfig, IdlePolicy,
    MirrorConfig, MirrorDirection, PortBackend, PortConfig, PortRange, PortStats, RateLimit,
    Request, Response, StaticMac, VlanMode, XdpAttach,
};
