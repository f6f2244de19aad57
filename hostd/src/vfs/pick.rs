//! Picking the VFs an instance gets at start: one free VF of the port each of its VF
//! reservations is placed on. Only reads the host (sysfs, `/proc`, the PF's VF list): the
//! pick is recorded before anything is changed.
//!
//! A VF is free when no other instance holds it (hostd's record) and no process has its
//! VFIO group open (a VMM hostd did not start, a test, a leftover): such a VF is skipped, and
//! named when the port has no other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sriov::{Host, PciAddress, VfState, VfUse};

use super::error::VfError;
use crate::store::{InstanceRecord, VfAssignment};

/// What one PF looks like now.
struct PfNow {
    /// Its VFs: index, address, driver name.
    vfs: Vec<(u32, PciAddress, String)>,
    /// VFs whose VFIO group a process has open, and the process.
    open: BTreeMap<PciAddress, u32>,
    /// The VF settings its driver reports, read once when needed.
    states: Option<Vec<VfState>>,
}

/// The name of process `pid` (`comm`), for messages.
fn process_name(host: &Host, pid: u32) -> String {
    std::fs::read_to_string(host.proc().join(pid.to_string()).join("comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn read_pf(host: &Host, port: &str, pf: &str) -> Result<(PciAddress, PfNow), VfError> {
    let err = |source| VfError::Pf {
        port: port.to_owned(),
        pf: pf.to_owned(),
        source,
    };
    let addr: PciAddress = pf.parse().map_err(|_| {
        err(sriov::SriovError::Malformed {
            path: Path::new("state store").to_owned(),
            value: pf.to_owned(),
            expected: "a PF's PCI address",
        })
    })?;
    let now = sriov::read_pf(host, addr).map_err(err)?;
    let open = sriov::vfs_in_use(host, addr, &BTreeSet::new())
        .map_err(err)?
        .into_iter()
        .filter_map(|(vf, why)| match why {
            VfUse::OpenBy { pid } => Some((vf, pid)),
            VfUse::Assigned => None,
        })
        .collect();
    Ok((
        addr,
        PfNow {
            vfs: now
                .vfs
                .iter()
                .map(|vf| {
                    (
                        vf.index,
                        vf.function.addr,
                        vf.function.driver.name().to_owned(),
                    )
                })
                .collect(),
            open,
            states: None,
        },
    ))
}

/// Picks a VF for each of `me`'s VF reservations, in order: the lowest-indexed free VF of
/// its port. `pass_to_guest` gives each a guest slot (1, 2, ... in reservation order, so
/// the guest always finds its VFs at the same addresses); without it (`hostd --sim`) none.
pub fn pick(
    host: &Host,
    me: &InstanceRecord,
    instances: &BTreeMap<u32, InstanceRecord>,
    pass_to_guest: bool,
) -> Result<Vec<VfAssignment>, VfError> {
    let held: BTreeMap<String, &str> = instances
        .values()
        .filter(|i| i.id != me.id)
        .flat_map(|i| {
            i.vfs
                .iter()
                .filter_map(|v| v.assigned.as_ref())
                .map(|a| (a.addr.clone(), i.name.as_str()))
        })
        .collect();
    let mut pfs: BTreeMap<String, (PciAddress, PfNow)> = BTreeMap::new();
    let mut picked: Vec<VfAssignment> = Vec::new();
    for (slot, vf) in me.vfs.iter().enumerate() {
        if !pfs.contains_key(&vf.pf) {
            pfs.insert(vf.pf.clone(), read_pf(host, &vf.port, &vf.pf)?);
        }
        let Some((pf_addr, now)) = pfs.get_mut(&vf.pf) else {
            continue;
        };
        let taken = |addr: &PciAddress| {
            let text = addr.to_string();
            held.contains_key(&text) || picked.iter().any(|p| p.addr == text)
        };
        let found = now
            .vfs
            .iter()
            .find(|(_, addr, _)| !taken(addr) && !now.open.contains_key(addr))
            .cloned();
        let Some((index, addr, driver)) = found else {
            let mut why: Vec<String> = Vec::new();
            for (_, addr, _) in &now.vfs {
                let text = addr.to_string();
                if let Some(owner) = held.get(&text) {
                    why.push(format!("{text} held by {owner}"));
                } else if let Some(pid) = now.open.get(addr) {
                    why.push(format!(
                        "{text} open by pid {pid} ({})",
                        process_name(host, *pid)
                    ));
                } else {
                    why.push(format!("{text} for {}'s VF {}", me.name, picked.len()));
                }
            }
            let in_use = !now.open.is_empty();
            let advice = if in_use {
                "stop that process"
            } else {
                "stop an instance or raise sriov.num_vfs"
            };
            let detail = format!(
                "{} VF{}: {}; {advice}",
                now.vfs.len(),
                if now.vfs.len() == 1 { "" } else { "s" },
                if why.is_empty() {
                    "none exist".to_owned()
                } else {
                    why.join(", ")
                }
            );
            return Err(VfError::NoFreeVf {
                instance: me.name.clone(),
                port: vf.port.clone(),
                pf: vf.pf.clone(),
                detail,
                in_use,
            });
        };
        // What to restore later: only needed when the instance changes something.
        let saved = if vf.settings.each().is_empty() {
            VfState {
                index,
                ..VfState::default()
            }
        } else {
            if now.states.is_none() {
                now.states =
                    Some(
                        sriov::read_vf_states(host, *pf_addr).map_err(|source| VfError::Pf {
                            port: vf.port.clone(),
                            pf: vf.pf.clone(),
                            source,
                        })?,
                    );
            }
            now.states
                .as_ref()
                .and_then(|states| states.iter().find(|s| s.index == index))
                .cloned()
                .ok_or_else(|| VfError::Pf {
                    port: vf.port.clone(),
                    pf: vf.pf.clone(),
                    source: sriov::SriovError::VfIndexOutOfRange {
                        pf: *pf_addr,
                        index,
                        num_vfs: now.vfs.len() as u32,
                    },
                })?
        };
        picked.push(VfAssignment {
            index,
            addr: addr.to_string(),
            saved,
            driver_before: driver,
            guest_slot: pass_to_guest.then(|| u8::try_from(slot + 1).unwrap_or(u8::MAX)),
        });
    }
    Ok(picked)
}
