//! VFs around an instance's VMM, on the state owner: picked and recorded at start before
//! anything is changed, prepared (settings, vfio-pci, group) before the spawn, given back
//! once the VMM is gone, and at hostd's start the leftovers of VMMs that are gone given back
//! and the configured VF counts set. The steps themselves are in `crate::vfs`.

use std::collections::BTreeSet;

use hostd_proto::{Actor, ApiError, Event, EventKind, name};
use sriov::PciAddress;

use super::Daemon;
use crate::store::{Changes, InstanceRecord};
use crate::vfs::counts::{self, CountOutcome};
use crate::vfs::hardware::{self, vf_name};
use crate::vfs::pick::pick;

impl Daemon {
    /// Reads the NIC ports again: VF counts may have changed since the last look (hostd
    /// sets them at start, but the factory suite or an operator may too).
    pub(crate) fn refresh_ports(&mut self) {
        self.inventory.ports = crate::inventory::read_ports(&self.nic);
    }

    /// Picks the VFs of `record` (which holds none): nothing on the host changes, the caller
    /// records the pick before [`Self::prepare_vfs`] acts on it.
    pub(crate) fn pick_vfs(&self, record: &mut InstanceRecord) -> Result<(), ApiError> {
        if record.vfs.is_empty() {
            return Ok(());
        }
        let pass = !self.config.sim;
        let picked = pick(&self.nic, record, &self.instances, pass).map_err(|e| {
            log::warn!("instance {} ({}): {e}", record.id, record.name);
            e.to_api()
        })?;
        for (vf, a) in record.vfs.iter_mut().zip(picked) {
            vf.assigned = Some(a);
        }
        Ok(())
    }

    /// Prepares every VF `record` holds for its VMM; the events say what each got.
    pub(crate) fn prepare_vfs(&mut self, record: &InstanceRecord) -> Result<Vec<Event>, ApiError> {
        let mut events = Vec::new();
        for vf in &record.vfs {
            let Some(a) = &vf.assigned else {
                continue;
            };
            hardware::acquire(&self.nic, self.host_kind, vf, a).map_err(|e| {
                log::warn!("instance {} ({}): {e}", record.id, record.name);
                e.to_api()
            })?;
            let mut what: Vec<String> =
                vf.settings.each().iter().map(ToString::to_string).collect();
            what.push(match a.guest_addr() {
                Some(at) => format!("guest address {at}"),
                None => "simulated: not passed to the guest (hostd --sim)".into(),
            });
            let reason = format!("{} on vfio-pci; {}", vf_name(vf, a), what.join(", "));
            events.push(self.event(
                &Actor::Hostd,
                Some(record),
                EventKind::VfAssigned { vf: name(&a.addr) },
                &reason,
            ));
        }
        Ok(events)
    }

    /// Gives back every VF `record` holds (its VMM is gone), clearing them in the (cloned)
    /// record; the events go into the caller's commit.
    pub(crate) fn release_vfs(&mut self, record: &mut InstanceRecord) -> Vec<Event> {
        let mut events = Vec::new();
        let policy = self.config.vf_release;
        for i in 0..record.vfs.len() {
            let Some(a) = record.vfs[i].assigned.take() else {
                continue;
            };
            let vf = &record.vfs[i];
            let released = hardware::release(&self.nic, policy, vf, &a);
            let reason = format!("{} released: {}", vf_name(vf, &a), released.summary());
            events.push(self.event(
                &Actor::Hostd,
                Some(record),
                EventKind::VfReleased { vf: name(&a.addr) },
                &reason,
            ));
        }
        events
    }

    /// The VFs held by instances now.
    fn held_vfs(&self) -> BTreeSet<PciAddress> {
        self.instances
            .values()
            .flat_map(|i| &i.vfs)
            .filter_map(|v| v.assigned.as_ref())
            .filter_map(|a| a.addr.parse().ok())
            .collect()
    }

    /// At start-up, after re-adoption: VFs recorded for instances that have no VMM (a crash
    /// between the record and the spawn, or during a release) are given back.
    pub(crate) fn release_orphaned_vfs(&mut self) {
        let orphans: Vec<u32> = self
            .instances
            .values()
            .filter(|i| !i.state.has_vmm() && i.vmm.is_none())
            .filter(|i| i.vfs.iter().any(|v| v.assigned.is_some()))
            .map(|i| i.id)
            .collect();
        for id in orphans {
            let mut updated = self.instances[&id].clone();
            log::info!(
                "instance {id} ({}): giving back VFs of a VMM that is gone",
                updated.name
            );
            let events = self.release_vfs(&mut updated);
            if let Err(err) = self.apply(Changes {
                put_instances: vec![updated],
                events,
                ..Default::default()
            }) {
                log::error!("instance {id}: VF release not recorded: {err}");
            }
        }
    }

    /// At start-up: sets `[sriov.num_vfs]` (PFs whose VFs are held keep theirs), then reads
    /// the ports again.
    pub fn apply_vf_counts(&mut self) {
        if !self.config.num_vfs.is_empty() {
            let held = self.held_vfs();
            let ports = self.inventory.ports.clone();
            for outcome in counts::apply(&self.nic, &self.config.num_vfs, &ports, &held) {
                match outcome {
                    CountOutcome::Unchanged { key, count } => {
                        log::info!("sriov.num_vfs: {key} has {count} VFs")
                    }
                    CountOutcome::Set { key, from, to } => {
                        log::info!("sriov.num_vfs: {key}: {from} -> {to} VFs")
                    }
                    CountOutcome::Refused { key, reason } => {
                        log::error!("sriov.num_vfs: {key}: {reason}")
                    }
                }
            }
        }
        self.refresh_ports();
        for port in &self.inventory.ports {
            let pf = port.pf.to_string();
            let reserved = self
                .instances
                .values()
                .flat_map(|i| &i.vfs)
                .filter(|v| v.pf == pf)
                .count();
            if reserved > port.vfs.len() {
                log::warn!(
                    "port {} (PF {pf}) has {} VFs, instances reserve {reserved}: some will not start; raise sriov.num_vfs or delete instances",
                    port.name,
                    port.vfs.len()
                );
            }
        }
    }
}
