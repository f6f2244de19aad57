//! `fastpath`: a poll-mode L2 forwarder on dedicated cores.
//!
//! - [`port`]: where frames come from and go to (AF_XDP, AF_PACKET TPACKET_V3, memory rings).
//! - [`pool`]: the frame buffers, allocated once per poll thread.
//! - [`pipeline`]: parse, VLAN, L2 learning/flooding, ACL, mirror, rate limit, counters.
//! - [`config`]: validation of a configuration into an immutable `Plan`.
//! - [`lane`]: the kernel flow lane (decided flows forwarded by a tc program).
//! - [`runtime`]: pinned poll threads and the RCU-style plan swap.
//! - [`control`]: the control socket and its wire types.
//!
//! See docs/FASTPATH.md for the design and the configuration format.

pub mod config;
pub mod control;
pub mod lane;
pub mod pipeline;
pub mod pool;
pub mod port;
pub mod runtime;
