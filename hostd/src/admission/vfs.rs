//! VF reservations: each VF an instance asks for is placed on a port when the instance is
//! created (the port's VF count is what admission counts); which VF of the port it gets is
//! picked at start (`crate::vfs::pick`).

use std::collections::BTreeMap;

use hostd_proto::{ApiError, ErrorCode, Resource, VfRequest};
use sriov::{MacAddr, TxRate, VfSettings, VfVlan, VlanProto};

use super::{Resources, short};
use crate::store::InstanceVf;

impl Resources<'_> {
    /// Per port (by name): the VFs it has and how many instances other than `me` reserved
    /// there.
    pub fn vf_room(&self, me: Option<u32>) -> BTreeMap<String, (usize, usize)> {
        self.inventory
            .ports
            .iter()
            .map(|port| {
                let pf = port.pf.to_string();
                let reserved = self
                    .others(me)
                    .flat_map(|i| &i.vfs)
                    .filter(|v| v.pf == pf)
                    .count();
                (port.name.clone(), (port.vfs.len(), reserved))
            })
            .collect()
    }

    /// Places one VF per request on a port, reserving it there: the port asked for, else
    /// the port local to `cores` (its PF's `local_cpulist` holds them all) with the most free
    /// VFs, else the port with the most free VFs. Requests naming a port are placed first,
    /// so the others never take the VF they need. Settings are checked with the sriov types,
    /// MACs for uniqueness. Which VF of the port the instance gets is decided at start.
    /// Whether it fits does not depend on `cores` (only where the VFs go does).
    pub fn allocate_vfs(
        &self,
        me: Option<u32>,
        requests: &[VfRequest],
        cores: &[u16],
    ) -> Result<Vec<InstanceVf>, ApiError> {
        let room = self.vf_room(me);
        let free_of = |(total, reserved): &(usize, usize)| total.saturating_sub(*reserved);
        let mut free: BTreeMap<String, usize> = room
            .iter()
            .map(|(port, counts)| (port.clone(), free_of(counts)))
            .collect();
        let macs_in_use: std::collections::HashSet<MacAddr> = self
            .others(me)
            .flat_map(|i| i.vfs.iter().filter_map(|v| v.settings.mac))
            .collect();
        let mut out: Vec<Option<InstanceVf>> = vec![None; requests.len()];
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|n| requests[*n].port.is_none());
        for n in order {
            let request = &requests[n];
            let settings = vf_settings(request)
                .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, &format!("VF {n}: {e}")))?;
            if let Some(mac) = settings.mac {
                let mine = out.iter().flatten().any(|v| v.settings.mac == Some(mac));
                if macs_in_use.contains(&mac) || mine {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        &format!("VF {n}: MAC {mac} is already used by another VF: choose another"),
                    ));
                }
            }
            let port = match &request.port {
                Some(port) => {
                    if !free.contains_key(port.as_str()) {
                        let ports: Vec<&str> = free.keys().map(String::as_str).collect();
                        return Err(ApiError::new(
                            ErrorCode::NotFound,
                            &format!(
                                "VF {n}: no SR-IOV port {port} (ports: {})",
                                if ports.is_empty() {
                                    "none".to_owned()
                                } else {
                                    ports.join(", ")
                                }
                            ),
                        ));
                    }
                    Some(port.to_string())
                }
                None => self.best_port(&free, cores),
            };
            let placed = port.as_ref().and_then(|p| {
                free.get_mut(p)
                    .filter(|left| **left > 0)
                    .map(|left| (p, left))
            });
            let Some((port, left)) = placed else {
                let (needed, available, place) = match &request.port {
                    Some(port) => {
                        let on_port = requests
                            .iter()
                            .filter(|r| r.port.as_deref() == Some(port.as_str()))
                            .count();
                        let avail = room.get(port.as_str()).map_or(0, free_of);
                        (on_port, avail, format!(" on port {port}"))
                    }
                    None => (
                        requests.len(),
                        room.values().map(free_of).sum(),
                        String::new(),
                    ),
                };
                return Err(short(
                    Resource::Vfs,
                    needed as u64,
                    available as u64,
                    format!(
                        "needs {needed} VF{}{place}, {available} free: delete an instance that \
                         holds VFs, or enable more VFs on the NIC (sriov.num_vfs)",
                        if needed == 1 { "" } else { "s" }
                    ),
                ));
            };
            *left -= 1;
            let pf = self
                .inventory
                .ports
                .iter()
                .find(|p| &p.name == port)
                .map(|p| p.pf.to_string())
                .unwrap_or_default();
            out[n] = Some(InstanceVf {
                port: port.clone(),
                pf,
                settings,
                assigned: None,
            });
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The port for a VF without a port asked: among ports with a free VF, those local to
    /// all of `cores` first, then the most free VFs, then the first by name.
    fn best_port(&self, free: &BTreeMap<String, usize>, cores: &[u16]) -> Option<String> {
        let local = |name: &str| {
            self.inventory
                .ports
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.local_cpus.as_ref())
                .is_some_and(|local| !cores.is_empty() && cores.iter().all(|c| local.contains(c)))
        };
        let mut best: Option<(&String, (bool, usize))> = None;
        for (name, left) in free.iter().filter(|(_, left)| **left > 0) {
            let key = (local(name), *left);
            if best.is_none_or(|(_, b)| key > b) {
                best = Some((name, key));
            }
        }
        best.map(|(name, _)| name.clone())
    }
}

/// A request's settings as the sriov crate's checked types.
pub fn vf_settings(request: &VfRequest) -> Result<VfSettings, sriov::SettingError> {
    let mac = request
        .mac
        .as_deref()
        .map(str::parse::<MacAddr>)
        .transpose()?;
    let vlan = match (request.vlan, request.vlan_qos) {
        (None, None) => None,
        (id, qos) => {
            let id = u32::from(id.unwrap_or(0));
            if id == 0 {
                return Err(sriov::SettingError::VlanRange(0));
            }
            Some(VfVlan::new(
                id,
                u32::from(qos.unwrap_or(0)),
                VlanProto::Dot1Q,
            )?)
        }
    };
    let rate = match (request.min_tx_mbps, request.max_tx_mbps) {
        (None, None) => None,
        (min, max) => Some(TxRate::new(min.unwrap_or(0), max.unwrap_or(0))?),
    };
    let settings = VfSettings {
        mac,
        vlan,
        rate,
        ..Default::default()
    };
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::tests::{config, instance, inventory};
    use crate::inventory::{Inventory, Port};
    use crate::store::InstanceRecord;
    use hostd_proto::name;
    use std::collections::BTreeSet;

    /// Two ports: eth0 on node 0 (cores 0-3) with 2 VFs, eth1 on node 1 (cores 4-7) with 1.
    fn two_nodes() -> Inventory {
        let addr = |bus, dev| sriov::PciAddress::new(0, bus, dev, 0).unwrap();
        let mut inventory = inventory();
        inventory.ports.push(Port {
            name: "eth1".into(),
            pf: addr(2, 0),
            driver: "igb".into(),
            device: String::new(),
            total_vfs: 1,
            vfs: vec![(0, addr(2, 16))],
            numa_node: Some(1),
            local_cpus: Some((4..8).collect()),
        });
        inventory
    }

    #[test]
    fn vfs_are_reserved_on_ports_with_checked_settings() {
        let (config, inventory) = (config(), inventory());
        let mut instances: BTreeMap<u32, InstanceRecord> = BTreeMap::new();
        let res = Resources {
            config: &config,
            inventory: &inventory,
            instances: &instances,
            fastpath_cores: &BTreeSet::new(),
        };
        let request = VfRequest {
            port: Some(name("eth0")),
            mac: Some(hostd_proto::bounded("02:00:00:00:00:01")),
            vlan: Some(10),
            ..Default::default()
        };
        let vfs = res
            .allocate_vfs(None, std::slice::from_ref(&request), &[2])
            .unwrap();
        assert_eq!(
            (vfs[0].port.as_str(), vfs[0].pf.as_str()),
            ("eth0", "0000:01:00.0")
        );
        assert_eq!(vfs[0].assigned, None, "the VF itself is picked at start");
        assert_eq!(vfs[0].settings.vlan.unwrap().id, 10);
        let mut holder = instance(1, vec![2], 64);
        holder.vfs = vfs;
        instances.insert(1, holder);
        let res = Resources {
            config: &config,
            inventory: &inventory,
            instances: &instances,
            fastpath_cores: &BTreeSet::new(),
        };
        let dup = res.allocate_vfs(None, &[request], &[3]).unwrap_err();
        assert_eq!(dup.code, ErrorCode::AlreadyExists);
        let err = res
            .allocate_vfs(None, &[VfRequest::default(), VfRequest::default()], &[3])
            .unwrap_err();
        assert!(
            err.message.starts_with("needs 2 VFs, 1 free"),
            "{}",
            err.message
        );
        let shortfall = err.shortfall.unwrap();
        assert_eq!(
            (shortfall.resource, shortfall.needed, shortfall.available),
            (Resource::Vfs, 2, 1)
        );
        // The holder itself may keep its reservation (resize, restart).
        assert_eq!(
            res.allocate_vfs(Some(1), &[VfRequest::default(), VfRequest::default()], &[2])
                .unwrap()
                .len(),
            2
        );
        let bad = VfRequest {
            vlan: Some(4095),
            ..Default::default()
        };
        assert_eq!(
            res.allocate_vfs(None, &[bad], &[3]).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let err = res
            .allocate_vfs(
                None,
                &[VfRequest {
                    port: Some(name("eth9")),
                    ..Default::default()
                }],
                &[3],
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.contains("(ports: eth0)"), "{}", err.message);
    }

    #[test]
    fn vfs_go_to_the_port_local_to_the_cores_while_it_has_room() {
        let (config, inventory) = (config(), two_nodes());
        let instances: BTreeMap<u32, InstanceRecord> = BTreeMap::new();
        let res = Resources {
            config: &config,
            inventory: &inventory,
            instances: &instances,
            fastpath_cores: &BTreeSet::new(),
        };
        let ports = |cores: &[u16], n: usize| -> Vec<String> {
            res.allocate_vfs(None, &vec![VfRequest::default(); n], cores)
                .unwrap()
                .into_iter()
                .map(|v| v.port)
                .collect()
        };
        // Cores on node 1: eth1 although eth0 has more free VFs; then eth0 when eth1 is full.
        assert_eq!(ports(&[5], 1), ["eth1"]);
        assert_eq!(ports(&[5, 6], 2), ["eth1", "eth0"]);
        // Cores on node 0: eth0 first.
        assert_eq!(ports(&[2], 3), ["eth0", "eth0", "eth1"]);
        // Cores on both nodes: no port is local, the most free VFs wins.
        assert_eq!(ports(&[3, 4], 1), ["eth0"]);
        // A VF asked on eth1 is placed before the others, whatever their order.
        let asked = res
            .allocate_vfs(
                None,
                &[
                    VfRequest::default(),
                    VfRequest::default(),
                    VfRequest {
                        port: Some(name("eth1")),
                        ..Default::default()
                    },
                ],
                &[5],
            )
            .unwrap();
        let placed: Vec<&str> = asked.iter().map(|v| v.port.as_str()).collect();
        assert_eq!(placed, ["eth0", "eth0", "eth1"], "in request order");
    }
}
