//! The loopback test's frames: unique per run and sequence number, with a checksum, so a
//! receiver tells ours from other traffic, and lost, duplicated and corrupted frames apart.
//!
//! Layout (128 bytes): destination MAC, source MAC, EtherType 0x88B5 (IEEE local
//! experimental), then `HWTL`, run id (u64), sequence (u32), count (u32), a filler derived from
//! the sequence, and the CRC-32 of everything after the EtherType.

/// IEEE 802 local experimental EtherType 1.
pub const ETHERTYPE: u16 = 0x88B5;
/// Frame length.
pub const FRAME_LEN: usize = 128;
const MAGIC: &[u8; 4] = b"HWTL";
const HEADER: usize = 14;
const CRC_AT: usize = FRAME_LEN - 4;

/// Builds frame `seq` of `count` for run `run_id`.
pub fn build(dst: [u8; 6], src: [u8; 6], run_id: u64, seq: u32, count: u32) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(MAGIC);
    f[18..26].copy_from_slice(&run_id.to_le_bytes());
    f[26..30].copy_from_slice(&seq.to_le_bytes());
    f[30..34].copy_from_slice(&count.to_le_bytes());
    for (i, b) in f[34..CRC_AT].iter_mut().enumerate() {
        *b = filler(seq, i);
    }
    let crc = crc32fast::hash(&f[HEADER..CRC_AT]);
    f[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    f
}

fn filler(seq: u32, i: usize) -> u8 {
    (seq as usize)
        .wrapping_mul(31)
        .wrapping_add(i.wrapping_mul(7)) as u8
}

/// What a received frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Ours, intact.
    Ours {
        /// Its sequence number.
        seq: u32,
    },
    /// Someone else's traffic (another run, another protocol).
    Foreign,
    /// Ours, but damaged.
    Corrupt,
}

/// Classifies a received frame for run `run_id` of `count` frames.
pub fn classify(frame: &[u8], run_id: u64, count: u32) -> Received {
    if frame.len() < 26 || frame[12..14] != ETHERTYPE.to_be_bytes() || &frame[14..18] != MAGIC {
        return Received::Foreign;
    }
    if frame[18..26] != run_id.to_le_bytes() {
        return Received::Foreign;
    }
    if frame.len() != FRAME_LEN {
        return Received::Corrupt;
    }
    let word =
        |at: usize| u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
    let (seq, claimed_count, crc) = (word(26), word(30), word(CRC_AT));
    let filler_ok = frame[34..CRC_AT]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == filler(seq, i));
    if crc != crc32fast::hash(&frame[HEADER..CRC_AT])
        || claimed_count != count
        || seq >= count
        || !filler_ok
    {
        return Received::Corrupt;
    }
    Received::Ours { seq }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn a_built_frame_classifies_as_ours() {
        let f = build(B, A, 77, 5, 1000);
        assert_eq!(&f[0..6], &B);
        assert_eq!(classify(&f, 77, 1000), Received::Ours { seq: 5 });
        assert_ne!(
            build(B, A, 77, 6, 1000)[34..],
            f[34..],
            "payloads are unique per sequence"
        );
    }

    #[test]
    fn any_flipped_payload_bit_is_corruption() {
        let f = build(B, A, 77, 5, 1000);
        for byte in 26..FRAME_LEN {
            let mut g = f;
            g[byte] ^= 0x10;
            assert_eq!(classify(&g, 77, 1000), Received::Corrupt, "byte {byte}");
        }
        assert_eq!(
            classify(&f[..100], 77, 1000),
            Received::Corrupt,
            "truncated"
        );
    }

    #[test]
    fn other_runs_and_protocols_are_foreign() {
        let f = build(B, A, 77, 5, 1000);
        assert_eq!(classify(&f, 78, 1000), Received::Foreign);
        let mut ipv6 = f;
        ipv6[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
        assert_eq!(classify(&ipv6, 77, 1000), Received::Foreign);
        assert_eq!(classify(&[0u8; 10], 77, 1000), Received::Foreign);
    }
}
