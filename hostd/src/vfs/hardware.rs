//! What hostd does to a VF around a guest, through the `sriov` crate: before the VMM starts,
//! the instance's settings, vfio-pci, and the IOMMU group checked ([`acquire`]); after the
//! VMM is gone, the settings as they were and the driver as configured ([`release`]).
//!
//! Release never fails as a whole: each step that goes wrong is reported (and logged), and
//! the VF is free in hostd's record anyway, because a VF whose VMM is gone is out of every
//! guest's reach. Every step is idempotent, so a release interrupted by a crash is simply
//! done again.

use std::path::Path;

use sriov::{Driver, Host, PciAddress, VfSetting, VfSettings, Viability};

use super::error::{VfError, VfName};
use crate::config::VfRelease;
use crate::store::{InstanceVf, VfAssignment};

/// The VF of an assignment, for messages.
pub fn vf_name(vf: &InstanceVf, a: &VfAssignment) -> VfName {
    VfName {
        addr: a.addr.clone(),
        port: vf.port.clone(),
        index: a.index,
        pf: vf.pf.clone(),
    }
}

fn parse(text: &str, vf: &VfName) -> Result<PciAddress, VfError> {
    text.parse().map_err(|_| VfError::Bind {
        vf: vf.clone(),
        source: sriov::SriovError::Malformed {
            path: Path::new("state store").to_owned(),
            value: text.to_owned(),
            expected: "a PCI address",
        },
    })
}

/// How the host is reached beyond the `sriov` crate's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// The real kernel: `/dev/vfio` is checked, a MAC is cleared through rtnetlink.
    Real,
    /// The `sriov` crate's simulated host (`hostd --sim`).
    Simulated,
}

/// Prepares the VF of assignment `a` for the guest: the instance's settings (each read
/// back by the sriov crate), vfio-pci, and its IOMMU group viable. On the real host the
/// VFIO device nodes must exist too.
pub fn acquire(
    host: &Host,
    kind: HostKind,
    vf: &InstanceVf,
    a: &VfAssignment,
) -> Result<(), VfError> {
    let started = std::time::Instant::now();
    let name = vf_name(vf, a);
    let pf = parse(&vf.pf, &name)?;
    let addr = parse(&a.addr, &name)?;
    if !vf.settings.each().is_empty() {
        sriov::configure_vf(host, pf, a.index, &vf.settings).map_err(|source| {
            VfError::Configure {
                vf: name.clone(),
                source,
            }
        })?;
    }
    sriov::bind_to_vfio(host, addr).map_err(|source| VfError::Bind {
        vf: name.clone(),
        source,
    })?;
    let group = match sriov::group_viability(host, addr) {
        Ok(Viability::Viable { group }) => group,
        Ok(Viability::NotViable { group, offenders }) => {
            return Err(VfError::NotViable {
                vf: name,
                group: group.id,
                blockers: offenders,
            });
        }
        Err(sriov::SriovError::NoIommuGroup { .. }) => return Err(VfError::NoIommu { vf: name }),
        Err(source) => return Err(VfError::Bind { vf: name, source }),
    };
    if kind == HostKind::Real {
        for node in [
            Path::new("/dev/vfio/vfio").to_owned(),
            Path::new("/dev/vfio").join(group.id.to_string()),
        ] {
            if !node.exists() {
                return Err(VfError::NoVfioNode {
                    vf: name,
                    path: node,
                });
            }
        }
    }
    log::info!(
        "{name}: settings applied, on vfio-pci, IOMMU group {} viable, in {} ms",
        group.id,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// What a release did and what went wrong.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Done, for the event (`mac restored`, `back on igbvf`).
    pub done: Vec<String>,
    /// Failed, each with what to do.
    pub problems: Vec<String>,
}

impl Released {
    /// One line for the event's reason.
    pub fn summary(&self) -> String {
        let mut parts = self.done.clone();
        parts.extend(self.problems.iter().map(|p| format!("FAILED: {p}")));
        if parts.is_empty() {
            "nothing to undo".into()
        } else {
            parts.join("; ")
        }
    }
}

/// The one setting of `setting`.
fn only(setting: VfSetting) -> VfSettings {
    let mut s = VfSettings::default();
    match setting {
        VfSetting::Mac(m) => s.mac = Some(m),
        VfSetting::Vlan(v) => s.vlan = Some(v),
        VfSetting::SpoofCheck(on) => s.spoof_check = Some(on),
        VfSetting::Trust(on) => s.trust = Some(on),
        VfSetting::Rate(r) => s.rate = Some(r),
        VfSetting::LinkState(l) => s.link_state = Some(l),
    }
    s
}

/// Puts back, one by one, what the instance set on the VF.
fn restore_settings(
    host: &Host,
    vf: &InstanceVf,
    a: &VfAssignment,
    pf: PciAddress,
    out: &mut Released,
) {
    let saved = &a.saved;
    for applied in vf.settings.each() {
        let back = match applied {
            VfSetting::Mac(_) => match saved.mac {
                Some(mac) if mac.is_unicast() => Some(VfSetting::Mac(mac)),
                // It had none: cleared below.
                _ => None,
            },
            VfSetting::Vlan(_) => Some(VfSetting::Vlan(saved.vlan)),
            VfSetting::Rate(_) => Some(VfSetting::Rate(saved.rate)),
            VfSetting::SpoofCheck(_) => saved.spoof_check.map(VfSetting::SpoofCheck),
            VfSetting::Trust(_) => saved.trust.map(VfSetting::Trust),
            VfSetting::LinkState(_) => saved.link_state.map(VfSetting::LinkState),
        };
        match back {
            Some(back) if back == applied => {}
            Some(back) => match sriov::configure_vf(host, pf, a.index, &only(back)) {
                Ok(_) => out.done.push(format!("{} restored", back.name())),
                Err(err) => out
                    .problems
                    .push(format!("{} not restored ({err})", back.name())),
            },
            None if matches!(applied, VfSetting::Mac(_)) => clear_mac(host, pf, a, out),
            None => {}
        }
    }
}

/// The VF had no MAC of the PF's: set it back to none (all zeros, which igb takes as
/// "remove the administratively set MAC"), so the next user picks its own.
fn clear_mac(host: &Host, pf: PciAddress, a: &VfAssignment, out: &mut Released) {
    match sriov::clear_vf_mac(host, pf, a.index) {
        Ok(_) => out.done.push("mac cleared".into()),
        Err(err) => out.problems.push(format!(
            "mac not cleared ({err}): `ip link set <PF {pf} netdev> vf {} mac 00:00:00:00:00:00`",
            a.index
        )),
    }
}

/// Gives the VF of assignment `a` back once its VMM is gone: the settings the instance
/// changed as they were, then the driver as `policy` says.
pub fn release(host: &Host, policy: VfRelease, vf: &InstanceVf, a: &VfAssignment) -> Released {
    let started = std::time::Instant::now();
    let name = vf_name(vf, a);
    let mut out = Released::default();
    let (Ok(pf), Ok(addr)) = (parse(&vf.pf, &name), parse(&a.addr, &name)) else {
        out.problems.push("malformed address in the record".into());
        return out;
    };
    let current = match sriov::read_function(host, addr) {
        Ok(function) => function.driver,
        Err(sriov::SriovError::NoSuchDevice { .. }) => {
            // The VF went with a change of the PF's VF count: its settings went with it.
            out.done.push("the VF no longer exists".into());
            return out;
        }
        Err(err) => {
            out.problems.push(format!("cannot read it ({err})"));
            Driver::None
        }
    };
    restore_settings(host, vf, a, pf, &mut out);
    let target = match policy {
        VfRelease::VfioPci => None,
        VfRelease::HostDriver => match a.driver_before.as_str() {
            sriov::VFIO_PCI => None,
            "none" => Some(None),
            driver => Some(Some(driver)),
        },
    };
    match target {
        None => out.done.push(format!("left on {}", current.name())),
        Some(None) if current == Driver::None => out.done.push("unbound".into()),
        Some(None) => match sriov::unbind(host, addr) {
            Ok(()) => out.done.push("unbound".into()),
            Err(err) => out.problems.push(format!("not unbound ({err})")),
        },
        Some(Some(driver)) => match sriov::bind_to_host_driver(host, addr, Some(driver)) {
            Ok(_) => out.done.push(format!("back on {driver}")),
            Err(err) => out.problems.push(format!("not back on {driver} ({err})")),
        },
    }
    let ms = started.elapsed().as_millis();
    if out.problems.is_empty() {
        log::info!("{name}: released in {ms} ms: {}", out.summary());
    } else {
        log::warn!(
            "{name}: released in {ms} ms, with problems: {}",
            out.summary()
        );
    }
    out
}
