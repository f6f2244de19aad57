//! VF settings on the simulated host: applied one by one, read back, refused with the
//! setting's and the driver's names, and checked before any I/O.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::{Arc, Mutex};

use sriov::sim::{SimHost, SimSpec};
use sriov::{
    LinkState, MacAddr, NumVfsOptions, PciAddress, SettingError, SriovError, TxRate, VfControl,
    VfSetting, VfSettings, VfState, VfVlan, VlanProto,
};

const PF: &str = "0000:01:00.0";

fn lab(vfs: u32) -> (tempfile::TempDir, SimHost, PciAddress) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::create(&dir.path().join("host"), &SimSpec::two_igb_ports()).unwrap();
    let pf: PciAddress = PF.parse().unwrap();
    sriov::set_num_vfs(&sim.host(), pf, vfs, &NumVfsOptions::default()).unwrap();
    (dir, sim, pf)
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[test]
fn settings_are_applied_and_read_back() {
    let (_dir, sim, pf) = lab(3);
    let host = sim.host();
    let settings = VfSettings {
        mac: Some(mac("02:00:00:00:01:02")),
        vlan: Some(VfVlan::new(100, 3, VlanProto::Dot1Q).unwrap()),
        spoof_check: Some(false),
        trust: Some(true),
        rate: Some(TxRate::new(0, 250).unwrap()),
        link_state: None,
    };
    let state = sriov::configure_vf(&host, pf, 2, &settings).unwrap();
    assert_eq!(state.index, 2);
    assert_eq!(state.mac, Some(mac("02:00:00:00:01:02")));
    assert_eq!((state.vlan.id, state.vlan.qos), (100, 3));
    assert_eq!((state.spoof_check, state.trust), (Some(false), Some(true)));
    assert_eq!(state.rate.max_mbps, 250);
    let all = sriov::read_vf_states(&host, pf).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], state);
    assert_eq!(all[0].mac, None, "other VFs untouched");
}

#[test]
fn an_unsupported_setting_names_itself_and_the_driver() {
    let (_dir, sim, pf) = lab(1);
    let host = sim.host();
    let err = sriov::configure_vf(
        &host,
        pf,
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
    assert!(
        err.to_string()
            .contains("driver igb does not support setting `state` on VF 0"),
        "{err}"
    );

    let qinq = VfSettings {
        vlan: Some(VfVlan::new(10, 0, VlanProto::Dot1Ad).unwrap()),
        ..Default::default()
    };
    let err = sriov::configure_vf(&host, pf, 0, &qinq).unwrap_err();
    assert!(err.to_string().contains("`vlan (802.1ad)`"), "{err}");

    let min_rate = VfSettings {
        rate: Some(TxRate::new(100, 500).unwrap()),
        ..Default::default()
    };
    let err = sriov::configure_vf(&host, pf, 0, &min_rate).unwrap_err();
    assert!(matches!(err, SriovError::VfSettingRejected { .. }), "{err}");
    assert!(
        err.to_string().contains("min_tx_rate 100 max_tx_rate 500"),
        "{err}"
    );
}

/// A VF control that records every call, accepts every setting and applies none: a driver
/// that lies.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl VfControl for Recorder {
    fn apply(&self, pf_netdev: &str, index: u32, setting: VfSetting) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{pf_netdev} {index} {setting}"));
        Ok(())
    }
    fn read(&self, _: &str) -> io::Result<Vec<VfState>> {
        self.calls.lock().unwrap().push("read".into());
        Ok(vec![VfState {
            index: 0,
            ..Default::default()
        }])
    }
}

#[test]
fn bad_values_are_refused_before_any_io() {
    let (_dir, sim, pf) = lab(2);
    let recorder = Arc::new(Recorder::default());
    let host = sim.host().with_vf_control(recorder.clone());
    let cases = [
        VfSettings {
            vlan: Some(VfVlan {
                id: 4095,
                qos: 0,
                proto: VlanProto::Dot1Q,
            }),
            ..Default::default()
        },
        VfSettings {
            vlan: Some(VfVlan {
                id: 10,
                qos: 9,
                proto: VlanProto::Dot1Q,
            }),
            ..Default::default()
        },
        VfSettings {
            mac: Some(mac("01:00:5e:00:00:01")),
            ..Default::default()
        },
        VfSettings {
            rate: Some(TxRate {
                min_mbps: 9,
                max_mbps: 1,
            }),
            ..Default::default()
        },
    ];
    for settings in &cases {
        let err = sriov::configure_vf(&host, pf, 0, settings).unwrap_err();
        assert!(matches!(err, SriovError::InvalidSetting(_)), "{err}");
    }
    let err = sriov::configure_vf(
        &host,
        pf,
        2,
        &VfSettings {
            trust: Some(true),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "PF 0000:01:00.0 has 2 VFs, so VF index 2 does not exist"
    );
    assert!(
        recorder.calls.lock().unwrap().is_empty(),
        "nothing reached the driver"
    );
    assert_eq!(
        "02:00:00:00:00".parse::<MacAddr>(),
        Err(SettingError::MacSyntax("02:00:00:00:00".into()))
    );
}

#[test]
fn a_driver_that_ignores_a_setting_is_caught() {
    let (_dir, sim, pf) = lab(1);
    let recorder = Arc::new(Recorder::default());
    let host = sim.host().with_vf_control(recorder.clone());
    let err = sriov::configure_vf(
        &host,
        pf,
        0,
        &VfSettings {
            trust: Some(true),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, SriovError::VfSettingNotApplied { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("accepted `trust on` on VF 0 but reports"),
        "{err}"
    );
    assert_eq!(
        recorder.calls.lock().unwrap().as_slice(),
        ["eth0 0 trust on", "read"]
    );
}

#[test]
fn settings_go_with_the_vfs() {
    let (_dir, sim, pf) = lab(1);
    let host = sim.host();
    sriov::configure_vf(
        &host,
        pf,
        0,
        &VfSettings {
            trust: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    sriov::set_num_vfs(&host, pf, 0, &NumVfsOptions::default()).unwrap();
    sriov::set_num_vfs(&host, pf, 1, &NumVfsOptions::default()).unwrap();
    assert_eq!(
        sriov::read_vf_states(&host, pf).unwrap()[0].trust,
        Some(false)
    );
}

#[test]
fn a_pf_without_its_netdev_cannot_configure_vfs() {
    let (_dir, sim, pf) = lab(1);
    let host = sim.host();
    sriov::unbind(&host, pf).unwrap();
    let err = sriov::configure_vf(
        &host,
        pf,
        0,
        &VfSettings {
            trust: Some(true),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, SriovError::PfHasNoNetdev { .. }), "{err}");
}

#[test]
fn a_pf_set_mac_is_cleared_and_read_back_as_none() {
    let (_dir, sim, pf) = lab(2);
    let host = sim.host();
    let with_mac = VfSettings {
        mac: Some(mac("02:00:00:00:01:05")),
        ..Default::default()
    };
    sriov::configure_vf(&host, pf, 1, &with_mac).unwrap();
    let state = sriov::clear_vf_mac(&host, pf, 1).unwrap();
    assert_eq!(state.mac, None);
    assert_eq!(sriov::read_vf_states(&host, pf).unwrap()[1].mac, None);
    // Clearing is not a way to pass the all-zero address to configure_vf.
    let zero = VfSettings {
        mac: Some(MacAddr([0; 6])),
        ..Default::default()
    };
    assert!(sriov::configure_vf(&host, pf, 1, &zero).is_err());
    let err = sriov::clear_vf_mac(&host, pf, 2).unwrap_err();
    assert!(
        matches!(err, SriovError::VfIndexOutOfRange { num_vfs: 2, .. }),
        "{err}"
    );
}

/// A PF driver that accepts every setting and keeps the MAC it had.
#[derive(Debug)]
struct KeepsItsMac;

impl VfControl for KeepsItsMac {
    fn apply(&self, _: &str, _: u32, _: VfSetting) -> io::Result<()> {
        Ok(())
    }
    fn read(&self, _: &str) -> io::Result<Vec<VfState>> {
        Ok(vec![VfState {
            index: 0,
            mac: Some(mac("02:00:00:00:01:06")),
            ..Default::default()
        }])
    }
}

#[test]
fn a_mac_the_driver_keeps_is_reported_not_cleared() {
    let (_dir, sim, pf) = lab(1);
    let host = sim.host().with_vf_control(Arc::new(KeepsItsMac));
    let err = sriov::clear_vf_mac(&host, pf, 0).unwrap_err();
    assert!(
        matches!(&err, SriovError::VfSettingNotApplied { setting, .. } if setting == "mac cleared"),
        "{err}"
    );
    assert!(err.to_string().contains("02:00:00:00:01:06"), "{err}");
}
