//! VFs given to guests, on the simulated NIC of `hostd --sim` (the probe guest really runs on
//! /dev/kvm; the simulated VFs cannot be opened through VFIO, so the guest runs without
//! them, and everything up to the VMM is as on hardware): picked at start, configured,
//! bound to vfio-pci and recorded; given back at stop, when a VMM dies, and after a hostd
//! crash; never to two guests; each refusal named. `hostd/tests/lab_assign.rs` does the same
//! with real VFs in the QEMU lab.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ApiError is a fixed-capacity wire type

mod common;

use std::time::Duration;

use common::{Setup, TestHostd, big_stack, kvm_guard};
use hostd_proto::{
    CreateInstance, DeleteInstance, ErrorCode, EventKind, EventQuery, InstanceInfo, InstanceRef,
    InstanceState, Request, Resource, Response, StopInstance, VfRequest, bounded, name,
};
use sriov::{Driver, Host, PciAddress};

const BOOT: Duration = Duration::from_secs(20);
/// Two VFs on eth0, one on eth1: small enough to run out of.
const COUNTS: &str = "[sriov.num_vfs]\neth0 = 2\n\"0000:02:00.0\" = 1\n";

fn iref(n: &str) -> InstanceRef {
    InstanceRef { instance: name(n) }
}

fn info(response: Response) -> InstanceInfo {
    match response {
        Response::Instance(info) => info,
        other => panic!("{other:?}"),
    }
}

fn vf(port: &str, mac: Option<&str>, vlan: Option<u16>) -> VfRequest {
    VfRequest {
        port: Some(name(port)),
        mac: mac.map(bounded),
        vlan,
        max_tx_mbps: vlan.map(|_| 500),
        ..Default::default()
    }
}

fn create(hostd: &TestHostd, instance: &str, vfs: Vec<VfRequest>) -> InstanceInfo {
    info(hostd.ok(Request::CreateInstance(CreateInstance {
        name: name(instance),
        template: name("probe"),
        vfs: Some(vfs.into_iter().collect()),
        ..Default::default()
    })))
}

fn start(hostd: &TestHostd, instance: &str) -> InstanceInfo {
    let started = info(hostd.ok(Request::StartInstance(iref(instance))));
    assert_eq!(
        started.state,
        InstanceState::Running,
        "{}",
        started.state_reason
    );
    started
}

fn stop(hostd: &TestHostd, instance: &str) -> InstanceInfo {
    info(hostd.ok(Request::StopInstance(StopInstance {
        instance: name(instance),
        force: true,
        timeout_ms: None,
    })))
}

fn driver(host: &Host, addr: &str) -> Driver {
    sriov::read_function(host, addr.parse().unwrap())
        .unwrap()
        .driver
}

fn pf(addr: &str) -> PciAddress {
    addr.parse().unwrap()
}

fn inventory(hostd: &TestHostd) -> hostd_proto::Inventory {
    match hostd.ok(Request::Inventory) {
        Response::Inventory(inv) => inv,
        other => panic!("{other:?}"),
    }
}

/// The reasons of `kind`-matching events of `instance`, oldest first.
fn events(hostd: &TestHostd, instance: &str, want: fn(&EventKind) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = match hostd.ok(Request::ListEvents(EventQuery {
            after,
            limit: 32,
            ..Default::default()
        })) {
            Response::Events(page) => page,
            other => panic!("{other:?}"),
        };
        for e in &page.events {
            if e.instance.as_ref().is_some_and(|i| i.name == instance) && want(&e.kind) {
                out.push(e.reason.to_string());
            }
        }
        match page.events.last() {
            Some(last) if page.more => after = last.seq,
            _ => return out,
        }
    }
}

fn assigned(kind: &EventKind) -> bool {
    matches!(kind, EventKind::VfAssigned { .. })
}

fn released(kind: &EventKind) -> bool {
    matches!(kind, EventKind::VfReleased { .. })
}

#[test]
fn a_guest_gets_a_configured_vf_at_start_and_it_comes_back_at_stop() {
    big_stack(a_guest_gets_a_configured_vf_at_start_and_it_comes_back_at_stop_body);
}

fn a_guest_gets_a_configured_vf_at_start_and_it_comes_back_at_stop_body() {
    let _kvm = kvm_guard();
    let hostd = TestHostd::start(Setup {
        extra: COUNTS.into(),
        ..Setup::default()
    });
    let nic = hostd.nic().host();
    // hostd set the VF counts of [sriov.num_vfs] at start.
    let inv = inventory(&hostd);
    let counts: Vec<(String, u32, Option<u32>)> = inv
        .ports
        .iter()
        .map(|p| (p.port.to_string(), p.num_vfs, p.numa_node))
        .collect();
    assert_eq!(
        counts,
        [("eth0".into(), 2, Some(0)), ("eth1".into(), 1, Some(0))]
    );

    let a = create(
        &hostd,
        "a",
        vec![vf("eth0", Some("02:00:00:00:0a:01"), Some(10))],
    );
    assert_eq!(
        (a.vfs[0].port.as_str(), a.vfs[0].addr.as_deref()),
        ("eth0", None),
        "a stopped instance reserves a VF of its port but holds none"
    );
    let running = start(&hostd, "a");
    let held = &running.vfs[0];
    assert_eq!(
        (held.index, held.addr.as_deref(), held.guest_addr.as_deref()),
        (Some(0), Some("0000:01:10.0"), None),
        "the lowest free VF; simulated VFs are not passed to the guest"
    );
    assert!(
        running
            .state_reason
            .contains("without its 1 VF: simulated VFs cannot be passed to a guest"),
        "{}",
        running.state_reason
    );
    // The VF as hostd left it for the VMM: settings applied, on vfio-pci.
    assert_eq!(driver(&nic, "0000:01:10.0"), Driver::Vfio);
    let state = sriov::read_vf_states(&nic, pf("0000:01:00.0")).unwrap()[0].clone();
    assert_eq!(state.mac, Some("02:00:00:00:0a:01".parse().unwrap()));
    assert_eq!((state.vlan.id, state.rate.max_mbps), (10, 500));
    // The VMM was told nothing of it (it could not open a simulated VF).
    let vm_toml = std::fs::read_to_string(
        hostd
            .state_dir()
            .join(format!("run/vms/{}/vm.toml", running.id)),
    )
    .unwrap();
    assert!(!vm_toml.contains("vfio"), "{vm_toml}");
    let inv = inventory(&hostd);
    assert_eq!(inv.vf_owners.len(), 1);
    let owner = &inv.vf_owners[0];
    assert_eq!(
        (owner.vf.as_str(), owner.instance.as_str(), owner.index),
        ("0000:01:10.0", "a", 0)
    );
    assert_eq!(
        (inv.ports[0].reserved_vfs, inv.ports[0].assigned_vfs),
        (1, 1)
    );
    let given = events(&hostd, "a", assigned);
    assert_eq!(given.len(), 1, "{given:?}");
    assert!(
        given[0].starts_with(
            "VF 0000:01:10.0 (eth0 VF 0, PF 0000:01:00.0) on vfio-pci; mac 02:00:00:00:0a:01"
        ),
        "{}",
        given[0]
    );
    // hostctl shows it.
    let out = hostd.hostctl(&["show", "a"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("eth0  0   0000:01:10.0  sim    02:00:00:00:0a:01  10/0")),
        "{text}"
    );
    let out = hostd.hostctl(&["inventory"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("0000:01:10.0  eth0 VF 0  a  ") && l.ends_with("sim")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.len() <= 80), "{text}");

    // Stop: the VF is given back as it was, and free.
    let stopped = stop(&hostd, "a");
    assert_eq!(stopped.vfs[0].addr, None);
    assert_eq!(driver(&nic, "0000:01:10.0"), Driver::Kernel("igbvf".into()));
    let state = sriov::read_vf_states(&nic, pf("0000:01:00.0")).unwrap()[0].clone();
    assert_eq!(
        (state.mac, state.vlan.id, state.rate.max_mbps),
        (None, 0, 0)
    );
    assert!(inventory(&hostd).vf_owners.is_empty());
    let back = events(&hostd, "a", released);
    assert!(
        back.last()
            .unwrap()
            .ends_with("released: mac cleared; vlan restored; max_tx_rate restored; back on igbvf"),
        "{back:?}"
    );

    // Start again: the same VF (the lowest free one), prepared again.
    assert_eq!(
        start(&hostd, "a").vfs[0].addr.as_deref(),
        Some("0000:01:10.0")
    );
    assert_eq!(driver(&nic, "0000:01:10.0"), Driver::Vfio);

    // A second guest on the same port gets the other VF, never a's.
    create(&hostd, "b", vec![vf("eth0", None, None)]);
    let b = start(&hostd, "b");
    assert_eq!(b.vfs[0].addr.as_deref(), Some("0000:01:10.2"));
    // Admission counts reservations: 3 VFs, a and b hold 2. c is refused for its VFs,
    // which are checked before the cores (a and b hold both guest cores too).
    let three_vfs = || CreateInstance {
        name: name("c"),
        template: name("probe"),
        vfs: Some((0..3).map(|_| VfRequest::default()).collect()),
        ..Default::default()
    };
    let err = hostd.refused(
        Request::CreateInstance(three_vfs()),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message.starts_with("needs 3 VFs, 1 free"),
        "{}",
        err.message
    );
    hostd.ok(Request::DeleteInstance(DeleteInstance {
        instance: name("b"),
        force: true,
    }));
    assert_eq!(driver(&nic, "0000:01:10.2"), Driver::Kernel("igbvf".into()));
    let err = hostd.refused(
        Request::CreateInstance(three_vfs()),
        ErrorCode::InsufficientResources,
    );
    assert!(
        err.message.starts_with("needs 3 VFs, 2 free"),
        "{}",
        err.message
    );
    let shortfall = err.shortfall.unwrap();
    assert_eq!(
        (shortfall.resource, shortfall.needed, shortfall.available),
        (Resource::Vfs, 3, 2)
    );

    // A VMM that dies gives its VF back too.
    let pid = hostd.instance("a").vmm_pid.unwrap();
    // SAFETY: kill(2) on the test's own guest VMM; no memory is involved.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let dead = hostd.wait_state("a", InstanceState::Error, BOOT);
    assert_eq!(dead.vfs[0].addr, None, "{}", dead.state_reason);
    assert_eq!(driver(&nic, "0000:01:10.0"), Driver::Kernel("igbvf".into()));
}

#[test]
fn after_a_hostd_crash_running_guests_keep_their_vfs_and_gone_ones_give_them_back() {
    big_stack(after_a_hostd_crash_running_guests_keep_their_vfs_and_gone_ones_give_them_back_body);
}

fn after_a_hostd_crash_running_guests_keep_their_vfs_and_gone_ones_give_them_back_body() {
    let _kvm = kvm_guard();
    let mut hostd = TestHostd::start(Setup {
        extra: COUNTS.into(),
        ..Setup::default()
    });
    let nic = hostd.nic().host();
    create(&hostd, "keep", vec![vf("eth0", None, Some(20))]);
    create(&hostd, "gone", vec![vf("eth0", None, Some(30))]);
    let keep = start(&hostd, "keep");
    let gone = start(&hostd, "gone");
    let (keep_vf, gone_vf) = (
        keep.vfs[0].addr.clone().unwrap(),
        gone.vfs[0].addr.clone().unwrap(),
    );
    assert_ne!(keep_vf, gone_vf);

    // hostd dies, then one guest's VMM while hostd is down.
    hostd.kill();
    // SAFETY: kill(2) on the test's own guest VMM; no memory is involved.
    unsafe { libc::kill(gone.vmm_pid.unwrap() as i32, libc::SIGKILL) };
    let gone_pid = gone.vmm_pid.unwrap();
    while common::alive(gone_pid) {
        std::thread::sleep(Duration::from_millis(5));
    }
    hostd.launch();

    let kept = hostd.instance("keep");
    assert_eq!(kept.state, InstanceState::Running);
    assert_eq!(kept.vmm_pid, keep.vmm_pid, "the same VMM, re-adopted");
    let keep = kept;
    assert_eq!(keep.vfs[0].addr.as_deref(), Some(keep_vf.as_str()));
    assert_eq!(
        driver(&nic, &keep_vf),
        Driver::Vfio,
        "re-adopted with its VF"
    );
    let gone = hostd.instance("gone");
    assert!(!gone.state.has_vmm(), "{:?}", gone.state);
    assert_eq!(gone.vfs[0].addr, None);
    assert_eq!(driver(&nic, &gone_vf), Driver::Kernel("igbvf".into()));
    let states = sriov::read_vf_states(&nic, pf("0000:01:00.0")).unwrap();
    let vlan_of = |addr: &str| {
        let index = sriov::vf_addresses(&nic, pf("0000:01:00.0"))
            .unwrap()
            .into_iter()
            .find(|(_, a)| a.to_string() == addr)
            .unwrap()
            .0;
        states[index as usize].vlan.id
    };
    assert_eq!((vlan_of(&keep_vf), vlan_of(&gone_vf)), (20, 0));
    let inv = inventory(&hostd);
    let owners: Vec<(&str, &str)> = inv
        .vf_owners
        .iter()
        .map(|o| (o.vf.as_str(), o.instance.as_str()))
        .collect();
    assert_eq!(owners, [(keep_vf.as_str(), "keep")]);
    // The freed VF can be had again.
    assert_eq!(
        start(&hostd, "gone").vfs[0].addr.as_deref(),
        Some(gone_vf.as_str())
    );
}

#[test]
fn vfs_recorded_before_a_crash_are_given_back_at_the_next_start() {
    big_stack(vfs_recorded_before_a_crash_are_given_back_at_the_next_start_body);
}

/// A crash right after the assignment was recorded and the VF prepared, before the VMM ran:
/// made by hand in the store and on the NIC while hostd is down.
fn vfs_recorded_before_a_crash_are_given_back_at_the_next_start_body() {
    let mut hostd = TestHostd::start(Setup {
        extra: COUNTS.into(),
        ..Setup::default()
    });
    let nic = hostd.nic().host();
    let created = create(&hostd, "torn", vec![vf("eth1", None, Some(40))]);
    hostd.kill();
    let vf_addr = "0000:02:10.0";
    let (store, loaded) = hostd::store::Store::open(&hostd.state_dir().join("state.redb")).unwrap();
    let mut record = loaded
        .instances
        .into_iter()
        .find(|i| i.id == created.id)
        .unwrap();
    record.state = InstanceState::Starting;
    record.want_running = true;
    record.vfs[0].assigned = Some(hostd::store::VfAssignment {
        index: 0,
        addr: vf_addr.into(),
        saved: sriov::read_vf_states(&nic, pf("0000:02:00.0")).unwrap()[0].clone(),
        driver_before: "igbvf".into(),
        guest_slot: None,
    });
    store
        .commit(&hostd::store::Changes {
            put_instances: vec![record.clone()],
            ..Default::default()
        })
        .unwrap();
    drop(store);
    sriov::configure_vf(&nic, pf("0000:02:00.0"), 0, &record.vfs[0].settings).unwrap();
    sriov::bind_to_vfio(&nic, pf(vf_addr)).unwrap();

    hostd.launch();
    let torn = hostd.instance("torn");
    assert!(!torn.state.has_vmm(), "{:?}", torn.state);
    assert_eq!(torn.vfs[0].addr, None);
    assert_eq!(driver(&nic, vf_addr), Driver::Kernel("igbvf".into()));
    assert_eq!(
        sriov::read_vf_states(&nic, pf("0000:02:00.0")).unwrap()[0]
            .vlan
            .id,
        0
    );
    let back = events(&hostd, "torn", released);
    assert!(
        back.iter()
            .any(|r| r.contains("vlan restored") && r.contains("back on igbvf")),
        "{back:?}"
    );
}

/// A sim whose eth1 has no ACS: its VFs share the PF's IOMMU group.
fn sim_with_a_shared_group() -> sriov::sim::SimSpec {
    let mut spec = sriov::sim::SimSpec::two_igb_ports();
    spec.pfs[1].vfs_share_pf_group = true;
    spec
}

#[test]
fn each_refusal_names_the_vf_and_what_to_do_and_leaves_the_vf_as_it_was() {
    big_stack(each_refusal_names_the_vf_and_what_to_do_and_leaves_the_vf_as_it_was_body);
}

fn refused_start(hostd: &TestHostd, instance: &str, code: ErrorCode) -> String {
    let err = hostd.refused(Request::StartInstance(iref(instance)), code);
    let info = hostd.instance(instance);
    assert!(!info.state.has_vmm(), "{:?}", info.state);
    assert_eq!(info.vfs[0].addr, None, "nothing stays assigned");
    assert!(
        inventory(hostd)
            .vf_owners
            .iter()
            .all(|o| o.instance != instance)
    );
    err.message.to_string()
}

fn each_refusal_names_the_vf_and_what_to_do_and_leaves_the_vf_as_it_was_body() {
    let _kvm = kvm_guard();
    let hostd = TestHostd::start(Setup {
        extra: COUNTS.into(),
        sim: Some(sim_with_a_shared_group()),
        ..Setup::default()
    });
    let sim = hostd.nic();
    let nic = sim.host();
    let sys = sim.root().join("sys");

    // Non-viable group: eth1's VF shares its group with the PF, which igb holds.
    create(&hostd, "shared", vec![vf("eth1", None, Some(7))]);
    let message = refused_start(&hostd, "shared", ErrorCode::VfUnavailable);
    assert!(
        message.starts_with(
            "VF 0000:02:10.0 (eth1 VF 0, PF 0000:02:00.0): IOMMU group 1 is not viable: 0000:02:00.0 (igb) on host drivers"
        ),
        "{message}"
    );
    assert_eq!(driver(&nic, "0000:02:10.0"), Driver::Kernel("igbvf".into()));
    assert_eq!(
        sriov::read_vf_states(&nic, pf("0000:02:00.0")).unwrap()[0]
            .vlan
            .id,
        0,
        "the VLAN set before the check is taken back"
    );
    let info = hostd.instance("shared");
    assert_eq!(info.state, InstanceState::Error);
    assert!(
        info.state_reason
            .starts_with("start failed: VF 0000:02:10.0")
    );
    hostd.ok(Request::DeleteInstance(DeleteInstance {
        instance: name("shared"),
        force: false,
    }));

    // Binding fails: vfio-pci is not loaded.
    create(
        &hostd,
        "x",
        vec![vf("eth0", Some("02:00:00:00:0b:01"), None)],
    );
    let vfio_dir = sys.join("bus/pci/drivers/vfio-pci");
    std::fs::rename(&vfio_dir, sys.join("vfio-pci.unloaded")).unwrap();
    let message = refused_start(&hostd, "x", ErrorCode::VfUnavailable);
    std::fs::rename(sys.join("vfio-pci.unloaded"), &vfio_dir).unwrap();
    assert!(
        message.starts_with("VF 0000:01:10.0 (eth0 VF 0, PF 0000:01:00.0) cannot be bound to vfio-pci: the vfio-pci driver is not available"),
        "{message}"
    );
    assert!(message.contains("modprobe vfio-pci"), "{message}");
    assert_eq!(driver(&nic, "0000:01:10.0"), Driver::Kernel("igbvf".into()));

    // No IOMMU: the VF has no group.
    let group_link = sys.join("devices/pci0000:00/0000:01:10.0/iommu_group");
    let target = std::fs::read_link(&group_link).unwrap();
    std::fs::remove_file(&group_link).unwrap();
    let message = refused_start(&hostd, "x", ErrorCode::VfUnavailable);
    std::os::unix::fs::symlink(&target, &group_link).unwrap();
    assert!(
        message.starts_with(
            "VF 0000:01:10.0 (eth0 VF 0, PF 0000:01:00.0) has no IOMMU group: no IOMMU"
        ),
        "{message}"
    );
    assert_eq!(driver(&nic, "0000:01:10.0"), Driver::Kernel("igbvf".into()));

    // Already assigned: VF 0 to a running guest, VF 1 open by a process hostd did not start.
    create(&hostd, "owner", vec![vf("eth0", None, None)]);
    // x reserved eth0's other VF: give owner's core back to x afterwards.
    let owner = start(&hostd, "owner");
    assert_eq!(owner.vfs[0].addr.as_deref(), Some("0000:01:10.0"));
    let vf1 = pf("0000:01:10.2");
    sriov::bind_to_vfio(&nic, vf1).unwrap();
    let group = sriov::iommu_group_of(&nic, vf1).unwrap().unwrap().id;
    sim.hold_vfio_group(4242, group).unwrap();
    std::fs::write(sim.root().join("proc/4242/comm"), "intruder\n").unwrap();
    let message = refused_start(&hostd, "x", ErrorCode::VfUnavailable);
    assert_eq!(
        message,
        "no free VF on port eth0 (PF 0000:01:00.0) for x: 2 VFs: 0000:01:10.0 held by owner, \
         0000:01:10.2 open by pid 4242 (intruder); stop that process"
    );
    // The intruder goes: x gets VF 1.
    std::fs::remove_dir_all(sim.root().join("proc/4242")).unwrap();
    let x = start(&hostd, "x");
    assert_eq!(x.vfs[0].addr.as_deref(), Some("0000:01:10.2"));
}
