//! Admission control: the one place that decides whether the box can honour an instance's
//! cores, RAM, huge pages, VFs, disk and its stack's quota, and allocates them. Refusals say
//! what is short, with numbers, and what to do.
//!
//! Resources are reserved when an instance is created (and changed by resize), and
//! released when it is deleted, so a defined or stopped instance keeps what it will need
//! to start. Guest cores are dedicated: one instance's vCPU per core, never shared, and
//! never one the fast path holds (the cores its config names, while hostd runs it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hostd_proto::{ApiError, ErrorCode, Resource, Shortfall, text};

use crate::config::Config;
use crate::cpulist;
use crate::inventory::Inventory;
use crate::store::{InstanceRecord, StackRecord};

mod vfs;

pub use vfs::vf_settings;

fn refuse(
    code: ErrorCode,
    resource: Resource,
    needed: u64,
    available: u64,
    msg: String,
) -> ApiError {
    ApiError {
        code,
        message: text(&msg),
        shortfall: Some(Shortfall {
            resource,
            needed,
            available,
        }),
    }
}

fn short(resource: Resource, needed: u64, available: u64, msg: String) -> ApiError {
    refuse(
        ErrorCode::InsufficientResources,
        resource,
        needed,
        available,
        msg,
    )
}

/// What admission looks at.
#[derive(Debug)]
pub struct Resources<'a> {
    /// The core split and reserves.
    pub config: &'a Config,
    /// What the host has.
    pub inventory: &'a Inventory,
    /// Every instance (their reservations).
    pub instances: &'a BTreeMap<u32, InstanceRecord>,
    /// Cores the fast path holds now (none while it is disabled or failed).
    pub fastpath_cores: &'a BTreeSet<u16>,
}

impl Resources<'_> {
    fn others(&self, me: Option<u32>) -> impl Iterator<Item = &InstanceRecord> {
        self.instances.values().filter(move |i| Some(i.id) != me)
    }

    /// Guest cores usable now: configured and online.
    pub fn guest_cores(&self) -> BTreeSet<u16> {
        self.config
            .guest_cores
            .intersection(&self.inventory.online)
            .copied()
            .collect()
    }

    /// Guest cores held by neither the fast path nor any instance other than `me`.
    pub fn free_cores(&self, me: Option<u32>) -> BTreeSet<u16> {
        let held: BTreeSet<u16> = self
            .others(me)
            .flat_map(|i| i.cores.clone())
            .chain(self.fastpath_cores.iter().copied())
            .collect();
        self.guest_cores().difference(&held).copied().collect()
    }

    /// Picks `want` cores for instance `me`, keeping those of `keep` that are still usable
    /// guest cores (in order) and adding the lowest free ones.
    pub fn allocate_cores(
        &self,
        me: Option<u32>,
        keep: &[u16],
        want: u16,
    ) -> Result<Vec<u16>, ApiError> {
        let free = self.free_cores(me);
        let mut cores: Vec<u16> = keep
            .iter()
            .filter(|c| free.contains(c))
            .take(usize::from(want))
            .copied()
            .collect();
        let extras: Vec<u16> = free
            .iter()
            .filter(|c| !cores.contains(c))
            .copied()
            .collect();
        let mut extra = extras.iter();
        while cores.len() < usize::from(want) {
            match extra.next() {
                Some(core) => cores.push(*core),
                None => {
                    let guest = self.guest_cores();
                    let mut owners: Vec<String> = self
                        .others(me)
                        .filter(|i| !i.cores.is_empty())
                        .map(|i| format!("{} ({})", i.name, cpulist::format(&i.cores)))
                        .collect();
                    owners.truncate(4);
                    let fastpath: BTreeSet<u16> = self
                        .guest_cores()
                        .intersection(self.fastpath_cores)
                        .copied()
                        .collect();
                    if !fastpath.is_empty() {
                        owners.insert(0, format!("the fast path ({})", cpulist::format(&fastpath)));
                    }
                    let held = if owners.is_empty() {
                        String::new()
                    } else {
                        format!("; held by {}", owners.join(", "))
                    };
                    return Err(short(
                        Resource::GuestCores,
                        want.into(),
                        free.len() as u64,
                        format!(
                            "needs {want} guest core{}, {} free (cores {}){held}: delete or \
                             shrink an instance, or add cores to cores.guest (now {})",
                            if want == 1 { "" } else { "s" },
                            free.len(),
                            if free.is_empty() {
                                "none".to_owned()
                            } else {
                                cpulist::format(&free)
                            },
                            cpulist::format(&guest),
                        ),
                    ));
                }
            }
        }
        Ok(cores)
    }

    /// Whether the fast path may have `cores` (the `cores[].cpu` of its config `file`):
    /// online, not for the host, in `cores.fastpath` when that is set, and held by no guest.
    /// The refusal names the core and what holds it.
    pub fn check_fastpath_cores(&self, cores: &BTreeSet<u16>, file: &Path) -> Result<(), String> {
        let file = file.display();
        if cores.is_empty() {
            return Err(format!(
                "the fastpath config {file} names no cores: add a [[cores]] entry"
            ));
        }
        for core in cores {
            let named = format!("core {core} (cores[].cpu in {file})");
            if !self.inventory.online.contains(core) {
                return Err(format!(
                    "{named} is not online (online: {}): use an online core",
                    cpulist::format(&self.inventory.online)
                ));
            }
            if self.config.housekeeping_cores.contains(core) {
                return Err(format!(
                    "{named} is a housekeeping core (cores.housekeeping = {}): the fast path \
                     needs cores of its own",
                    cpulist::format(&self.config.housekeeping_cores)
                ));
            }
            let reserved = &self.config.fastpath_cores;
            if !reserved.is_empty() && !reserved.contains(core) {
                return Err(format!(
                    "{named} is not in cores.fastpath ({}) of hostd's config: use one of those, \
                     or add it there",
                    cpulist::format(reserved)
                ));
            }
            if let Some(holder) = self.instances.values().find(|i| i.cores.contains(core)) {
                return Err(format!(
                    "{named} is held by guest {} (cores {}): move the fast path to another \
                     core, or delete or shrink {}",
                    holder.name,
                    cpulist::format(&holder.cores),
                    holder.name
                ));
            }
        }
        Ok(())
    }

    /// The RAM guests may reserve, MiB.
    pub fn ram_budget_mib(&self) -> u64 {
        self.inventory
            .mem_total_mib
            .saturating_sub(self.config.host_reserve_mib)
    }

    /// RAM (normal pages) reserved by instances other than `me`, MiB.
    pub fn ram_reserved_mib(&self, me: Option<u32>) -> u64 {
        self.others(me)
            .filter(|i| !i.hugepages)
            .map(|i| u64::from(i.ram_mib))
            .sum()
    }

    /// Huge pages reserved by instances other than `me`.
    pub fn hugepages_reserved(&self, me: Option<u32>) -> u64 {
        self.others(me)
            .filter(|i| i.hugepages)
            .map(|i| self.pages_for(i.ram_mib))
            .sum()
    }

    fn pages_for(&self, ram_mib: u32) -> u64 {
        let page_kib = self.inventory.hugepage_kib.max(1);
        (u64::from(ram_mib) * 1024).div_ceil(page_kib)
    }

    /// Checks that `ram_mib` (on huge pages or not) fits beside the other instances.
    pub fn check_memory(
        &self,
        me: Option<u32>,
        ram_mib: u32,
        hugepages: bool,
    ) -> Result<(), ApiError> {
        if hugepages {
            let page_kib = self.inventory.hugepage_kib;
            if page_kib == 0 {
                return Err(short(
                    Resource::Hugepages,
                    u64::from(ram_mib),
                    0,
                    "needs huge pages, and this host has none: configure them \
                     (hugepagesz=, /proc/sys/vm/nr_hugepages) or use a template without"
                        .to_owned(),
                ));
            }
            if (u64::from(ram_mib) * 1024) % page_kib != 0 {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    &format!(
                        "{ram_mib} MiB is not a multiple of the {page_kib} KiB huge page size"
                    ),
                ));
            }
            let needed = self.pages_for(ram_mib);
            let free = self
                .inventory
                .hugepages_total
                .saturating_sub(self.hugepages_reserved(me));
            if needed > free {
                return Err(short(
                    Resource::Hugepages,
                    needed,
                    free,
                    format!(
                        "needs {needed} huge pages of {page_kib} KiB ({ram_mib} MiB), {free} free \
                         of {}: raise /proc/sys/vm/nr_hugepages or free some",
                        self.inventory.hugepages_total
                    ),
                ));
            }
            return Ok(());
        }
        let budget = self.ram_budget_mib();
        let reserved = self.ram_reserved_mib(me);
        let free = budget.saturating_sub(reserved);
        if u64::from(ram_mib) > free {
            return Err(short(
                Resource::RamMib,
                ram_mib.into(),
                free,
                format!(
                    "needs {ram_mib} MiB of guest RAM, {free} MiB free ({reserved} MiB reserved \
                     of {budget} MiB = {} MiB total - {} MiB host reserve)",
                    self.inventory.mem_total_mib, self.config.host_reserve_mib
                ),
            ));
        }
        Ok(())
    }

    /// Checks that a disk image growing by `grow_gib` fits on the state filesystem, after
    /// what the other instances' sparse images may still grow to.
    pub fn check_disk(
        &self,
        me: Option<u32>,
        grow_gib: u32,
        vm_dir: &dyn Fn(u32) -> std::path::PathBuf,
    ) -> Result<(), ApiError> {
        if grow_gib == 0 {
            return Ok(());
        }
        let Some(avail) = free_bytes(&self.config.state_dir) else {
            return Ok(());
        };
        let promised: u64 = self
            .others(me)
            .map(|i| {
                let size = u64::from(i.disk_gib) << 30;
                let used = std::fs::metadata(vm_dir(i.id).join("disk.raw"))
                    .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                    .unwrap_or(0);
                size.saturating_sub(used)
            })
            .sum();
        let free_gib = avail.saturating_sub(promised) >> 30;
        if u64::from(grow_gib) > free_gib {
            return Err(short(
                Resource::DiskGib,
                grow_gib.into(),
                free_gib,
                format!(
                    "needs {grow_gib} GiB of disk, {free_gib} GiB free on {} after the other \
                     instances' disks: free space or use a smaller disk",
                    self.config.state_dir.display()
                ),
            ));
        }
        Ok(())
    }
}

/// What an instance adds to its stack's use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Instances.
    pub instances: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM, MiB.
    pub ram_mib: u64,
    /// VFs.
    pub vfs: u32,
}

/// What the instances of `stack` other than `me` use.
pub fn stack_usage(
    stack: &str,
    instances: &BTreeMap<u32, InstanceRecord>,
    me: Option<u32>,
) -> Usage {
    instances
        .values()
        .filter(|i| i.stack.as_deref() == Some(stack) && Some(i.id) != me)
        .fold(Usage::default(), |u, i| Usage {
            instances: u.instances + 1,
            vcpus: u.vcpus + u32::from(i.vcpus),
            ram_mib: u.ram_mib + u64::from(i.ram_mib),
            vfs: u.vfs + i.vfs.len() as u32,
        })
}

/// Checks that `stack`'s use with instance `me` at size `need` stays within its quota.
pub fn check_quota(
    stack: &StackRecord,
    instances: &BTreeMap<u32, InstanceRecord>,
    me: Option<u32>,
    need: Usage,
) -> Result<(), ApiError> {
    let used = stack_usage(&stack.name, instances, me);
    let quota = &stack.quota;
    let checks: [(Resource, &str, Option<u64>, u64, u64); 4] = [
        (
            Resource::Instances,
            "instances",
            quota.instances.map(u64::from),
            used.instances.into(),
            need.instances.into(),
        ),
        (
            Resource::Vcpus,
            "vCPUs",
            quota.vcpus.map(u64::from),
            used.vcpus.into(),
            need.vcpus.into(),
        ),
        (
            Resource::RamMib,
            "MiB of RAM",
            quota.ram_mib,
            used.ram_mib,
            need.ram_mib,
        ),
        (
            Resource::Vfs,
            "VFs",
            quota.vfs.map(u64::from),
            used.vfs.into(),
            need.vfs.into(),
        ),
    ];
    for (resource, what, limit, used, need) in checks {
        if let Some(limit) = limit {
            if used + need > limit {
                let left = limit.saturating_sub(used);
                return Err(refuse(
                    ErrorCode::QuotaExceeded,
                    resource,
                    need,
                    left,
                    format!(
                        "stack {} allows {limit} {what}, {used} in use, {left} left: needs \
                         {need}; ask an appliance admin to raise the quota",
                        stack.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Bytes available to unprivileged writers on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() * stat.fragment_size())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::ConfigFile;
    use crate::inventory::Port;
    use hostd_proto::{InstanceState, Quota};

    pub(super) fn config() -> Config {
        let file: ConfigFile = toml::from_str(
            "state_dir = \"/tmp\"\n[cores]\nhousekeeping = \"0\"\nguest = \"2-7\"\n[memory]\nhost_reserve_mib = 1024\n",
        )
        .unwrap();
        file.resolve(false, &(0..8).collect()).unwrap()
    }

    pub(super) fn inventory() -> Inventory {
        let addr = |bus, dev| sriov::PciAddress::new(0, bus, dev, 0).unwrap();
        Inventory {
            online: (0..8).collect(),
            mem_total_mib: 9216,
            hugepage_kib: 2048,
            hugepages_total: 512,
            ports: vec![Port {
                name: "eth0".into(),
                pf: addr(1, 0),
                driver: "igb".into(),
                device: String::new(),
                total_vfs: 2,
                vfs: vec![(0, addr(1, 16)), (1, addr(1, 17))],
                numa_node: Some(0),
                local_cpus: Some((0..4).collect()),
            }],
        }
    }

    pub(super) fn instance(id: u32, cores: Vec<u16>, ram_mib: u32) -> InstanceRecord {
        InstanceRecord {
            id,
            name: format!("vm{id}"),
            stack: Some("blue".into()),
            group: None,
            template: "t".into(),
            template_version: 1,
            vcpus: cores.len() as u16,
            ram_mib,
            disk_gib: 0,
            hugepages: false,
            ha: false,
            cores,
            vfs: vec![],
            state: InstanceState::Defined,
            state_reason: String::new(),
            state_since_ms: 0,
            want_running: false,
            vmm: None,
            ha_failures: vec![],
            created_ms: 0,
        }
    }

    #[test]
    fn core_overcommit_is_refused_with_the_free_cores_named() {
        let (config, inventory) = (config(), inventory());
        let instances: BTreeMap<u32, InstanceRecord> =
            [(1, instance(1, vec![2, 3, 4, 5], 1024))].into();
        let res = Resources {
            config: &config,
            inventory: &inventory,
            instances: &instances,
            fastpath_cores: &BTreeSet::new(),
        };
        assert_eq!(res.allocate_cores(None, &[], 2).unwrap(), [6, 7]);
        let err = res.allocate_cores(None, &[], 4).unwrap_err();
        assert_eq!(err.code, ErrorCode::InsufficientResources);
        assert!(
            err.message
                .starts_with("needs 4 guest cores, 2 free (cores 6,7)"),
            "{}",
            err.message
        );
        assert_eq!(err.shortfall.unwrap().available, 2);
        // Resizing an instance keeps its cores and adds free ones.
        assert_eq!(
            res.allocate_cores(Some(1), &[2, 3, 4, 5], 5).unwrap(),
            [2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn fast_path_cores_are_never_given_to_a_guest() {
        let (config, inventory) = (config(), inventory());
        let instances: BTreeMap<u32, InstanceRecord> =
            [(1, instance(1, vec![2, 3, 4], 1024))].into();
        let fastpath: BTreeSet<u16> = [5, 6].into();
        let res = Resources {
            config: &config,
            inventory: &inventory,
            instances: &instances,
            fastpath_cores: &fastpath,
        };
        assert_eq!(res.free_cores(None), [7].into());
        assert_eq!(res.allocate_cores(None, &[], 1).unwrap(), [7]);
        // An instance that asks for more is told who holds the rest, the fast path first.
        let err = res.allocate_cores(None, &[], 2).unwrap_err();
        assert!(
            err.message.starts_with(
                "needs 2 guest cores, 1 free (cores 7); held by the fast path (5,6), vm1 (2-4)"
            ),
            "{}",
            err.message
        );
        // A reservation that names a fast-path core is moved off it at start.
        assert_eq!(
            res.allocate_cores(Some(1), &[2, 3, 5], 3).unwrap(),
            [2, 3, 4]
        );
    }

    #[test]
    fn the_fast_path_gets_only_dedicated_online_cores_no_guest_holds() {
        let (mut config, inventory) = (config(), inventory());
        let instances: BTreeMap<u32, InstanceRecord> = [(1, instance(1, vec![2, 3], 64))].into();
        let file = Path::new("/etc/hostd/fastpath.toml");
        let check = |config: &Config, cores: &[u16]| {
            Resources {
                config,
                inventory: &inventory,
                instances: &instances,
                fastpath_cores: &BTreeSet::new(),
            }
            .check_fastpath_cores(&cores.iter().copied().collect(), file)
        };
        check(&config, &[4, 5]).unwrap();
        let err = |cores: &[u16], config: &Config| check(config, cores).unwrap_err();
        assert_eq!(
            err(&[4, 3], &config),
            "core 3 (cores[].cpu in /etc/hostd/fastpath.toml) is held by guest vm1 (cores \
             2,3): move the fast path to another core, or delete or shrink vm1"
        );
        assert!(err(&[0], &config).contains("is a housekeeping core"));
        assert!(err(&[9], &config).contains("is not online (online: 0-7)"));
        assert!(err(&[], &config).contains("names no cores"));
        config.fastpath_cores = [6].into();
        assert!(
            err(&[5], &config).contains("is not in cores.fastpath (6)"),
            "{}",
            err(&[5], &config)
        );
        check(&config, &[6]).unwrap();
    }

    #[test]
    fn ram_and_hugepage_overcommit_is_refused_with_numbers() {
        let (config, inventory) = (config(), inventory());
        let instances: BTreeMap<u32, InstanceRecord> = [(1, instance(1, vec![2], 6144))].into();
        let res = Resources {
            config: &config,
            inventory: &inventory,
            instances: &instances,
            fastpath_cores: &BTreeSet::new(),
        };
        res.check_memory(None, 2048, false).unwrap();
        let err = res.check_memory(None, 4096, false).unwrap_err();
        assert!(
            err.message
                .starts_with("needs 4096 MiB of guest RAM, 2048 MiB free"),
            "{}",
            err.message
        );
        res.check_memory(None, 1024, true).unwrap();
        let err = res.check_memory(None, 2048, true).unwrap_err();
        assert!(
            err.message.starts_with("needs 1024 huge pages of 2048 KiB"),
            "{}",
            err.message
        );
        assert_eq!(
            res.check_memory(None, 3, true).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn quotas_name_the_limit_and_the_use() {
        let instances: BTreeMap<u32, InstanceRecord> = [(1, instance(1, vec![2, 3], 512))].into();
        let stack = StackRecord {
            name: "blue".into(),
            admins: vec![],
            quota: Quota {
                vcpus: Some(3),
                ..Default::default()
            },
        };
        let need = Usage {
            instances: 1,
            vcpus: 2,
            ram_mib: 64,
            vfs: 0,
        };
        let err = check_quota(&stack, &instances, None, need).unwrap_err();
        assert_eq!(err.code, ErrorCode::QuotaExceeded);
        assert!(
            err.message
                .starts_with("stack blue allows 3 vCPUs, 2 in use, 1 left: needs 2"),
            "{}",
            err.message
        );
        check_quota(&stack, &instances, Some(1), Usage { vcpus: 3, ..need }).unwrap();
    }
}
