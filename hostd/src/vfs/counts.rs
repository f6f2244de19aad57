//! `[sriov.num_vfs]`: the VF count of each PF, set when hostd starts. hostd owns the VFs, so
//! it (not a boot script) decides how many there are. A PF is only changed when none of its
//! VFs is in use: the kernel destroys all of a PF's VFs to change their number.

use std::collections::{BTreeMap, BTreeSet};

use sriov::{Host, NumVfsOptions, PciAddress};

use crate::inventory::Port;

/// What happened to one configured PF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountOutcome {
    /// It already had that many.
    Unchanged {
        /// The key as configured.
        key: String,
        /// VFs.
        count: u32,
    },
    /// Set.
    Set {
        /// The key as configured.
        key: String,
        /// Before.
        from: u32,
        /// Now.
        to: u32,
    },
    /// Not done, and why (with what to do).
    Refused {
        /// The key as configured.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The PF `key` names: a PCI address, or a port (PF netdev) name.
fn resolve<'a>(key: &str, ports: &'a [Port]) -> Option<&'a Port> {
    match key.parse::<PciAddress>() {
        Ok(addr) => ports.iter().find(|p| p.pf == addr),
        Err(_) => ports.iter().find(|p| p.name == key),
    }
}

/// Sets each PF's VF count as `wanted` says. `held` are the VFs instances hold now (their
/// PF keeps its count); a VF open through VFIO by any process also keeps it (the sriov
/// crate checks `/proc`).
pub fn apply(
    host: &Host,
    wanted: &BTreeMap<String, u32>,
    ports: &[Port],
    held: &BTreeSet<PciAddress>,
) -> Vec<CountOutcome> {
    let mut out = Vec::new();
    for (key, count) in wanted {
        let Some(port) = resolve(key, ports) else {
            let names: Vec<String> = ports
                .iter()
                .map(|p| format!("{} ({})", p.pf, p.name))
                .collect();
            out.push(CountOutcome::Refused {
                key: key.clone(),
                reason: format!(
                    "no SR-IOV PF {key}: fix sriov.num_vfs (PFs: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            });
            continue;
        };
        let from = u32::try_from(port.vfs.len()).unwrap_or(u32::MAX);
        if from == *count {
            out.push(CountOutcome::Unchanged {
                key: key.clone(),
                count: *count,
            });
            continue;
        }
        let options = NumVfsOptions {
            assigned: held.clone(),
            ..NumVfsOptions::default()
        };
        out.push(match sriov::set_num_vfs(host, port.pf, *count, &options) {
            Ok(()) => CountOutcome::Set {
                key: key.clone(),
                from,
                to: *count,
            },
            Err(err) => CountOutcome::Refused {
                key: key.clone(),
                reason: format!("PF {} keeps {from} VFs: {err}", port.pf),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::read_ports;
    use sriov::sim::{SimHost, SimSpec};

    #[test]
    fn counts_are_set_by_address_or_port_name_unless_a_vf_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimHost::create(&dir.path().join("sim"), &SimSpec::two_igb_ports()).unwrap();
        let host = sim.host();
        let wanted: BTreeMap<String, u32> = [
            ("0000:01:00.0".to_owned(), 2),
            ("eth1".to_owned(), 3),
            ("eth7".to_owned(), 1),
        ]
        .into();
        let out = apply(&host, &wanted, &read_ports(&host), &BTreeSet::new());
        assert_eq!(
            out[0],
            CountOutcome::Set {
                key: "0000:01:00.0".into(),
                from: 0,
                to: 2
            }
        );
        assert_eq!(
            out[1],
            CountOutcome::Set {
                key: "eth1".into(),
                from: 0,
                to: 3
            }
        );
        assert!(
            matches!(&out[2], CountOutcome::Refused { reason, .. }
                if reason.starts_with("no SR-IOV PF eth7: fix sriov.num_vfs (PFs: 0000:01:00.0 (eth0)")),
            "{out:?}"
        );
        let ports = read_ports(&host);
        assert_eq!((ports[0].vfs.len(), ports[1].vfs.len()), (2, 3));

        // A VF held by an instance keeps its PF's count; the other PF changes.
        let held: BTreeSet<PciAddress> = [ports[0].vfs[1].1].into();
        let wanted: BTreeMap<String, u32> = [("eth0".to_owned(), 4), ("eth1".to_owned(), 3)].into();
        let out = apply(&host, &wanted, &ports, &held);
        assert!(
            matches!(&out[0], CountOutcome::Refused { reason, .. }
                if reason.contains("PF 0000:01:00.0 keeps 2 VFs") && reason.contains("assigned")),
            "{out:?}"
        );
        assert_eq!(
            out[1],
            CountOutcome::Unchanged {
                key: "eth1".into(),
                count: 3
            }
        );
        assert_eq!(read_ports(&host)[0].vfs.len(), 2);
    }
}
