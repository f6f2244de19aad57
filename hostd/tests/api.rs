//! The API over the real socket without booting guests: both encodings, every role,
//! admission and quota refusals with numbers, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ApiError is a fixed-capacity wire type

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{JsonClient, Setup, TestHostd};
use hostd_proto::frame;
use hostd_proto::{
    CreateInstance, CreateStack, DeleteInstance, ErrorCode, InstanceRef, InstanceState, NameRef,
    Principal, Quota, RegroupInstance, RenameInstance, Reply, ReplyEnvelope, Request,
    RequestEnvelope, ResizeInstance, Resource, Response, SetHa, SetStackQuota, VfRequest,
    decode_reply, name,
};

fn create(instance: &str) -> CreateInstance {
    CreateInstance {
        name: name(instance),
        template: name("probe"),
        ..Default::default()
    }
}

/// Definition calls (everything but running guests) in one encoding.
fn definition_calls(call: &mut dyn FnMut(Request) -> Result<Response, hostd_proto::ApiError>) {
    let created = call(Request::CreateInstance(CreateInstance {
        group: Some(name("edge")),
        ..create("web-1")
    }))
    .unwrap();
    let Response::Instance(info) = created else {
        panic!("{created:?}")
    };
    assert_eq!(info.state, InstanceState::Defined);
    assert_eq!(info.template_version, 1);
    assert_eq!(info.cores.len(), 1);
    let iref = |n: &str| InstanceRef { instance: name(n) };
    let Response::Instance(renamed) = call(Request::RenameInstance(RenameInstance {
        instance: name("web-1"),
        new_name: name("web-2"),
    }))
    .unwrap() else {
        panic!()
    };
    assert_eq!(renamed.name.as_str(), "web-2");
    assert_eq!(renamed.id, info.id, "the id is immutable");
    let by_id = format!("i-{}", info.id);
    let Response::Instance(regrouped) = call(Request::RegroupInstance(RegroupInstance {
        instance: name(&by_id),
        group: None,
    }))
    .unwrap() else {
        panic!()
    };
    assert_eq!(regrouped.group, None);
    let Response::Instance(ha) = call(Request::SetInstanceHa(SetHa {
        instance: name("web-2"),
        enabled: true,
    }))
    .unwrap() else {
        panic!()
    };
    assert!(ha.ha);
    let Response::Instance(resized) = call(Request::ResizeInstance(ResizeInstance {
        instance: name("web-2"),
        vcpus: Some(2),
        ram_mib: Some(128),
        disk_gib: Some(1),
    }))
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (
            resized.vcpus,
            resized.ram_mib,
            resized.disk_gib,
            resized.cores.len()
        ),
        (2, 128, 1, 2)
    );
    let Response::Instances(list) = call(Request::ListInstances(Default::default())).unwrap()
    else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    // Stopping a defined instance is a no-op that says where it is.
    let Response::Instance(same) = call(Request::StopInstance(hostd_proto::StopInstance {
        instance: name("web-2"),
        ..Default::default()
    }))
    .unwrap() else {
        panic!()
    };
    assert_eq!(same.state, InstanceState::Defined);
    let err = call(Request::PauseInstance(iref("web-2"))).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidState);
    assert_eq!(
        call(Request::DeleteInstance(DeleteInstance {
            instance: name("web-2"),
            force: false
        }))
        .unwrap(),
        Response::Done
    );
    let err = call(Request::ShowInstance(iref("web-2"))).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let Response::Templates(templates) = call(Request::ListTemplates).unwrap() else {
        panic!()
    };
    assert_eq!(templates[0].name.as_str(), "probe");
    let Response::Events(page) = call(Request::ListEvents(hostd_proto::EventQuery {
        newest: true,
        limit: 3,
        ..Default::default()
    }))
    .unwrap() else {
        panic!()
    };
    assert_eq!(page.events.len(), 3);
    assert!(matches!(
        page.events[2].kind,
        hostd_proto::EventKind::Deleted
    ));
    assert!(matches!(
        call(Request::HostStatus).unwrap(),
        Response::HostStatus(_)
    ));
    assert!(matches!(
        call(Request::Inventory).unwrap(),
        Response::Inventory(_)
    ));
}

#[test]
fn definition_calls_work_in_both_encodings() {
    common::big_stack(definition_calls_work_in_both_encodings_body);
}

fn definition_calls_work_in_both_encodings_body() {
    let hostd = TestHostd::start(Setup::default());
    let mut binary = hostd.client();
    definition_calls(&mut |r| match binary.call(r) {
        Ok(response) => Ok(response),
        Err(hostd::client::ClientError::Api(err)) => Err(err),
        Err(err) => panic!("{err}"),
    });
    let mut json = JsonClient::connect(&hostd.socket());
    definition_calls(&mut |r| json.call(r));
    // The raw JSON form, as the GUI writes it.
    let reply =
        json.raw(r#"{"version":2,"id":77,"request":{"show_instance":{"instance":"nope"}}}"#);
    assert_eq!(reply["id"], 77);
    assert_eq!(reply["reply"]["error"]["code"], "not_found");
    let reply = json.raw(r#"{"version":2,"id":78,"request":"host_status"}"#);
    assert_eq!(reply["reply"]["ok"]["host_status"]["sim"], true);
}

#[test]
fn admission_refuses_overcommit_with_numbers() {
    common::big_stack(admission_refuses_overcommit_with_numbers_body);
}

fn admission_refuses_overcommit_with_numbers_body() {
    let hostd = TestHostd::start(Setup::default());
    // Two guest cores: 3 vCPUs cannot be had.
    let err = hostd.refused(
        Request::CreateInstance(CreateInstance {
            vcpus: Some(3),
            ..create("big")
        }),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message
            .starts_with("needs 3 guest cores, 2 free (cores 0,1)"),
        "{}",
        err.message
    );
    assert_eq!(err.shortfall.unwrap().resource, Resource::GuestCores);
    hostd.ok(Request::CreateInstance(create("a")));
    hostd.ok(Request::CreateInstance(create("b")));
    let err = hostd.refused(
        Request::CreateInstance(create("c")),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message
            .starts_with("needs 1 guest core, 0 free (cores none); held by a (0), b (1)"),
        "{}",
        err.message
    );
    hostd.ok(Request::DeleteInstance(DeleteInstance {
        instance: name("b"),
        force: false,
    }));
    // RAM: far more than the machine has.
    let err = hostd.refused(
        Request::CreateInstance(CreateInstance {
            ram_mib: Some(64 << 20),
            ..create("fat")
        }),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message
            .starts_with(&format!("needs {} MiB of guest RAM", 64 << 20)),
        "{}",
        err.message
    );
    assert_eq!(err.shortfall.unwrap().resource, Resource::RamMib);
    // VFs: the simulated NIC has 14; 8 + 8 do not fit.
    let eight = || Some((0..8).map(|_| VfRequest::default()).collect());
    hostd.ok(Request::ResizeInstance(ResizeInstance {
        instance: name("a"),
        vcpus: Some(1),
        ..Default::default()
    }));
    hostd.ok(Request::DeleteInstance(DeleteInstance {
        instance: name("a"),
        force: false,
    }));
    hostd.ok(Request::CreateInstance(CreateInstance {
        vfs: eight(),
        ..create("v1")
    }));
    let err = hostd.refused(
        Request::CreateInstance(CreateInstance {
            vfs: eight(),
            ..create("v2")
        }),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message.starts_with("needs 8 VFs, 6 free"),
        "{}",
        err.message
    );
    // Bad VF settings are refused by the sriov checks, naming the VF.
    let bad = VfRequest {
        vlan: Some(4095),
        ..Default::default()
    };
    let err = hostd.refused(
        Request::CreateInstance(CreateInstance {
            vfs: Some([bad].into_iter().collect()),
            ..create("v3")
        }),
        ErrorCode::InvalidArgument,
    );
    assert!(
        err.message.contains("VF 0: VLAN 4095 is out of range"),
        "{}",
        err.message
    );
    // Resize checks the cores again: v1 keeps its own and needs one more.
    hostd.ok(Request::CreateInstance(create("hold")));
    let err = hostd.refused(
        Request::ResizeInstance(ResizeInstance {
            instance: name("v1"),
            disk_gib: Some(0),
            vcpus: Some(2),
            ..Default::default()
        }),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message.contains("needs 2 guest cores, 1 free"),
        "{}",
        err.message
    );
}

const STACK_ADMIN: u32 = 65533;
const VIEWER: u32 = 65534;
const NOGROUP: u32 = 65534;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn roles_limit_what_each_caller_sees_and_does() {
    common::big_stack(roles_limit_what_each_caller_sees_and_does_body);
}

fn roles_limit_what_each_caller_sees_and_does_body() {
    let hostd = TestHostd::start(Setup::default());
    let mut admins = hostd_proto::heapless::Vec::new();
    admins.push(Principal::Uid(STACK_ADMIN)).unwrap();
    hostd.ok(Request::CreateStack(CreateStack {
        name: name("blue"),
        admins,
        quota: Quota {
            instances: Some(1),
            vcpus: Some(1),
            ..Default::default()
        },
    }));
    hostd.ok(Request::CreateStack(CreateStack {
        name: name("red"),
        ..Default::default()
    }));
    hostd.ok(Request::CreateInstance(CreateInstance {
        stack: Some(name("red")),
        ..create("red-1")
    }));

    // Stack admin: creates in their stack (within quota), cannot see red's, cannot go
    // outside their stack, cannot manage templates.
    let whoami = hostd.hostctl_as(STACK_ADMIN, NOGROUP, &["--json", "whoami"]);
    assert_eq!(json_of(&whoami)["hello"]["role"], "stack_admin");
    let out = hostd.hostctl_as(
        STACK_ADMIN,
        NOGROUP,
        &["create", "blue-1", "--template", "probe", "--stack", "blue"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hostd.hostctl_as(
        STACK_ADMIN,
        NOGROUP,
        &["create", "blue-2", "--template", "probe", "--stack", "blue"],
    );
    assert_eq!(out.status.code(), Some(6), "quota refusal exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stack blue allows 1 instances, 1 in use, 0 left"),
        "{stderr}"
    );
    let list = json_of(&hostd.hostctl_as(STACK_ADMIN, NOGROUP, &["--json", "list"]));
    let names: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["blue-1"],
        "a stack admin sees only their stacks' instances"
    );
    for args in [
        &["show", "red-1"][..],
        &["delete", "red-1"],
        &["start", "red-1"],
    ] {
        let out = hostd.hostctl_as(STACK_ADMIN, NOGROUP, args);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: another stack's guest is not found"
        );
    }
    let out = hostd.hostctl_as(
        STACK_ADMIN,
        NOGROUP,
        &["create", "loose", "--template", "probe"],
    );
    assert_eq!(out.status.code(), Some(5));
    let out = hostd.hostctl_as(STACK_ADMIN, NOGROUP, &["template", "delete", "probe"]);
    assert_eq!(out.status.code(), Some(5));
    let stacks = json_of(&hostd.hostctl_as(STACK_ADMIN, NOGROUP, &["--json", "stack", "list"]));
    assert_eq!(stacks["stacks"].as_array().unwrap().len(), 1);
    // The JSON form answers the same way for the same user.
    let raw = hostd.hostctl_as(
        STACK_ADMIN,
        NOGROUP,
        &[
            "raw",
            r#"{"version":2,"id":3,"request":{"show_instance":{"instance":"red-1"}}}"#,
        ],
    );
    assert_eq!(json_of(&raw)["reply"]["error"]["code"], "not_found");

    // Viewer: sees everything, changes nothing.
    let whoami = json_of(&hostd.hostctl_as(VIEWER, NOGROUP, &["--json", "whoami"]));
    assert_eq!(whoami["hello"]["role"], "viewer");
    let list = json_of(&hostd.hostctl_as(VIEWER, NOGROUP, &["--json", "list"]));
    assert_eq!(list["instances"].as_array().unwrap().len(), 2);
    for args in [
        &["start", "red-1"][..],
        &["rename", "red-1", "x"],
        &["console", "red-1"],
        &["stack", "delete", "red"],
    ] {
        let out = hostd.hostctl_as(VIEWER, NOGROUP, args);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = hostd.hostctl_as(
        VIEWER,
        NOGROUP,
        &["create", "v", "--template", "probe", "--stack", "red"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("a viewer (read-only) may not"));

    // Admin: everything, including quota changes that let the stack admin go on.
    hostd.ok(Request::SetStackQuota(SetStackQuota {
        name: name("blue"),
        quota: Quota::default(),
    }));
    hostd.ok(Request::DeleteInstance(DeleteInstance {
        instance: name("red-1"),
        force: false,
    }));
    let out = hostd.hostctl_as(
        STACK_ADMIN,
        NOGROUP,
        &["create", "blue-2", "--template", "probe", "--stack", "blue"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = hostd.refused(
        Request::DeleteStack(NameRef { name: name("blue") }),
        ErrorCode::InvalidState,
    );
    assert!(err.message.contains("still has instances"));
    // Events name the actor from the socket's peer credentials.
    let Response::Events(page) = hostd.ok(Request::ListEvents(hostd_proto::EventQuery {
        newest: true,
        limit: 1,
        ..Default::default()
    })) else {
        panic!()
    };
    assert!(
        matches!(
            page.events[0].actor,
            hostd_proto::Actor::User {
                uid: STACK_ADMIN,
                ..
            }
        ),
        "{:?}",
        page.events[0]
    );
}

fn read_reply(stream: &mut UnixStream) -> ReplyEnvelope {
    let mut body = Vec::new();
    frame::read_frame(stream, &mut body).unwrap();
    decode_reply(&body).unwrap()
}

fn error_code(reply: &ReplyEnvelope) -> ErrorCode {
    match &reply.reply {
        Reply::Error(err) => err.code,
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_input_gets_typed_errors_and_the_daemon_keeps_serving() {
    common::big_stack(bad_input_gets_typed_errors_and_the_daemon_keeps_serving_body);
}

fn bad_input_gets_typed_errors_and_the_daemon_keeps_serving_body() {
    let hostd = TestHostd::start(Setup::default());
    // Oversized frame: an error reply, then the connection is closed.
    let mut big = UnixStream::connect(hostd.socket()).unwrap();
    big.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    assert_eq!(error_code(&read_reply(&mut big)), ErrorCode::FrameTooLarge);
    let mut rest = Vec::new();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        big.read_to_end(&mut rest).unwrap(),
        0,
        "closed after an oversized frame"
    );

    // Garbage body: bad_request, and the connection stays usable.
    let mut garbage = UnixStream::connect(hostd.socket()).unwrap();
    // Postcard varints: the current version (one byte below 128), id 5, then no valid request.
    let version = u8::try_from(hostd_proto::PROTOCOL_VERSION).unwrap();
    assert!(
        version < 0x80,
        "the version must stay a one-byte varint here"
    );
    let junk = [version, 0x05, 0xff, 0xff, 0xff, 0x13, 0x37];
    garbage
        .write_all(&(junk.len() as u32).to_le_bytes())
        .unwrap();
    garbage.write_all(&junk).unwrap();
    let reply = read_reply(&mut garbage);
    assert_eq!(reply.id, 5, "the id is read before the bad part");
    assert_eq!(error_code(&reply), ErrorCode::BadRequest);
    let hello = RequestEnvelope {
        version: hostd_proto::PROTOCOL_VERSION,
        id: 6,
        request: Request::Hello,
    };
    frame::write_frame(&mut garbage, &hello).unwrap();
    assert!(matches!(
        read_reply(&mut garbage).reply,
        Reply::Ok(Response::Hello(_))
    ));

    // Another protocol version.
    let other = RequestEnvelope {
        version: 99,
        id: 7,
        request: Request::Hello,
    };
    frame::write_frame(&mut garbage, &other).unwrap();
    let reply = read_reply(&mut garbage);
    assert_eq!(
        (reply.id, error_code(&reply)),
        (7, ErrorCode::UnsupportedVersion)
    );

    // Truncated frame: the client goes away mid-frame; nothing breaks.
    let mut cut = UnixStream::connect(hostd.socket()).unwrap();
    cut.write_all(&100u32.to_le_bytes()).unwrap();
    cut.write_all(&[1, 2, 3]).unwrap();
    drop(cut);

    // JSON: wrong types and garbage keep the id and the connection.
    let mut json = JsonClient::connect(&hostd.socket());
    let reply = json.raw(r#"{"version":2,"id":9,"request":{"start_instance":{"instance":42}}}"#);
    assert_eq!(
        (
            reply["id"].as_u64(),
            reply["reply"]["error"]["code"].as_str()
        ),
        (Some(9), Some("bad_request"))
    );
    let reply = json.raw(r#"{"version":2,"id":10,"request":{"no_such_call":{}}}"#);
    assert_eq!(reply["reply"]["error"]["code"], "bad_request");
    let reply = json.raw(r#"{"version":99,"id":11,"request":"hello"}"#);
    assert_eq!(reply["reply"]["error"]["code"], "unsupported_version");
    let reply = json.raw("{not json at all");
    assert_eq!(reply["reply"]["error"]["code"], "bad_request");
    let reply = json.raw(r#"{"version":2,"id":12,"request":"hello"}"#);
    assert_eq!(reply["reply"]["ok"]["hello"]["role"], "admin");

    // And other clients are served.
    assert!(matches!(
        hostd.ok(Request::HostStatus),
        Response::HostStatus(_)
    ));
}

#[test]
fn hostctl_prints_tables_that_fit_and_documented_exit_codes() {
    common::big_stack(hostctl_prints_tables_that_fit_and_documented_exit_codes_body);
}

fn hostctl_prints_tables_that_fit_and_documented_exit_codes_body() {
    let hostd = TestHostd::start(Setup::default());
    let out = hostd.hostctl(&[
        "create",
        "a-long-instance-name-for-wraps",
        "--template",
        "probe",
        "--group",
        "frontline-group-name",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        &["list"][..],
        &["status"],
        &["inventory"],
        &["template", "list"],
        &["events"],
        &["show", "a-long-instance-name-for-wraps"],
    ] {
        let out = hostd.hostctl(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains('\x1b'), "no colour when not on a terminal");
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{args:?}: {line:?} is wider than 80"
            );
        }
    }
    assert_eq!(hostd.hostctl(&["show", "nope"]).status.code(), Some(4));
    assert_eq!(
        hostd
            .hostctl(&["pause", "a-long-instance-name-for-wraps"])
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        hostd
            .hostctl(&["create", "Bad Name", "--template", "probe"])
            .status
            .code(),
        Some(8)
    );
    assert_eq!(hostd.hostctl(&["frobnicate"]).status.code(), Some(2));
    let unreachable = std::process::Command::new(env!("CARGO_BIN_EXE_hostctl"))
        .args(["--socket", "/nonexistent/hostd.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is hostd running"));
    let completions = hostd.hostctl(&["completions", "bash"]);
    assert!(String::from_utf8_lossy(&completions.stdout).contains("complete -F _hostctl"));
}

#[test]
fn events_follow_and_the_shell_work_from_hostctl() {
    common::big_stack(events_follow_and_the_shell_work_from_hostctl_body);
}

fn events_follow_and_the_shell_work_from_hostctl_body() {
    use std::io::BufRead;
    let hostd = TestHostd::start(Setup::default());
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_hostctl"))
        .args([
            "--socket",
            hostd.socket().to_str().unwrap(),
            "--json",
            "events",
            "--follow",
            "--limit",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A missed event must fail the test, not hang it: end the follower after a while.
    let watchdog = hostd::process::PidFd::open(follow.id()).unwrap();
    std::thread::spawn(move || {
        if !watchdog.wait_exit(Some(Duration::from_secs(20))).unwrap() {
            let _ = watchdog.kill(libc::SIGKILL);
        }
    });
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // The recent page first (one JSON document), then one event per line.
    let mut page = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        page.push_str(&line);
        if line == "}" {
            break;
        }
    }
    assert!(page.contains("hostd_started"), "{page}");
    hostd.ok(Request::CreateInstance(create("followed")));
    let event: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(event["kind"], "created");
    assert_eq!(event["instance"]["name"], "followed");
    follow.kill().unwrap();
    follow.wait().unwrap();

    // The shell reads commands line by line (here from a pipe).
    let mut shell = std::process::Command::new(env!("CARGO_BIN_EXE_hostctl"))
        .args(["--socket", hostd.socket().to_str().unwrap(), "shell"])
        .env("HOME", hostd.dir.path())
        .env("XDG_DATA_HOME", hostd.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"list\nrename followed renamed\nshow nope\nexit\n")
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("followed"), "{text}");
    assert!(text.contains("name:       renamed"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instance nope"));
    assert_eq!(hostd.instance("renamed").name.as_str(), "renamed");
}
