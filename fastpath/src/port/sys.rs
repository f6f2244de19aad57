//! Small safe wrappers over the socket and mmap calls the kernel ports need.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// Opens a socket; the fd closes on drop.
pub(crate) fn socket(domain: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt` with a plain-old-data value.
pub(crate) fn setsockopt<T: Copy>(
    fd: &OwnedFd,
    level: i32,
    name: i32,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: value points to size_of::<T>() readable bytes for the duration of the call; T
    // is a #[repr(C)] kernel struct or an integer at every call site.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `getsockopt` into a plain-old-data value.
pub(crate) fn getsockopt<T: Copy>(
    fd: &OwnedFd,
    level: i32,
    name: i32,
    value: &mut T,
) -> std::io::Result<()> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value points to size_of::<T>() writable bytes; len tells the kernel that size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Binds with a raw sockaddr struct.
pub(crate) fn bind<T: Copy>(fd: &OwnedFd, addr: &T) -> std::io::Result<()> {
    // SAFETY: addr points to a complete sockaddr_* struct of size_of::<T>() bytes.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Asks the kernel to transmit what is queued on a TX ring (AF_XDP copy mode, AF_PACKET).
/// EAGAIN/ENOBUFS/EBUSY mean "try again next round" and are not errors here.
pub(crate) fn kick_tx(fd: RawFd) {
    // SAFETY: a zero-length send with a null buffer is the documented TX-ring kick; no memory
    // is read.
    unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
}

/// Lets the kernel refill an RX path that asked for a wakeup (need_wakeup / busy poll).
pub(crate) fn kick_rx(fd: RawFd) {
    // SAFETY: a zero-length receive with a null buffer reads nothing.
    unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// A shared mapping of a socket's ring, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; the port that owns it is the
// only user-space accessor, and ports move between threads only as a whole.
unsafe impl Send for Mmap {}

impl Mmap {
    /// Maps `len` bytes of `fd` at page offset `offset`.
    pub(crate) fn new(fd: &OwnedFd, len: usize, offset: i64) -> std::io::Result<Self> {
        // SAFETY: shared mapping of a socket ring with no address hint; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    /// Start of the mapping.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe the mapping made in `new`, unmapped exactly once here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
