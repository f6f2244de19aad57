//! The VF steps on the sriov crate's simulated host (igb ports, 7 VFs each): picking,
//! acquiring, releasing, and each refusal.

use std::collections::BTreeMap;
use std::path::Path;

use hostd_proto::InstanceState;
use sriov::sim::{SimHost, SimPf, SimSpec};
use sriov::{Driver, Host, PciAddress, TxRate, VfSettings, VfVlan, VlanProto};

use super::hardware::{acquire, release};
use super::pick::pick;
use super::{HostKind, VfError};
use crate::config::VfRelease;
use crate::store::{InstanceRecord, InstanceVf};

const PF0: &str = "0000:01:00.0";

fn sim_with(dir: &Path, spec: &SimSpec, vfs: u32) -> (SimHost, Host) {
    let sim = SimHost::create(&dir.join("sim"), spec).unwrap();
    let host = sim.host();
    for pf in &spec.pfs {
        sriov::set_num_vfs(&host, pf.addr, vfs, &Default::default()).unwrap();
    }
    (sim, host)
}

fn sim(dir: &Path, vfs: u32) -> (SimHost, Host) {
    sim_with(dir, &SimSpec::two_igb_ports(), vfs)
}

fn settings() -> VfSettings {
    VfSettings {
        mac: Some("02:00:00:00:00:42".parse().unwrap()),
        vlan: Some(VfVlan::new(10, 3, VlanProto::Dot1Q).unwrap()),
        rate: Some(TxRate::new(0, 500).unwrap()),
        ..Default::default()
    }
}

fn slot(settings: VfSettings) -> InstanceVf {
    InstanceVf {
        port: "eth0".into(),
        pf: PF0.into(),
        settings,
        assigned: None,
    }
}

fn instance(id: u32, vfs: Vec<InstanceVf>) -> InstanceRecord {
    InstanceRecord {
        id,
        name: format!("vm{id}"),
        stack: None,
        group: None,
        template: "probe".into(),
        template_version: 1,
        vcpus: 1,
        ram_mib: 64,
        disk_gib: 0,
        hugepages: false,
        ha: false,
        cores: vec![1],
        vfs,
        state: InstanceState::Stopped,
        state_reason: String::new(),
        state_since_ms: 0,
        want_running: false,
        vmm: None,
        ha_failures: vec![],
        created_ms: 0,
    }
}

fn driver(host: &Host, addr: &str) -> Driver {
    sriov::read_function(host, addr.parse().unwrap())
        .unwrap()
        .driver
}

fn pf0() -> PciAddress {
    PF0.parse().unwrap()
}

#[test]
fn a_vf_is_configured_bound_and_given_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, host) = sim(dir.path(), 2);
    let mut me = instance(1, vec![slot(settings())]);
    let picked = pick(&host, &me, &BTreeMap::new(), true).unwrap();
    let a = &picked[0];
    assert_eq!((a.index, a.addr.as_str()), (0, "0000:01:10.0"));
    assert_eq!(a.driver_before, "igbvf");
    assert_eq!(a.guest_addr().as_deref(), Some("0000:00:01.0"));
    assert_eq!(a.saved.vlan.id, 0, "what igb reports for a new VF");
    me.vfs[0].assigned = Some(a.clone());

    acquire(&host, HostKind::Simulated, &me.vfs[0], a).unwrap();
    assert_eq!(driver(&host, &a.addr), Driver::Vfio);
    let state = &sriov::read_vf_states(&host, pf0()).unwrap()[0];
    assert_eq!(state.mac, settings().mac);
    assert_eq!((state.vlan.id, state.vlan.qos), (10, 3));
    assert_eq!(state.rate.max_mbps, 500);

    let released = release(&host, VfRelease::HostDriver, &me.vfs[0], a);
    assert!(released.problems.is_empty(), "{released:?}");
    assert_eq!(
        released.done,
        [
            "mac cleared",
            "vlan restored",
            "max_tx_rate restored",
            "back on igbvf"
        ]
    );
    assert_eq!(driver(&host, &a.addr), Driver::Kernel("igbvf".into()));
    let state = &sriov::read_vf_states(&host, pf0()).unwrap()[0];
    assert_eq!(
        (state.mac, state.vlan.id, state.rate.max_mbps),
        (None, 0, 0)
    );
    // Released twice (a crash between the release and its record): nothing breaks.
    let again = release(&host, VfRelease::HostDriver, &me.vfs[0], a);
    assert!(again.problems.is_empty(), "{again:?}");
}

#[test]
fn a_unicast_mac_the_vf_had_comes_back_and_vfio_pci_can_be_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, host) = sim(dir.path(), 1);
    let before = VfSettings {
        mac: Some("02:00:00:00:00:01".parse().unwrap()),
        ..Default::default()
    };
    sriov::configure_vf(&host, pf0(), 0, &before).unwrap();
    let me = instance(1, vec![slot(settings())]);
    let a = pick(&host, &me, &BTreeMap::new(), true).unwrap().remove(0);
    assert_eq!(a.saved.mac, before.mac);
    acquire(&host, HostKind::Simulated, &me.vfs[0], &a).unwrap();
    let released = release(&host, VfRelease::VfioPci, &me.vfs[0], &a);
    assert!(
        released.done.contains(&"mac restored".to_owned()),
        "{released:?}"
    );
    assert!(
        released.done.contains(&"left on vfio-pci".to_owned()),
        "{released:?}"
    );
    assert_eq!(driver(&host, &a.addr), Driver::Vfio);
    assert_eq!(
        sriov::read_vf_states(&host, pf0()).unwrap()[0].mac,
        before.mac
    );
}

#[test]
fn pick_skips_vfs_held_by_instances_or_open_by_processes_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, host) = sim(dir.path(), 3);
    let mut other = instance(1, vec![slot(VfSettings::default())]);
    other.vfs[0].assigned = Some(pick(&host, &other, &BTreeMap::new(), true).unwrap()[0].clone());
    let instances: BTreeMap<u32, InstanceRecord> = [(1, other)].into();
    // VF 1 is on vfio-pci with its group open by some process (pid 4242).
    let vf1: PciAddress = "0000:01:10.2".parse().unwrap();
    sriov::bind_to_vfio(&host, vf1).unwrap();
    let group = sriov::iommu_group_of(&host, vf1).unwrap().unwrap().id;
    sim.hold_vfio_group(4242, group).unwrap();

    let me = instance(2, vec![slot(VfSettings::default())]);
    let a = pick(&host, &me, &instances, false).unwrap().remove(0);
    assert_eq!(a.addr, "0000:01:10.4", "VF 0 is held, VF 1 is open");
    assert_eq!(a.guest_slot, None, "not passed to the guest");

    let greedy = instance(
        3,
        vec![slot(VfSettings::default()), slot(VfSettings::default())],
    );
    let err = pick(&host, &greedy, &instances, true).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, VfError::NoFreeVf { in_use: true, .. }),
        "{err:?}"
    );
    assert!(
        message.starts_with("no free VF on port eth0 (PF 0000:01:00.0) for vm3: 3 VFs: "),
        "{message}"
    );
    assert!(message.contains("0000:01:10.0 held by vm1"), "{message}");
    assert!(
        message.contains("0000:01:10.2 open by pid 4242 (?)"),
        "{message}"
    );
    assert!(message.ends_with("stop that process"), "{message}");
    assert_eq!(err.to_api().code, hostd_proto::ErrorCode::VfUnavailable);
}

#[test]
fn binding_fails_without_vfio_pci_and_the_vf_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, host) = sim(dir.path(), 1);
    std::fs::remove_dir_all(sim.root().join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let me = instance(1, vec![slot(settings())]);
    let a = pick(&host, &me, &BTreeMap::new(), true).unwrap().remove(0);
    let err = acquire(&host, HostKind::Simulated, &me.vfs[0], &a).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, VfError::Bind { .. }), "{err:?}");
    assert!(
        message.starts_with("VF 0000:01:10.0 (eth0 VF 0, PF 0000:01:00.0) cannot be bound to vfio-pci: the vfio-pci driver is not available"),
        "{message}"
    );
    assert!(message.contains("modprobe vfio-pci"), "{message}");
    // The settings were applied before the bind: the release takes them back.
    let released = release(&host, VfRelease::HostDriver, &me.vfs[0], &a);
    assert!(released.problems.is_empty(), "{released:?}");
    assert_eq!(driver(&host, &a.addr), Driver::Kernel("igbvf".into()));
    assert_eq!(sriov::read_vf_states(&host, pf0()).unwrap()[0].vlan.id, 0);
}

#[test]
fn a_failed_bind_write_is_refused_naming_the_vf() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, host) = sim(dir.path(), 1);
    let me = instance(1, vec![slot(VfSettings::default())]);
    let a = pick(&host, &me, &BTreeMap::new(), true).unwrap().remove(0);
    sim.fail_next_write("drivers_probe", libc::EIO);
    let err = acquire(&host, HostKind::Simulated, &me.vfs[0], &a).unwrap_err();
    assert!(matches!(err, VfError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains("drivers_probe"), "{err}");
}

#[test]
fn a_group_shared_with_the_pf_on_its_driver_is_not_viable() {
    let dir = tempfile::tempdir().unwrap();
    let mut pf = SimPf::igb(pf0(), "eth0");
    pf.vfs_share_pf_group = true;
    let spec = SimSpec {
        pfs: vec![pf],
        drivers: vec!["igb".into(), "igbvf".into(), "vfio-pci".into()],
    };
    let (_sim, host) = sim_with(dir.path(), &spec, 1);
    let me = instance(1, vec![slot(VfSettings::default())]);
    let a = pick(&host, &me, &BTreeMap::new(), true).unwrap().remove(0);
    let err = acquire(&host, HostKind::Simulated, &me.vfs[0], &a).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, VfError::NotViable { .. }), "{err:?}");
    assert!(
        message.contains("is not viable: 0000:01:00.0 (igb) on host drivers"),
        "{message}"
    );
}

#[test]
fn a_vf_without_an_iommu_group_means_no_iommu() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, host) = sim(dir.path(), 1);
    std::fs::remove_file(
        sim.root()
            .join("sys/devices/pci0000:00/0000:01:10.0/iommu_group"),
    )
    .unwrap();
    let me = instance(1, vec![slot(VfSettings::default())]);
    let a = pick(&host, &me, &BTreeMap::new(), true).unwrap().remove(0);
    let err = acquire(&host, HostKind::Simulated, &me.vfs[0], &a).unwrap_err();
    assert!(matches!(err, VfError::NoIommu { .. }), "{err:?}");
    assert!(err.to_string().contains("intel_iommu=on"), "{err}");
}

#[test]
fn a_setting_the_driver_refuses_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, host) = sim(dir.path(), 1);
    // igb has no VF link state control.
    let me = instance(
        1,
        vec![slot(VfSettings {
            link_state: Some(sriov::LinkState::Disable),
            ..Default::default()
        })],
    );
    let a = pick(&host, &me, &BTreeMap::new(), true).unwrap().remove(0);
    let err = acquire(&host, HostKind::Simulated, &me.vfs[0], &a).unwrap_err();
    assert!(matches!(err, VfError::Configure { .. }), "{err:?}");
    assert!(
        err.to_string().contains("does not support setting `state`"),
        "{err}"
    );
    assert_eq!(
        driver(&host, &a.addr),
        Driver::Kernel("igbvf".into()),
        "not bound"
    );
}
