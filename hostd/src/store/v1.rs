//! Schema 1, before VF assignment: an instance's VFs were fixed VFs picked at create. They
//! become reservations on the same port with no VF assigned (schema 1 never touched a VF, so
//! there is nothing to give back). Postcard is not self-describing: the old records are
//! decoded with the old layout, which is kept here for that only.

use hostd_proto::InstanceState;
use redb::{ReadableTable, Table};
use serde::Deserialize;

use super::{InstanceRecord, InstanceVf, StoreError, VmmRecord, decode, encode};

// Serialize only for the test that writes a store as the previous hostd did.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct VfV1 {
    port: String,
    pf: String,
    #[allow(dead_code)] // read to get past it: the VF is picked again at start now
    index: u32,
    #[allow(dead_code)]
    addr: String,
    settings: sriov::VfSettings,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct InstanceV1 {
    id: u32,
    name: String,
    stack: Option<String>,
    group: Option<String>,
    template: String,
    template_version: u32,
    vcpus: u16,
    ram_mib: u32,
    disk_gib: u32,
    hugepages: bool,
    ha: bool,
    cores: Vec<u16>,
    vfs: Vec<VfV1>,
    state: InstanceState,
    state_reason: String,
    state_since_ms: u64,
    want_running: bool,
    vmm: Option<VmmRecord>,
    ha_failures: Vec<u64>,
    created_ms: u64,
}

impl From<InstanceV1> for InstanceRecord {
    fn from(old: InstanceV1) -> Self {
        Self {
            id: old.id,
            name: old.name,
            stack: old.stack,
            group: old.group,
            template: old.template,
            template_version: old.template_version,
            vcpus: old.vcpus,
            ram_mib: old.ram_mib,
            disk_gib: old.disk_gib,
            hugepages: old.hugepages,
            ha: old.ha,
            cores: old.cores,
            vfs: old
                .vfs
                .into_iter()
                .map(|vf| InstanceVf {
                    port: vf.port,
                    pf: vf.pf,
                    settings: vf.settings,
                    assigned: None,
                })
                .collect(),
            state: old.state,
            state_reason: old.state_reason,
            state_since_ms: old.state_since_ms,
            want_running: old.want_running,
            vmm: old.vmm,
            ha_failures: old.ha_failures,
            created_ms: old.created_ms,
        }
    }
}

/// Rewrites every instance record of schema 1 in the current layout.
pub(super) fn upgrade_instances(
    table: &mut Table<'_, u32, &'static [u8]>,
) -> Result<(), StoreError> {
    let mut upgraded = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let old: InstanceV1 = decode("instances", key.value(), value.value())?;
        upgraded.push((key.value(), encode(&InstanceRecord::from(old))?));
    }
    let count = upgraded.len();
    for (id, bytes) in upgraded {
        table.insert(id, bytes.as_slice())?;
    }
    log::info!("state store: {count} instance records upgraded from schema 1 to 2");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_1_store_opens_with_its_vfs_as_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let settings = sriov::VfSettings {
            mac: Some("02:00:00:00:00:07".parse().unwrap()),
            ..Default::default()
        };
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(super::super::META).unwrap();
                meta.insert(super::super::SCHEMA, 1).unwrap();
                let mut instances = txn.open_table(super::super::INSTANCES).unwrap();
                let old = InstanceV1 {
                    id: 3,
                    name: "old".into(),
                    stack: None,
                    group: Some("g".into()),
                    template: "probe".into(),
                    template_version: 1,
                    vcpus: 1,
                    ram_mib: 64,
                    disk_gib: 0,
                    hugepages: false,
                    ha: true,
                    cores: vec![1],
                    vfs: vec![VfV1 {
                        port: "eth0".into(),
                        pf: "0000:01:00.0".into(),
                        index: 2,
                        addr: "0000:01:10.4".into(),
                        settings: settings.clone(),
                    }],
                    state: InstanceState::Stopped,
                    state_reason: "stopped".into(),
                    state_since_ms: 5,
                    want_running: false,
                    vmm: None,
                    ha_failures: vec![4],
                    created_ms: 2,
                };
                let bytes = postcard::to_stdvec(&old).unwrap();
                instances.insert(3, bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let (_, loaded) = super::super::Store::open(&path).unwrap();
        let record = &loaded.instances[0];
        assert_eq!((record.id, record.name.as_str()), (3, "old"));
        assert_eq!(record.group.as_deref(), Some("g"));
        assert_eq!(record.ha_failures, [4]);
        assert_eq!(
            record.vfs,
            [InstanceVf {
                port: "eth0".into(),
                pf: "0000:01:00.0".into(),
                settings,
                assigned: None,
            }]
        );
        // Opened again: already schema 2, read as it is.
        let (_, again) = super::super::Store::open(&path).unwrap();
        assert_eq!(again.instances, loaded.instances);
    }
}
