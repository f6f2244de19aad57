//! The L2 forwarding table of one poll thread: (MAC, VLAN) -> port, with learning, aging and
//! static entries. Its memory is reserved up front so learning never allocates.
//!
//! Layout, chosen for the many-flows case where probes miss the L1 cache: open addressing
//! over buckets of one 64-byte cache line holding four entries (keys, ports, last-seen times
//! and flags side by side), so a lookup touches one line in the common case (hashbrown's
//! control bytes and entries are two).
//! An entry lives in its home bucket or, when that is full, in the next ones (linear probing
//! over buckets); each bucket counts the entries that passed over it (`overflow`), so a miss
//! stops at the first bucket with no overflow and deletion needs no tombstones.

use crate::config::plan::PortId;

/// Entries per bucket (one cache line).
const WAYS: usize = 4;
/// Marks a free slot; never a valid key (VLAN ids stop at 4095, so bits 60..64 are 0).
const EMPTY: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    keys: [u64; WAYS],
    last_seen_s: [u32; WAYS],
    ports: [PortId; WAYS],
    /// Bit i: slot i is static.
    statics: u8,
    _pad: u8,
    /// Entries stored beyond this bucket whose home is this bucket or an earlier one that
    /// probed through it.
    overflow: u16,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl Bucket {
    const FREE: Self = Self {
        keys: [EMPTY; WAYS],
        last_seen_s: [0; WAYS],
        ports: [0; WAYS],
        statics: 0,
        _pad: 0,
        overflow: 0,
    };

    #[inline(always)]
    fn find(&self, key: u64) -> Option<usize> {
        // Branch-free compare of the four keys (the compiler turns this into SIMD).
        let mut hit = 0u32;
        for (i, k) in self.keys.iter().enumerate() {
            hit |= u32::from(*k == key) << i;
        }
        (hit != 0).then(|| hit.trailing_zeros() as usize)
    }

    #[inline(always)]
    fn free_slot(&self) -> Option<usize> {
        self.find(EMPTY)
    }
}

/// The table.
#[derive(Debug)]
pub struct Fdb {
    buckets: Box<[Bucket]>,
    mask: usize,
    learned: usize,
    statics: usize,
    max_learned: usize,
    aging_s: u32,
    /// Keys that were learned, moved to another port or removed since the last
    /// `take_changes` (only while `track_changes`): the kernel flow lane drops decisions
    /// built on them.
    changes: Vec<u64>,
    track_changes: bool,
}

/// Home bucket of `key` in a table of `mask + 1` buckets.
#[inline(always)]
fn home(key: u64, mask: usize) -> usize {
    let h = (key ^ (key >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 32) as usize & mask
}

fn bucket_count(entries: usize) -> usize {
    // At most half full, so probes rarely leave the home bucket.
    (entries * 2).div_ceil(WAYS).next_power_of_two().max(2)
}

impl Fdb {
    /// A table for at most `max_learned` learned entries plus `statics` static ones.
    pub fn new(max_learned: usize, statics: usize, aging_s: u32) -> Self {
        let n = bucket_count(max_learned + statics);
        Self {
            buckets: vec![Bucket::FREE; n].into_boxed_slice(),
            mask: n - 1,
            learned: 0,
            statics: 0,
            max_learned,
            aging_s,
            changes: Vec::new(),
            track_changes: false,
        }
    }

    /// Learned (non-static) entries.
    pub fn learned(&self) -> usize {
        self.learned
    }

    /// Starts or stops recording moved and removed keys (see `take_changes`).
    pub fn track_changes(&mut self, on: bool) {
        self.track_changes = on;
        self.changes.clear();
    }

    /// Keys learned, moved to another port or removed since the last call.
    pub fn take_changes(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.changes.drain(..)
    }

    /// Whether changes were recorded since the last `take_changes`.
    #[inline]
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    #[inline]
    fn changed(&mut self, key: u64) {
        if self.track_changes {
            self.changes.push(key);
        }
    }

    /// (bucket, slot) of `key`.
    #[inline(always)]
    fn locate(&self, key: u64) -> Option<(usize, usize)> {
        let mut b = home(key, self.mask);
        for _ in 0..=self.mask {
            let bucket = &self.buckets[b];
            if let Some(s) = bucket.find(key) {
                return Some((b, s));
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = (b + 1) & self.mask;
        }
        None
    }

    /// Inserts a key known to be absent. False if every bucket is full (never, by sizing).
    fn insert_new(&mut self, key: u64, port: PortId, is_static: bool, now_s: u32) -> bool {
        let start = home(key, self.mask);
        let mut b = start;
        for _ in 0..=self.mask {
            if let Some(s) = self.buckets[b].free_slot() {
                let bucket = &mut self.buckets[b];
                bucket.keys[s] = key;
                bucket.ports[s] = port;
                bucket.last_seen_s[s] = now_s;
                bucket.statics = (bucket.statics & !(1 << s)) | (u8::from(is_static) << s);
                // Count the entry in every full bucket it passed over.
                let mut p = start;
                while p != b {
                    self.buckets[p].overflow += 1;
                    p = (p + 1) & self.mask;
                }
                return true;
            }
            b = (b + 1) & self.mask;
        }
        false
    }

    /// Removes the entry at (b, s), undoing the overflow counts of its probe path.
    fn remove_at(&mut self, b: usize, s: usize) {
        let key = self.buckets[b].keys[s];
        self.buckets[b].keys[s] = EMPTY;
        self.buckets[b].statics &= !(1 << s);
        let mut p = home(key, self.mask);
        while p != b {
            self.buckets[p].overflow -= 1;
            p = (p + 1) & self.mask;
        }
    }

    /// Records that `key` was seen on `port` at `now_s`. Static entries never move; when the
    /// table is full, new addresses are not learned (their frames keep being flooded).
    #[inline]
    pub fn learn(&mut self, key: u64, port: PortId, now_s: u32) {
        match self.locate(key) {
            Some((b, s)) => {
                let bucket = &mut self.buckets[b];
                if bucket.statics & (1 << s) != 0 {
                    return;
                }
                // Write only what changed: the line stays clean for the common repeat.
                if bucket.last_seen_s[s] != now_s {
                    bucket.last_seen_s[s] = now_s;
                }
                if bucket.ports[s] != port {
                    bucket.ports[s] = port;
                    self.changed(key);
                }
            }
            None => {
                if self.learned < self.max_learned && self.insert_new(key, port, false, now_s) {
                    self.learned += 1;
                    // A flood decision for this address (kernel lane) ends here.
                    self.changed(key);
                }
            }
        }
    }

    /// The port `key` was learned on, or statically bound to.
    #[inline]
    pub fn lookup(&self, key: u64) -> Option<PortId> {
        self.locate(key).map(|(b, s)| self.buckets[b].ports[s])
    }

    /// Marks a learned `key` as seen at `now_s` if it is still on `port` (the kernel flow
    /// lane forwarded its frames without user-space learning). Returns whether it was.
    pub fn refresh(&mut self, key: u64, port: PortId, now_s: u32) -> bool {
        match self.locate(key) {
            Some((b, s)) if self.buckets[b].ports[s] == port => {
                if self.buckets[b].statics & (1 << s) == 0 {
                    self.buckets[b].last_seen_s[s] = now_s;
                }
                true
            }
            _ => false,
        }
    }

    /// Removes learned entries for which `keep(key, port, last_seen_s)` is false.
    fn remove_learned_where(&mut self, mut keep: impl FnMut(u64, PortId, u32) -> bool) {
        for b in 0..self.buckets.len() {
            for s in 0..WAYS {
                let bucket = &self.buckets[b];
                let key = bucket.keys[s];
                if key == EMPTY || bucket.statics & (1 << s) != 0 {
                    continue;
                }
                if !keep(key, bucket.ports[s], bucket.last_seen_s[s]) {
                    self.remove_at(b, s);
                    self.learned -= 1;
                    self.changed(key);
                }
            }
        }
    }

    /// Removes learned entries idle for the aging time or longer.
    pub fn age(&mut self, now_s: u32) {
        let aging = self.aging_s;
        self.remove_learned_where(|_, _, seen| now_s.wrapping_sub(seen) < aging);
    }

    /// Removes learned entries for which `keep(key, port)` is false (after a VLAN change).
    pub fn retain_learned(&mut self, mut keep: impl FnMut(u64, PortId) -> bool) {
        self.remove_learned_where(|k, p, _| keep(k, p));
    }

    /// Every entry as (key, port, static).
    fn entries(&self) -> Vec<(u64, PortId, bool, u32)> {
        let mut out = Vec::with_capacity(self.learned + self.statics);
        for bucket in self.buckets.iter() {
            for s in 0..WAYS {
                if bucket.keys[s] != EMPTY {
                    out.push((
                        bucket.keys[s],
                        bucket.ports[s],
                        bucket.statics & (1 << s) != 0,
                        bucket.last_seen_s[s],
                    ));
                }
            }
        }
        out
    }

    /// Replaces all static entries and the limits (may grow the table: outside the data
    /// path, on a configuration change). Learned entries are kept unless a static takes
    /// their key. Nothing is recorded as a change: a plan change clears every kernel flow
    /// decision anyway.
    pub fn set_config(&mut self, statics: &[(u64, PortId)], max_learned: usize, aging_s: u32) {
        let want = bucket_count(max_learned + statics.len()).max(self.buckets.len());
        let mut learned = self.entries();
        learned.retain(|(k, _, is_static, _)| !is_static && !statics.iter().any(|(sk, _)| sk == k));
        self.buckets = vec![Bucket::FREE; want].into_boxed_slice();
        self.mask = want - 1;
        self.learned = 0;
        self.statics = 0;
        for (key, port) in statics {
            if self.locate(*key).is_none() && self.insert_new(*key, *port, true, 0) {
                self.statics += 1;
            }
        }
        for (key, port, _, seen) in learned {
            if self.learned < max_learned && self.insert_new(key, port, false, seen) {
                self.learned += 1;
            }
        }
        self.max_learned = max_learned;
        self.aging_s = aging_s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_moves_and_ages() {
        let mut fdb = Fdb::new(10, 0, 5);
        fdb.learn(1, 3, 100);
        assert_eq!(fdb.lookup(1), Some(3));
        fdb.learn(1, 4, 101);
        assert_eq!(fdb.lookup(1), Some(4), "a station that moved is re-learned");
        fdb.age(105);
        assert_eq!(
            fdb.lookup(1),
            Some(4),
            "4 s idle is below the 5 s aging time"
        );
        fdb.age(106);
        assert_eq!(fdb.lookup(1), None);
        assert_eq!(fdb.learned(), 0);
    }

    #[test]
    fn statics_do_not_move_or_age() {
        let mut fdb = Fdb::new(10, 1, 1);
        fdb.learn(7, 1, 0);
        fdb.set_config(&[(7, 2)], 10, 1);
        assert_eq!(fdb.learned(), 0);
        fdb.learn(7, 1, 50);
        fdb.age(1000);
        assert_eq!(fdb.lookup(7), Some(2));
    }

    #[test]
    fn full_table_stops_learning() {
        let mut fdb = Fdb::new(2, 0, 100);
        for k in 0..5 {
            fdb.learn(k, 1, 0);
        }
        assert_eq!(fdb.learned(), 2);
        assert_eq!(fdb.lookup(4), None);
    }

    #[test]
    fn overflowing_buckets_keep_every_entry_reachable() {
        // A tiny table (2 buckets) forced to probe: entries beyond their home bucket stay
        // reachable, and removing them restores the overflow counts.
        let mut fdb = Fdb::new(4, 0, 10);
        assert_eq!(fdb.buckets.len(), 2);
        let keys: Vec<u64> = (0..1000u64)
            .filter(|k| home(*k, fdb.mask) == 0)
            .take(6)
            .collect();
        fdb.max_learned = 6;
        for (i, k) in keys.iter().enumerate() {
            fdb.learn(*k, i as PortId, 1);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(fdb.lookup(*k), Some(i as PortId), "key {k}");
        }
        assert_eq!(fdb.buckets[0].overflow, 2);
        fdb.retain_learned(|k, _| k != keys[5] && k != keys[4]);
        assert_eq!(fdb.buckets[0].overflow, 0);
        assert_eq!(fdb.lookup(keys[5]), None);
        assert_eq!(fdb.lookup(keys[0]), Some(0));
        assert_eq!(fdb.learned(), 4);
    }

    #[test]
    fn many_keys_against_a_reference_map() {
        let mut fdb = Fdb::new(5000, 0, 3);
        let mut reference = std::collections::HashMap::new();
        let mut x = 0x1234_5678u64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 6000;
            let port = (x >> 20) as PortId % 8;
            fdb.learn(key, port, step / 1000);
            if reference.len() < 5000 || reference.contains_key(&key) {
                reference.insert(key, (port, step / 1000));
            }
            if step % 4000 == 3999 {
                let now = step / 1000;
                fdb.age(now);
                reference.retain(|_, (_, seen)| now.wrapping_sub(*seen) < 3);
            }
        }
        assert_eq!(fdb.learned(), reference.len());
        for (k, (p, _)) in &reference {
            assert_eq!(fdb.lookup(*k), Some(*p));
        }
    }

    #[test]
    fn changes_are_recorded_when_tracked() {
        let mut fdb = Fdb::new(10, 0, 5);
        fdb.track_changes(true);
        fdb.learn(1, 1, 0);
        assert_eq!(
            fdb.take_changes().collect::<Vec<_>>(),
            vec![1],
            "a new entry ends flooding to it"
        );
        fdb.learn(1, 1, 0);
        assert!(!fdb.has_changes(), "seeing a station again changes nothing");
        fdb.learn(1, 2, 0);
        fdb.age(10);
        assert_eq!(fdb.take_changes().collect::<Vec<_>>(), vec![1, 1]);
        assert!(!fdb.refresh(2, 1, 0), "an absent key is not refreshed");
    }
}
