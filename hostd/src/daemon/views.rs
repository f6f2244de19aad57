//! Read-only answers: hello, host status, inventory, instance lists and details.

use hostd_proto::{
    CoreOwner, CoreSummary, HostStatus, HugepageSummary, InstanceCounts, InstanceInfo,
    InstanceState, InstanceSummary, Inventory, ListFilter, MemorySummary, PROTOCOL_VERSION,
    PortInfo, Response, ServerInfo, VfInfo, VfOwner, VfSummary, bounded, name, text,
};

use super::Daemon;
use crate::access::Caller;
use crate::cpulist;
use crate::store::InstanceRecord;

impl Daemon {
    pub(crate) fn hello(&self, caller: &Caller) -> Response {
        Response::Hello(ServerInfo {
            protocol_version: PROTOCOL_VERSION,
            hostd_version: name(env!("CARGO_PKG_VERSION")),
            sim: self.config.sim,
            uid: caller.peer.uid,
            role: caller.role,
            stacks: caller.stacks.iter().map(|s| name(s)).collect(),
        })
    }

    fn memory(&self) -> MemorySummary {
        let res = self.resources();
        MemorySummary {
            total_mib: self.inventory.mem_total_mib,
            host_reserve_mib: self.config.host_reserve_mib,
            guest_budget_mib: res.ram_budget_mib(),
            reserved_mib: res.ram_reserved_mib(None),
        }
    }

    fn hugepages(&self) -> HugepageSummary {
        HugepageSummary {
            page_kib: self.inventory.hugepage_kib,
            total_pages: self.inventory.hugepages_total,
            reserved_pages: self.resources().hugepages_reserved(None),
        }
    }

    pub(crate) fn host_status(&self, caller: &Caller) -> Response {
        let mut counts = InstanceCounts::default();
        for i in self
            .instances
            .values()
            .filter(|i| caller.can_see(i.stack.as_deref()))
        {
            counts.total += 1;
            match i.state {
                InstanceState::Running | InstanceState::Paused => counts.running += 1,
                InstanceState::Defined | InstanceState::Stopped => counts.stopped += 1,
                InstanceState::Starting | InstanceState::Stopping => counts.transitioning += 1,
                InstanceState::Down | InstanceState::Error => counts.failed += 1,
            }
        }
        let res = self.resources();
        let total_vfs: usize = self.inventory.ports.iter().map(|p| p.vfs.len()).sum();
        let reserved_vfs: usize = res
            .vf_room(None)
            .values()
            .map(|(total, reserved)| (*reserved).min(*total))
            .sum();
        Response::HostStatus(HostStatus {
            uptime_s: self.uptime_s(),
            sim: self.config.sim,
            instances: counts,
            cores: CoreSummary {
                guest_total: res.guest_cores().len() as u32,
                guest_free: res.free_cores(None).len() as u32,
            },
            memory: self.memory(),
            hugepages: self.hugepages(),
            vfs: VfSummary {
                total: total_vfs as u32,
                free: total_vfs.saturating_sub(reserved_vfs) as u32,
            },
        })
    }

    pub(crate) fn inventory_view(&self) -> Response {
        let mut owners = hostd_proto::heapless::Vec::new();
        for i in self.instances.values() {
            for core in &i.cores {
                let _ = owners.push(CoreOwner {
                    core: *core,
                    instance: name(&i.name),
                });
            }
        }
        let mut ports = hostd_proto::heapless::Vec::new();
        for port in &self.inventory.ports {
            let pf = port.pf.to_string();
            let on_port = || {
                self.instances
                    .values()
                    .flat_map(|i| &i.vfs)
                    .filter(|v| v.pf == pf)
            };
            let _ = ports.push(PortInfo {
                port: name(&port.name),
                pf: name(&pf),
                driver: name(&port.driver),
                device: text(&port.device),
                total_vfs: port.total_vfs,
                num_vfs: port.vfs.len() as u32,
                reserved_vfs: on_port().count() as u32,
                assigned_vfs: on_port().filter(|v| v.assigned.is_some()).count() as u32,
                numa_node: port.numa_node,
            });
        }
        let mut vf_owners = hostd_proto::heapless::Vec::new();
        for i in self.instances.values() {
            for vf in &i.vfs {
                let Some(a) = &vf.assigned else {
                    continue;
                };
                let _ = vf_owners.push(VfOwner {
                    vf: name(&a.addr),
                    port: name(&vf.port),
                    index: a.index as u16,
                    instance: name(&i.name),
                    guest_addr: a.guest_addr().as_deref().map(name),
                });
            }
        }
        Response::Inventory(Inventory {
            cpus: self.inventory.online.len() as u32,
            housekeeping_cores: text(&cpulist::format(&self.config.housekeeping_cores)),
            guest_cores: text(&cpulist::format(&self.config.guest_cores)),
            // The configured set and what the fast path holds now (its config may name
            // guest cores, which it then holds while it runs).
            fastpath_cores: text(&cpulist::format(
                self.config.fastpath_cores.union(&self.fastpath.cores),
            )),
            core_owners: owners,
            memory: self.memory(),
            hugepages: self.hugepages(),
            ports,
            vf_owners,
            sim: self.config.sim,
        })
    }

    pub(crate) fn list_instances(&self, caller: &Caller, filter: &ListFilter) -> Response {
        let mut list = hostd_proto::heapless::Vec::new();
        let wanted = self.instances.values().filter(|i| {
            caller.can_see(i.stack.as_deref())
                && filter
                    .stack
                    .as_deref()
                    .is_none_or(|s| i.stack.as_deref() == Some(s))
                && filter
                    .group
                    .as_deref()
                    .is_none_or(|g| i.group.as_deref() == Some(g))
        });
        for i in wanted {
            let _ = list.push(InstanceSummary {
                id: i.id,
                name: name(&i.name),
                state: i.state,
                stack: i.stack.as_deref().map(name),
                group: i.group.as_deref().map(name),
                template: name(&i.template),
                template_version: i.template_version,
                vcpus: i.vcpus,
                ram_mib: i.ram_mib,
                vfs: i.vfs.len() as u8,
                ha: i.ha,
            });
        }
        Response::Instances(list)
    }

    pub(crate) fn instance_info(&self, i: &InstanceRecord) -> InstanceInfo {
        let (console_log, _, _) = self.instance_files(i.id);
        InstanceInfo {
            id: i.id,
            name: name(&i.name),
            state: i.state,
            state_reason: text(&i.state_reason),
            state_since_ms: i.state_since_ms,
            stack: i.stack.as_deref().map(name),
            group: i.group.as_deref().map(name),
            template: name(&i.template),
            template_version: i.template_version,
            vcpus: i.vcpus,
            ram_mib: i.ram_mib,
            disk_gib: i.disk_gib,
            hugepages: i.hugepages,
            ha: i.ha,
            ha_failures: i.ha_failures.len() as u32,
            cores: i.cores.iter().copied().collect(),
            vfs: i
                .vfs
                .iter()
                .map(|v| {
                    let vlan = v.settings.vlan.unwrap_or_default();
                    let rate = v.settings.rate.unwrap_or_default();
                    VfInfo {
                        port: name(&v.port),
                        pf: name(&v.pf),
                        index: v.assigned.as_ref().map(|a| a.index as u16),
                        addr: v.assigned.as_ref().map(|a| name(&a.addr)),
                        guest_addr: v
                            .assigned
                            .as_ref()
                            .and_then(|a| a.guest_addr())
                            .as_deref()
                            .map(name),
                        mac: v.settings.mac.map(|m| bounded(&m.to_string())),
                        vlan: vlan.id,
                        vlan_qos: vlan.qos,
                        min_tx_mbps: rate.min_mbps,
                        max_tx_mbps: rate.max_mbps,
                    }
                })
                .collect(),
            vmm_pid: i.vmm.as_ref().map(|v| v.pid),
            console_log: bounded(&console_log.to_string_lossy()),
            created_ms: i.created_ms,
        }
    }
}
