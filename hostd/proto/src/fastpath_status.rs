//! The fast path as hostd reports it: where hostd's supervision of the fastpath process is,
//! and the forwarder's port counters (read from its control socket). Fixed-capacity like
//! every hostd reply, so the front panel can show it without an allocator.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::fastpath::DropReason;
use crate::{MAX_FASTPATH_CORES, MAX_FASTPATH_PORTS, Name, PathText, Text};

/// Where hostd's supervision of the fastpath process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FastpathState {
    /// Not enabled in hostd's config (`[fastpath] enabled`), or stopped with hostd.
    Disabled,
    /// Spawned; its control socket does not answer yet.
    Starting,
    /// Running and answering on its control socket.
    Running,
    /// It exited; hostd starts it again after a delay (`restart_in_ms`).
    Restarting,
    /// Not running and not restarted: its config was refused, its cores are held by guests,
    /// the binary cannot run, or it exited too often. The reason says which and what to do.
    Failed,
}

impl FastpathState {
    /// The lower-case name (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
        }
    }
}

/// Counters of one forwarder port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastpathPort {
    /// Port name in the fastpath config.
    pub name: Name,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent (mirror copies and floods included).
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops attributed to the port, by reason (non-zero reasons only).
    pub drops: Vec<(DropReason, u64), { DropReason::ALL.len() }>,
    /// Of `rx_packets`: frames the kernel flow lane forwarded.
    pub lane_rx_packets: u64,
    /// Of `tx_packets`: frames the kernel flow lane sent.
    pub lane_tx_packets: u64,
}

impl FastpathPort {
    /// Drops of every reason together.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }
}

/// Reply to `fastpath_status` and `restart_fastpath`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastpathStatus {
    /// Where the supervision is.
    pub state: FastpathState,
    /// Why: the last start, exit or refusal, and what to do about a failure.
    pub reason: Text,
    /// When it entered this state, ms since the Unix epoch.
    pub since_ms: u64,
    /// Process id while a fastpath process exists (starting, running).
    pub pid: Option<u32>,
    /// Cores it holds (its config's `cores[].cpu`), which admission never gives a guest;
    /// empty while disabled or failed.
    pub cores: Vec<u16, MAX_FASTPATH_CORES>,
    /// Its config file (empty while disabled).
    pub config: PathText,
    /// Its control socket (empty while disabled).
    pub control_socket: PathText,
    /// Exits the restart policy counts (within `[ha] window_s`).
    pub exits: u32,
    /// While restarting: milliseconds until the next start.
    pub restart_in_ms: Option<u64>,
    /// While running: every port with its counters, in config order.
    pub ports: Vec<FastpathPort, MAX_FASTPATH_PORTS>,
    /// While running, when the counters could not be read: why.
    pub stats_error: Option<Text>,
}
