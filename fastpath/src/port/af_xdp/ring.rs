//! The four AF_XDP rings (fill, completion, rx, tx): single-producer single-consumer rings
//! shared with the kernel through mmap, with producer/consumer indices and a flags word.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::port::sys::Mmap;

/// A mapped ring of `T` (u64 addresses or `xdp_desc`).
#[derive(Debug)]
pub(crate) struct Ring<T> {
    map: Mmap,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    mask: u32,
    size: u32,
    /// Our copy of the index we own (producer for fill/tx, consumer for rx/completion).
    local: u32,
    /// Last seen value of the other side's index.
    cached: u32,
    _t: PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    /// Maps a ring of `size` entries from `fd` at page offset `pgoff` with kernel offsets `off`.
    pub(crate) fn map(
        fd: &OwnedFd,
        size: u32,
        pgoff: i64,
        off: &libc::xdp_ring_offset,
    ) -> std::io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mmap::new(fd, len, pgoff)?;
        Ok(Self {
            map,
            producer: off.producer as usize,
            consumer: off.consumer as usize,
            flags: off.flags as usize,
            desc: off.desc as usize,
            mask: size - 1,
            size,
            local: 0,
            cached: 0,
            _t: PhantomData,
        })
    }

    fn index(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is one of the kernel-given offsets of a u32 index inside the mapping,
        // which lives as long as self; both sides access it atomically.
        unsafe { AtomicU32::from_ptr(self.map.ptr().add(at).cast::<u32>()) }
    }

    /// Whether the kernel asked to be woken up (XDP_RING_NEED_WAKEUP).
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.index(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, i: u32) -> *mut T {
        // SAFETY: (i & mask) < size, so the entry lies inside the descriptor array mapped in
        // `map` (len = desc + size * size_of::<T>()).
        unsafe {
            self.map
                .ptr()
                .add(self.desc)
                .cast::<T>()
                .add((i & self.mask) as usize)
        }
    }

    // ---- producer side (fill, tx) ----

    /// Free entries we may produce, up to `want`.
    pub(crate) fn free_entries(&mut self, want: u32) -> u32 {
        let free = self.size - self.local.wrapping_sub(self.cached);
        if free >= want {
            return want;
        }
        self.cached = self.index(self.consumer).load(Ordering::Acquire);
        (self.size - self.local.wrapping_sub(self.cached)).min(want)
    }

    /// Writes entry `i` (0-based from the current producer position) before `submit`.
    pub(crate) fn write(&mut self, i: u32, value: T) {
        let p = self.slot(self.local.wrapping_add(i));
        // SAFETY: the caller got at least i+1 free entries from `free_entries`, so the kernel
        // does not read this slot until the producer index moves past it.
        unsafe { p.write(value) };
    }

    /// Publishes `n` written entries to the kernel.
    pub(crate) fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.index(self.producer)
            .store(self.local, Ordering::Release);
    }

    // ---- consumer side (rx, completion) ----

    /// Entries ready to consume, up to `max`.
    pub(crate) fn ready(&mut self, max: u32) -> u32 {
        let mut avail = self.cached.wrapping_sub(self.local);
        if avail == 0 {
            self.cached = self.index(self.producer).load(Ordering::Acquire);
            avail = self.cached.wrapping_sub(self.local);
        }
        avail.min(max)
    }

    /// Reads entry `i` (0-based from the current consumer position) before `release`.
    pub(crate) fn read(&self, i: u32) -> T {
        // SAFETY: i < the count returned by `ready`, so the kernel published this slot (the
        // Acquire load of its producer index) and will not reuse it before `release`.
        unsafe { self.slot(self.local.wrapping_add(i)).read() }
    }

    /// Gives `n` consumed entries back to the kernel.
    pub(crate) fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.index(self.consumer)
            .store(self.local, Ordering::Release);
    }

    /// Entries produced by us and not yet consumed by the kernel (producer side).
    pub(crate) fn in_flight(&mut self) -> u32 {
        self.cached = self.index(self.consumer).load(Ordering::Acquire);
        self.local.wrapping_sub(self.cached)
    }
}
