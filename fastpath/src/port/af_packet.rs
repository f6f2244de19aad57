//! AF_PACKET port: TPACKET_V3 receive ring (blocks of frames) and TPACKET_V3 transmit ring
//! with PACKET_QDISC_BYPASS, the fallback where AF_XDP is unavailable.
//!
//! Receive copies each frame from the ring block into a pool frame (re-inserting the 802.1Q
//! tag the kernel moved into metadata); transmit copies pool frames into ring slots and
//! kicks the kernel once per burst.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::pipeline::parse::TPID_8021Q;
use crate::pool::{Frame, FramePool, HEADROOM, MAX_FRAME_LEN};
use crate::port::sys::{self, Mmap};
use crate::port::{Port, PortError, ifindex};

/// `TPACKET_V3` from `<linux/if_packet.h>` (missing in the libc crate).
const TPACKET_V3: libc::c_int = 2;
/// Receive block size and count: 32 x 64 KiB.
const RX_BLOCK_SIZE: u32 = 1 << 16;
const RX_BLOCK_NR: u32 = 32;
/// Transmit slots: 1024 x 2 KiB, in 64 KiB blocks.
const TX_FRAME_SIZE: u32 = 2048;
const TX_BLOCK_SIZE: u32 = 1 << 16;
const TX_BLOCK_NR: u32 = 32;
/// Where the kernel reads TX data in a V3 slot: TPACKET_ALIGN(sizeof(tpacket3_hdr)).
const TX_DATA_OFFSET: usize = 48;
/// Offsets inside `struct tpacket_block_desc` / `tpacket_hdr_v1`.
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
/// Offset of `tp_status` in `struct tpacket3_hdr`.
const HDR_STATUS: usize = 20;

/// An AF_PACKET port.
#[derive(Debug)]
pub struct AfPacketPort {
    name: String,
    fd: OwnedFd,
    ring: Mmap,
    rx_block: u32,
    /// Packets left in the block being read, and the offset of the next one.
    rx_left: u32,
    rx_next: usize,
    tx_next: u32,
    tx_frames: u32,
}

fn sys_err(
    port: &str,
    what: &'static str,
    hint: &'static str,
) -> impl FnOnce(std::io::Error) -> PortError {
    let port = port.to_string();
    move |source| PortError::Sys {
        port,
        what,
        hint,
        source,
    }
}

impl AfPacketPort {
    /// Opens the port on `ifname` (in the current network namespace).
    pub fn open(name: &str, ifname: &str) -> Result<Self, PortError> {
        let idx = ifindex(name, ifname)?;
        let root = "run as root (CAP_NET_RAW)";
        // Protocol 0: no frames are queued until bind() names the interface.
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(sys_err(
            name,
            "socket(AF_PACKET)",
            root,
        ))?;
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3).map_err(
            sys_err(name, "PACKET_VERSION TPACKET_V3", "needs Linux >= 3.2"),
        )?;
        let rx_req = libc::tpacket_req3 {
            tp_block_size: RX_BLOCK_SIZE,
            tp_block_nr: RX_BLOCK_NR,
            tp_frame_size: 2048,
            tp_frame_nr: RX_BLOCK_SIZE / 2048 * RX_BLOCK_NR,
            // Hand a partly filled block to us after 1 ms, so latency stays low at low rates.
            tp_retire_blk_tov: 1,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &rx_req).map_err(sys_err(
            name,
            "PACKET_RX_RING",
            "check memory limits",
        ))?;
        let tx_req = libc::tpacket_req3 {
            tp_block_size: TX_BLOCK_SIZE,
            tp_block_nr: TX_BLOCK_NR,
            tp_frame_size: TX_FRAME_SIZE,
            tp_frame_nr: TX_BLOCK_SIZE / TX_FRAME_SIZE * TX_BLOCK_NR,
            tp_retire_blk_tov: 0,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &tx_req).map_err(sys_err(
            name,
            "PACKET_TX_RING",
            "TPACKET_V3 TX rings need Linux >= 4.11",
        ))?;
        let one: libc::c_int = 1;
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)
            .map_err(sys_err(name, "PACKET_QDISC_BYPASS", "needs Linux >= 3.14"))?;
        // Our own transmissions must not come back on our receive ring.
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one).map_err(
            sys_err(name, "PACKET_IGNORE_OUTGOING", "needs Linux >= 4.20"),
        )?;
        let rx_len = (RX_BLOCK_SIZE * RX_BLOCK_NR) as usize;
        let tx_len = (TX_BLOCK_SIZE * TX_BLOCK_NR) as usize;
        let ring = Mmap::new(&fd, rx_len + tx_len, 0).map_err(sys_err(
            name,
            "mmap of the packet rings",
            "check memory limits",
        ))?;
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: idx as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        sys::bind(&fd, &addr).map_err(sys_err(name, "bind(AF_PACKET)", "is the interface up?"))?;
        let mreq = libc::packet_mreq {
            mr_ifindex: idx as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // Promiscuous while the socket lives: a switch port must see every destination MAC.
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq).map_err(
            sys_err(name, "PACKET_ADD_MEMBERSHIP promisc", "run as root"),
        )?;
        log::info!("port {name}: AF_PACKET TPACKET_V3 on {ifname} (ifindex {idx}), qdisc bypass");
        Ok(Self {
            name: name.to_string(),
            fd,
            ring,
            rx_block: 0,
            rx_left: 0,
            rx_next: 0,
            tx_next: 0,
            tx_frames: tx_req.tp_frame_nr,
        })
    }

    /// The packet socket (for the kernel flow lane's filter).
    pub fn socket(&self) -> &OwnedFd {
        &self.fd
    }

    fn block(&self, i: u32) -> *mut u8 {
        // SAFETY: i < RX_BLOCK_NR, so the offset stays inside the RX part of the mapping.
        unsafe { self.ring.ptr().add((i * RX_BLOCK_SIZE) as usize) }
    }

    /// The status word at `ptr`, which must point into `self.ring`.
    fn status(&self, ptr: *mut u8) -> &AtomicU32 {
        debug_assert!(
            ptr >= self.ring.ptr()
                && (ptr as usize) + 4 <= self.ring.ptr() as usize + self.ring.len()
        );
        // SAFETY: ptr points at a 4-byte aligned u32 status word inside the ring mapping,
        // which lives as long as `self`; the kernel and we only access it atomically (the
        // kernel with barriers around its stores).
        unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) }
    }

    fn read_u32(ptr: *mut u8) -> u32 {
        // SAFETY: ptr is inside the ring mapping and the block is owned by user space (its
        // status was read with Acquire), so the kernel does not write it now.
        unsafe { ptr.cast::<u32>().read_unaligned() }
    }

    fn read_u16(ptr: *mut u8) -> u16 {
        // SAFETY: as read_u32.
        unsafe { ptr.cast::<u16>().read_unaligned() }
    }
}

impl Port for AfPacketPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, pool: &mut FramePool, out: &mut [Frame]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let block = self.block(self.rx_block);
            if self.rx_left == 0 {
                // SAFETY: BLOCK_STATUS is inside the block descriptor at the block start.
                let st = self.status(unsafe { block.add(BLOCK_STATUS) });
                if st.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                // SAFETY: both fields lie in the block descriptor, now owned by us.
                let (num, first) = unsafe {
                    (
                        Self::read_u32(block.add(BLOCK_NUM_PKTS)),
                        Self::read_u32(block.add(BLOCK_FIRST_PKT)),
                    )
                };
                if num == 0 {
                    st.store(libc::TP_STATUS_KERNEL, Ordering::Release);
                    self.rx_block = (self.rx_block + 1) % RX_BLOCK_NR;
                    continue;
                }
                self.rx_left = num;
                self.rx_next = first as usize;
            }
            if pool.available() == 0 {
                break;
            }
            // SAFETY: rx_next is an offset the kernel wrote for a packet inside this block.
            let hdr = unsafe { block.add(self.rx_next) };
            // SAFETY: field offsets of struct tpacket3_hdr, inside the owned block.
            let (next_off, snaplen, status, mac, tci, tpid) = unsafe {
                (
                    Self::read_u32(hdr),
                    Self::read_u32(hdr.add(12)) as usize,
                    Self::read_u32(hdr.add(HDR_STATUS)),
                    usize::from(Self::read_u16(hdr.add(24))),
                    Self::read_u32(hdr.add(32)) as u16,
                    Self::read_u16(hdr.add(36)),
                )
            };
            let in_block = self.rx_next + mac + snaplen <= RX_BLOCK_SIZE as usize;
            if in_block
                && snaplen >= 12
                && snaplen + 4 <= MAX_FRAME_LEN
                && let Some(chunk) = pool.alloc()
            {
                // SAFETY: [mac, mac + snaplen) is inside the owned block (checked above).
                let data = unsafe { std::slice::from_raw_parts(hdr.add(mac), snaplen) };
                let dst = pool.chunk_mut(chunk);
                let start = HEADROOM as usize;
                let len = if status & libc::TP_STATUS_VLAN_VALID != 0 {
                    // The kernel took the tag out of the frame; put it back where it was.
                    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        tpid
                    } else {
                        TPID_8021Q
                    };
                    dst[start..start + 12].copy_from_slice(&data[..12]);
                    dst[start + 12..start + 14].copy_from_slice(&tpid.to_be_bytes());
                    dst[start + 14..start + 16].copy_from_slice(&tci.to_be_bytes());
                    dst[start + 16..start + 4 + snaplen].copy_from_slice(&data[12..]);
                    snaplen + 4
                } else {
                    dst[start..start + snaplen].copy_from_slice(data);
                    snaplen
                };
                out[n] = Frame {
                    addr: chunk + HEADROOM,
                    len: len as u16,
                };
                n += 1;
            }
            self.rx_left -= 1;
            self.rx_next += next_off as usize;
            if self.rx_left == 0 || next_off == 0 {
                self.rx_left = 0;
                // SAFETY: as above, the block descriptor's status word.
                self.status(unsafe { block.add(BLOCK_STATUS) })
                    .store(libc::TP_STATUS_KERNEL, Ordering::Release);
                self.rx_block = (self.rx_block + 1) % RX_BLOCK_NR;
            }
        }
        n
    }

    fn tx_burst(&mut self, pool: &mut FramePool, frames: &[Frame]) -> usize {
        let rx_len = (RX_BLOCK_SIZE * RX_BLOCK_NR) as usize;
        let mut n = 0;
        for f in frames {
            let off = rx_len + (self.tx_next * TX_FRAME_SIZE) as usize;
            debug_assert!(off + TX_FRAME_SIZE as usize <= self.ring.len());
            // SAFETY: off + TX_FRAME_SIZE is inside the TX part of the mapping.
            let slot = unsafe { self.ring.ptr().add(off) };
            // SAFETY: tp_status of this slot's tpacket3_hdr.
            let st = self.status(unsafe { slot.add(HDR_STATUS) });
            let s = st.load(Ordering::Acquire);
            if s != libc::TP_STATUS_AVAILABLE && s != libc::TP_STATUS_WRONG_FORMAT {
                break;
            }
            let data = pool.bytes(*f);
            let len = data.len().min(TX_FRAME_SIZE as usize - TX_DATA_OFFSET);
            // SAFETY: the slot is AVAILABLE, so the kernel does not read it until we set
            // SEND_REQUEST below; header fields and data stay inside the slot.
            unsafe {
                slot.cast::<u32>().write_unaligned(0); // tp_next_offset must be 0 for TX
                slot.add(12).cast::<u32>().write_unaligned(len as u32); // tp_snaplen
                slot.add(16).cast::<u32>().write_unaligned(len as u32); // tp_len
                std::ptr::copy_nonoverlapping(data.as_ptr(), slot.add(TX_DATA_OFFSET), len);
            }
            st.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
            pool.free(f.addr);
            self.tx_next = (self.tx_next + 1) % self.tx_frames;
            n += 1;
        }
        if n > 0 {
            sys::kick_tx(self.fd.as_raw_fd());
        }
        n
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

impl Drop for AfPacketPort {
    fn drop(&mut self) {
        // struct tpacket_stats_v3: packets, drops, freeze_q_cnt (reading resets them).
        let mut st = [0u32; 3];
        if sys::getsockopt(&self.fd, libc::SOL_PACKET, libc::PACKET_STATISTICS, &mut st).is_ok() {
            log::info!(
                "port {}: AF_PACKET ring packets {} drops {} queue freezes {}",
                self.name,
                st[0],
                st[1],
                st[2]
            );
        }
    }
}
