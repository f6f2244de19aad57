//! Guests that really run (the probe on /dev/kvm): every lifecycle call in both encodings,
//! the console, re-adoption after hostd restarts, HA restarts and the crash loop to `down`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ApiError is a fixed-capacity wire type

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{JsonClient, Setup, TestHostd, big_stack, kvm_guard};
use hostd_proto::{
    ApiError, CreateInstance, DeleteInstance, ErrorCode, EventKind, InstanceRef, InstanceState,
    RebootInstance, Request, ResizeInstance, Response, StopInstance, name,
};

const BOOT: Duration = Duration::from_secs(20);

fn iref(n: &str) -> InstanceRef {
    InstanceRef { instance: name(n) }
}

fn info(response: Result<Response, ApiError>) -> hostd_proto::InstanceInfo {
    match response {
        Ok(Response::Instance(info)) => info,
        other => panic!("{other:?}"),
    }
}

/// Reads the console until `want` appears.
fn console_until(stream: &mut std::os::unix::net::UnixStream, want: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + BOOT;
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains(want) {
        assert!(
            Instant::now() < deadline,
            "console never showed {want:?}: {seen:?}"
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("console closed: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    seen
}

fn lifecycle(
    hostd: &TestHostd,
    call: &mut dyn FnMut(Request) -> Result<Response, ApiError>,
    vm: &str,
) {
    let created = info(call(Request::CreateInstance(CreateInstance {
        name: name(vm),
        template: name("probe"),
        start: true,
        ..Default::default()
    })));
    assert_eq!(
        created.state,
        InstanceState::Running,
        "create --start answers once it runs"
    );
    let pid = created.vmm_pid.unwrap();
    let paused = info(call(Request::PauseInstance(iref(vm))));
    assert_eq!(paused.state, InstanceState::Paused);
    assert_eq!(
        info(call(Request::ResumeInstance(iref(vm)))).state,
        InstanceState::Running
    );
    let rebooted = info(call(Request::RebootInstance(RebootInstance {
        instance: name(vm),
        hard: true,
    })));
    assert_eq!(
        rebooted.vmm_pid,
        Some(pid),
        "a reboot keeps the VMM process"
    );
    let err = call(Request::ResizeInstance(ResizeInstance {
        instance: name(vm),
        ram_mib: Some(128),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidState);
    assert!(err.message.contains("stop it first"), "{}", err.message);
    let err = call(Request::DeleteInstance(DeleteInstance {
        instance: name(vm),
        force: false,
    }))
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidState);
    // Graceful stop: the probe honours the power button.
    let stopped = info(call(Request::StopInstance(StopInstance {
        instance: name(vm),
        force: false,
        timeout_ms: Some(5000),
    })));
    assert_eq!(
        stopped.state,
        InstanceState::Stopped,
        "{}",
        stopped.state_reason
    );
    assert!(
        stopped.state_reason.contains("powered off"),
        "{}",
        stopped.state_reason
    );
    assert!(!common::alive(pid), "the VMM process is gone");
    let resized = info(call(Request::ResizeInstance(ResizeInstance {
        instance: name(vm),
        ram_mib: Some(96),
        disk_gib: Some(1),
        ..Default::default()
    })));
    assert_eq!((resized.ram_mib, resized.disk_gib), (96, 1));
    let started = info(call(Request::StartInstance(iref(vm))));
    assert_eq!(started.state, InstanceState::Running);
    let disk = hostd
        .state_dir()
        .join(format!("vms/{}/disk.raw", started.id));
    assert_eq!(
        std::fs::metadata(&disk).unwrap().len(),
        1 << 30,
        "disk image made at its size"
    );
    let soft = info(call(Request::RebootInstance(RebootInstance {
        instance: name(vm),
        hard: false,
    })));
    assert_eq!(soft.state, InstanceState::Running);
    // Forced delete of a running guest.
    assert_eq!(
        call(Request::DeleteInstance(DeleteInstance {
            instance: name(vm),
            force: true
        }))
        .unwrap(),
        Response::Done
    );
    assert!(!common::alive(started.vmm_pid.unwrap()));
    assert!(!disk.exists(), "its files are removed");
}

#[test]
fn every_lifecycle_call_in_both_encodings() {
    let _kvm = kvm_guard();
    big_stack(|| {
        let hostd = TestHostd::start(Setup::default());
        let mut binary = hostd.client();
        lifecycle(
            &hostd,
            &mut |r| match binary.call(r) {
                Ok(response) => Ok(response),
                Err(hostd::client::ClientError::Api(err)) => Err(err),
                Err(err) => panic!("{err}"),
            },
            "bin-vm",
        );
        let mut json = JsonClient::connect(&hostd.socket());
        lifecycle(&hostd, &mut |r| json.call(r), "json-vm");
        // Every transition was recorded with an actor and a reason.
        let Response::Events(page) = hostd.ok(Request::ListEvents(hostd_proto::EventQuery {
            newest: true,
            limit: 32,
            ..Default::default()
        })) else {
            panic!()
        };
        assert!(page.events.iter().any(|e| matches!(
            e.kind,
            EventKind::State {
                from: InstanceState::Running,
                to: InstanceState::Stopping
            }
        )));
        assert!(page.events.iter().all(|e| !e.reason.is_empty()));
    });
}

#[test]
fn console_attaches_and_hostctl_leaves_on_the_escape() {
    let _kvm = kvm_guard();
    big_stack(|| {
        let hostd = TestHostd::start(Setup::default());
        hostd.ok(Request::CreateInstance(CreateInstance {
            name: name("con"),
            template: name("probe"),
            start: true,
            ..Default::default()
        }));
        let mut client = hostd.client();
        assert!(matches!(
            client.call(Request::AttachConsole(iref("con"))).unwrap(),
            Response::ConsoleAttached(_)
        ));
        let mut console = client.into_stream();
        console.write_all(b"ticks\n").unwrap();
        console_until(&mut console, "ticks=");
        drop(console);
        // hostctl console: input goes to the guest until Ctrl-], which detaches.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hostctl"))
            .args([
                "--socket",
                hostd.socket().to_str().unwrap(),
                "console",
                "con",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(b"help\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(&[0x1d]).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("help"), "echo of the typed command: {text:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Leave with Ctrl-]"));
        // The guest still runs after the client left.
        assert_eq!(hostd.instance("con").state, InstanceState::Running);
    });
}

#[test]
fn a_restarted_hostd_readopts_running_guests_with_the_same_pids() {
    let _kvm = kvm_guard();
    big_stack(|| {
        let mut hostd = TestHostd::start(Setup::default());
        for vm in ["one", "two"] {
            hostd.ok(Request::CreateInstance(CreateInstance {
                name: name(vm),
                template: name("probe"),
                start: true,
                ..Default::default()
            }));
        }
        let pids: Vec<u32> = ["one", "two"]
            .iter()
            .map(|vm| hostd.instance(vm).vmm_pid.unwrap())
            .collect();
        hostd.restart();
        for (vm, pid) in ["one", "two"].iter().zip(&pids) {
            let found = hostd.instance(vm);
            assert_eq!(found.state, InstanceState::Running);
            assert_eq!(found.vmm_pid, Some(*pid), "{vm} re-adopted, not restarted");
            assert!(common::alive(*pid));
        }
        let Response::Events(page) = hostd.ok(Request::ListEvents(hostd_proto::EventQuery {
            newest: true,
            limit: 8,
            ..Default::default()
        })) else {
            panic!()
        };
        let adopted = page
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Adopted { .. }))
            .count();
        assert_eq!(adopted, 2);
        // The re-adopted VMMs are supervised: a stop still completes.
        let stopped = hostd.ok(Request::StopInstance(StopInstance {
            instance: name("one"),
            force: true,
            timeout_ms: None,
        }));
        assert!(matches!(stopped, Response::Instance(i) if i.state == InstanceState::Stopped));
        // A VMM that dies while hostd is down is noticed at the next start.
        hostd.kill();
        common::kill(pids[1]);
        hostd.launch();
        let two = hostd.instance("two");
        assert_eq!(two.state, InstanceState::Error, "{}", two.state_reason);
        assert!(
            two.state_reason.contains("while hostd was down"),
            "{}",
            two.state_reason
        );
        assert_eq!(two.vmm_pid, None);
    });
}

#[test]
fn ha_restarts_a_killed_guest_and_a_crash_loop_ends_down() {
    let _kvm = kvm_guard();
    big_stack(|| {
        let setup = Setup {
            extra: "[ha]\nmax_failures = 3\nwindow_s = 120\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\n".into(),
            ..Setup::default()
        };
        let mut hostd = TestHostd::start(setup);
        hostd.ok(Request::CreateInstance(CreateInstance {
            name: name("ha"),
            template: name("probe"),
            ha: Some(true),
            start: true,
            ..Default::default()
        }));
        let mut pid = hostd.instance("ha").vmm_pid.unwrap();
        for failure in 1..=2 {
            common::kill(pid);
            let deadline = Instant::now() + BOOT;
            let restarted = loop {
                let i = hostd.instance("ha");
                if i.state == InstanceState::Running && i.vmm_pid.is_some_and(|p| p != pid) {
                    break i;
                }
                assert!(
                    Instant::now() < deadline,
                    "not restarted: {:?} {}",
                    i.state,
                    i.state_reason
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(restarted.ha_failures, failure);
            pid = restarted.vmm_pid.unwrap();
        }
        common::kill(pid);
        let down = hostd.wait_state("ha", InstanceState::Down, BOOT);
        assert!(
            down.state_reason.starts_with("HA gave up after 3 failures"),
            "{}",
            down.state_reason
        );
        // The operator can start it again.
        let started = hostd.ok(Request::StartInstance(iref("ha")));
        assert!(
            matches!(started, Response::Instance(i) if i.state == InstanceState::Running && i.ha_failures == 0)
        );
        // A VMM that dies while hostd is down is restarted by HA once hostd is back.
        let pid = hostd.instance("ha").vmm_pid.unwrap();
        hostd.kill();
        common::kill(pid);
        hostd.launch();
        let deadline = Instant::now() + BOOT;
        loop {
            let i = hostd.instance("ha");
            if i.state == InstanceState::Running && i.vmm_pid.is_some_and(|p| p != pid) {
                assert_eq!(i.ha_failures, 1);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not restarted after hostd came back: {:?} {}",
                i.state,
                i.state_reason
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let Response::Events(page) = hostd.ok(Request::ListEvents(hostd_proto::EventQuery {
            newest: true,
            limit: 32,
            ..Default::default()
        })) else {
            panic!()
        };
        assert!(page.events.iter().any(|e| e.actor == hostd_proto::Actor::Ha
            && matches!(
                e.kind,
                EventKind::State {
                    to: InstanceState::Down,
                    ..
                }
            )));
    });
}
