//! The crate against the simulated kernel: discovery, VF counts, binding and viability, and
//! the errors an operator sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;

use sriov::sim::{SimHost, SimPf, SimSpec};
use sriov::{Driver, NumVfsOptions, PciAddress, SriovError, VfUse, Viability};

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn lab() -> (tempfile::TempDir, SimHost) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::create(&dir.path().join("host"), &SimSpec::two_igb_ports()).unwrap();
    (dir, sim)
}

#[test]
fn discovers_two_pfs_with_mixed_vf_states() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf0 = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf0, 3, &NumVfsOptions::default()).unwrap();
    let vf1 = sriov::vf_address(&host, pf0, 1).unwrap();
    sriov::bind_to_vfio(&host, vf1).unwrap();

    let pfs = sriov::list_pfs(&host).unwrap();
    assert_eq!(pfs.len(), 2);
    let (a, b) = (&pfs[0], &pfs[1]);
    assert_eq!(a.function.addr, pf0);
    assert_eq!(
        (a.function.vendor_id, a.function.device_id),
        (0x8086, 0x10c9)
    );
    assert_eq!(a.function.vendor_name, Some("Intel Corporation"));
    assert!(
        a.function.device_name.is_some_and(|n| n.contains("82576")),
        "{:?}",
        a.function.device_name
    );
    assert_eq!(a.function.driver, Driver::Kernel("igb".into()));
    assert_eq!(a.function.numa_node, Some(0));
    assert_eq!(a.function.local_cpus.as_deref(), Some("0-1"));
    assert_eq!(a.function.netdevs[0].name, "eth0");
    assert_eq!((a.total_vfs, a.num_vfs, a.drivers_autoprobe), (7, 3, true));

    let drivers: Vec<&Driver> = a.vfs.iter().map(|v| &v.function.driver).collect();
    assert_eq!(
        drivers,
        [
            &Driver::Kernel("igbvf".into()),
            &Driver::Vfio,
            &Driver::Kernel("igbvf".into())
        ]
    );
    let vf_addrs: Vec<String> = a.vfs.iter().map(|v| v.function.addr.to_string()).collect();
    assert_eq!(vf_addrs, ["0000:01:10.0", "0000:01:10.2", "0000:01:10.4"]);
    assert_eq!(a.vfs[1].function.device_id, 0x10ca);
    assert!(
        a.vfs[1].function.netdevs.is_empty(),
        "a VF on vfio-pci has no netdev"
    );
    assert_eq!(a.vfs[0].function.netdevs.len(), 1);
    let group = a.vfs[1].iommu_group.as_ref().unwrap();
    assert_eq!(group.members, [vf1]);
    assert_eq!(sriov::pf_of(&host, vf1).unwrap(), Some(pf0));

    assert_eq!(b.function.addr, addr("0000:02:00.0"));
    assert_eq!((b.num_vfs, b.vfs.len()), (0, 0));
}

#[test]
fn more_vfs_than_total_is_refused_before_any_write() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    // An injected fault proves no write reached the kernel: it would have consumed it.
    sim.fail_next_write("sriov_numvfs", libc::EIO);
    let err = sriov::set_num_vfs(&host, pf, 8, &NumVfsOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SriovError::TooManyVfs {
                requested: 8,
                total: 7,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "PF 0000:01:00.0 supports at most 7 VFs, 8 were asked for"
    );
    let fault_still_armed =
        sriov::set_num_vfs(&host, pf, 1, &NumVfsOptions::default()).unwrap_err();
    assert!(matches!(fault_still_armed, SriovError::Write { .. }));
}

#[test]
fn changing_a_nonzero_count_goes_through_zero() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:02:00.0");
    sriov::set_num_vfs(&host, pf, 2, &NumVfsOptions::default()).unwrap();
    sriov::set_num_vfs(&host, pf, 5, &NumVfsOptions::default()).unwrap();
    let read = sriov::read_pf(&host, pf).unwrap();
    assert_eq!((read.num_vfs, read.vfs.len()), (5, 5));
    sriov::set_num_vfs(&host, pf, 0, &NumVfsOptions::default()).unwrap();
    assert!(sriov::read_pf(&host, pf).unwrap().vfs.is_empty());
}

#[test]
fn the_kernel_refuses_a_direct_nonzero_change() {
    // What the model does when someone skips the crate: the kernel's EBUSY, with advice.
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf, 2, &NumVfsOptions::default()).unwrap();
    let path = host.sys().join("bus/pci/devices/0000:01:00.0/sriov_numvfs");
    use sriov::KernelWriter;
    let err = sim.kernel().write_attr(&path, "3").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
}

#[test]
fn vfs_in_use_block_a_count_change_and_are_named() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf, 4, &NumVfsOptions::default()).unwrap();
    let vf0 = sriov::vf_address(&host, pf, 0).unwrap();
    let vf2 = sriov::vf_address(&host, pf, 2).unwrap();
    sriov::bind_to_vfio(&host, vf0).unwrap();
    sriov::bind_to_vfio(&host, vf2).unwrap();
    let group2 = sriov::iommu_group_of(&host, vf2).unwrap().unwrap().id;
    sim.hold_vfio_group(4242, group2).unwrap();

    let opts = NumVfsOptions {
        assigned: BTreeSet::from([vf0]),
        ..Default::default()
    };
    let err = sriov::set_num_vfs(&host, pf, 0, &opts).unwrap_err();
    match &err {
        SriovError::VfsInUse { vfs, .. } => {
            assert_eq!(
                vfs,
                &[(vf0, VfUse::Assigned), (vf2, VfUse::OpenBy { pid: 4242 })]
            );
        }
        other => panic!("expected VfsInUse, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("VF 0000:01:10.0 is still bound to vfio-pci and assigned; stop its VM first"),
        "{text}"
    );
    assert!(
        text.contains("VF 0000:01:10.4 is open by process 4242"),
        "{text}"
    );
    assert_eq!(
        sriov::read_pf(&host, pf).unwrap().vfs.len(),
        4,
        "nothing was removed"
    );
}

#[test]
fn autoprobe_off_creates_idle_vfs_and_restores_the_pf_setting() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    let opts = NumVfsOptions {
        autoprobe: Some(false),
        ..Default::default()
    };
    sriov::set_num_vfs(&host, pf, 2, &opts).unwrap();
    let read = sriov::read_pf(&host, pf).unwrap();
    assert!(read.vfs.iter().all(|v| v.function.driver == Driver::None));
    assert!(read.drivers_autoprobe, "the PF's own setting is put back");
}

#[test]
fn bind_to_vfio_and_back_round_trips_and_restores_the_override() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf, 1, &NumVfsOptions::default()).unwrap();
    let vf = sriov::vf_address(&host, pf, 0).unwrap();
    let override_path = host
        .sys()
        .join("bus/pci/devices/0000:01:10.0/driver_override");

    let before = sriov::bind_to_vfio(&host, vf).unwrap();
    assert_eq!(before, Driver::Kernel("igbvf".into()));
    assert_eq!(
        sriov::read_function(&host, vf).unwrap().driver,
        Driver::Vfio
    );
    assert_eq!(fs::read_to_string(&override_path).unwrap().trim(), "(null)");
    assert!(sriov::group_viability(&host, vf).unwrap().is_viable());

    let after = sriov::bind_to_host_driver(&host, vf, Some("igbvf")).unwrap();
    assert_eq!(after, Driver::Kernel("igbvf".into()));
    let read = sriov::read_function(&host, vf).unwrap();
    assert_eq!(read.driver, Driver::Kernel("igbvf".into()));
    assert_eq!(read.netdevs.len(), 1, "igbvf gave it a netdev again");
    assert_eq!(fs::read_to_string(&override_path).unwrap().trim(), "(null)");

    sriov::unbind(&host, vf).unwrap();
    assert_eq!(
        sriov::read_function(&host, vf).unwrap().driver,
        Driver::None
    );
    assert_eq!(
        sriov::bind_to_host_driver(&host, vf, None).unwrap(),
        Driver::Kernel("igbvf".into())
    );
}

#[test]
fn binding_to_vfio_without_the_driver_says_to_load_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SimSpec::two_igb_ports();
    spec.drivers.retain(|d| d != "vfio-pci");
    let sim = SimHost::create(dir.path(), &spec).unwrap();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf, 1, &NumVfsOptions::default()).unwrap();
    let vf = sriov::vf_address(&host, pf, 0).unwrap();
    let err = sriov::bind_to_vfio(&host, vf).unwrap_err();
    assert!(matches!(err, SriovError::VfioPciUnavailable { .. }));
    assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    assert_eq!(
        sriov::read_function(&host, vf).unwrap().driver,
        Driver::Kernel("igbvf".into()),
        "untouched"
    );
}

#[test]
fn a_group_shared_with_a_host_driver_is_not_viable_and_names_the_offender() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SimSpec::two_igb_ports();
    spec.pfs[0].vfs_share_pf_group = true;
    let sim = SimHost::create(dir.path(), &spec).unwrap();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf, 2, &NumVfsOptions::default()).unwrap();
    let vf0 = sriov::vf_address(&host, pf, 0).unwrap();
    sriov::bind_to_vfio(&host, vf0).unwrap();
    match sriov::group_viability(&host, vf0).unwrap() {
        Viability::NotViable { group, offenders } => {
            assert_eq!(group.members.len(), 3);
            assert_eq!(
                offenders,
                [
                    (pf, "igb".to_string()),
                    (addr("0000:01:10.2"), "igbvf".to_string())
                ]
            );
        }
        v => panic!("expected not viable, got {v:?}"),
    }
    // A bridge on pcieport in the group is harmless.
    let dir2 = tempfile::tempdir().unwrap();
    let sim2 = SimHost::create(dir2.path(), &SimSpec::two_igb_ports()).unwrap();
    let host2 = sim2.host();
    sriov::set_num_vfs(&host2, pf, 1, &NumVfsOptions::default()).unwrap();
    let vf = sriov::vf_address(&host2, pf, 0).unwrap();
    let group = sriov::iommu_group_of(&host2, vf).unwrap().unwrap().id;
    sim2.add_device(addr("0000:00:02.0"), 0x1b36, 0x000c, None, Some(group))
        .unwrap();
    sriov::bind_to_vfio(&host2, vf).unwrap();
    assert!(sriov::group_viability(&host2, vf).unwrap().is_viable());
}

#[test]
fn vf_index_out_of_range_is_refused() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    sriov::set_num_vfs(&host, pf, 2, &NumVfsOptions::default()).unwrap();
    let err = sriov::vf_address(&host, pf, 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PF 0000:01:00.0 has 2 VFs, so VF index 2 does not exist"
    );
}

#[test]
fn missing_and_unreadable_sysfs_files_are_named() {
    let (_dir, sim) = lab();
    let host = sim.host();
    let pf = addr("0000:01:00.0");
    let vendor = host.sys().join("devices/pci0000:00/0000:01:00.0/vendor");
    fs::remove_file(&vendor).unwrap();
    let err = sriov::read_pf(&host, pf).unwrap_err();
    assert!(
        matches!(&err, SriovError::Read { path, .. } if path.ends_with("0000:01:00.0/vendor")),
        "{err}"
    );
    assert!(err.to_string().contains("0000:01:00.0/vendor"), "{err}");

    // A directory where a file should be cannot be read, even by root.
    fs::create_dir(&vendor).unwrap();
    let err = sriov::list_pfs(&host).unwrap_err();
    assert!(err.to_string().contains("0000:01:00.0/vendor"), "{err}");

    fs::remove_dir(&vendor).unwrap();
    fs::write(&vendor, "intel\n").unwrap();
    let err = sriov::read_pf(&host, pf).unwrap_err();
    assert!(matches!(err, SriovError::Malformed { .. }), "{err}");

    let err = sriov::read_pf(&host, addr("0000:09:00.0")).unwrap_err();
    assert!(matches!(err, SriovError::NoSuchDevice { .. }), "{err}");
    let err =
        sriov::set_num_vfs(&host, addr("0000:09:00.0"), 1, &NumVfsOptions::default()).unwrap_err();
    assert!(err.to_string().contains("lspci"), "{err}");
}

#[test]
fn a_kernel_refusal_carries_errno_advice() {
    let (_dir, sim) = lab();
    let host = sim.host();
    sim.fail_next_write("sriov_numvfs", libc::ENOMEM);
    let err =
        sriov::set_num_vfs(&host, addr("0000:01:00.0"), 2, &NumVfsOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("sriov_numvfs") && text.contains("firmware SR-IOV settings"),
        "{text}"
    );
}

#[test]
fn a_non_sriov_device_is_not_a_pf() {
    let (_dir, sim) = lab();
    let host = sim.host();
    sim.add_device(addr("0000:00:1f.2"), 0x8086, 0x2922, Some("ahci"), None)
        .unwrap();
    let err = sriov::read_pf(&host, addr("0000:00:1f.2")).unwrap_err();
    assert!(matches!(err, SriovError::NotSriovCapable { .. }), "{err}");
    assert_eq!(sriov::list_pfs(&host).unwrap().len(), 2);
}

#[test]
fn a_reopened_sim_host_keeps_its_state() {
    let (_dir, sim) = lab();
    sriov::set_num_vfs(
        &sim.host(),
        addr("0000:02:00.0"),
        3,
        &NumVfsOptions::default(),
    )
    .unwrap();
    let again = SimHost::open(sim.root()).unwrap();
    assert_eq!(
        sriov::read_pf(&again.host(), addr("0000:02:00.0"))
            .unwrap()
            .vfs
            .len(),
        3
    );
    let err = SimHost::create(sim.root(), &SimSpec::two_igb_ports()).unwrap_err();
    assert!(err.to_string().contains("SimHost::open"), "{err}");
    let _ = SimPf::igb(addr("0000:03:00.0"), "eth9");
}
