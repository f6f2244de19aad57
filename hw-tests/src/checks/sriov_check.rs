//! `sriov`: every SR-IOV PF supports the profile's VF count; the VFs are created and appear;
//! one VF per PF is moved to vfio-pci, its IOMMU group is viable, and it opens through VFIO
//! with the right ids; then everything is put back (VF count, drivers), whatever failed.

use sriov::{Driver, NumVfsOptions, PhysicalFunction, Viability};

use super::not_in_profile;
use crate::machine::Machine;
use crate::profile::{Profile, SriovSpec};
use crate::report::CheckResult;

const NAME: &str = "sriov";

pub(super) fn run(profile: &Profile, m: &Machine) -> CheckResult {
    let Some(spec) = &profile.sriov else {
        return not_in_profile(NAME, profile, "SR-IOV NIC");
    };
    let pfs = match sriov::list_pfs(&m.host) {
        Ok(pfs) => pfs,
        Err(e) => return CheckResult::fail(NAME, e.to_string()),
    };
    let found = u32::try_from(pfs.len()).unwrap_or(u32::MAX);
    let mut details: Vec<String> = pfs
        .iter()
        .map(|pf| {
            format!(
                "{} {} ({}) on {}, {} VFs max",
                pf.function.addr,
                pf.function.device_name.unwrap_or("unknown device"),
                format_args!(
                    "{:04x}:{:04x}",
                    pf.function.vendor_id, pf.function.device_id
                ),
                pf.function.driver.name(),
                pf.total_vfs
            )
        })
        .collect();
    if found < spec.pfs {
        return CheckResult::fail(NAME, format!("{found} SR-IOV PFs found, the profile needs {}; check the NICs are seated and SR-IOV is enabled in the firmware setup", spec.pfs))
            .with_details(details);
    }
    let mut failures = Vec::new();
    for pf in &pfs {
        match test_pf(m, pf, spec) {
            Ok(line) => details.push(line),
            Err(reason) => {
                details.push(reason.clone());
                failures.push(reason);
            }
        }
    }
    let vfs = spec.vfs_per_pf * found;
    match failures.first() {
        None => CheckResult::pass(
            NAME,
            format!(
                "{found} PFs, {vfs} VFs created{} and restored",
                if spec.vfio_bind {
                    ", VFIO open works"
                } else {
                    ""
                }
            ),
        )
        .with_details(details),
        Some(first) => CheckResult::fail(NAME, first.clone()).with_details(details),
    }
}

/// Creates the VFs, exercises them, and always restores the PF.
fn test_pf(m: &Machine, pf: &PhysicalFunction, spec: &SriovSpec) -> Result<String, String> {
    let addr = pf.function.addr;
    if pf.total_vfs < spec.vfs_per_pf {
        return Err(format!(
            "PF {addr} supports {} VFs, the profile needs {}; check the NIC model and its firmware SR-IOV setting",
            pf.total_vfs, spec.vfs_per_pf
        ));
    }
    let exercised = sriov::set_num_vfs(&m.host, addr, spec.vfs_per_pf, &NumVfsOptions::default())
        .map_err(|e| e.to_string())
        .and_then(|()| exercise(m, pf, spec));
    let restored = sriov::set_num_vfs(&m.host, addr, pf.num_vfs, &NumVfsOptions::default())
        .map_err(|e| format!("PF {addr}: could not restore {} VFs: {e}", pf.num_vfs))
        .and_then(|()| {
            let now = sriov::read_pf(&m.host, addr).map_err(|e| e.to_string())?;
            if now.num_vfs == pf.num_vfs && now.function.driver == pf.function.driver {
                Ok(())
            } else {
                Err(format!(
                    "PF {addr}: after the test it has {} VFs on {}, it had {} on {}",
                    now.num_vfs,
                    now.function.driver.name(),
                    pf.num_vfs,
                    pf.function.driver.name()
                ))
            }
        });
    let line = exercised?;
    restored?;
    Ok(format!("{line}; restored to {} VFs", pf.num_vfs))
}

fn exercise(m: &Machine, pf: &PhysicalFunction, spec: &SriovSpec) -> Result<String, String> {
    let addr = pf.function.addr;
    let now = sriov::read_pf(&m.host, addr).map_err(|e| e.to_string())?;
    if now.vfs.len() != spec.vfs_per_pf as usize {
        return Err(format!(
            "PF {addr}: {} VFs appeared after asking for {}; see dmesg",
            now.vfs.len(),
            spec.vfs_per_pf
        ));
    }
    let mut drivers: Vec<&str> = now.vfs.iter().map(|v| v.function.driver.name()).collect();
    drivers.dedup();
    let mut line = format!(
        "{addr}: {}/{} VFs created on {}",
        now.vfs.len(),
        spec.vfs_per_pf,
        drivers.join(",")
    );
    if !spec.vfio_bind {
        return Ok(line);
    }
    let vf = &now.vfs[0].function;
    let before = sriov::bind_to_vfio(&m.host, vf.addr).map_err(|e| e.to_string())?;
    let probed = probe_vfio(m, vf.addr, vf.vendor_id, vf.device_id);
    let back = match &before {
        Driver::Vfio => Ok(()),
        Driver::None => sriov::unbind(&m.host, vf.addr).map_err(|e| e.to_string()),
        Driver::Kernel(name) => sriov::bind_to_host_driver(&m.host, vf.addr, Some(name))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    let probe_line = probed?;
    back.map_err(|e| {
        format!(
            "VF {}: could not give it back to {}: {e}",
            vf.addr,
            before.name()
        )
    })?;
    line.push_str(&format!(
        "; VF {} {probe_line}, back on {}",
        vf.addr,
        before.name()
    ));
    Ok(line)
}

fn probe_vfio(
    m: &Machine,
    vf: sriov::PciAddress,
    vendor: u16,
    device: u16,
) -> Result<String, String> {
    let group = match sriov::group_viability(&m.host, vf).map_err(|e| e.to_string())? {
        Viability::Viable { group } => group,
        Viability::NotViable { group, offenders } => {
            let names: Vec<String> = offenders
                .iter()
                .map(|(a, d)| format!("{a} on {d}"))
                .collect();
            return Err(format!(
                "VF {vf}: IOMMU group {} is not viable: {} must be unbound or on vfio-pci",
                group.id,
                names.join(", ")
            ));
        }
    };
    let p = m.vfio.probe(&m.sys(&format!("bus/pci/devices/{vf}")))?;
    if (p.vendor_id, p.device_id) != (vendor, device) {
        return Err(format!(
            "VF {vf}: config space read through VFIO says {:04x}:{:04x}, sysfs says {vendor:04x}:{device:04x}",
            p.vendor_id, p.device_id
        ));
    }
    Ok(format!(
        "-> vfio-pci, group {} viable, VFIO read {:04x}:{:04x}, BAR0 {} KiB, {} interrupt vectors",
        group.id,
        p.vendor_id,
        p.device_id,
        p.bar0_size / 1024,
        p.max_interrupts
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::report::Outcome;
    use crate::test_support::{FakeMachine, FakeVfio, profile};
    use sriov::sim::SimSpec;

    const SPEC: &str = "[sriov]\npfs = 2\nvfs_per_pf = 7\n";

    fn assert_restored(f: &FakeMachine) {
        let m = f.machine();
        for pf in sriov::list_pfs(&m.host).unwrap() {
            assert_eq!(pf.num_vfs, 0, "{} left with VFs", pf.function.addr);
            assert_eq!(pf.function.driver, Driver::Kernel("igb".into()));
        }
    }

    #[test]
    fn the_lab_nic_passes_and_is_restored() {
        let f = FakeMachine::with_sim(&SimSpec::two_igb_ports());
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Pass, "{} {:?}", r.reason, r.details);
        assert_eq!(
            r.reason,
            "2 PFs, 14 VFs created, VFIO open works and restored"
        );
        assert!(
            r.details.iter().any(|d| d
                .contains("0000:01:00.0: 7/7 VFs created on igbvf; VF 0000:01:10.0 -> vfio-pci")),
            "{:?}",
            r.details
        );
        assert_eq!(
            f.vfio.opened.lock().unwrap().len(),
            2,
            "one VF per PF opened through VFIO"
        );
        assert_restored(&f);
    }

    #[test]
    fn too_few_pfs_fail_with_numbers() {
        let mut spec = SimSpec::two_igb_ports();
        spec.pfs.pop();
        let f = FakeMachine::with_sim(&spec);
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason
                .starts_with("1 SR-IOV PFs found, the profile needs 2"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn too_few_vfs_per_pf_fail_with_advice() {
        let f = FakeMachine::with_sim(&SimSpec::two_igb_ports());
        let r = run(&profile("[sriov]\npfs = 2\nvfs_per_pf = 8\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("supports 7 VFs, the profile needs 8"),
            "{}",
            r.reason
        );
        assert_restored(&f);
    }

    #[test]
    fn a_non_viable_group_fails_naming_the_offenders_and_restores() {
        let mut spec = SimSpec::two_igb_ports();
        spec.pfs[0].vfs_share_pf_group = true;
        let f = FakeMachine::with_sim(&spec);
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("is not viable") && r.reason.contains("0000:01:00.0 on igb"),
            "{}",
            r.reason
        );
        assert_restored(&f);
        let m = f.machine();
        let vf_driver_ok = sriov::list_pfs(&m.host)
            .unwrap()
            .iter()
            .all(|p| p.vfs.is_empty());
        assert!(vf_driver_ok);
    }

    #[test]
    fn a_vfio_open_failure_fails_and_restores() {
        let mut f = FakeMachine::with_sim(&SimSpec::two_igb_ports());
        f.vfio = Arc::new(FakeVfio {
            answer: Err("VFIO open of x failed: group is not viable".into()),
            opened: Default::default(),
        });
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.reason.contains("VFIO open"), "{}", r.reason);
        assert_restored(&f);
    }

    #[test]
    fn wrong_ids_through_vfio_are_a_failure() {
        let mut f = FakeMachine::with_sim(&SimSpec::two_igb_ports());
        let mut fake = FakeVfio::igb_vf();
        if let Ok(p) = &mut fake.answer {
            p.device_id = 0xffff;
        }
        f.vfio = Arc::new(fake);
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("8086:ffff, sysfs says 8086:10ca"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_kernel_refusal_is_reported_and_nothing_is_left_behind() {
        let f = FakeMachine::with_sim(&SimSpec::two_igb_ports());
        f.sim
            .as_ref()
            .unwrap()
            .fail_next_write("sriov_numvfs", libc::ENOMEM);
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("firmware SR-IOV settings"),
            "{}",
            r.reason
        );
        assert_restored(&f);
    }

    #[test]
    fn without_vfio_pci_loaded_the_failure_says_to_load_it() {
        let mut spec = SimSpec::two_igb_ports();
        spec.drivers.retain(|d| d != "vfio-pci");
        let f = FakeMachine::with_sim(&spec);
        let r = run(&profile(SPEC), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.reason.contains("modprobe vfio-pci"), "{}", r.reason);
        assert_restored(&f);
    }
}
