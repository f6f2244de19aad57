//! The XDP redirect program, emitted and loaded by our own code (no clang, no libbpf).
//!
//! The program is six instructions: read the receive queue index from `xdp_md`, look it up
//! in an XSKMAP with `bpf_redirect_map`, and fall back to `XDP_PASS` when no socket sits at
//! that index (the low bits of the helper's flags are the return code on a miss). It is
//! attached with a bpf_link (BPF_LINK_CREATE), so it detaches when the link fd closes, even
//! if the process dies.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::control::messages::XdpAttach;

pub(crate) const BPF_MAP_CREATE: libc::c_long = 0;
pub(crate) const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub(crate) const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub(crate) const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// Errors loading or attaching the program.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// BPF_MAP_CREATE failed.
    #[error(
        "cannot create the XSKMAP; run as root (CAP_BPF/CAP_SYS_ADMIN) with a kernel that has AF_XDP"
    )]
    MapCreate(#[source] std::io::Error),
    /// BPF_PROG_LOAD failed; the verifier log says why.
    #[error("the kernel refused the XDP program: {log}")]
    ProgLoad {
        /// Verifier log.
        log: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// BPF_LINK_CREATE failed.
    #[error(
        "cannot attach XDP in {mode} mode; another XDP program may be attached (ip link set dev IF xdp off) or the driver lacks native XDP (use attach = \"generic\")"
    )]
    Attach {
        /// Mode tried last.
        mode: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// BPF_MAP_UPDATE_ELEM failed.
    #[error("cannot put the AF_XDP socket into the XSKMAP at queue {queue}")]
    MapUpdate {
        /// Queue index.
        queue: u32,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Insn {
    pub(crate) code: u8,
    /// dst register in the low nibble, src register in the high nibble.
    pub(crate) regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

pub(crate) const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The redirect program for an XSKMAP whose fd is `map_fd`.
fn redirect_program(map_fd: RawFd) -> [Insn; 6] {
    const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const PSEUDO_MAP_FD: u8 = 1;
    [
        // r2 = ctx->rx_queue_index
        insn(LDX_MEM_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = map (two-slot immediate load; the kernel swaps the fd for the map pointer)
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the verdict when no socket is at that queue
        insn(MOV64_K, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MapCreateAttr {
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    pub(crate) map_flags: u32,
    pub(crate) inner_map_fd: u32,
    pub(crate) numa_node: u32,
    pub(crate) map_name: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ProgLoadAttr {
    pub(crate) prog_type: u32,
    pub(crate) insn_cnt: u32,
    pub(crate) insns: u64,
    pub(crate) license: u64,
    pub(crate) log_level: u32,
    pub(crate) log_size: u32,
    pub(crate) log_buf: u64,
    pub(crate) kern_version: u32,
    pub(crate) prog_flags: u32,
    pub(crate) prog_name: [u8; 16],
    pub(crate) prog_ifindex: u32,
    pub(crate) expected_attach_type: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MapUpdateAttr {
    pub(crate) map_fd: u32,
    pub(crate) _pad: u32,
    pub(crate) key: u64,
    pub(crate) value: u64,
    pub(crate) flags: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LinkCreateAttr {
    pub(crate) prog_fd: u32,
    pub(crate) target_ifindex: u32,
    pub(crate) attach_type: u32,
    pub(crate) flags: u32,
}

/// Runs the bpf(2) command `cmd` with `attr`; returns the fd or value it gives.
pub(crate) fn bpf<T: Copy>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: attr is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for
    // size_of::<T>() bytes; the kernel zero-extends a shorter attr. Pointers inside it (insns,
    // license, log, key, value) point to live buffers of the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

pub(crate) fn owned(fd: i32) -> OwnedFd {
    // SAFETY: fd is a new descriptor just returned by bpf(2), owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub(crate) fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    let b = s.as_bytes();
    n[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
    n
}

/// A loaded and attached redirect program with its XSKMAP. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpRedirect {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// "native" or "generic".
    pub mode: &'static str,
}

impl XdpRedirect {
    /// Loads the program and attaches it to `ifindex`.
    pub fn attach(ifindex: u32, queues: u32, attach: XdpAttach) -> Result<Self, BpfError> {
        let mut m = MapCreateAttr {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: queues.max(1),
            map_name: name16("fp_xsks"),
            ..Default::default()
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut m).map_err(BpfError::MapCreate)?);
        let prog_insns = redirect_program(map.as_raw_fd());
        let license = c"Dual MIT/GPL";
        let mut log = vec![0u8; 4096];
        let mut p = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: prog_insns.len() as u32,
            insns: prog_insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name16("fp_redirect"),
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        let prog = match bpf(BPF_PROG_LOAD, &mut p) {
            Ok(fd) => owned(fd),
            Err(source) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                return Err(BpfError::ProgLoad {
                    log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
                    source,
                });
            }
        };
        let modes: &[(u32, &'static str)] = match attach {
            XdpAttach::Auto => &[
                (XDP_FLAGS_DRV_MODE, "native"),
                (XDP_FLAGS_SKB_MODE, "generic"),
            ],
            XdpAttach::Native => &[(XDP_FLAGS_DRV_MODE, "native")],
            XdpAttach::Generic => &[(XDP_FLAGS_SKB_MODE, "generic")],
        };
        let mut last = None;
        for &(flags, mode) in modes {
            let mut l = LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_XDP,
                flags,
            };
            match bpf(BPF_LINK_CREATE, &mut l) {
                Ok(fd) => {
                    return Ok(Self {
                        map,
                        _prog: prog,
                        _link: owned(fd),
                        mode,
                    });
                }
                Err(e) => {
                    log::debug!("XDP attach to ifindex {ifindex} in {mode} mode failed: {e}");
                    last = Some((mode, e));
                }
            }
        }
        let (mode, source) = last.unwrap_or(("none", std::io::Error::other("no attach mode")));
        Err(BpfError::Attach { mode, source })
    }

    /// Sends frames of `queue` to the AF_XDP socket `xsk`.
    pub fn register(&self, queue: u32, xsk: RawFd) -> Result<(), BpfError> {
        let key = queue;
        let value = xsk as u32;
        let mut u = MapUpdateAttr {
            map_fd: self.map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut u)
            .map(|_| ())
            .map_err(|source| BpfError::MapUpdate { queue, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encodes_as_expected() {
        let p = redirect_program(7);
        // Byte image of the first instruction: ldxw r2, [r1 + 16].
        assert_eq!((p[0].code, p[0].regs, p[0].off), (0x61, 0x12, 16));
        assert_eq!((p[1].code, p[1].regs, p[1].imm), (0x18, 0x11, 7));
        assert_eq!(p[3].imm, XDP_PASS);
        assert_eq!(p[4].imm, 51);
        assert_eq!(p[5].code, 0x95);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}
