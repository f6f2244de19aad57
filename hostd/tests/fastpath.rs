//! hostd supervising the real fastpath binary: started from `[fastpath]`, reported by
//! `fastpath_status` and `hostctl fastpath`, its cores kept from guests, restarted after a
//! SIGKILL with events saying so, a bad config refused while hostd keeps serving, re-adopted
//! after hostd is killed, stopped when hostd shuts down, and its counters read from its
//! control socket (memory ports need no privileges; one test uses a veth in a namespace).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ApiError is a fixed-capacity wire type

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Setup, TestHostd, alive, big_stack, fastpath_binary};
use hostd_proto::{
    CreateInstance, ErrorCode, EventKind, EventQuery, FastpathState, FastpathStatus, Request,
    Response, name,
};

/// Two memory ports on core 1 (guest cores are 0-1): runs anywhere, as root.
const MEMORY_PORTS: &str = r#"
[[ports]]
name = "a"
backend = "memory"
vlan = { access = { vlan = 10 } }

[[ports]]
name = "b"
backend = "memory"
vlan = { access = { vlan = 10 } }

[[cores]]
cpu = 1
ports = ["a", "b"]
idle = "sleep"
"#;

/// A hostd with `[fastpath]` enabled and the fastpath config in its own directory. On drop,
/// fastpath processes this test saw are killed if still there (hostd, killed by the common
/// code with SIGKILL, would leave them: they run in their own session on purpose).
struct Lab {
    hostd: TestHostd,
    _files: tempfile::TempDir,
    config: PathBuf,
    seen: Vec<(u32, u64)>,
}

impl Lab {
    fn start(fastpath_config: &str, extra: &str) -> Self {
        assert_eq!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() },
            0,
            "this test runs fastpath (pinned threads, locked memory): run it as root"
        );
        let files = tempfile::tempdir().unwrap();
        let config = files.path().join("fastpath.toml");
        std::fs::write(&config, fastpath_config).unwrap();
        let hostd = TestHostd::start(Setup {
            extra: format!(
                "[ha]\nbackoff_initial_ms = 200\n[fastpath]\nenabled = true\nbinary = \"{}\"\n\
                 config = \"{}\"\nstart_timeout_ms = 10000\nstop_timeout_ms = 3000\n{extra}",
                fastpath_binary().display(),
                config.display()
            ),
            ..Setup::default()
        });
        Self {
            hostd,
            _files: files,
            config,
            seen: Vec::new(),
        }
    }

    fn status(&self) -> FastpathStatus {
        match self.hostd.ok(Request::FastpathStatus) {
            Response::Fastpath(status) => status,
            other => panic!("{other:?}"),
        }
    }

    /// Polls until the fast path is in `state`; remembers its pid for the cleanup.
    fn wait(&mut self, state: FastpathState) -> FastpathStatus {
        self.wait_until(&format!("{state:?}"), |status| status.state == state)
    }

    /// Waits until it runs again, as another process than `old` (right after a kill, hostd
    /// may not have seen the exit yet: the status still says running, with the old pid).
    fn wait_restarted(&mut self, old: u32) -> FastpathStatus {
        self.wait_until(&format!("running again, not as pid {old}"), |status| {
            status.state == FastpathState::Running && status.pid.is_some_and(|pid| pid != old)
        })
    }

    fn wait_until(&mut self, what: &str, done: impl Fn(&FastpathStatus) -> bool) -> FastpathStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if let Some(pid) = status.pid {
                if let Some(start) = hostd::process::start_time(pid) {
                    if !self.seen.contains(&(pid, start)) {
                        self.seen.push((pid, start));
                    }
                }
            }
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the fast path is {:?} ({}), not {what}\n{}",
                status.state,
                status.reason,
                self.hostd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every fast-path event, oldest first.
    fn events(&self) -> Vec<(FastpathState, FastpathState, String)> {
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let Response::Events(page) = self.hostd.ok(Request::ListEvents(EventQuery {
                after,
                limit: 32,
                ..Default::default()
            })) else {
                panic!("not an event page");
            };
            for e in &page.events {
                if let EventKind::Fastpath { from, to } = e.kind {
                    found.push((from, to, e.reason.to_string()));
                }
                after = e.seq;
            }
            if !page.more {
                return found;
            }
        }
    }

    /// SIGTERM to hostd (a shutdown); waits for it to exit and returns its exit status.
    fn shut_down(&mut self) -> std::process::ExitStatus {
        let mut child = self.hostd.child.take().unwrap();
        let pidfd = hostd::process::PidFd::open(child.id()).unwrap();
        pidfd.kill(libc::SIGTERM).unwrap();
        assert!(
            pidfd.wait_exit(Some(Duration::from_secs(20))).unwrap(),
            "hostd did not exit after SIGTERM\n{}",
            self.hostd.log()
        );
        child.wait().unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.hostd.kill();
        for (pid, start) in &self.seen {
            if hostd::process::start_time(*pid) == Some(*start) {
                if let Ok(pidfd) = hostd::process::PidFd::open(*pid) {
                    let _ = pidfd.kill(libc::SIGKILL);
                }
            }
        }
    }
}

fn create(n: &str, vcpus: u16) -> Request {
    Request::CreateInstance(CreateInstance {
        name: name(n),
        template: name("probe"),
        vcpus: Some(vcpus),
        ..Default::default()
    })
}

#[test]
fn hostd_runs_restarts_and_stops_fastpath_and_keeps_its_core_from_guests() {
    big_stack(hostd_runs_restarts_and_stops_fastpath_and_keeps_its_core_from_guests_body);
}

fn hostd_runs_restarts_and_stops_fastpath_and_keeps_its_core_from_guests_body() {
    let mut lab = Lab::start(MEMORY_PORTS, "");
    let running = lab.wait(FastpathState::Running);
    let first = running.pid.unwrap();
    assert!(alive(first));
    assert_eq!(running.cores.as_slice(), [1]);
    assert!(
        running.reason.contains("running on cores 1, 2 ports"),
        "{}",
        running.reason
    );
    // Counters come from fastpath's control socket: both ports, in config order.
    let names: Vec<&str> = running.ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "{:?}", running.stats_error);
    assert_eq!(running.stats_error, None);
    assert!(running.config.ends_with("fastpath.toml"));

    // A guest asking for the fast path's core is refused, naming the fast path; a guest
    // that fits gets the other core.
    let err = lab
        .hostd
        .refused(create("big", 2), ErrorCode::InsufficientResources);
    assert!(
        err.message
            .starts_with("needs 2 guest cores, 1 free (cores 0); held by the fast path (1)"),
        "{}",
        err.message
    );
    let Response::Instance(small) = lab.hostd.ok(create("small", 1)) else {
        panic!("not an instance");
    };
    assert_eq!(small.cores.as_slice(), [0]);
    let Response::Inventory(inventory) = lab.hostd.ok(Request::Inventory) else {
        panic!("not an inventory");
    };
    assert_eq!(inventory.fastpath_cores.as_str(), "1");

    // hostctl shows it in 80 columns; --json gives the API's type.
    let out = lab.hostd.hostctl(&["fastpath"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("fast path:  running since "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("PORT ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("b ")), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    let out = lab.hostd.hostctl(&["--json", "fastpath"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["fastpath"]["state"], "running", "{json}");
    assert_eq!(json["fastpath"]["pid"], first, "{json}");

    // kill -9: hostd sees it, says so, and starts it again after the backoff.
    common::kill(first);
    let restarted = lab.wait_restarted(first);
    let second = restarted.pid.unwrap();
    assert_ne!(second, first);
    assert!(alive(second));
    assert_eq!(restarted.exits, 1);
    assert_eq!(restarted.ports.len(), 2);
    let events = lab.events();
    let exit = events
        .iter()
        .find(|(from, to, _)| (*from, *to) == (FastpathState::Running, FastpathState::Restarting))
        .unwrap_or_else(|| panic!("no exit event: {events:?}"));
    assert!(
        exit.2
            .contains(&format!("pid {first} was killed by signal 9 (SIGKILL)"))
            && exit.2.contains("restart in 200 ms (exit 1 of 3)"),
        "{}",
        exit.2
    );
    let restart = events
        .iter()
        .find(|(from, to, _)| (*from, *to) == (FastpathState::Restarting, FastpathState::Starting))
        .unwrap_or_else(|| panic!("no restart event: {events:?}"));
    assert!(
        restart
            .2
            .starts_with(&format!("restart after exit 1: pid {second} started")),
        "{}",
        restart.2
    );
    assert_eq!(
        events.last().map(|e| (e.0, e.1)),
        Some((FastpathState::Starting, FastpathState::Running)),
        "{events:?}"
    );

    // Shutdown: hostd stops fastpath (SIGTERM) and exits 0.
    let status = lab.shut_down();
    assert!(status.success(), "hostd exited with {status}");
    assert!(
        !alive(second),
        "fastpath {second} outlived hostd's shutdown"
    );
    let log = lab.hostd.log();
    assert!(
        log.contains(&format!("fastpath pid {second} stopped (SIGTERM)")),
        "{log}"
    );
}

#[test]
fn a_bad_config_is_refused_clearly_while_hostd_keeps_serving() {
    big_stack(a_bad_config_is_refused_clearly_while_hostd_keeps_serving_body);
}

fn a_bad_config_is_refused_clearly_while_hostd_keeps_serving_body() {
    let bad = MEMORY_PORTS.replace("vlan = 10 } }\n\n[[ports]]", "vlan = 5000 } }\n\n[[ports]]");
    assert_ne!(bad, MEMORY_PORTS);
    let mut lab = Lab::start(&bad, "");
    let failed = lab.wait(FastpathState::Failed);
    assert!(
        failed
            .reason
            .contains("`fastpath check` refused it: config file ")
            && failed.reason.contains("5000")
            && failed.reason.contains(&lab.config.display().to_string()),
        "{}",
        failed.reason
    );
    assert!(failed.cores.is_empty() && failed.pid.is_none());
    // hostd serves, and with no core held by the fast path a guest may have both.
    let Response::Instance(both) = lab.hostd.ok(create("both", 2)) else {
        panic!("not an instance");
    };
    assert_eq!(both.cores.as_slice(), [0, 1]);
    let out = lab.hostd.hostctl(&["fastpath"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("fast path:  failed since "), "{text}");

    // Fixed, but the guest now holds core 1: refused, naming both.
    std::fs::write(&lab.config, MEMORY_PORTS).unwrap();
    let Response::Fastpath(refused) = lab.hostd.ok(Request::RestartFastpath) else {
        panic!("not a fast-path status");
    };
    assert_eq!(refused.state, FastpathState::Failed);
    assert!(
        refused.reason.contains("core 1 (cores[].cpu in ")
            && refused.reason.contains("is held by guest both (cores 0,1)"),
        "{}",
        refused.reason
    );
    // Without the guest it starts.
    lab.hostd
        .ok(Request::DeleteInstance(hostd_proto::DeleteInstance {
            instance: name("both"),
            force: false,
        }));
    let Response::Fastpath(starting) = lab.hostd.ok(Request::RestartFastpath) else {
        panic!("not a fast-path status");
    };
    assert_eq!(
        starting.state,
        FastpathState::Starting,
        "{}",
        starting.reason
    );
    lab.wait(FastpathState::Running);
    let events = lab.events();
    assert_eq!(
        events.first().map(|e| (e.0, e.1)),
        Some((FastpathState::Disabled, FastpathState::Failed)),
        "{events:?}"
    );
    // Viewers may look but not restart it.
    let out = lab.hostd.hostctl_as(65534, 65534, &["fastpath", "restart"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    lab.shut_down();
}

#[test]
fn a_restarted_hostd_readopts_the_running_fastpath() {
    big_stack(a_restarted_hostd_readopts_the_running_fastpath_body);
}

fn a_restarted_hostd_readopts_the_running_fastpath_body() {
    let mut lab = Lab::start(MEMORY_PORTS, "");
    let pid = lab.wait(FastpathState::Running).pid.unwrap();
    // A crash of hostd leaves the data path alone...
    lab.hostd.kill();
    assert!(alive(pid), "fastpath died with hostd");
    // ...and the next hostd takes it over as it is, core included.
    lab.hostd.launch();
    let adopted = lab.wait(FastpathState::Running);
    assert_eq!(adopted.pid, Some(pid));
    assert_eq!(adopted.cores.as_slice(), [1]);
    assert!(
        adopted
            .reason
            .contains(&format!("re-adopted fastpath pid {pid}")),
        "{}",
        adopted.reason
    );
    assert_eq!(adopted.ports.len(), 2);
    lab.hostd
        .refused(create("big", 2), ErrorCode::InsufficientResources);
    // It is watched again: its death is seen and it is restarted.
    common::kill(pid);
    let restarted = lab.wait_restarted(pid);
    assert_ne!(restarted.pid, Some(pid));
    let events = lab.events();
    assert!(
        events.iter().any(|(from, to, reason)| {
            (*from, *to) == (FastpathState::Running, FastpathState::Restarting)
                && reason.contains("exit status is unknown")
        }),
        "{events:?}"
    );
    lab.shut_down();
}

/// A veth whose far end is in a namespace: fastpath's AF_PACKET port counts what the
/// namespace sends, and hostd reports it (root, `ip` and `bash` needed).
#[test]
fn port_counters_come_from_fastpaths_control_socket() {
    big_stack(port_counters_come_from_fastpaths_control_socket_body);
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs `ip` (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port_counters_come_from_fastpaths_control_socket_body() {
    let tag = std::process::id() % 100_000;
    let ns = Namespace(format!("fph{tag}"));
    let (near, far) = (format!("fph{tag}a"), format!("fph{tag}b"));
    ip(&["netns", "add", &ns.0]);
    // No IPv6 in the namespace: its address autoconfiguration would send frames of its own,
    // and every frame port a counts must be one this test sent.
    ip(&[
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]);
    ip(&[
        "link", "add", &near, "type", "veth", "peer", "name", &far, "netns", &ns.0,
    ]);
    ip(&["link", "set", &near, "up"]);
    ip(&["-n", &ns.0, "link", "set", &far, "up"]);
    ip(&["-n", &ns.0, "addr", "add", "10.251.0.1/24", "dev", &far]);
    let config = MEMORY_PORTS.replace(
        "name = \"a\"\nbackend = \"memory\"",
        &format!("name = \"a\"\nbackend = {{ af_packet = {{ ifname = \"{near}\" }} }}"),
    );
    let mut lab = Lab::start(&config, "");
    let quiet = lab.wait(FastpathState::Running);
    assert_eq!(quiet.ports[0].name.as_str(), "a");
    assert_eq!(quiet.ports[0].rx_packets, 0, "{quiet:?}");
    // A datagram to a neighbour that does not exist: the namespace sends ARP requests for
    // it, which leave through the veth and reach port a.
    ip(&[
        "netns",
        "exec",
        &ns.0,
        "bash",
        "-c",
        "echo hello > /dev/udp/10.251.0.2/9",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = lab.status();
        let a = &status.ports[0];
        if a.rx_packets > 0 {
            // An ARP request is 42 bytes on a veth (no padding to 60).
            assert!(a.rx_bytes >= 42 * a.rx_packets, "{a:?}");
            // Flooded to b, the VLAN's other member.
            assert!(
                status.ports[1].tx_packets + status.ports[1].dropped() > 0,
                "{status:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "port a never counted a frame: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.shut_down();
}
