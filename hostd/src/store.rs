//! The state store: redb (an embedded ACID key-value store), postcard-encoded values.
//!
//! Every change hostd acknowledges is one write transaction committed with
//! `Durability::Immediate` (fsync) before the reply goes out, so a crash at any point
//! leaves either the state before the change or after it, never half of it. Tables:
//! `meta` (counters), `instances` (id -> [`InstanceRecord`], with its core and VF
//! assignments and its VMM process), `templates` ((name, version) -> [`TemplateRecord`]),
//! `stacks` (name -> [`StackRecord`]) and `events` (seq -> event).
//!
//! `meta.schema` says how the records are laid out; an older layout is converted when the
//! store is opened (`v1`: before VF assignment), in the same transaction.

mod v1;

use std::path::{Path, PathBuf};

use hostd_proto::{Event, InstanceState, Principal, Quota, TemplateSpec};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INSTANCES: TableDefinition<u32, &[u8]> = TableDefinition::new("instances");
const TEMPLATES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("templates");
const STACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("stacks");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

const NEXT_INSTANCE_ID: &str = "next_instance_id";
const SCHEMA: &str = "schema";
/// 2: instances' VFs are reservations on a port, with the VF assigned while a VMM runs.
const SCHEMA_VERSION: u64 = 2;

/// Events kept; older ones are pruned as new ones are written.
pub const EVENTS_KEPT: u64 = 10_000;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file cannot be opened or created.
    #[error(
        "cannot open the state store {path}: check the state directory (disk full? another hostd running?)"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction failed.
    #[error("the state store refused a transaction")]
    Transaction(#[from] redb::TransactionError),
    /// A table cannot be opened.
    #[error("the state store has a damaged table")]
    Table(#[from] redb::TableError),
    /// Reading or writing failed.
    #[error("the state store cannot read or write its file (disk full or failing?)")]
    Storage(#[from] redb::StorageError),
    /// The commit failed: the change is not recorded.
    #[error("the state store could not commit the change (disk full or failing?)")]
    Commit(#[from] redb::CommitError),
    /// A record cannot be encoded.
    #[error("a record cannot be encoded")]
    Encode(#[source] postcard::Error),
    /// A record cannot be decoded.
    #[error(
        "record {key} in table {table} cannot be decoded: the state store was written by an incompatible hostd"
    )]
    Decode {
        /// Table.
        table: &'static str,
        /// Key.
        key: String,
        /// Why.
        #[source]
        source: postcard::Error,
    },
    /// Written by a newer hostd.
    #[error(
        "the state store has schema version {found}, this hostd knows {SCHEMA_VERSION}: run the hostd that wrote it"
    )]
    Schema {
        /// What the file says.
        found: u64,
    },
}

/// The VMM process of an instance, as recorded to find it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmRecord {
    /// Process id.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot): with `boot_id`,
    /// tells the process from a later one that got the same pid.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was started.
    pub boot_id: String,
}

/// A VF an instance asked for. Admission places it on a port when the instance is created
/// (the port's VF count is what it reserves); while the instance has a VMM it holds one VF of
/// that port, [`InstanceVf::assigned`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceVf {
    /// Port (PF netdev name when placed).
    pub port: String,
    /// PF PCI address.
    pub pf: String,
    /// Its settings, checked with the sriov types.
    pub settings: sriov::VfSettings,
    /// The VF held now.
    pub assigned: Option<VfAssignment>,
}

/// A VF given to an instance's VMM. Recorded before hostd touches the VF and cleared once
/// the VMM is gone and the VF was given back (settings restored, driver as configured), so a
/// crash at any point leaves a record to finish the job from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfAssignment {
    /// VF index under the PF.
    pub index: u32,
    /// VF PCI address.
    pub addr: String,
    /// Its settings before hostd changed them, as the PF's driver reported them.
    pub saved: sriov::VfState,
    /// The driver it had before (`igbvf`, `vfio-pci`, `none`).
    pub driver_before: String,
    /// Its guest PCI slot (1..31); `None` when it is not passed to the VMM (`hostd --sim`).
    pub guest_slot: Option<u8>,
}

impl VfAssignment {
    /// The guest's address of the VF, `0000:00:<slot>.0`.
    pub fn guest_addr(&self) -> Option<String> {
        self.guest_slot.map(|slot| format!("0000:00:{slot:02x}.0"))
    }
}

/// An instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Immutable id.
    pub id: u32,
    /// Display name.
    pub name: String,
    /// Stack.
    pub stack: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Template name.
    pub template: String,
    /// Template version it was made from.
    pub template_version: u32,
    /// vCPUs.
    pub vcpus: u16,
    /// RAM, MiB.
    pub ram_mib: u32,
    /// Disk, GiB.
    pub disk_gib: u32,
    /// RAM on huge pages.
    pub hugepages: bool,
    /// HA.
    pub ha: bool,
    /// Dedicated guest cores (vCPU i on `cores[i]`).
    pub cores: Vec<u16>,
    /// VFs: reserved on a port, assigned while a VMM runs.
    pub vfs: Vec<InstanceVf>,
    /// State.
    pub state: InstanceState,
    /// Why.
    pub state_reason: String,
    /// Since when, ms since the epoch.
    pub state_since_ms: u64,
    /// The operator wants it running (start, until stop or delete): what HA restores.
    pub want_running: bool,
    /// Its VMM process, while it has one.
    pub vmm: Option<VmmRecord>,
    /// Times of HA failures within the window, ms since the epoch.
    pub ha_failures: Vec<u64>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
}

/// A template version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    /// Name.
    pub name: String,
    /// Version (1, 2, ...).
    pub version: u32,
    /// Definition.
    pub spec: TemplateSpec,
    /// Created, ms since the epoch.
    pub created_ms: u64,
}

/// A stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRecord {
    /// Name.
    pub name: String,
    /// Admins.
    pub admins: Vec<Principal>,
    /// Limits.
    pub quota: Quota,
}

/// One write transaction's worth of changes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Instances written.
    pub put_instances: Vec<InstanceRecord>,
    /// Instances removed.
    pub delete_instances: Vec<u32>,
    /// Template versions written.
    pub put_templates: Vec<TemplateRecord>,
    /// Templates removed (every version).
    pub delete_templates: Vec<String>,
    /// Stacks written.
    pub put_stacks: Vec<StackRecord>,
    /// Stacks removed.
    pub delete_stacks: Vec<String>,
    /// Events recorded.
    pub events: Vec<Event>,
    /// The next instance id, when it moved.
    pub next_instance_id: Option<u32>,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Instances.
    pub instances: Vec<InstanceRecord>,
    /// Template versions.
    pub templates: Vec<TemplateRecord>,
    /// Stacks.
    pub stacks: Vec<StackRecord>,
    /// Next instance id.
    pub next_instance_id: u32,
    /// Next event sequence number.
    pub next_event_seq: u64,
}

/// The open store.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(StoreError::Encode)
}

fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: impl std::fmt::Debug,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
        table,
        key: format!("{key:?}"),
        source,
    })
}

impl Store {
    /// Opens (or creates) the store at `path` and loads it.
    pub fn open(path: &Path) -> Result<(Self, Loaded), StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        // Create every table once so reads never meet a missing one.
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let schema = meta.get(SCHEMA)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert(SCHEMA, SCHEMA_VERSION)?;
                }
                Some(found) if found > SCHEMA_VERSION => return Err(StoreError::Schema { found }),
                Some(1) => {
                    v1::upgrade_instances(&mut txn.open_table(INSTANCES)?)?;
                    meta.insert(SCHEMA, SCHEMA_VERSION)?;
                }
                Some(_) => {}
            }
            txn.open_table(INSTANCES)?;
            txn.open_table(TEMPLATES)?;
            txn.open_table(STACKS)?;
            txn.open_table(EVENTS)?;
        }
        txn.commit()?;
        let store = Self { db };
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read()?;
        let mut loaded = Loaded::default();
        for entry in txn.open_table(INSTANCES)?.iter()? {
            let (key, value) = entry?;
            loaded
                .instances
                .push(decode("instances", key.value(), value.value())?);
        }
        for entry in txn.open_table(TEMPLATES)?.iter()? {
            let (key, value) = entry?;
            loaded
                .templates
                .push(decode("templates", key.value(), value.value())?);
        }
        for entry in txn.open_table(STACKS)?.iter()? {
            let (key, value) = entry?;
            loaded
                .stacks
                .push(decode("stacks", key.value(), value.value())?);
        }
        let meta = txn.open_table(META)?;
        loaded.next_instance_id = meta
            .get(NEXT_INSTANCE_ID)?
            .map_or(1, |v| u32::try_from(v.value()).unwrap_or(u32::MAX));
        loaded.next_event_seq = txn
            .open_table(EVENTS)?
            .last()?
            .map_or(1, |(key, _)| key.value() + 1);
        Ok(loaded)
    }

    /// Commits `changes` in one durable transaction.
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut instances = txn.open_table(INSTANCES)?;
            for record in &changes.put_instances {
                instances.insert(record.id, encode(record)?.as_slice())?;
            }
            for id in &changes.delete_instances {
                instances.remove(*id)?;
            }
            let mut templates = txn.open_table(TEMPLATES)?;
            for record in &changes.put_templates {
                templates.insert(
                    (record.name.as_str(), record.version),
                    encode(record)?.as_slice(),
                )?;
            }
            for name in &changes.delete_templates {
                templates.retain(|(n, _), _| n != name.as_str())?;
            }
            let mut stacks = txn.open_table(STACKS)?;
            for record in &changes.put_stacks {
                stacks.insert(record.name.as_str(), encode(record)?.as_slice())?;
            }
            for name in &changes.delete_stacks {
                stacks.remove(name.as_str())?;
            }
            let mut events = txn.open_table(EVENTS)?;
            for event in &changes.events {
                events.insert(event.seq, encode(event)?.as_slice())?;
                if event.seq % 1000 == 0 && event.seq > EVENTS_KEPT {
                    let oldest_kept = event.seq - EVENTS_KEPT;
                    events.retain_in(..oldest_kept, |_, _| false)?;
                }
            }
            if let Some(next) = changes.next_instance_id {
                txn.open_table(META)?
                    .insert(NEXT_INSTANCE_ID, u64::from(next))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Events with `seq > after` that `keep` accepts, oldest first, at most `limit`; and
    /// whether more match. With `newest`, the newest `limit` of them instead.
    pub fn events(
        &self,
        after: u64,
        limit: usize,
        newest: bool,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        let mut more = false;
        let range = table.range(after.saturating_add(1)..)?;
        if newest {
            for entry in range.rev() {
                let (key, value) = entry?;
                let event: Event = decode("events", key.value(), value.value())?;
                if keep(&event) {
                    if out.len() == limit {
                        more = true;
                        break;
                    }
                    out.push(event);
                }
            }
            out.reverse();
        } else {
            for entry in range {
                let (key, value) = entry?;
                let event: Event = decode("events", key.value(), value.value())?;
                if keep(&event) {
                    if out.len() == limit {
                        more = true;
                        break;
                    }
                    out.push(event);
                }
            }
        }
        Ok((out, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostd_proto::{Actor, EventKind, text};

    fn instance(id: u32) -> InstanceRecord {
        InstanceRecord {
            id,
            name: format!("vm-{id}"),
            stack: None,
            group: None,
            template: "probe".into(),
            template_version: 1,
            vcpus: 1,
            ram_mib: 64,
            disk_gib: 0,
            hugepages: false,
            ha: false,
            cores: vec![1],
            vfs: vec![],
            state: InstanceState::Defined,
            state_reason: "created".into(),
            state_since_ms: 1,
            want_running: false,
            vmm: None,
            ha_failures: vec![],
            created_ms: 1,
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            time_ms: seq,
            actor: Actor::Hostd,
            instance: None,
            stack: None,
            kind: EventKind::HostdStarted,
            reason: text("test"),
        }
    }

    #[test]
    fn committed_changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let (store, loaded) = Store::open(&path).unwrap();
            assert_eq!(loaded.next_instance_id, 1);
            assert_eq!(loaded.next_event_seq, 1);
            let changes = Changes {
                put_instances: vec![instance(1), instance(2)],
                put_templates: vec![TemplateRecord {
                    name: "probe".into(),
                    version: 1,
                    spec: TemplateSpec::default(),
                    created_ms: 5,
                }],
                events: vec![event(1), event(2)],
                next_instance_id: Some(3),
                ..Default::default()
            };
            store.commit(&changes).unwrap();
            store
                .commit(&Changes {
                    delete_instances: vec![1],
                    events: vec![event(3)],
                    ..Default::default()
                })
                .unwrap();
        }
        let (store, loaded) = Store::open(&path).unwrap();
        assert_eq!(loaded.instances, vec![instance(2)]);
        assert_eq!(loaded.templates.len(), 1);
        assert_eq!(loaded.next_instance_id, 3);
        assert_eq!(loaded.next_event_seq, 4);
        let (events, more) = store.events(1, 1, false, |_| true).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(more);
        let (events, _) = store.events(0, 2, true, |_| true).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        store
            .commit(&Changes {
                delete_templates: vec!["probe".into()],
                ..Default::default()
            })
            .unwrap();
        drop(store);
        let (_, loaded) = Store::open(&path).unwrap();
        assert!(loaded.templates.is_empty());
    }
}
