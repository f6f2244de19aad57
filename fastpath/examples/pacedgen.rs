//! A paced UDP frame generator for loss measurements below the saturation point (the peers
//! tool's `fpgen` only blasts as fast as it can). Sends 60-byte Ethernet/IPv4/UDP frames
//! (64 bytes on a wire) out of one interface through an AF_PACKET socket with
//! PACKET_QDISC_BYPASS, in batches of 32 via `sendmmsg`, at a fixed rate for a fixed time.
//!
//! usage: pacedgen IFNAME DST_MAC SRC_MAC RATE_PPS SECONDS
//! prints: `pacedgen offered=N accepted=N refused=N secs=F`
//!   offered = frames handed to the kernel, accepted = frames it took (the rest were refused
//!   with ENOBUFS: the path behind was full).
//!
//! Used by `benches/veth_loss.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

const BATCH: usize = 32;

fn mac(text: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).expect("MAC like 02:00:00:00:00:01"))
        .collect();
    assert_eq!(parts.len(), 6, "MAC like 02:00:00:00:00:01");
    m.copy_from_slice(&parts);
    m
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    // IPv4: 198.18.0.1 -> 198.18.0.2 (RFC 2544 range), UDP 9 -> 9, checksum 0.
    let ip = [
        0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ];
    f[14..34].copy_from_slice(&ip);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..42].copy_from_slice(&[0, 9, 0, 9, 0, 26, 0, 0]);
    f
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        args.len(),
        6,
        "usage: pacedgen IFNAME DST_MAC SRC_MAC RATE_PPS SECONDS"
    );
    let ifname = std::ffi::CString::new(args[1].clone()).unwrap();
    let data = frame(mac(&args[2]), mac(&args[3]));
    let rate: f64 = args[4].parse().expect("RATE_PPS is a number");
    let secs: f64 = args[5].parse().expect("SECONDS is a number");

    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a live int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            4,
        )
    };
    // SAFETY: ifname is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {}", args[1]);
    // SAFETY: sockaddr_ll is plain integers.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a complete sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());

    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: mmsghdr is plain data; all-zero is valid before the fields are set.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let (mut offered, mut accepted, mut refused) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = Duration::from_secs_f64(secs);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= end {
            break;
        }
        // Frames due by now; send in batches, spin (with short sleeps) while ahead.
        let due = (elapsed.as_secs_f64() * rate) as u64;
        if offered >= due {
            let ahead = (offered - due) as f64 / rate;
            if ahead > 0.000_2 {
                std::thread::sleep(Duration::from_secs_f64(ahead / 2.0));
            }
            continue;
        }
        let n = ((due - offered) as usize).min(BATCH);
        // SAFETY: msgs has BATCH >= n entries pointing to iov, which points to data; all live.
        let sent = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        let sent = if sent < 0 { 0 } else { sent as u64 };
        accepted += sent;
        // The frame after the last accepted one was refused (ENOBUFS); the rest of the
        // batch counts as offered and refused too, so the offered rate stays the target.
        refused += n as u64 - sent;
        offered += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: fd is ours, closed once.
    unsafe { libc::close(fd) };
    println!("pacedgen offered={offered} accepted={accepted} refused={refused} secs={secs:.4}");
}
