//! Per-port counters, written by the one poll thread that owns the port and read by the
//! control thread. Single writer, so increments are plain relaxed load + store (no locked
//! read-modify-write on the data path).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::control::messages::{DropReason, PortStats};

/// Counters of one port, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

impl PortCounters {
    /// Counts received frames.
    #[inline]
    pub fn rx(&self, packets: u64, bytes: u64) {
        bump(&self.rx_packets, packets);
        bump(&self.rx_bytes, bytes);
    }

    /// Counts sent frames.
    #[inline]
    pub fn tx(&self, packets: u64, bytes: u64) {
        bump(&self.tx_packets, packets);
        bump(&self.tx_bytes, bytes);
    }

    /// Counts `n` drops of `reason`.
    #[inline]
    pub fn drop(&self, reason: DropReason, n: u64) {
        bump(&self.drops[reason as usize], n);
    }

    /// A copy of the counters.
    pub fn read(&self, name: &str) -> PortStats {
        PortStats {
            name: name.to_string(),
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (*r, self.drops[*r as usize].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            lane_rx_packets: 0,
            lane_tx_packets: 0,
        }
    }
}

/// Counters of all ports, indexed by `PortId`.
#[derive(Debug)]
pub struct Counters {
    ports: Box<[PortCounters]>,
}

impl Counters {
    /// Zeroed counters for `ports` ports.
    pub fn new(ports: usize) -> Self {
        Self {
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
        }
    }

    /// One port's counters.
    #[inline]
    pub fn port(&self, id: usize) -> &PortCounters {
        &self.ports[id]
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are no ports.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}
