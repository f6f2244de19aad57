//! The L2 forwarding table of one poll thread: (MAC, VLAN) -> port, with learning, aging and
//! static entries. Its memory is reserved up front so learning never allocates.

use hashbrown::HashMap;

use crate::config::plan::PortId;

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    is_static: bool,
    last_seen_s: u32,
}

/// The table.
#[derive(Debug)]
pub struct Fdb {
    table: HashMap<u64, Entry>,
    learned: usize,
    max_learned: usize,
    aging_s: u32,
}

impl Fdb {
    /// A table for at most `max_learned` learned entries plus `statics` static ones.
    pub fn new(max_learned: usize, statics: usize, aging_s: u32) -> Self {
        Self {
            table: HashMap::with_capacity(max_learned + statics),
            learned: 0,
            max_learned,
            aging_s,
        }
    }

    /// Learned (non-static) entries.
    pub fn learned(&self) -> usize {
        self.learned
    }

    /// Records that `key` was seen on `port` at `now_s`. Static entries never move; when the
    /// table is full, new addresses are not learned (their frames keep being flooded).
    #[inline]
    pub fn learn(&mut self, key: u64, port: PortId, now_s: u32) {
        match self.table.get_mut(&key) {
            Some(e) => {
                if !e.is_static {
                    if e.port != port {
                        e.port = port;
                    }
                    if e.last_seen_s != now_s {
                        e.last_seen_s = now_s;
                    }
                }
            }
            None => {
                if self.learned < self.max_learned {
                    self.table.insert(
                        key,
                        Entry {
                            port,
                            is_static: false,
                            last_seen_s: now_s,
                        },
                    );
                    self.learned += 1;
                }
            }
        }
    }

    /// The port `key` was learned on, or statically bound to.
    #[inline]
    pub fn lookup(&self, key: u64) -> Option<PortId> {
        self.table.get(&key).map(|e| e.port)
    }

    /// Removes learned entries idle for the aging time or longer.
    pub fn age(&mut self, now_s: u32) {
        let aging = self.aging_s;
        let before = self.table.len();
        self.table
            .retain(|_, e| e.is_static || now_s.wrapping_sub(e.last_seen_s) < aging);
        self.learned -= before - self.table.len();
    }

    /// Removes learned entries for which `keep(key, port)` is false (after a VLAN change).
    pub fn retain_learned(&mut self, mut keep: impl FnMut(u64, PortId) -> bool) {
        let before = self.table.len();
        self.table.retain(|k, e| e.is_static || keep(*k, e.port));
        self.learned -= before - self.table.len();
    }

    /// Replaces all static entries and the limits.
    pub fn set_config(&mut self, statics: &[(u64, PortId)], max_learned: usize, aging_s: u32) {
        self.table.retain(|_, e| !e.is_static);
        for (key, port) in statics {
            let was_learned = self
                .table
                .insert(
                    *key,
                    Entry {
                        port: *port,
                        is_static: true,
                        last_seen_s: 0,
                    },
                )
                .is_some();
            if was_learned {
                self.learned -= 1;
            }
        }
        self.max_learned = max_learned;
        self.aging_s = aging_s;
        let want = max_learned + statics.len();
        if self.table.capacity() < want {
            self.table.reserve(want - self.table.len());
        }
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
}
