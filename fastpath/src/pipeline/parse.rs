//! Header parsing: Ethernet, one 802.1Q tag, and the IPv4/IPv6 + L4 fields ACLs need.

use crate::pipeline::acl::{FlowKey, v4_mapped};

/// 802.1Q tag protocol id.
pub const TPID_8021Q: u16 = 0x8100;
/// IPv4 ethertype.
pub const ETH_IPV4: u16 = 0x0800;
/// IPv6 ethertype.
pub const ETH_IPV6: u16 = 0x86dd;
/// ARP ethertype.
pub const ETH_ARP: u16 = 0x0806;

/// Ethernet header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthHeader {
    /// Destination MAC (low 48 bits, first byte highest).
    pub dst: u64,
    /// Source MAC.
    pub src: u64,
    /// The 802.1Q TCI when the frame carries a tag.
    pub tci: Option<u16>,
    /// Ethertype after the tag.
    pub ethertype: u16,
    /// Offset of the L3 header.
    pub l3: usize,
}

/// Whether a MAC (as parsed) is multicast or broadcast.
#[inline]
pub fn is_multicast(mac: u64) -> bool {
    mac & (1 << 40) != 0
}

#[inline]
fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

#[inline]
fn mac_at(d: &[u8], at: usize) -> u64 {
    u64::from(be16(d, at)) << 32
        | u64::from(u32::from_be_bytes([
            d[at + 2],
            d[at + 3],
            d[at + 4],
            d[at + 5],
        ]))
}

/// Parses the Ethernet header; `None` if the frame is too short.
#[inline(always)]
pub fn parse_eth(d: &[u8]) -> Option<EthHeader> {
    if d.len() < 14 {
        return None;
    }
    let dst = mac_at(d, 0);
    let src = mac_at(d, 6);
    let t = be16(d, 12);
    if t == TPID_8021Q {
        if d.len() < 18 {
            return None;
        }
        Some(EthHeader {
            dst,
            src,
            tci: Some(be16(d, 14)),
            ethertype: be16(d, 16),
            l3: 18,
        })
    } else {
        Some(EthHeader {
            dst,
            src,
            tci: None,
            ethertype: t,
            l3: 14,
        })
    }
}

/// What the ACL stage sees of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// An IP packet.
    Ip(FlowKey),
    /// ARP, or IPv6 neighbour discovery / router solicitation: always allowed, as security
    /// groups do, so addresses resolve on default-deny ports.
    Resolution,
    /// Anything else (the port's default action applies).
    Other,
    /// Truncated IP header.
    Malformed,
}

fn is_l4_with_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

/// Classifies the L3 payload starting at `eth.l3`.
#[inline(always)]
pub fn parse_l3(d: &[u8], eth: &EthHeader) -> L3 {
    let p = eth.l3;
    match eth.ethertype {
        ETH_IPV4 => {
            if d.len() < p + 20 {
                return L3::Malformed;
            }
            let ihl = usize::from(d[p] & 0x0f) * 4;
            if d[p] >> 4 != 4 || ihl < 20 || d.len() < p + ihl {
                return L3::Malformed;
            }
            let proto = d[p + 9];
            let frag_offset = be16(d, p + 6) & 0x1fff;
            let src = u32::from_be_bytes([d[p + 12], d[p + 13], d[p + 14], d[p + 15]]);
            let dst = u32::from_be_bytes([d[p + 16], d[p + 17], d[p + 18], d[p + 19]]);
            let l4 = p + ihl;
            let (sport, dport) = if is_l4_with_ports(proto) && frag_offset == 0 && d.len() >= l4 + 4
            {
                (be16(d, l4), be16(d, l4 + 2))
            } else {
                (0, 0)
            };
            L3::Ip(FlowKey {
                src: v4_mapped(src),
                dst: v4_mapped(dst),
                proto,
                sport,
                dport,
            })
        }
        ETH_IPV6 => {
            if d.len() < p + 40 {
                return L3::Malformed;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&d[p + 8..p + 24]);
            dst.copy_from_slice(&d[p + 24..p + 40]);
            let mut next = d[p + 6];
            let mut at = p + 40;
            // Skip the common extension headers (hop-by-hop, routing, destination options),
            // at most four; a fragment header ends port parsing.
            let mut fragment = false;
            for _ in 0..4 {
                match next {
                    0 | 43 | 60 if d.len() >= at + 8 => {
                        next = d[at];
                        at += (usize::from(d[at + 1]) + 1) * 8;
                    }
                    44 if d.len() >= at + 8 => {
                        next = d[at];
                        fragment = be16(d, at + 2) & 0xfff8 != 0;
                        at += 8;
                    }
                    _ => break,
                }
            }
            if next == 58 && d.len() > at && (133..=136).contains(&d[at]) {
                return L3::Resolution;
            }
            let (sport, dport) = if is_l4_with_ports(next) && !fragment && d.len() >= at + 4 {
                (be16(d, at), be16(d, at + 2))
            } else {
                (0, 0)
            };
            L3::Ip(FlowKey {
                src: u128::from_be_bytes(src),
                dst: u128::from_be_bytes(dst),
                proto: next,
                sport,
                dport,
            })
        }
        ETH_ARP => L3::Resolution,
        _ => L3::Other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an Ethernet/IPv4/UDP frame (optionally tagged) of at least 60 bytes.
    pub(crate) fn udp4(
        dst: u64,
        src: u64,
        tag: Option<u16>,
        sip: [u8; 4],
        dip: [u8; 4],
        sport: u16,
        dport: u16,
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&dst.to_be_bytes()[2..]);
        f.extend_from_slice(&src.to_be_bytes()[2..]);
        if let Some(tci) = tag {
            f.extend_from_slice(&TPID_8021Q.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ETH_IPV4.to_be_bytes());
        f.extend_from_slice(&[0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&sip);
        f.extend_from_slice(&dip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 26, 0, 0]);
        f.resize(f.len().max(60), 0);
        f
    }

    #[test]
    fn untagged_udp_is_parsed() {
        let f = udp4(
            0xffff_ffff_ffff,
            0x0200_0000_0001,
            None,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            1234,
            53,
        );
        let e = parse_eth(&f).unwrap();
        assert_eq!(e.tci, None);
        assert!(is_multicast(e.dst));
        assert!(!is_multicast(e.src));
        match parse_l3(&f, &e) {
            L3::Ip(k) => {
                assert_eq!(k.src, v4_mapped(0x0a00_0001));
                assert_eq!((k.proto, k.sport, k.dport), (17, 1234, 53));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tagged_frame_has_tci_and_shifted_l3() {
        let f = udp4(2, 3, Some(0x2000 | 100), [1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        let e = parse_eth(&f).unwrap();
        assert_eq!(e.tci, Some(0x2000 | 100));
        assert_eq!(e.l3, 18);
        assert!(matches!(parse_l3(&f, &e), L3::Ip(k) if k.dport == 2));
    }

    #[test]
    fn short_frames_are_malformed() {
        assert!(parse_eth(&[0; 13]).is_none());
        let mut f = udp4(2, 3, None, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        f.truncate(20);
        let e = parse_eth(&f).unwrap();
        assert_eq!(parse_l3(&f, &e), L3::Malformed);
    }

    #[test]
    fn arp_and_neighbor_solicitation_are_resolution() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ETH_ARP.to_be_bytes());
        assert_eq!(parse_l3(&f, &parse_eth(&f).unwrap()), L3::Resolution);
        let mut f = vec![0u8; 14 + 40 + 24];
        f[12..14].copy_from_slice(&ETH_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[14 + 6] = 58;
        f[14 + 40] = 135;
        assert_eq!(parse_l3(&f, &parse_eth(&f).unwrap()), L3::Resolution);
    }
}
