//! Crash safety: hostd is killed with SIGKILL at random points while a client streams
//! changes; after every restart the state loads and holds every acknowledged change.
//! `HOSTD_CRASH_KILLS` sets the number of kills (default 100; more by hand).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ApiError is a fixed-capacity wire type

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Setup, TestHostd, big_stack};
use hostd::client::{Client, ClientError};
use hostd_proto::{
    CreateInstance, CreateStack, CreateTemplate, InstanceState, NameRef, RegroupInstance, Request,
    Response, TemplateRef, TemplateSpec, name, text,
};
use rand::Rng;

/// What the server acknowledged, and what was sent without an answer (a change in flight
/// at the kill may or may not have been committed).
#[derive(Default, Debug)]
struct Acked {
    /// Template name -> description per acknowledged version.
    templates: BTreeMap<(String, u32), String>,
    /// Stacks acknowledged as created.
    stacks: Vec<String>,
    /// The last acknowledged group of instance `crash`, and groups sent after it.
    group: Option<String>,
    groups_in_flight: Vec<String>,
}

fn mutate(client: &mut Client, n: u64, acked: &Mutex<Acked>) -> Result<(), ClientError> {
    match n % 3 {
        0 => {
            let description = format!("change {n}");
            let request = Request::CreateTemplate(CreateTemplate {
                name: name(&format!("t{}", n % 4)),
                spec: TemplateSpec {
                    description: text(&description),
                    kernel: hostd_proto::bounded("/nonexistent/kernel"),
                    ..Default::default()
                },
            });
            if let Response::Template(t) = client.call(request)? {
                acked
                    .lock()
                    .unwrap()
                    .templates
                    .insert((t.name.to_string(), t.version), description);
            }
        }
        1 => {
            let group = format!("g{n}");
            acked.lock().unwrap().groups_in_flight.push(group.clone());
            client.call(Request::RegroupInstance(RegroupInstance {
                instance: name("crash"),
                group: Some(name(&group)),
            }))?;
            let mut a = acked.lock().unwrap();
            a.groups_in_flight.retain(|g| *g != group);
            a.group = Some(group);
        }
        _ => {
            let stack = format!("s{n}");
            if n < 3 * 30 {
                client.call(Request::CreateStack(CreateStack {
                    name: name(&stack),
                    ..Default::default()
                }))?;
                acked.lock().unwrap().stacks.push(stack);
            }
        }
    }
    Ok(())
}

fn verify(hostd: &TestHostd, acked: &Acked) {
    for ((template, version), description) in &acked.templates {
        let Response::Template(t) = hostd.ok(Request::ShowTemplate(TemplateRef {
            name: name(template),
            version: Some(*version),
        })) else {
            panic!()
        };
        assert_eq!(
            t.spec.description.as_str(),
            description,
            "{template}@{version} lost"
        );
    }
    for stack in &acked.stacks {
        hostd.ok(Request::ShowStack(NameRef { name: name(stack) }));
    }
    let group = hostd.instance("crash").group.map(|g| g.to_string());
    let allowed = group == acked.group
        || group
            .as_ref()
            .is_some_and(|g| acked.groups_in_flight.contains(g));
    assert!(
        allowed,
        "group {group:?}, last acknowledged {:?}",
        acked.group
    );
}

#[test]
fn acknowledged_changes_survive_sigkill_at_random_points() {
    big_stack(|| {
        let kills: u32 = std::env::var("HOSTD_CRASH_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let mut hostd = TestHostd::start(Setup::default());
        hostd.ok(Request::CreateInstance(CreateInstance {
            name: name("crash"),
            template: name("probe"),
            ..Default::default()
        }));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let mut rng = rand::rng();
        let mut next = 0u64;
        let mut acknowledged_total = 0usize;
        for round in 0..kills {
            let socket = hostd.socket();
            let shared = acked.clone();
            let start = next;
            let mutator = std::thread::spawn(move || {
                let mut n = start;
                let Ok(mut client) = Client::connect(&socket) else {
                    return n;
                };
                loop {
                    n += 1;
                    if mutate(&mut client, n, &shared).is_err() {
                        return n;
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(rng.random_range(2..25)));
            hostd.kill();
            next = mutator.join().unwrap();
            hostd.launch();
            let a = acked.lock().unwrap();
            verify(&hostd, &a);
            acknowledged_total = a.templates.len() + a.stacks.len();
            drop(a);
            assert_eq!(
                hostd.instance("crash").state,
                InstanceState::Defined,
                "round {round}"
            );
        }
        assert!(
            acknowledged_total > kills as usize,
            "too few changes acknowledged ({acknowledged_total}) to mean anything"
        );
    });
}
