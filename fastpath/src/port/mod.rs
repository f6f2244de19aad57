//! Ports: where frames come from and go to.
//!
//! Every port moves `Frame`s of the owning poll thread's `FramePool`. AF_XDP ports hand the
//! pool's own buffers to the kernel (no copy in user space); AF_PACKET and memory ports copy
//! between their rings and pool frames.

pub mod af_packet;
pub mod af_xdp;
pub mod memory;
pub mod napi;
pub(crate) mod sys;

use std::os::fd::RawFd;

use crate::pool::{Frame, FramePool};

/// A port as a poll thread sees it.
pub trait Port: Send + std::fmt::Debug {
    /// Port name (from the configuration).
    fn name(&self) -> &str;

    /// Receives up to `out.len()` frames into `out`; returns how many. The frames are then
    /// owned by the caller.
    fn rx_burst(&mut self, pool: &mut FramePool, out: &mut [Frame]) -> usize;

    /// Sends a prefix of `frames` and returns its length. The port owns the frames of that
    /// prefix from then on; the caller keeps (and must free) the rest.
    fn tx_burst(&mut self, pool: &mut FramePool, frames: &[Frame]) -> usize;

    /// Housekeeping once per poll round: reclaim sent buffers, refill receive buffers, kick
    /// the kernel when it asked for it.
    fn maintain(&mut self, _pool: &mut FramePool) {}

    /// A descriptor that becomes readable when frames arrive (for idle sleeping).
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Errors opening a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The interface does not exist in this network namespace.
    #[error("port {port:?}: interface {ifname:?} not found; create it or fix `ifname`")]
    NoInterface {
        /// Port name.
        port: String,
        /// Interface.
        ifname: String,
    },
    /// A system call failed.
    #[error("port {port:?}: {what} failed; {hint}")]
    Sys {
        /// Port name.
        port: String,
        /// The call.
        what: &'static str,
        /// What the operator can do.
        hint: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The XDP program could not be loaded or attached.
    #[error("port {port:?}: XDP program on {ifname:?}")]
    Xdp {
        /// Port name.
        port: String,
        /// Interface.
        ifname: String,
        /// What failed.
        #[source]
        source: af_xdp::bpf::BpfError,
    },
    /// The kernel flow lane's socket filter could not be attached.
    #[error("port {port:?}: kernel flow lane")]
    Lane {
        /// Port name.
        port: String,
        /// What failed.
        #[source]
        source: Box<crate::lane::LaneError>,
    },
    /// Memory ports exist only inside a process that embeds the library.
    #[error(
        "port {port:?}: memory ports have no handle here; they are for tests and benchmarks that embed the library"
    )]
    MemoryUnsupported {
        /// Port name.
        port: String,
    },
}

/// Interface index of `ifname`, or the `NoInterface` error.
pub(crate) fn ifindex(port: &str, ifname: &str) -> Result<u32, PortError> {
    let no = || PortError::NoInterface {
        port: port.to_string(),
        ifname: ifname.to_string(),
    };
    let c = std::ffi::CString::new(ifname).map_err(|_| no())?;
    // SAFETY: c is a valid NUL-terminated string that lives across the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(no()) } else { Ok(idx) }
}
