//! Control: wire types, framing, and the control socket server and client.

pub mod client;
pub mod framing;
pub mod messages;
pub mod server;
