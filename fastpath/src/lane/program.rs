//! The two BPF programs of the kernel flow lane, emitted by our code (no clang, no libbpf):
//!
//! - **tc ingress** (`BPF_PROG_TYPE_SCHED_CLS`, attached with a tcx link to each lane port):
//!   builds the flow key (destination MAC, source MAC, 802.1Q TCI or 0, in-port id) and looks
//!   it up in the flow map. A hit bumps the entry's hit count (user space refreshes the
//!   source's FDB entry from it), adds the frame to the in port's rx and the out port's tx
//!   counters (a per-CPU array), and redirects the skb to the out port's netdev (or straight
//!   into its veth peer). A miss marks the skb and re-injects it into the same device, where
//!   the port's AF_PACKET socket takes it (its filter passes only marked frames) and the
//!   second tc run drops the marked copy from the kernel stack. So every frame is decided
//!   once, by one lookup: user space gets exactly the misses.
//! - **socket filter** (`BPF_PROG_TYPE_SOCKET_FILTER`, on the AF_PACKET socket): keeps a
//!   frame only if it carries the miss mark.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::port::af_xdp::bpf::{BPF_PROG_LOAD, Insn, ProgLoadAttr, bpf, insn, name16, owned};

/// skb mark of a frame the tc program sent to user space ("FPMS").
pub const MISS_MARK: i32 = 0x4650_4d53;
/// Flow-map value flag: redirect into the out device's veth peer (`bpf_redirect_peer`).
pub const FLAG_PEER: u16 = 1;

const PROG_TYPE_SOCKET_FILTER: u32 = 1;
const PROG_TYPE_SCHED_CLS: u32 = 3;
const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const FUNC_REDIRECT: i32 = 23;
const FUNC_REDIRECT_PEER: i32 = 155;
const BPF_F_INGRESS: i32 = 1;
const TC_ACT_SHOT: i32 = 2;

/// Offsets in `struct __sk_buff`.
const SKB_LEN: i16 = 0;
const SKB_MARK: i16 = 8;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_IFINDEX: i16 = 40;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

// Opcodes (class | mode/op | size/source).
const LDXW: u8 = 0x61;
const LDXH: u8 = 0x69;
const LDXDW: u8 = 0x79;
const STXW: u8 = 0x63;
const STXH: u8 = 0x6b;
const STXDW: u8 = 0x7b;
const STH: u8 = 0x6a;
const STW: u8 = 0x62;
const ADD_K: u8 = 0x07;
const ADD_X: u8 = 0x0f;
const AND_K: u8 = 0x57;
const MOV_K: u8 = 0xb7;
const MOV_X: u8 = 0xbf;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JGT_X: u8 = 0x2d;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// A tiny assembler: instructions plus jumps to named labels, resolved at the end.
struct Asm {
    code: Vec<Insn>,
    labels: Vec<(&'static str, usize)>,
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    fn new() -> Self {
        Self {
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }

    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Self {
        self.code.push(insn(code, dst, src, off, imm));
        self
    }

    /// A jump (`code` is JA or a conditional) to `label`.
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: &'static str) -> &mut Self {
        self.fixups.push((self.code.len(), label));
        self.op(code, dst, src, 0, imm)
    }

    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.push((name, self.code.len()));
        self
    }

    fn load_map(&mut self, reg: u8, map: &OwnedFd) -> &mut Self {
        self.op(LD_IMM64, reg, PSEUDO_MAP_FD, 0, map.as_raw_fd())
            .op(0, 0, 0, 0, 0)
    }

    /// Adds one frame of r7 bytes to the two u64 counters at `field` and `field + 8` of the
    /// `counters` entry whose key is at fp`key`; without such an entry, goes on at `done`.
    /// Clobbers r0-r5 (the helper call).
    fn count_frame(
        &mut self,
        counters: &OwnedFd,
        key: i16,
        field: i16,
        done: &'static str,
    ) -> &mut Self {
        self.load_map(1, counters)
            .op(MOV_X, 2, 10, 0, 0)
            .op(ADD_K, 2, 0, 0, i32::from(key))
            .op(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM)
            .jump(JEQ_K, 0, 0, 0, done)
            .op(LDXDW, 1, 0, field, 0)
            .op(ADD_K, 1, 0, 0, 1)
            .op(STXDW, 0, 1, field, 0)
            .op(LDXDW, 1, 0, field + 8, 0)
            .op(ADD_X, 1, 7, 0, 0)
            .op(STXDW, 0, 1, field + 8, 0)
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, name) in std::mem::take(&mut self.fixups) {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(at + 1, |(_, t)| *t);
            self.code[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.code
    }
}

/// The tc ingress program of in-port `port`, using the flow map `flows` (key 16 bytes,
/// value 16 bytes) and the per-CPU counter array `counters` (key port id, value 4 x u64).
pub(crate) fn tc_program(port: u16, flows: &OwnedFd, counters: &OwnedFd) -> Vec<Insn> {
    let p = i32::from(port);
    let mut a = Asm::new();
    a.op(MOV_X, 6, 1, 0, 0)
        // Second pass of a frame sent to user space: the AF_PACKET socket has it; drop it here.
        .op(LDXW, 2, 6, SKB_MARK, 0)
        .jump(JEQ_K, 2, 0, MISS_MARK, "drop")
        .op(LDXW, 7, 6, SKB_DATA, 0)
        .op(LDXW, 8, 6, SKB_DATA_END, 0)
        .op(MOV_X, 2, 7, 0, 0)
        .op(ADD_K, 2, 0, 0, 14)
        .jump(JGT_X, 2, 8, 0, "miss")
        // key at fp-16: dst MAC, src MAC (frame byte order), TCI, in port.
        .op(LDXW, 3, 7, 0, 0)
        .op(STXW, 10, 3, -16, 0)
        .op(LDXH, 3, 7, 4, 0)
        .op(STXH, 10, 3, -12, 0)
        .op(LDXH, 3, 7, 6, 0)
        .op(STXH, 10, 3, -10, 0)
        .op(LDXW, 3, 7, 8, 0)
        .op(STXW, 10, 3, -8, 0)
        .op(MOV_K, 4, 0, 0, 0)
        .op(LDXW, 3, 6, SKB_VLAN_PRESENT, 0)
        .jump(JEQ_K, 3, 0, 0, "untagged")
        .op(LDXW, 4, 6, SKB_VLAN_TCI, 0)
        .op(MOV_X, 3, 4, 0, 0)
        .op(AND_K, 3, 0, 0, 0x0fff)
        // Priority tags (VID 0) need a tag operation user space does: slow path.
        .jump(JEQ_K, 3, 0, 0, "miss")
        .jump(JA, 0, 0, 0, "tag")
        .label("untagged")
        // An 802.1Q tag still in the frame (not moved to metadata): slow path.
        .op(LDXH, 3, 7, 12, 0)
        .jump(JEQ_K, 3, 0, 0x0081, "miss")
        .label("tag")
        .op(STXH, 10, 4, -4, 0)
        .op(STH, 10, 0, -2, p)
        .load_map(1, flows)
        .op(MOV_X, 2, 10, 0, 0)
        .op(ADD_K, 2, 0, 0, -16)
        .op(CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM)
        .jump(JEQ_K, 0, 0, 0, "miss")
        .op(MOV_X, 9, 0, 0, 0)
        // hits += 1 (not atomic: a lost increment only delays nothing, any change counts)
        .op(LDXDW, 1, 9, 8, 0)
        .op(ADD_K, 1, 0, 0, 1)
        .op(STXDW, 9, 1, 8, 0)
        // r7 = frame length as user space counts it (the tag the kernel moved out counts).
        .op(LDXW, 7, 6, SKB_LEN, 0)
        .op(LDXW, 3, 6, SKB_VLAN_PRESENT, 0)
        .jump(JEQ_K, 3, 0, 0, "rx")
        .op(ADD_K, 7, 0, 0, 4)
        .label("rx")
        .op(STW, 10, 0, -20, p)
        .count_frame(counters, -20, 0, "tx")
        .label("tx")
        .op(LDXH, 1, 9, 4, 0)
        .op(STXW, 10, 1, -24, 0)
        .count_frame(counters, -24, 16, "redirect")
        .label("redirect")
        .op(LDXW, 1, 9, 0, 0)
        .op(LDXH, 3, 9, 6, 0)
        .op(MOV_K, 2, 0, 0, 0)
        .jump(JNE_K, 3, 0, 0, "peer")
        .op(CALL, 0, 0, 0, FUNC_REDIRECT)
        .op(EXIT, 0, 0, 0, 0)
        .label("peer")
        .op(CALL, 0, 0, 0, FUNC_REDIRECT_PEER)
        .op(EXIT, 0, 0, 0, 0)
        // Miss: mark, and hand the frame to this device's receive path again.
        .label("miss")
        .op(MOV_K, 1, 0, 0, MISS_MARK)
        .op(STXW, 6, 1, SKB_MARK, 0)
        .op(LDXW, 1, 6, SKB_IFINDEX, 0)
        .op(MOV_K, 2, 0, 0, BPF_F_INGRESS)
        .op(CALL, 0, 0, 0, FUNC_REDIRECT)
        .op(EXIT, 0, 0, 0, 0)
        .label("drop")
        .op(MOV_K, 0, 0, 0, TC_ACT_SHOT)
        .op(EXIT, 0, 0, 0, 0);
    a.finish()
}

/// The AF_PACKET socket filter: keep (up to 256 KiB of) marked frames, drop the rest.
pub(crate) fn socket_filter() -> Vec<Insn> {
    let mut a = Asm::new();
    a.op(LDXW, 0, 1, SKB_MARK, 0)
        .jump(JEQ_K, 0, 0, MISS_MARK, "keep")
        .op(MOV_K, 0, 0, 0, 0)
        .op(EXIT, 0, 0, 0, 0)
        .label("keep")
        .op(MOV_K, 0, 0, 0, 0x40000)
        .op(EXIT, 0, 0, 0, 0);
    a.finish()
}

/// Errors loading a lane program.
#[derive(Debug, thiserror::Error)]
#[error("the kernel refused the flow-lane {what} program: {log}")]
pub struct LoadError {
    /// Which program.
    pub what: &'static str,
    /// Verifier log.
    pub log: String,
    /// OS error.
    #[source]
    pub source: std::io::Error,
}

fn load(prog_type: u32, insns: &[Insn], what: &'static str) -> Result<OwnedFd, LoadError> {
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 65536];
    let mut p = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name16(what),
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut p) {
        Ok(fd) => Ok(owned(fd)),
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            // The end of the verifier log says why.
            let tail: String = text.lines().rev().take(6).collect::<Vec<_>>().join(" | ");
            Err(LoadError {
                what,
                log: tail,
                source,
            })
        }
    }
}

/// Loads the tc program of `port`.
pub(crate) fn load_tc(
    port: u16,
    flows: &OwnedFd,
    counters: &OwnedFd,
) -> Result<OwnedFd, LoadError> {
    load(
        PROG_TYPE_SCHED_CLS,
        &tc_program(port, flows, counters),
        "fp_lane_tc",
    )
}

/// Loads the socket filter.
pub(crate) fn load_socket_filter() -> Result<OwnedFd, LoadError> {
    load(PROG_TYPE_SOCKET_FILTER, &socket_filter(), "fp_lane_sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_to_relative_offsets() {
        let f = socket_filter();
        // jeq at 1 jumps to "keep" at 4: offset 4 - 1 - 1 = 2.
        assert_eq!((f[1].code, f[1].off, f[1].imm), (JEQ_K, 2, MISS_MARK));
        assert_eq!(f[4].imm, 0x40000);
    }

    #[test]
    fn every_tc_jump_lands_inside_the_program() {
        let fd = owned_dummy();
        let p = tc_program(3, &fd, &fd);
        for (i, ins) in p.iter().enumerate() {
            let class = ins.code & 0x07;
            if class == 0x05 && ins.code != CALL && ins.code != EXIT {
                let target = i as i64 + 1 + i64::from(ins.off);
                assert!(
                    (0..p.len() as i64).contains(&target),
                    "jump at {i} to {target}"
                );
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
    }

    fn owned_dummy() -> OwnedFd {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .expect("/dev/null opens")
    }
}
