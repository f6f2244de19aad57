//! The BAR window allocator: guest-physical ranges for BARs, naturally aligned (a BAR of size
//! `n` at a multiple of `n`, as PCI requires) and at least page aligned (so that a BAR's memory
//! can be mapped into the guest page by page), first fit.

/// Guest page size: the granularity of KVM memory slots.
pub const PAGE_SIZE: u64 = 4096;

/// A range of guest-physical addresses handed out to BARs.
#[derive(Debug, Clone)]
pub struct BarWindow {
    start: u64,
    end: u64,
    /// Allocated `(start, len)`, sorted by start.
    taken: Vec<(u64, u64)>,
}

impl BarWindow {
    /// A window covering `start..start + len`.
    pub fn new(start: u64, len: u64) -> Self {
        Self {
            start,
            end: start.saturating_add(len),
            taken: Vec::new(),
        }
    }

    /// First address of the window.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last address of the window.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether `addr..addr + len` lies inside the window.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.start && addr.checked_add(len).is_some_and(|end| end <= self.end)
    }

    /// Allocates `size` bytes (a power of two) aligned to `max(size, PAGE_SIZE)`; `None` when
    /// no such hole is left or `size` is not a power of two.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let align = size.max(PAGE_SIZE);
        let mut candidate = align_up(self.start, align)?;
        let mut insert_at = 0;
        for (index, &(taken_start, taken_len)) in self.taken.iter().enumerate() {
            if candidate.checked_add(size)? <= taken_start {
                insert_at = index;
                break;
            }
            candidate = align_up(candidate.max(taken_start + taken_len), align)?;
            insert_at = index + 1;
        }
        if candidate.checked_add(size)? > self.end {
            return None;
        }
        self.taken.insert(insert_at, (candidate, size));
        Some(candidate)
    }

    /// Bytes handed out so far.
    pub fn used(&self) -> u64 {
        self.taken.iter().map(|(_, len)| len).sum()
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_naturally_aligned_page_aligned_and_disjoint() {
        let mut window = BarWindow::new(0xC000_0000, 0x100_0000);
        let a = window.allocate(16 << 10).unwrap();
        let b = window.allocate(128).unwrap();
        let c = window.allocate(1 << 20).unwrap();
        let d = window.allocate(16 << 10).unwrap();
        assert_eq!(a, 0xC000_0000);
        assert_eq!(b % PAGE_SIZE, 0, "small BARs still get a page of their own");
        assert_eq!(c % (1 << 20), 0);
        let mut ranges = [(a, 16 << 10), (b, PAGE_SIZE), (c, 1 << 20), (d, 16 << 10)];
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        // The hole left below the 1 MiB BAR is used by the next small one.
        assert!(d < c, "first fit: {d:#x} should be below {c:#x}");
        assert!(ranges.iter().all(|&(s, l)| window.contains(s, l)));
    }

    #[test]
    fn exhaustion_and_bad_sizes_are_refused() {
        let mut window = BarWindow::new(0xC000_0000, 64 << 10);
        assert_eq!(window.allocate(48 << 10), None, "not a power of two");
        assert_eq!(window.allocate(128 << 10), None, "larger than the window");
        assert!(window.allocate(32 << 10).is_some());
        assert!(window.allocate(32 << 10).is_some());
        assert_eq!(window.allocate(4 << 10), None, "full");
        assert_eq!(window.used(), 64 << 10);
        assert!(!window.contains(0xC000_F000, 0x2000));
        assert!(!window.contains(0xBFFF_F000, 0x1000));
    }
}
