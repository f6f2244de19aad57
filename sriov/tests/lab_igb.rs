//! The crate on a real kernel: the QEMU lab's two igb (82576) ports, VT-d and vfio-pci.
//! Built only with `--features lab` and run inside the emulated appliance by `hw-qemu`
//! (`hw-tests/tests/qemu_lab.rs` checks they passed); each test leaves both PFs with no VFs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::Mutex;

use sriov::netlink::{RouteSocket, ifindex};
use sriov::{
    Driver, Host, LinkState, NumVfsOptions, PciAddress, SriovError, TxRate, VfSettings, VfUse,
    VfVlan, Viability, VlanProto,
};

/// The tests share two NICs: one at a time.
static NICS: Mutex<()> = Mutex::new(());

fn pf0() -> PciAddress {
    "0000:01:00.0".parse().unwrap()
}

/// Puts both PFs back to no VFs, whatever a test did.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let host = Host::real();
        for pf in ["0000:01:00.0", "0000:02:00.0"] {
            let pf: PciAddress = pf.parse().unwrap();
            for (_, vf) in sriov::vf_addresses(&host, pf).unwrap_or_default() {
                if sriov::read_function(&host, vf)
                    .map(|f| f.driver == Driver::Vfio)
                    .unwrap_or(false)
                {
                    let _ = sriov::bind_to_host_driver(&host, vf, Some("igbvf"));
                }
            }
            let _ = sriov::set_num_vfs(&host, pf, 0, &NumVfsOptions::default());
        }
    }
}

fn exclusive() -> (std::sync::MutexGuard<'static, ()>, Restore) {
    (NICS.lock().unwrap_or_else(|p| p.into_inner()), Restore)
}

#[test]
fn discovers_the_two_igb_ports() {
    let _guard = exclusive();
    let pfs = sriov::list_pfs(&Host::real()).unwrap();
    let addrs: Vec<String> = pfs.iter().map(|p| p.function.addr.to_string()).collect();
    assert_eq!(addrs, ["0000:01:00.0", "0000:02:00.0"]);
    for pf in &pfs {
        assert_eq!(
            (pf.function.vendor_id, pf.function.device_id),
            (0x8086, 0x10c9)
        );
        assert_eq!(pf.function.driver, Driver::Kernel("igb".into()));
        assert!(pf.function.device_name.unwrap().contains("82576"));
        assert_eq!((pf.total_vfs, pf.num_vfs), (7, 0));
        assert!(pf.drivers_autoprobe);
        assert_eq!(pf.function.netdevs.len(), 1);
        assert!(pf.function.local_cpus.is_some());
    }
}

#[test]
fn vfs_are_created_through_zero_and_carry_groups() {
    let _guard = exclusive();
    let host = Host::real();
    sriov::set_num_vfs(&host, pf0(), 7, &NumVfsOptions::default()).unwrap();
    let pf = sriov::read_pf(&host, pf0()).unwrap();
    assert_eq!((pf.num_vfs, pf.vfs.len()), (7, 7));
    assert_eq!(pf.vfs[0].function.addr.to_string(), "0000:01:10.0");
    assert_eq!(pf.vfs[1].function.addr.to_string(), "0000:01:10.2");
    for vf in &pf.vfs {
        assert_eq!(vf.function.device_id, 0x10ca);
        assert_eq!(vf.function.driver, Driver::Kernel("igbvf".into()));
        let group = vf
            .iommu_group
            .as_ref()
            .expect("VT-d gives every VF a group");
        assert!(group.members.contains(&vf.function.addr));
        assert_eq!(sriov::pf_of(&host, vf.function.addr).unwrap(), Some(pf0()));
    }
    // 7 -> 3 needs the kernel's count to go through 0 (it refuses a direct change: EBUSY).
    sriov::set_num_vfs(&host, pf0(), 3, &NumVfsOptions::default()).unwrap();
    assert_eq!(sriov::read_pf(&host, pf0()).unwrap().vfs.len(), 3);
    // And explicitly: to 0, then to 3 again.
    sriov::set_num_vfs(&host, pf0(), 0, &NumVfsOptions::default()).unwrap();
    assert!(sriov::read_pf(&host, pf0()).unwrap().vfs.is_empty());
    assert!(
        std::fs::read_dir("/sys/bus/pci/devices/0000:01:00.0")
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("virtfn"))
    );
    sriov::set_num_vfs(&host, pf0(), 3, &NumVfsOptions::default()).unwrap();
    assert_eq!(sriov::read_pf(&host, pf0()).unwrap().num_vfs, 3);
    let err = sriov::set_num_vfs(&host, pf0(), 8, &NumVfsOptions::default()).unwrap_err();
    assert!(
        matches!(err, SriovError::TooManyVfs { total: 7, .. }),
        "{err}"
    );
}

#[test]
fn autoprobe_off_leaves_vfs_without_a_driver() {
    let _guard = exclusive();
    let host = Host::real();
    let opts = NumVfsOptions {
        autoprobe: Some(false),
        ..Default::default()
    };
    sriov::set_num_vfs(&host, pf0(), 2, &opts).unwrap();
    let pf = sriov::read_pf(&host, pf0()).unwrap();
    assert!(
        pf.vfs.iter().all(|v| v.function.driver == Driver::None),
        "{:?}",
        pf.vfs
    );
    assert!(pf.drivers_autoprobe, "the PF's setting is restored");
}

#[test]
fn bind_to_vfio_and_back_and_group_viability() {
    let _guard = exclusive();
    let host = Host::real();
    sriov::set_num_vfs(&host, pf0(), 1, &NumVfsOptions::default()).unwrap();
    let vf = sriov::vf_address(&host, pf0(), 0).unwrap();
    assert_eq!(
        sriov::bind_to_vfio(&host, vf).unwrap(),
        Driver::Kernel("igbvf".into())
    );
    assert_eq!(
        sriov::read_function(&host, vf).unwrap().driver,
        Driver::Vfio
    );
    let override_path = format!("/sys/bus/pci/devices/{vf}/driver_override");
    assert_eq!(
        std::fs::read_to_string(&override_path).unwrap().trim(),
        "(null)"
    );
    let Viability::Viable { group } = sriov::group_viability(&host, vf).unwrap() else {
        panic!("not viable")
    };
    assert!(std::path::Path::new(&format!("/dev/vfio/{}", group.id)).exists());
    // The PF keeps igb: its own group is not viable, and says why.
    match sriov::group_viability(&host, pf0()).unwrap() {
        Viability::NotViable { offenders, .. } => {
            assert_eq!(offenders, [(pf0(), "igb".to_string())])
        }
        v => panic!("the PF's group should not be viable: {v:?}"),
    }
    assert_eq!(
        sriov::bind_to_host_driver(&host, vf, Some("igbvf")).unwrap(),
        Driver::Kernel("igbvf".into())
    );
    assert_eq!(sriov::read_function(&host, vf).unwrap().netdevs.len(), 1);
}

#[test]
fn an_open_or_assigned_vf_blocks_a_count_change() {
    let _guard = exclusive();
    let host = Host::real();
    sriov::set_num_vfs(&host, pf0(), 2, &NumVfsOptions::default()).unwrap();
    let vf = sriov::vf_address(&host, pf0(), 1).unwrap();
    sriov::bind_to_vfio(&host, vf).unwrap();
    let group = sriov::iommu_group_of(&host, vf).unwrap().unwrap().id;
    let held = File::open(format!("/dev/vfio/{group}")).unwrap();
    let err = sriov::set_num_vfs(&host, pf0(), 0, &NumVfsOptions::default()).unwrap_err();
    match &err {
        SriovError::VfsInUse { vfs, .. } => assert_eq!(
            vfs,
            &[(
                vf,
                VfUse::OpenBy {
                    pid: std::process::id()
                }
            )]
        ),
        other => panic!("expected VfsInUse, got {other}"),
    }
    drop(held);
    let assigned = NumVfsOptions {
        assigned: BTreeSet::from([vf]),
        ..Default::default()
    };
    let err = sriov::set_num_vfs(&host, pf0(), 0, &assigned).unwrap_err();
    assert!(
        err.to_string()
            .contains("still bound to vfio-pci and assigned; stop its VM first"),
        "{err}"
    );
    assert_eq!(
        sriov::read_pf(&host, pf0()).unwrap().vfs.len(),
        2,
        "nothing was removed"
    );
    sriov::bind_to_host_driver(&host, vf, Some("igbvf")).unwrap();
    sriov::set_num_vfs(&host, pf0(), 0, &NumVfsOptions::default()).unwrap();
}

/// iproute2's `ip`, shipped in the lab image with its libraries.
const IPROUTE2: &str = "/usr/lib/hostd-lab/bin/ip";

/// The `vf <index>` line of `ip -d link show <netdev>`.
fn iproute2_vf_line(netdev: &str, index: u32) -> String {
    let out = std::process::Command::new(IPROUTE2)
        .args(["-d", "link", "show", netdev])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{IPROUTE2} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let prefix = format!("vf {index} ");
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
        .to_string()
}

#[test]
fn vf_settings_on_two_of_seven_vfs_read_back_by_us_and_by_iproute2() {
    let _guard = exclusive();
    let host = Host::real();
    sriov::set_num_vfs(&host, pf0(), 7, &NumVfsOptions::default()).unwrap();
    // igb applies a VF rate limit only with the PF link up (it needs the link speed): with the
    // link down it refuses the rate, and we say so.
    let netdev = sriov::read_function(&host, pf0()).unwrap().netdevs[0]
        .name
        .clone();
    let mut rtnl = RouteSocket::open().unwrap();
    rtnl.set_link_up(ifindex(&netdev).unwrap(), false).unwrap();
    let rate = VfSettings {
        rate: Some(TxRate::new(0, 100).unwrap()),
        ..Default::default()
    };
    let err = sriov::configure_vf(&host, pf0(), 1, &rate).unwrap_err();
    assert!(matches!(err, SriovError::VfSettingRejected { .. }), "{err}");
    rtnl.set_link_up(ifindex(&netdev).unwrap(), true).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));

    for (index, last_byte, vlan) in [(1u32, 0x01u8, 100u32), (4, 0x04, 200)] {
        let settings = VfSettings {
            mac: Some(sriov::MacAddr([2, 0, 0, 0, 0x10, last_byte])),
            vlan: Some(VfVlan::new(vlan, 3, VlanProto::Dot1Q).unwrap()),
            spoof_check: Some(false),
            trust: Some(true),
            rate: Some(TxRate::new(0, 100).unwrap()),
            link_state: None,
        };
        let state = sriov::configure_vf(&host, pf0(), index, &settings).unwrap();
        assert_eq!(
            state.mac.unwrap().to_string(),
            format!("02:00:00:00:10:{last_byte:02x}")
        );
        assert_eq!((state.vlan.id, state.vlan.qos), (vlan as u16, 3));
        assert_eq!(
            (state.spoof_check, state.trust, state.rate.max_mbps),
            (Some(false), Some(true), 100)
        );

        // Our dump and iproute2's say the same.
        assert_eq!(
            sriov::read_vf_states(&host, pf0()).unwrap()[index as usize],
            state
        );
        let line = iproute2_vf_line(&netdev, index);
        for expected in [
            format!("link/ether 02:00:00:00:10:{last_byte:02x}"),
            format!("vlan {vlan}, qos 3"),
            "max_tx_rate 100Mbps".into(),
            "spoof checking off".into(),
            "trust on".into(),
        ] {
            assert!(
                line.contains(&expected),
                "iproute2 says `{line}`, no `{expected}`"
            );
        }
    }
    // The MAC the PF set is removed again (what hostd does when a guest lets its VF go).
    let state = sriov::clear_vf_mac(&host, pf0(), 4).unwrap();
    assert_eq!(state.mac, None);
    let line = iproute2_vf_line(&netdev, 4);
    assert!(
        line.contains("link/ether 00:00:00:00:00:00"),
        "iproute2 says `{line}`"
    );
    // The others are untouched.
    let states = sriov::read_vf_states(&host, pf0()).unwrap();
    assert_eq!(states.len(), 7);
    assert_eq!((states[0].vlan.id, states[0].trust), (0, Some(false)));

    // What igb refuses, reported as refused with the setting's and the driver's names.
    let err = sriov::configure_vf(
        &host,
        pf0(),
        0,
        &VfSettings {
            link_state: Some(LinkState::Disable),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, SriovError::VfSettingUnsupported { setting, driver, .. } if setting == "state" && driver == "igb"),
        "{err}"
    );
    assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
    let qinq = VfSettings {
        vlan: Some(VfVlan::new(10, 0, VlanProto::Dot1Ad).unwrap()),
        ..Default::default()
    };
    let err = sriov::configure_vf(&host, pf0(), 0, &qinq).unwrap_err();
    assert!(
        matches!(&err, SriovError::VfSettingUnsupported { setting, .. } if setting == "vlan (802.1ad)"),
        "{err}"
    );
    assert_eq!(err.errno(), Some(libc::EPROTONOSUPPORT));
    let min_rate = VfSettings {
        rate: Some(TxRate::new(50, 100).unwrap()),
        ..Default::default()
    };
    let err = sriov::configure_vf(&host, pf0(), 0, &min_rate).unwrap_err();
    assert!(matches!(err, SriovError::VfSettingRejected { .. }), "{err}");
    assert_eq!(err.errno(), Some(libc::EINVAL));
    let err = sriov::configure_vf(
        &host,
        pf0(),
        7,
        &VfSettings {
            trust: Some(true),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SriovError::VfIndexOutOfRange {
                index: 7,
                num_vfs: 7,
                ..
            }
        ),
        "{err}"
    );
}
