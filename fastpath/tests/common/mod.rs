//! Helpers for the veth/netns tests: namespaces that always go away (Drop), commands that
//! fail loudly, ICMP echo and UDP from inside a namespace, and a supervised fastpath process.

// Test-only helpers: a failed setup step must fail the test loudly, like unwrap in #[test].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fastpath::control::client::ControlClient;
use fastpath::control::messages::{PortStats, Request, Response};
use socket2::{Domain, Protocol, Socket, Type};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test with a clear message when it cannot run here.
pub fn require_root_and_ip() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc_geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (network namespaces, AF_XDP, AF_PACKET); run it as root"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs `ip` from iproute2 (apt-get install iproute2)"
    );
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command; panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces owned by one test; removed on drop, even when the test panics.
pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new(tag: &str) -> Self {
        require_root_and_ip();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("fpt{}-{tag}{n}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// Creates namespace `<prefix>-<short>` with lo up; returns its name.
    pub fn ns(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.prefix);
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair between two namespaces, both ends up.
    pub fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) {
        run(
            "ip",
            &[
                "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns",
                ns_b,
            ],
        );
        run("ip", &["-n", ns_a, "link", "set", if_a, "up"]);
        run("ip", &["-n", ns_b, "link", "set", if_b, "up"]);
    }

    /// Turns off TX checksum offload on a host's veth. A veth hands locally generated
    /// TCP/UDP frames over with the checksum not yet computed (CHECKSUM_PARTIAL); a user-space
    /// forwarder sees and forwards them as they are, so the receiver would drop them. Real
    /// NICs compute the checksum; on veth the host side must (as for DPDK's af_packet PMD).
    pub fn tx_checksum_off(&self, ns: &str, ifname: &str) {
        let ok = Command::new("ethtool")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "this test needs ethtool (apt-get install ethtool)");
        run(
            "ip",
            &["netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"],
        );
    }

    /// Adds an address (no DAD for IPv6).
    pub fn addr(&self, ns: &str, ifname: &str, cidr: &str) {
        if cidr.contains(':') {
            run(
                "ip",
                &["-n", ns, "addr", "add", cidr, "dev", ifname, "nodad"],
            );
        } else {
            run("ip", &["-n", ns, "addr", "add", cidr, "dev", ifname]);
        }
    }

    /// An interface counter from /sys inside the namespace.
    pub fn counter(&self, ns: &str, ifname: &str, which: &str) -> u64 {
        let path = format!("/sys/class/net/{ifname}/statistics/{which}");
        run("ip", &["netns", "exec", ns, "cat", &path])
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Runs `f` on a thread that entered namespace `ns`.
    pub fn in_ns<R: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file =
                std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("thread in namespace {ns} panicked"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an Ethernet frame with an 802.1Q tag carrying IPv4/UDP (UDP checksum 0).
pub fn tagged_udp4(
    dst: [u8; 6],
    src: [u8; 6],
    vid: u16,
    sip: [u8; 4],
    dip: [u8; 4],
    dport: u16,
) -> Vec<u8> {
    let payload = b"tagged datagram";
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Sends a raw Ethernet frame out of `ifname` in namespace `ns` (AF_PACKET).
pub fn send_raw(lab: &Lab, ns: &str, ifname: &str, frame: Vec<u8>) {
    let ifname = ifname.to_string();
    lab.in_ns(ns, move || {
        let c = std::ffi::CString::new(ifname.clone()).unwrap();
        // SAFETY: c is a valid NUL-terminated string for the call.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(idx, 0, "no interface {ifname}");
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain integers; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = idx as i32;
        sll.sll_halen = 6;
        // SAFETY: frame and sll outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
        assert_eq!(n, frame.len() as isize, "sendto on {ifname}: {err}");
    })
}

/// The MAC address of `ifname` in namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let text = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{ifname}/address"),
        ],
    );
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// Receives up to `count` datagrams on UDP `port` in namespace `ns` while `send` runs.
pub fn udp_receive_while(lab: &Lab, ns: &str, port: u16, count: u32, send: impl FnOnce()) -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = format!("/run/netns/{ns}");
    let receiver = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        tx.send(()).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 100];
        while got < count && sock.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    rx.recv().unwrap();
    let _ = lab;
    send();
    receiver.join().unwrap()
}

/// Sends `count` ICMP echo requests from namespace `ns` to `dst`; returns replies received.
pub fn ping(lab: &Lab, ns: &str, dst: IpAddr, count: u16) -> u16 {
    lab.in_ns(ns, move || {
        let v6 = dst.is_ipv6();
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let sock =
            Socket::new(domain, Type::RAW, Some(proto)).expect("raw ICMP socket (needs root)");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let id = (std::process::id() & 0xffff) as u16;
        let mut replies = 0;
        for seq in 0..count {
            let mut msg = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
            msg.extend_from_slice(&id.to_be_bytes());
            msg.extend_from_slice(&seq.to_be_bytes());
            msg.extend_from_slice(b"fastpath-ping-test");
            if !v6 {
                let c = checksum(&msg);
                msg[2..4].copy_from_slice(&c.to_be_bytes());
            }
            sock.send_to(&msg, &SocketAddr::new(dst, 0).into())
                .expect("send echo request");
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
                let Ok(n) = sock.recv(&mut buf) else { continue };
                // SAFETY: recv initialised the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|x| unsafe { x.assume_init() })
                    .collect();
                let icmp = if v6 {
                    &b[..]
                } else {
                    &b[usize::from(b[0] & 0x0f) * 4..]
                };
                let want = if v6 { 129 } else { 0 };
                if icmp.len() >= 8
                    && icmp[0] == want
                    && icmp[4..6] == id.to_be_bytes()
                    && icmp[6..8] == seq.to_be_bytes()
                {
                    replies += 1;
                    break;
                }
            }
        }
        replies
    })
}

/// Sends `count` UDP datagrams from namespace `from` to `dst:port` in namespace `to`; returns
/// how many arrived.
pub fn udp(lab: &Lab, from: &str, to: &str, dst: IpAddr, port: u16, count: u32) -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    let to_ns = format!("/run/netns/{to}");
    let receiver = std::thread::spawn(move || {
        let file = std::fs::File::open(&to_ns).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let bind: SocketAddr = if dst.is_ipv6() {
            format!("[::]:{port}")
        } else {
            format!("0.0.0.0:{port}")
        }
        .parse()
        .unwrap();
        let sock = std::net::UdpSocket::bind(bind).expect("bind UDP receiver");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        tx.send(()).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 100];
        while got < count && sock.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    rx.recv().unwrap();
    lab.in_ns(from, move || {
        let bind: SocketAddr = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .unwrap();
        let sock = std::net::UdpSocket::bind(bind).unwrap();
        for i in 0..count {
            sock.send_to(
                format!("datagram {i}").as_bytes(),
                SocketAddr::new(dst, port),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    receiver.join().unwrap()
}

/// A fastpath process in a namespace, killed on drop.
pub struct FastpathProc {
    child: Child,
    pub control: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FastpathProc {
    /// Starts `fastpath run` in `ns` with `config` (TOML) and waits for its control socket.
    pub fn start(ns: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("fastpath.toml");
        std::fs::File::create(&cfg)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let control = dir.path().join("control.sock");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_fastpath"),
                "run",
                "--config",
            ])
            .arg(&cfg)
            .arg("--control")
            .arg(&control)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("fastpath.log")).unwrap())
            .spawn()
            .expect("spawn fastpath");
        let log = dir.path().join("fastpath.log");
        let mut p = Self {
            child,
            control,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("fastpath exited with {status}: {}", p.log_text());
            }
            if ControlClient::connect(&p.control)
                .and_then(|mut c| c.request(&Request::GetStats))
                .is_ok()
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "fastpath did not open its control socket within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What fastpath logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn request(&self, req: &Request) -> Response {
        ControlClient::connect(&self.control)
            .unwrap()
            .request(req)
            .unwrap()
    }

    pub fn stats(&self, port: &str) -> PortStats {
        match self.request(&Request::GetStats) {
            Response::Stats(s) => s.into_iter().find(|p| p.name == port).unwrap(),
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

impl Drop for FastpathProc {
    fn drop(&mut self) {
        // SIGTERM lets fastpath detach XDP and close its sockets; then reap it.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if std::thread::panicking() {
            eprintln!("fastpath log:\n{}", self.log_text());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
