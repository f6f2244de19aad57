//! The frame pool: one memory region cut into 2 KiB frames, allocated once per poll thread.
//!
//! The region is hugepage-backed when the kernel has free hugepages (MAP_HUGETLB), otherwise
//! ordinary pages with transparent hugepages requested. AF_XDP ports register the whole region
//! as their UMEM, so a frame received on one AF_XDP port can be put on another port's TX ring
//! without a copy: frame addresses are offsets into this one region everywhere.
//!
//! Ownership rule: a frame address is owned by exactly one party at a time (the free list, a
//! kernel ring, or the pipeline). Only the owner reads or writes the frame's bytes.

use std::ptr::NonNull;
use std::sync::Arc;

/// Size of one frame buffer (also the AF_XDP chunk size).
pub const FRAME_SIZE: usize = 2048;
/// Where received data starts in frames filled by copy (memory and AF_PACKET ports): room
/// to push VLAN tags without moving the payload.
pub const HEADROOM: u32 = 256;
/// Largest frame a port may hand to the pipeline.
pub const MAX_FRAME_LEN: usize = FRAME_SIZE - HEADROOM as usize;

/// Errors creating the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// mmap failed for both hugepages and ordinary pages.
    #[error(
        "cannot map {bytes} bytes for {frames} frame buffers; lower the frame count or free memory"
    )]
    Map {
        /// Requested frames.
        frames: u32,
        /// Requested bytes.
        bytes: usize,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// More frames than 32-bit frame addresses can reach.
    #[error("{frames} frames do not fit in a 4 GiB pool; use fewer frames")]
    TooLarge {
        /// Requested frames.
        frames: u32,
    },
}

/// The mapped region. Shared (`Arc`) with AF_XDP ports that registered it as UMEM, so it
/// outlives their sockets.
#[derive(Debug)]
pub struct PoolMemory {
    base: NonNull<u8>,
    len: usize,
    hugepages: bool,
}

// SAFETY: PoolMemory is a plain memory mapping; access to frame bytes is governed by the
// ownership rule in the module docs (one owner per frame), not by this handle.
unsafe impl Send for PoolMemory {}
// SAFETY: as above; the handle itself holds no interior state besides the mapping bounds.
unsafe impl Sync for PoolMemory {}

impl PoolMemory {
    fn map(frames: u32) -> Result<Self, PoolError> {
        let bytes = frames as usize * FRAME_SIZE;
        if bytes > u32::MAX as usize {
            return Err(PoolError::TooLarge { frames });
        }
        const HUGE: usize = 2 << 20;
        let huge_len = bytes.div_ceil(HUGE) * HUGE;
        // SAFETY: anonymous private mapping with no address hint; the kernel picks the range
        // and the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                huge_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED
            && let Some(base) = NonNull::new(p.cast::<u8>())
        {
            log::info!("frame pool: {frames} frames on hugepages ({huge_len} bytes)");
            return Ok(Self {
                base,
                len: huge_len,
                hugepages: true,
            });
        }
        // SAFETY: as above, ordinary pages.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PoolError::Map {
                frames,
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: p is the mapping just created with length `bytes`; madvise only changes a
        // paging hint and its failure is harmless.
        unsafe { libc::madvise(p, bytes, libc::MADV_HUGEPAGE) };
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| PoolError::Map {
            frames,
            bytes,
            source: std::io::Error::other("null mapping"),
        })?;
        log::info!("frame pool: {frames} frames on ordinary pages (no free hugepages)");
        Ok(Self {
            base,
            len: bytes,
            hugepages: false,
        })
    }

    /// Start of the region.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never, once mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the region sits on hugepages.
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }
}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        // SAFETY: base/len describe the mapping created in `map`; every user holds an Arc, so
        // this runs after the last one (including AF_XDP sockets) is gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A frame handed between ports and the pipeline: where its data starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// Byte offset of the first data byte inside the pool.
    pub addr: u32,
    /// Data length.
    pub len: u16,
}

impl Frame {
    /// Offset of the 2 KiB chunk holding the frame.
    #[inline]
    pub fn chunk(&self) -> u32 {
        self.addr & !(FRAME_SIZE as u32 - 1)
    }
}

/// A pool of frame buffers with its free list. Owned by one poll thread: not `Sync`.
#[derive(Debug)]
pub struct FramePool {
    mem: Arc<PoolMemory>,
    free: Vec<u32>,
    frames: u32,
}

impl FramePool {
    /// Maps `frames` frame buffers and puts them all on the free list.
    pub fn new(frames: u32) -> Result<Self, PoolError> {
        let mem = Arc::new(PoolMemory::map(frames)?);
        let free = (0..frames).rev().map(|i| i * FRAME_SIZE as u32).collect();
        Ok(Self { mem, free, frames })
    }

    /// The mapped region (for UMEM registration).
    pub fn memory(&self) -> &Arc<PoolMemory> {
        &self.mem
    }

    /// Total frames.
    pub fn capacity(&self) -> u32 {
        self.frames
    }

    /// Frames on the free list.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes a free chunk; returns its offset.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns the chunk holding `addr` to the free list.
    #[inline]
    pub fn free(&mut self, addr: u32) {
        debug_assert!(
            self.free.len() < self.frames as usize,
            "frame pool double free"
        );
        self.free.push(addr & !(FRAME_SIZE as u32 - 1));
    }

    #[inline]
    fn check(&self, addr: u32, len: usize) -> bool {
        let start = addr as usize;
        let chunk_end = (addr as usize & !(FRAME_SIZE - 1)) + FRAME_SIZE;
        start + len <= chunk_end && chunk_end <= self.frames as usize * FRAME_SIZE
    }

    /// The bytes of an owned frame. Out-of-chunk frames yield an empty slice.
    #[inline]
    pub fn bytes(&self, f: Frame) -> &[u8] {
        if !self.check(f.addr, usize::from(f.len)) {
            return &[];
        }
        // SAFETY: the range lies inside one chunk of the mapping (checked above), and by the
        // ownership rule the caller owns this frame, so nobody writes it meanwhile.
        unsafe {
            std::slice::from_raw_parts(self.mem.base().add(f.addr as usize), usize::from(f.len))
        }
    }

    /// The whole 2 KiB chunk holding `addr`, mutable (for tag push/pop and copies).
    #[inline]
    pub fn chunk_mut(&mut self, addr: u32) -> &mut [u8] {
        let chunk = (addr as usize) & !(FRAME_SIZE - 1);
        if chunk + FRAME_SIZE > self.frames as usize * FRAME_SIZE {
            return &mut [];
        }
        // SAFETY: the chunk lies inside the mapping (checked above); `&mut self` makes this
        // the only slice handed out by the pool, and the ownership rule means the caller owns
        // the chunk, so neither the kernel nor another thread touches it meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.mem.base().add(chunk), FRAME_SIZE) }
    }

    /// Copies `data` into a new frame at `HEADROOM`. `None` if the pool is empty or `data`
    /// is longer than `MAX_FRAME_LEN`.
    #[inline]
    pub fn write_frame(&mut self, data: &[u8]) -> Option<Frame> {
        if data.len() > MAX_FRAME_LEN {
            return None;
        }
        let chunk = self.alloc()?;
        let start = HEADROOM as usize;
        self.chunk_mut(chunk)[start..start + data.len()].copy_from_slice(data);
        Some(Frame {
            addr: chunk + HEADROOM,
            len: data.len() as u16,
        })
    }

    /// Copies an owned frame into a new frame. `None` if the pool is empty.
    #[inline]
    pub fn copy_frame(&mut self, f: Frame) -> Option<Frame> {
        let dst = self.alloc()?;
        let len = usize::from(f.len).min(MAX_FRAME_LEN);
        let src_off = (f.addr as usize) - (f.chunk() as usize);
        if !self.check(f.addr, len) {
            self.free(dst);
            return None;
        }
        // SAFETY: both ranges were bounds-checked (src by `check`, dst is a fresh chunk of
        // FRAME_SIZE >= HEADROOM + len); they are distinct chunks, so they do not overlap; the
        // caller owns `f` and we own `dst`.
        unsafe {
            let base = self.mem.base();
            std::ptr::copy_nonoverlapping(
                base.add(f.chunk() as usize + src_off),
                base.add(dst as usize + HEADROOM as usize),
                len,
            );
        }
        Some(Frame {
            addr: dst + HEADROOM,
            len: len as u16,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_write_copy_free_round_trip() {
        let mut pool = FramePool::new(8).unwrap();
        assert_eq!(pool.available(), 8);
        let f = pool.write_frame(&[1, 2, 3, 4]).unwrap();
        assert_eq!(pool.bytes(f), &[1, 2, 3, 4]);
        let g = pool.copy_frame(f).unwrap();
        assert_ne!(f.chunk(), g.chunk());
        assert_eq!(pool.bytes(g), &[1, 2, 3, 4]);
        assert_eq!(pool.available(), 6);
        pool.free(f.addr);
        pool.free(g.addr);
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn exhausted_pool_returns_none() {
        let mut pool = FramePool::new(2).unwrap();
        assert!(pool.write_frame(&[0; 60]).is_some());
        assert!(pool.write_frame(&[0; 60]).is_some());
        assert!(pool.write_frame(&[0; 60]).is_none());
    }

    #[test]
    fn out_of_range_frames_are_empty() {
        let mut pool = FramePool::new(2).unwrap();
        assert!(
            pool.bytes(Frame {
                addr: 2 * FRAME_SIZE as u32,
                len: 10
            })
            .is_empty()
        );
        assert!(
            pool.bytes(Frame {
                addr: FRAME_SIZE as u32 - 4,
                len: 10
            })
            .is_empty()
        );
        assert!(pool.write_frame(&[0; MAX_FRAME_LEN + 1]).is_none());
    }
}
