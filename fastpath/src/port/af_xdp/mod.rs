//! AF_XDP port: an XSK socket bound to one queue of a netdev, fed by our XDP redirect program.
//!
//! The whole frame pool is registered as the socket's UMEM. Every AF_XDP port of a poll thread
//! registers the same region, so frame addresses mean the same thing on all of them and a
//! received frame goes to another port's TX ring as is (the kernel copies only in copy mode).

pub mod bpf;
mod ring;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::control::messages::XdpAttach;
use crate::pool::{FRAME_SIZE, Frame, FramePool, PoolMemory};
use crate::port::sys::{self, kick_rx, kick_tx};
use crate::port::{Port, PortError, ifindex};
use bpf::XdpRedirect;
use ring::Ring;

/// Entries per ring.
pub const RING_SIZE: u32 = 8192;
/// Frames kept on the fill ring for the kernel to receive into. Half the ring: the kernel
/// publishes its fill-ring consumer index only when it has used up the entries it last
/// saw, so with a full ring we could not refill until it ran dry, and an empty fill ring
/// drops frames. The other half is room to refill while the kernel works through its batch.
pub const FILL_FRAMES: u32 = RING_SIZE / 2;
/// Pool frames one AF_XDP port may hold at once (fill ring + TX ring).
pub const FRAMES_PER_PORT: u32 = FILL_FRAMES + RING_SIZE;

/// An AF_XDP port.
#[derive(Debug)]
pub struct AfXdpPort {
    name: String,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    /// Frames on the fill ring or in the kernel's receive path.
    fill_out: u32,
    /// Order matters for drop: detach the program before closing the socket.
    _xdp: XdpRedirect,
    fd: OwnedFd,
    _umem: Arc<PoolMemory>,
    /// Copy mode (veth, generic XDP): TX only moves on sendto().
    copy_mode: bool,
    /// Drive the NAPI receive from this thread (recvfrom runs one busy-poll pass).
    busy_poll: bool,
}

/// Busy-poll settings: how long one pass may spin, and the NAPI budget per pass. The poll
/// loop takes up to 8 bursts (256 frames) per port and round, so a pass of 128 never
/// outruns it, while being large enough that veth's 256-entry receive ring does not
/// overflow between two passes.
const BUSY_POLL_USECS: libc::c_int = 20;
const BUSY_POLL_BUDGET: libc::c_int = 128;

/// Turns on preferred busy polling for `fd` and defers the device's own NAPI scheduling
/// (so softirq/NAPI threads stay out of the way while we poll).
fn enable_busy_poll(name: &str, ifname: &str, fd: &OwnedFd) -> Result<(), PortError> {
    let hint = "preferred busy polling needs Linux >= 5.11 and root";
    let one: libc::c_int = 1;
    sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PREFER_BUSY_POLL, &one).map_err(sys_err(
        name,
        "SO_PREFER_BUSY_POLL",
        hint,
    ))?;
    sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, &BUSY_POLL_USECS)
        .map_err(sys_err(name, "SO_BUSY_POLL", hint))?;
    sys::setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BUSY_POLL_BUDGET,
        &BUSY_POLL_BUDGET,
    )
    .map_err(sys_err(name, "SO_BUSY_POLL_BUDGET", hint))?;
    // After a busy-poll pass the kernel re-arms a timer instead of rescheduling NAPI, as
    // long as we come back within gro_flush_timeout.
    for (file, value) in [
        ("napi_defer_hard_irqs", "2"),
        ("gro_flush_timeout", "200000"),
    ] {
        std::fs::write(format!("/sys/class/net/{ifname}/{file}"), value).map_err(sys_err(
            name,
            "writing the busy-poll sysfs knobs",
            hint,
        ))?;
    }
    Ok(())
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

impl AfXdpPort {
    /// Opens the port on `ifname` queue `queue`, registering `pool`'s memory as UMEM and
    /// putting `FILL_FRAMES` of its frames on the fill ring.
    pub fn open(
        name: &str,
        ifname: &str,
        queue: u32,
        attach: XdpAttach,
        busy_poll: bool,
        pool: &mut FramePool,
    ) -> Result<Self, PortError> {
        let idx = ifindex(name, ifname)?;
        let root = "run as root with a kernel built with CONFIG_XDP_SOCKETS";
        let fd = sys::socket(libc::AF_XDP, libc::SOCK_RAW, 0).map_err(sys_err(
            name,
            "socket(AF_XDP)",
            root,
        ))?;
        let mem = pool.memory().clone();
        let reg = libc::xdp_umem_reg {
            addr: mem.base() as u64,
            len: mem.len() as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sys::setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg).map_err(sys_err(
            name,
            "XDP_UMEM_REG",
            "check RLIMIT_MEMLOCK or run as root",
        ))?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            sys::setsockopt(&fd, libc::SOL_XDP, opt, &RING_SIZE).map_err(sys_err(
                name,
                "XDP ring size",
                root,
            ))?;
        }
        // SAFETY: xdp_mmap_offsets is plain integers; all-zero is a valid value to overwrite.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        sys::getsockopt(&fd, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS, &mut off).map_err(sys_err(
            name,
            "XDP_MMAP_OFFSETS",
            root,
        ))?;
        let map_err = sys_err(name, "mmap of an XDP ring", "check memory limits");
        let fill = Ring::map(
            &fd,
            RING_SIZE,
            libc::XDP_UMEM_PGOFF_FILL_RING as i64,
            &off.fr,
        );
        let comp = Ring::map(
            &fd,
            RING_SIZE,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64,
            &off.cr,
        );
        let rx = Ring::map(&fd, RING_SIZE, libc::XDP_PGOFF_RX_RING, &off.rx);
        let tx = Ring::map(&fd, RING_SIZE, libc::XDP_PGOFF_TX_RING, &off.tx);
        let (fill, comp, rx, tx) = match (fill, comp, rx, tx) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                return Err(map_err(e));
            }
        };
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: idx,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // No mode flag: the kernel uses zero-copy when the driver has it, copy mode otherwise.
        sys::bind(&fd, &addr).map_err(sys_err(
            name,
            "bind(AF_XDP)",
            "is the queue index valid and the interface up?",
        ))?;
        let mut opts = libc::xdp_options { flags: 0 };
        let copy_mode = match sys::getsockopt(&fd, libc::SOL_XDP, libc::XDP_OPTIONS, &mut opts) {
            Ok(()) => opts.flags & libc::XDP_OPTIONS_ZEROCOPY == 0,
            Err(_) => true,
        };
        let xdp = XdpRedirect::attach(idx, queue + 1, attach).map_err(|source| PortError::Xdp {
            port: name.to_string(),
            ifname: ifname.to_string(),
            source,
        })?;
        xdp.register(queue, fd.as_raw_fd())
            .map_err(|source| PortError::Xdp {
                port: name.to_string(),
                ifname: ifname.to_string(),
                source,
            })?;
        log::info!(
            "port {name}: AF_XDP on {ifname} queue {queue}, XDP {} mode, {} UMEM of {} bytes{}",
            xdp.mode,
            if copy_mode { "copy-mode" } else { "zero-copy" },
            mem.len(),
            if mem.hugepages() { " on hugepages" } else { "" }
        );
        if busy_poll {
            enable_busy_poll(name, ifname, &fd)?;
        }
        let mut port = Self {
            name: name.to_string(),
            fill,
            comp,
            rx,
            tx,
            fill_out: 0,
            _xdp: xdp,
            fd,
            _umem: mem,
            copy_mode,
            busy_poll,
        };
        port.refill(pool);
        Ok(port)
    }

    fn refill(&mut self, pool: &mut FramePool) {
        let want = FILL_FRAMES.saturating_sub(self.fill_out);
        if want == 0 {
            return;
        }
        let n = self.fill.free_entries(want).min(pool.available() as u32);
        let mut i = 0;
        while i < n {
            let Some(chunk) = pool.alloc() else { break };
            self.fill.write(i, u64::from(chunk));
            i += 1;
        }
        if i > 0 {
            self.fill.submit(i);
            self.fill_out += i;
        }
    }

    fn reclaim(&mut self, pool: &mut FramePool) {
        let n = self.comp.ready(RING_SIZE);
        for i in 0..n {
            pool.free(self.comp.read(i) as u32);
        }
        if n > 0 {
            self.comp.release(n);
        }
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, pool: &mut FramePool, out: &mut [Frame]) -> usize {
        let n = self.rx.ready(out.len() as u32);
        for i in 0..n {
            let d = self.rx.read(i);
            out[i as usize] = Frame {
                addr: d.addr as u32,
                len: d.len as u16,
            };
        }
        if n > 0 {
            self.rx.release(n);
            self.fill_out -= n;
            self.refill(pool);
        }
        n as usize
    }

    fn tx_burst(&mut self, pool: &mut FramePool, frames: &[Frame]) -> usize {
        let mut n = self.tx.free_entries(frames.len() as u32);
        if n < frames.len() as u32 {
            // Make room: completions may have freed TX slots' buffers meanwhile.
            self.reclaim(pool);
            n = self.tx.free_entries(frames.len() as u32);
        }
        for (i, f) in frames[..n as usize].iter().enumerate() {
            self.tx.write(
                i as u32,
                libc::xdp_desc {
                    addr: u64::from(f.addr),
                    len: u32::from(f.len),
                    options: 0,
                },
            );
        }
        if n > 0 {
            self.tx.submit(n);
            if self.copy_mode || self.tx.needs_wakeup() {
                kick_tx(self.fd.as_raw_fd());
            }
        }
        n as usize
    }

    fn maintain(&mut self, pool: &mut FramePool) {
        self.reclaim(pool);
        self.refill(pool);
        if self.busy_poll || self.fill.needs_wakeup() {
            kick_rx(self.fd.as_raw_fd());
        }
        // Copy mode transmits only inside sendto(); keep kicking while frames wait.
        if self.copy_mode && self.tx.in_flight() > 0 {
            kick_tx(self.fd.as_raw_fd());
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        // SAFETY: xdp_statistics is plain integers; all-zero is a valid value to overwrite.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        if sys::getsockopt(&self.fd, libc::SOL_XDP, libc::XDP_STATISTICS, &mut st).is_ok() {
            log::info!(
                "port {}: XSK rx_dropped {} rx_ring_full {} fill_ring_empty {} rx_invalid {} tx_invalid {} tx_ring_empty {}",
                self.name,
                st.rx_dropped,
                st.rx_ring_full,
                st.rx_fill_ring_empty_descs,
                st.rx_invalid_descs,
                st.tx_invalid_descs,
                st.tx_ring_empty_descs
            );
        }
    }
}
