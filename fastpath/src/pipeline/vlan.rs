//! 802.1Q tag push, pop and rewrite on frames in the pool.

use crate::pipeline::parse::TPID_8021Q;
use crate::pool::{Frame, FramePool};

/// Moves the 12 MAC bytes at `from` to `to` (ranges may overlap): one 8-byte and one 4-byte
/// load, then the stores, instead of a memmove call.
#[inline(always)]
fn move_macs(chunk: &mut [u8], from: usize, to: usize) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 4];
    a.copy_from_slice(&chunk[from..from + 8]);
    b.copy_from_slice(&chunk[from + 8..from + 12]);
    chunk[to..to + 8].copy_from_slice(&a);
    chunk[to + 8..to + 12].copy_from_slice(&b);
}

/// Makes `frame` carry the tag state `want` (`Some(vid)`: tagged with `vid`, keeping the
/// priority bits of an existing tag; `None`: untagged). `has_tag` says what it carries now.
/// Returns the adjusted frame, or `None` when there is no headroom to push a tag.
#[inline(always)]
pub fn set_tag(
    pool: &mut FramePool,
    frame: Frame,
    has_tag: bool,
    want: Option<u16>,
) -> Option<Frame> {
    let off = (frame.addr - frame.chunk()) as usize;
    let len = usize::from(frame.len);
    match (has_tag, want) {
        (false, None) => Some(frame),
        (true, Some(vid)) => {
            let chunk = pool.chunk_mut(frame.addr);
            if chunk.len() < off + 16 {
                return None;
            }
            let tci = u16::from_be_bytes([chunk[off + 14], chunk[off + 15]]);
            chunk[off + 14..off + 16]
                .copy_from_slice(&((tci & 0xf000) | (vid & 0x0fff)).to_be_bytes());
            Some(frame)
        }
        (true, None) => {
            let chunk = pool.chunk_mut(frame.addr);
            if chunk.len() < off + 16 || len < 18 {
                return None;
            }
            move_macs(chunk, off, off + 4);
            Some(Frame {
                addr: frame.addr + 4,
                len: frame.len - 4,
            })
        }
        (false, Some(vid)) => {
            let chunk = pool.chunk_mut(frame.addr);
            if off < 4 || chunk.len() < off + len || len < 14 || off + len + 4 > chunk.len() + 4 {
                return None;
            }
            move_macs(chunk, off, off - 4);
            chunk[off + 8..off + 10].copy_from_slice(&TPID_8021Q.to_be_bytes());
            chunk[off + 10..off + 12].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
            Some(Frame {
                addr: frame.addr - 4,
                len: frame.len + 4,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse::{parse_eth, tests::udp4};

    #[test]
    fn push_rewrite_pop_round_trip() {
        let mut pool = FramePool::new(4).unwrap();
        let orig = udp4(
            0x0200_0000_0002,
            0x0200_0000_0001,
            None,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            1,
            2,
        );
        let f = pool.write_frame(&orig).unwrap();
        let tagged = set_tag(&mut pool, f, false, Some(100)).unwrap();
        let e = parse_eth(pool.bytes(tagged)).unwrap();
        assert_eq!(e.tci, Some(100));
        assert_eq!(e.dst, 0x0200_0000_0002);
        assert_eq!(pool.bytes(tagged).len(), orig.len() + 4);
        let re = set_tag(&mut pool, tagged, true, Some(200)).unwrap();
        assert_eq!(parse_eth(pool.bytes(re)).unwrap().tci, Some(200));
        let plain = set_tag(&mut pool, re, true, None).unwrap();
        assert_eq!(pool.bytes(plain), &orig[..]);
    }
}
