//! hostd, the appliance's control plane: it owns every host resource (cores, RAM, huge
//! pages, VFs, stacks), keeps the state in an embedded ACID store, runs each guest in its own
//! VMM process and supervises it, and serves the socket API (docs/API.md) that `hostctl`,
//! the vendor GUI and the front panel use. docs/HOSTD.md describes the whole.
// The wire types (hostd-proto) are fixed-capacity values; `ApiError` in a `Result` is
// a few hundred bytes by design.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod access;
pub mod admission;
pub mod cli;
pub mod client;
pub mod config;
pub mod cpulist;
pub mod daemon;
pub mod fastpath;
pub mod inventory;
pub mod process;
pub mod server;
pub mod sim;
pub mod store;
pub mod supervisor;
pub mod vfs;
