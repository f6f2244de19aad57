//! An AF_PACKET socket bound to one interface and one EtherType: raw Ethernet frames in and
//! out, in the network namespace of the thread that opens it.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{MsgFlags, recv, send, setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// A raw packet socket.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a socket that sends on and receives from `ifindex`, frames of `ethertype` only.
    pub fn bind(ifindex: u32, ethertype: u16) -> io::Result<Self> {
        let proto = ethertype.to_be();
        // SAFETY: socket(2) with constant arguments; it returns a new fd or -1.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes that outlives the call; the
        // kernel only reads it.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sets the receive buffer, past the `rmem_max` limit (needs CAP_NET_ADMIN).
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        setsockopt(&self.fd, sockopt::RcvBufForce, &bytes).map_err(io::Error::from)
    }

    /// How long [`Self::recv`] waits for a frame.
    pub fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        setsockopt(
            &self.fd,
            sockopt::ReceiveTimeout,
            &TimeVal::from(libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: timeout.subsec_micros() as libc::suseconds_t,
            }),
        )
        .map_err(io::Error::from)
    }

    /// Sends one frame on the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let sent = send(self.fd.as_raw_fd(), frame, MsgFlags::empty()).map_err(io::Error::from)?;
        if sent != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    /// Receives one frame; `None` when the receive timeout passes first.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => Ok(Some(n)),
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}
