//! In-process memory ports: a pair of single-producer single-consumer rings of frame slots.
//!
//! The forwarder side (`MemPort`) copies between slots and pool frames like a NIC would DMA;
//! the other side (`MemPortHandle`) is what a test or benchmark uses to inject and collect
//! frames. A slot ring rather than a ring of pool indices keeps the pool private to its poll
//! thread (no cross-thread free list).

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pool::{Frame, FramePool, MAX_FRAME_LEN};
use crate::port::Port;

/// Slots per ring direction.
pub const MEM_RING_SLOTS: usize = 1024;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(AtomicUsize);

struct Slot {
    len: usize,
    data: [u8; MAX_FRAME_LEN],
}

struct Ring {
    slots: Box<[UnsafeCell<Slot>]>,
    /// Next slot the producer writes (published with Release).
    head: Padded,
    /// Next slot the consumer reads (published with Release).
    tail: Padded,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.slots.len())
            .finish()
    }
}

// SAFETY: a slot is written only by the single producer while it is outside [tail, head),
// and read only by the single consumer while it is inside; head/tail are published with
// Release and read with Acquire, so slot contents happen-before the other side reads them.
unsafe impl Sync for Ring {}

impl Ring {
    fn new(slots: usize) -> Arc<Self> {
        let slots = slots.next_power_of_two();
        Arc::new(Self {
            slots: (0..slots)
                .map(|_| {
                    UnsafeCell::new(Slot {
                        len: 0,
                        data: [0; MAX_FRAME_LEN],
                    })
                })
                .collect(),
            head: Padded::default(),
            tail: Padded::default(),
        })
    }
}

/// Writing end of a ring.
#[derive(Debug)]
struct Producer {
    ring: Arc<Ring>,
    head: usize,
    cached_tail: usize,
}

impl Producer {
    fn push(&mut self, data: &[u8]) -> bool {
        let cap = self.ring.slots.len();
        if data.len() > MAX_FRAME_LEN {
            return false;
        }
        if self.head - self.cached_tail == cap {
            self.cached_tail = self.ring.tail.0.load(Ordering::Acquire);
            if self.head - self.cached_tail == cap {
                return false;
            }
        }
        let slot = &self.ring.slots[self.head & (cap - 1)];
        // SAFETY: the slot is outside [tail, head), so only this producer touches it (see the
        // Sync impl of Ring); the consumer cannot read it before head is published below.
        let slot = unsafe { &mut *slot.get() };
        slot.data[..data.len()].copy_from_slice(data);
        slot.len = data.len();
        self.head += 1;
        self.ring.head.0.store(self.head, Ordering::Release);
        true
    }
}

/// Reading end of a ring.
#[derive(Debug)]
struct Consumer {
    ring: Arc<Ring>,
    tail: usize,
    cached_head: usize,
}

impl Consumer {
    fn pop_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.tail == self.cached_head {
            self.cached_head = self.ring.head.0.load(Ordering::Acquire);
            if self.tail == self.cached_head {
                return None;
            }
        }
        let cap = self.ring.slots.len();
        let slot = &self.ring.slots[self.tail & (cap - 1)];
        // SAFETY: the slot is inside [tail, head): the producer published it (Acquire load of
        // head above) and will not touch it until tail moves past it below.
        let slot = unsafe { &*slot.get() };
        let r = f(&slot.data[..slot.len]);
        self.tail += 1;
        self.ring.tail.0.store(self.tail, Ordering::Release);
        Some(r)
    }
}

/// The forwarder side of a memory port.
#[derive(Debug)]
pub struct MemPort {
    name: String,
    rx: Consumer,
    tx: Producer,
}

/// The outside end of a memory port: inject frames into the forwarder and collect what it
/// sends out of this port. Used by one thread at a time.
#[derive(Debug)]
pub struct MemPortHandle {
    to_fastpath: Producer,
    from_fastpath: Consumer,
}

/// Creates a memory port and its outside handle.
pub fn mem_port(name: &str, slots: usize) -> (MemPort, MemPortHandle) {
    let inbound = Ring::new(slots);
    let outbound = Ring::new(slots);
    (
        MemPort {
            name: name.to_string(),
            rx: Consumer {
                ring: inbound.clone(),
                tail: 0,
                cached_head: 0,
            },
            tx: Producer {
                ring: outbound.clone(),
                head: 0,
                cached_tail: 0,
            },
        },
        MemPortHandle {
            to_fastpath: Producer {
                ring: inbound,
                head: 0,
                cached_tail: 0,
            },
            from_fastpath: Consumer {
                ring: outbound,
                tail: 0,
                cached_head: 0,
            },
        },
    )
}

impl MemPortHandle {
    /// Offers a frame to the forwarder; false if the ring is full or the frame too long.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.to_fastpath.push(frame)
    }

    /// Takes one frame the forwarder sent out of this port.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        self.from_fastpath.pop_with(|d| d.to_vec())
    }

    /// Takes one frame without allocating; returns its length (truncated to `buf`).
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.from_fastpath.pop_with(|d| {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            n
        })
    }

    /// Discards every frame waiting; returns how many.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.from_fastpath.pop_with(|_| ()).is_some() {
            n += 1;
        }
        n
    }
}

impl Port for MemPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, pool: &mut FramePool, out: &mut [Frame]) -> usize {
        let mut n = 0;
        while n < out.len() {
            if pool.available() == 0 {
                break;
            }
            match self.rx.pop_with(|d| pool.write_frame(d)) {
                Some(Some(f)) => {
                    out[n] = f;
                    n += 1;
                }
                // A frame the pool could not hold (too long): dropped like a NIC would.
                Some(None) => {}
                None => break,
            }
        }
        n
    }

    fn tx_burst(&mut self, pool: &mut FramePool, frames: &[Frame]) -> usize {
        let mut n = 0;
        for f in frames {
            if !self.tx.push(pool.bytes(*f)) {
                break;
            }
            pool.free(f.addr);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_both_directions() {
        let (mut port, mut handle) = mem_port("m", 4);
        let mut pool = FramePool::new(16).unwrap();
        assert!(handle.send(&[1, 2, 3]));
        let mut burst = [Frame::default(); 8];
        assert_eq!(port.rx_burst(&mut pool, &mut burst), 1);
        assert_eq!(pool.bytes(burst[0]), &[1, 2, 3]);
        assert_eq!(port.tx_burst(&mut pool, &burst[..1]), 1);
        assert_eq!(handle.recv(), Some(vec![1, 2, 3]));
        assert_eq!(handle.recv(), None);
        assert_eq!(pool.available(), 16);
    }

    #[test]
    fn full_ring_refuses() {
        let (_port, mut handle) = mem_port("m", 2);
        assert!(handle.send(&[0; 60]));
        assert!(handle.send(&[0; 60]));
        assert!(!handle.send(&[0; 60]));
    }

    #[test]
    fn threads_see_every_frame_in_order() {
        let (mut port, mut handle) = mem_port("m", 64);
        let sender = std::thread::spawn(move || {
            for i in 0..10_000u32 {
                while !handle.send(&i.to_le_bytes()) {
                    std::hint::spin_loop();
                }
            }
        });
        let mut pool = FramePool::new(64).unwrap();
        let mut burst = [Frame::default(); 32];
        let mut next = 0u32;
        while next < 10_000 {
            let n = port.rx_burst(&mut pool, &mut burst);
            for f in &burst[..n] {
                assert_eq!(pool.bytes(*f), &next.to_le_bytes());
                next += 1;
                pool.free(f.addr);
            }
        }
        sender.join().unwrap();
    }
}
