//! Security-group ACL: ordered rules on src/dst prefix, protocol and port ranges.
//!
//! Rules are compiled into a bit-vector classifier: each field (source address, destination
//! address, protocol, source port, destination port) is cut into elementary intervals, and
//! each interval holds the bitmap of rules that match it. A lookup is one binary search per
//! field, an AND of five bitmaps and a count of trailing zeros: the lowest set bit is the
//! first matching rule in id order. Time does not grow with the rule order that matches, and
//! a per-port flow cache (`FlowCache`) in front of it serves repeated flows.
//!
//! IPv4 addresses live in the IPv4-mapped IPv6 range (`::ffff:0:0/96`), so one classifier
//! serves both families and an IPv4 prefix never matches an IPv6 packet.

use std::net::IpAddr;

use crate::control::messages::{AclAction, AclRule};

/// IP protocols whose rules may name ports.
pub const PROTOCOLS_WITH_PORTS: [u8; 3] = [6, 17, 132];

/// Errors compiling rules.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// A prefix did not parse.
    #[error(
        "rule {rule}: malformed prefix {prefix:?}: {why}; write an address or address/length, e.g. 10.0.0.0/8 or fd00::/8"
    )]
    MalformedPrefix {
        /// Rule id.
        rule: u32,
        /// The text given.
        prefix: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two rules share an id.
    #[error("rule id {id} is used twice; give every rule of a port's list its own id")]
    DuplicateRuleId {
        /// The id.
        id: u32,
    },
    /// A port range without a protocol that has ports.
    #[error("rule {rule}: port ranges need protocol 6 (TCP), 17 (UDP) or 132 (SCTP)")]
    PortsWithoutL4 {
        /// Rule id.
        rule: u32,
    },
    /// lo > hi.
    #[error("rule {rule}: port range {lo}..{hi} is empty; lo must be <= hi")]
    EmptyPortRange {
        /// Rule id.
        rule: u32,
        /// Low end.
        lo: u16,
        /// High end.
        hi: u16,
    },
    /// Source and destination prefixes of different families.
    #[error("rule {rule}: source and destination prefixes are of different IP families")]
    MixedFamilies {
        /// Rule id.
        rule: u32,
    },
}

/// The fields an ACL looks at, extracted from an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowKey {
    /// Source address (IPv4 mapped into `::ffff:0:0/96`).
    pub src: u128,
    /// Destination address.
    pub dst: u128,
    /// IP protocol (IPv6: the first next-header).
    pub proto: u8,
    /// Source port (0 when the protocol has no ports).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// Maps an IPv4 address into the IPv4-mapped IPv6 range.
#[inline]
pub fn v4_mapped(addr: u32) -> u128 {
    0xffff_0000_0000 | u128::from(addr)
}

/// A parsed prefix in the unified 128-bit space: inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// First address.
    pub lo: u128,
    /// Last address.
    pub hi: u128,
    /// IPv4 or not.
    pub v4: bool,
}

/// Parses `addr` or `addr/len`; host bits must be zero.
pub fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .trim()
        .parse()
        .map_err(|e| format!("bad address: {e}"))?;
    let (value, bits, v4) = match addr {
        IpAddr::V4(a) => (v4_mapped(u32::from(a)), 32u32, true),
        IpAddr::V6(a) => (u128::from(a), 128u32, false),
    };
    let len = match len_text {
        None => bits,
        Some(l) => {
            let l: u32 = l
                .trim()
                .parse()
                .map_err(|_| format!("bad prefix length {l:?}"))?;
            if l > bits {
                return Err(format!("prefix length {l} is longer than {bits}"));
            }
            l
        }
    };
    let len128 = len + (128 - bits);
    let host_mask: u128 = if len128 >= 128 {
        0
    } else {
        u128::MAX >> len128
    };
    if value & host_mask != 0 {
        return Err(format!(
            "host bits are set; did you mean {}/{len}?",
            match addr {
                IpAddr::V4(_) =>
                    IpAddr::from(std::net::Ipv4Addr::from((value & !host_mask) as u32)),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(value & !host_mask)),
            }
        ));
    }
    Ok(Prefix {
        lo: value,
        hi: value | host_mask,
        v4,
    })
}

/// One classified field: interval starts and per-interval rule bitmaps.
#[derive(Debug, Clone)]
struct Field<T> {
    starts: Vec<T>,
    bits: Vec<u64>,
}

impl<T: Copy + Ord> Field<T> {
    /// `ranges[r]` is rule r's inclusive range, `None` for "any".
    fn build(
        ranges: &[Option<(T, T)>],
        min: T,
        succ: impl Fn(T) -> Option<T>,
        words: usize,
    ) -> Self {
        let mut starts = vec![min];
        for (lo, hi) in ranges.iter().flatten() {
            starts.push(*lo);
            if let Some(next) = succ(*hi) {
                starts.push(next);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let mut bits = vec![0u64; starts.len() * words];
        for (i, s) in starts.iter().enumerate() {
            for (r, range) in ranges.iter().enumerate() {
                let hit = match range {
                    None => true,
                    Some((lo, hi)) => lo <= s && s <= hi,
                };
                if hit {
                    bits[i * words + r / 64] |= 1 << (r % 64);
                }
            }
        }
        Self { starts, bits }
    }

    #[inline]
    fn lookup(&self, x: T, words: usize) -> &[u64] {
        // starts[0] is the domain minimum, so the point is >= 1.
        let i = self.starts.partition_point(|s| *s <= x).saturating_sub(1);
        &self.bits[i * words..(i + 1) * words]
    }
}

/// A compiled rule list.
#[derive(Debug, Clone)]
pub struct Acl {
    actions: Vec<AclAction>,
    rule_ids: Vec<u32>,
    default: AclAction,
    words: usize,
    src: Field<u128>,
    dst: Field<u128>,
    sport: Field<u16>,
    dport: Field<u16>,
    /// Per protocol number: offset into `proto_bits`.
    proto_bits: Vec<u64>,
}

impl Acl {
    /// Compiles `rules` (any order; evaluated by ascending id) with the given default.
    pub fn compile(rules: &[AclRule], default: AclAction) -> Result<Self, AclError> {
        let mut sorted: Vec<&AclRule> = rules.iter().collect();
        sorted.sort_by_key(|r| r.id);
        for pair in sorted.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(AclError::DuplicateRuleId { id: pair[0].id });
            }
        }
        let words = sorted.len().div_ceil(64).max(1);
        let mut src = Vec::with_capacity(sorted.len());
        let mut dst = Vec::with_capacity(sorted.len());
        let mut sport = Vec::with_capacity(sorted.len());
        let mut dport = Vec::with_capacity(sorted.len());
        let mut proto_bits = vec![0u64; 256 * words];
        for (r, rule) in sorted.iter().enumerate() {
            let parse = |p: &Option<String>| -> Result<Option<Prefix>, AclError> {
                p.as_deref()
                    .map(|t| {
                        parse_prefix(t).map_err(|why| AclError::MalformedPrefix {
                            rule: rule.id,
                            prefix: t.to_string(),
                            why,
                        })
                    })
                    .transpose()
            };
            let s = parse(&rule.src)?;
            let d = parse(&rule.dst)?;
            if let (Some(a), Some(b)) = (s, d)
                && a.v4 != b.v4
            {
                return Err(AclError::MixedFamilies { rule: rule.id });
            }
            src.push(s.map(|p| (p.lo, p.hi)));
            dst.push(d.map(|p| (p.lo, p.hi)));
            for (range, out) in [(rule.src_ports, &mut sport), (rule.dst_ports, &mut dport)] {
                if let Some(pr) = range {
                    if !rule
                        .protocol
                        .is_some_and(|p| PROTOCOLS_WITH_PORTS.contains(&p))
                    {
                        return Err(AclError::PortsWithoutL4 { rule: rule.id });
                    }
                    if pr.lo > pr.hi {
                        return Err(AclError::EmptyPortRange {
                            rule: rule.id,
                            lo: pr.lo,
                            hi: pr.hi,
                        });
                    }
                }
                out.push(range.map(|pr| (pr.lo, pr.hi)));
            }
            for proto in 0..256usize {
                if rule.protocol.is_none_or(|p| usize::from(p) == proto) {
                    proto_bits[proto * words + r / 64] |= 1 << (r % 64);
                }
            }
        }
        let succ128 = |x: u128| x.checked_add(1);
        let succ16 = |x: u16| x.checked_add(1);
        Ok(Self {
            actions: sorted.iter().map(|r| r.action).collect(),
            rule_ids: sorted.iter().map(|r| r.id).collect(),
            default,
            words,
            src: Field::build(&src, 0, succ128, words),
            dst: Field::build(&dst, 0, succ128, words),
            sport: Field::build(&sport, 0, succ16, words),
            dport: Field::build(&dport, 0, succ16, words),
            proto_bits,
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether there are no rules (only the default applies).
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Verdict for frames that are not IP (and not ARP/ND, which the pipeline always allows).
    pub fn default_action(&self) -> AclAction {
        self.default
    }

    /// Id of the first rule matching `key`, if any.
    pub fn first_match(&self, key: &FlowKey) -> Option<u32> {
        self.first_index(key).map(|i| self.rule_ids[i])
    }

    #[inline]
    fn first_index(&self, key: &FlowKey) -> Option<usize> {
        if self.actions.is_empty() {
            return None;
        }
        let w = self.words;
        let a = self.src.lookup(key.src, w);
        let b = self.dst.lookup(key.dst, w);
        let c = self.sport.lookup(key.sport, w);
        let d = self.dport.lookup(key.dport, w);
        let p = &self.proto_bits[usize::from(key.proto) * w..(usize::from(key.proto) + 1) * w];
        for i in 0..w {
            let m = a[i] & b[i] & c[i] & d[i] & p[i];
            if m != 0 {
                return Some(i * 64 + m.trailing_zeros() as usize);
            }
        }
        None
    }

    /// The verdict for `key`: the first matching rule's action, or the default.
    #[inline]
    pub fn classify(&self, key: &FlowKey) -> AclAction {
        match self.first_index(key) {
            Some(i) => self.actions[i],
            None => self.default,
        }
    }
}

/// Two-way set-associative cache of ACL verdicts for recent flows of one port and
/// direction. A set is two 48-byte slots on one 128-byte aligned block (two adjacent cache
/// lines), so a probe costs at most one line pair. The full key is stored and compared: a cached verdict is
/// never applied to another flow.
#[derive(Debug, Clone, Default)]
pub struct FlowCache {
    /// Empty until the port has an ACL in that direction (`ensure`).
    sets: Box<[CacheSet]>,
}

/// Sets per cache (4096 slots: 1024 flows in rotation keep ~90 % hits).
const CACHE_SETS: usize = 2048;
const SLOT_EMPTY: u8 = 0;
const SLOT_ALLOW: u8 = 1;
const SLOT_DENY: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(16))]
struct CacheSlot {
    src: u128,
    dst: u128,
    /// sport << 16 | dport.
    ports: u32,
    proto: u8,
    verdict: u8,
}

impl CacheSlot {
    const EMPTY: Self = Self {
        src: 0,
        dst: 0,
        ports: 0,
        proto: 0,
        verdict: SLOT_EMPTY,
    };

    #[inline(always)]
    fn of(key: &FlowKey, verdict: u8) -> Self {
        Self {
            src: key.src,
            dst: key.dst,
            ports: u32::from(key.sport) << 16 | u32::from(key.dport),
            proto: key.proto,
            verdict,
        }
    }

    #[inline(always)]
    fn matches(&self, probe: &Self) -> bool {
        self.verdict != SLOT_EMPTY
            && self.src == probe.src
            && self.dst == probe.dst
            && self.ports == probe.ports
            && self.proto == probe.proto
    }
}

#[derive(Debug, Clone, Copy)]
#[repr(C, align(128))]
struct CacheSet([CacheSlot; 2]);

const _: () = assert!(std::mem::size_of::<CacheSet>() == 128);

impl FlowCache {
    /// Allocates the cache if `needed` and not done yet; frees it if not `needed`.
    pub fn ensure(&mut self, needed: bool) {
        if !needed {
            self.sets = Box::default();
        } else if self.sets.is_empty() {
            self.sets = vec![CacheSet([CacheSlot::EMPTY; 2]); CACHE_SETS].into_boxed_slice();
        }
    }

    /// Forgets every verdict (after the rules changed).
    pub fn clear(&mut self) {
        self.sets.fill(CacheSet([CacheSlot::EMPTY; 2]));
    }

    #[inline(always)]
    fn set_index(key: &FlowKey) -> usize {
        let h = (key.src as u64)
            ^ ((key.src >> 64) as u64).rotate_left(17)
            ^ (key.dst as u64).rotate_left(31)
            ^ ((key.dst >> 64) as u64).rotate_left(47)
            ^ (u64::from(key.sport) << 16 | u64::from(key.dport) | u64::from(key.proto) << 32);
        (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CACHE_SETS.trailing_zeros())) as usize
    }

    /// Verdict of `acl` for `key`, from the cache when possible.
    #[inline(always)]
    pub fn classify(&mut self, acl: &Acl, key: &FlowKey) -> AclAction {
        let probe = CacheSlot::of(key, SLOT_ALLOW);
        let Some(set) = self.sets.get_mut(Self::set_index(key)) else {
            return acl.classify(key);
        };
        for slot in &set.0 {
            if slot.matches(&probe) {
                return if slot.verdict == SLOT_ALLOW {
                    AclAction::Allow
                } else {
                    AclAction::Deny
                };
            }
        }
        let verdict = acl.classify(key);
        let fresh = CacheSlot::of(
            key,
            if verdict == AclAction::Allow {
                SLOT_ALLOW
            } else {
                SLOT_DENY
            },
        );
        // The newest flow goes to way 0; the one it displaces moves to way 1.
        if set.0[0].verdict != SLOT_EMPTY {
            set.0[1] = set.0[0];
        }
        set.0[0] = fresh;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::messages::PortRange;

    fn rule(id: u32, action: AclAction) -> AclRule {
        AclRule {
            id,
            action,
            src: None,
            dst: None,
            protocol: None,
            src_ports: None,
            dst_ports: None,
        }
    }

    fn key4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src: v4_mapped(u32::from_be_bytes(src)),
            dst: v4_mapped(u32::from_be_bytes(dst)),
            proto,
            sport,
            dport,
        }
    }

    #[test]
    fn first_matching_rule_in_id_order_wins() {
        let mut deny_ssh = rule(20, AclAction::Deny);
        deny_ssh.protocol = Some(6);
        deny_ssh.dst_ports = Some(PortRange { lo: 22, hi: 22 });
        let mut allow_net = rule(10, AclAction::Allow);
        allow_net.src = Some("10.0.0.0/8".into());
        // Given out of order: id 10 must still be evaluated first.
        let acl = Acl::compile(&[deny_ssh, allow_net], AclAction::Deny).unwrap();
        assert_eq!(
            acl.classify(&key4([10, 1, 2, 3], [1, 1, 1, 1], 6, 999, 22)),
            AclAction::Allow
        );
        assert_eq!(
            acl.first_match(&key4([11, 1, 2, 3], [1, 1, 1, 1], 6, 999, 22)),
            Some(20)
        );
        assert_eq!(
            acl.classify(&key4([11, 1, 2, 3], [1, 1, 1, 1], 6, 999, 22)),
            AclAction::Deny
        );
        assert_eq!(
            acl.classify(&key4([11, 1, 2, 3], [1, 1, 1, 1], 6, 999, 80)),
            AclAction::Deny
        );
        assert_eq!(
            acl.first_match(&key4([11, 1, 2, 3], [1, 1, 1, 1], 6, 999, 80)),
            None
        );
    }

    #[test]
    fn default_applies_when_nothing_matches() {
        let acl = Acl::compile(&[], AclAction::Allow).unwrap();
        assert_eq!(acl.classify(&FlowKey::default()), AclAction::Allow);
        let acl = Acl::compile(&[], AclAction::Deny).unwrap();
        assert_eq!(acl.classify(&FlowKey::default()), AclAction::Deny);
    }

    #[test]
    fn ipv4_prefix_never_matches_ipv6() {
        let mut r = rule(1, AclAction::Allow);
        r.src = Some("0.0.0.0/0".into());
        let acl = Acl::compile(&[r], AclAction::Deny).unwrap();
        let v6 = FlowKey {
            src: 0xfd00 << 112,
            dst: 1,
            proto: 17,
            sport: 1,
            dport: 2,
        };
        assert_eq!(acl.classify(&v6), AclAction::Deny);
        assert_eq!(
            acl.classify(&key4([1, 2, 3, 4], [5, 6, 7, 8], 17, 1, 2)),
            AclAction::Allow
        );
    }

    #[test]
    fn ipv6_prefix_and_port_ranges() {
        let mut r = rule(5, AclAction::Allow);
        r.dst = Some("fd00:213::/64".into());
        r.protocol = Some(17);
        r.dst_ports = Some(PortRange { lo: 1000, hi: 2000 });
        let acl = Acl::compile(&[r], AclAction::Deny).unwrap();
        let base: u128 = 0xfd00_0213_0000_0000_0000_0000_0000_0000;
        let k = |dport| FlowKey {
            src: 1,
            dst: base | 7,
            proto: 17,
            sport: 5,
            dport,
        };
        assert_eq!(acl.classify(&k(999)), AclAction::Deny);
        assert_eq!(acl.classify(&k(1000)), AclAction::Allow);
        assert_eq!(acl.classify(&k(2000)), AclAction::Allow);
        assert_eq!(acl.classify(&k(2001)), AclAction::Deny);
        let other = FlowKey {
            dst: base + (1 << 64),
            ..k(1500)
        };
        assert_eq!(acl.classify(&other), AclAction::Deny);
    }

    #[test]
    fn more_than_64_rules_use_several_words() {
        let mut rules: Vec<AclRule> = (0..100u32)
            .map(|i| {
                let mut r = rule(i, AclAction::Deny);
                r.protocol = Some(17);
                r.dst_ports = Some(PortRange {
                    lo: 1000 + i as u16,
                    hi: 1000 + i as u16,
                });
                r
            })
            .collect();
        let mut last = rule(1000, AclAction::Allow);
        last.dst_ports = Some(PortRange { lo: 1099, hi: 1099 });
        last.protocol = Some(17);
        rules[99] = last;
        let acl = Acl::compile(&rules, AclAction::Deny).unwrap();
        let k = |dport| key4([1, 1, 1, 1], [2, 2, 2, 2], 17, 1, dport);
        assert_eq!(acl.first_match(&k(1070)), Some(70));
        assert_eq!(acl.first_match(&k(1099)), Some(1000));
        assert_eq!(acl.classify(&k(1099)), AclAction::Allow);
    }

    #[test]
    fn bad_rules_are_rejected_with_the_rule_id() {
        let mut r = rule(7, AclAction::Allow);
        r.src = Some("10.0.0.1/8".into());
        let e = Acl::compile(&[r], AclAction::Deny).unwrap_err();
        assert!(
            matches!(e, AclError::MalformedPrefix { rule: 7, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean 10.0.0.0/8"), "{e}");
        let mut r = rule(8, AclAction::Allow);
        r.dst = Some("10.0.0.0/33".into());
        assert!(matches!(
            Acl::compile(&[r], AclAction::Deny),
            Err(AclError::MalformedPrefix { .. })
        ));
        let e = Acl::compile(
            &[rule(3, AclAction::Allow), rule(3, AclAction::Deny)],
            AclAction::Deny,
        );
        assert!(matches!(e, Err(AclError::DuplicateRuleId { id: 3 })));
        let mut r = rule(9, AclAction::Allow);
        r.dst_ports = Some(PortRange { lo: 1, hi: 2 });
        assert!(matches!(
            Acl::compile(&[r], AclAction::Deny),
            Err(AclError::PortsWithoutL4 { rule: 9 })
        ));
    }

    #[test]
    fn flow_cache_returns_the_classifier_verdict() {
        let mut r = rule(1, AclAction::Allow);
        r.protocol = Some(6);
        let acl = Acl::compile(&[r], AclAction::Deny).unwrap();
        let mut cache = FlowCache::default();
        cache.ensure(true);
        for i in 0..2000u16 {
            let tcp = key4([1, 1, 1, 1], [2, 2, 2, 2], 6, i, 80);
            let udp = key4([1, 1, 1, 1], [2, 2, 2, 2], 17, i, 80);
            assert_eq!(cache.classify(&acl, &tcp), AclAction::Allow);
            assert_eq!(cache.classify(&acl, &udp), AclAction::Deny);
            assert_eq!(cache.classify(&acl, &tcp), AclAction::Allow);
        }
    }
}
