//! Replies: the envelope, the successful responses and what they describe.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::{
    ApiError, Event, MAX_EVENTS_PER_PAGE, MAX_INSTANCES, MAX_LIST, MAX_PORTS, MAX_STACKS,
    MAX_TEMPLATES, MAX_VCPUS, MAX_VF_OWNERS, MAX_VFS_PER_INSTANCE, MacText, Name, PathText,
    Principal, Quota, TemplateSpec, Text,
};

/// What the server sends: the id of the request it answers, and the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    /// The request's id (0 when the request could not be read far enough to know it).
    pub id: u32,
    /// The answer.
    pub reply: Reply,
}

/// A success, a refusal, or (after `subscribe`) an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done: what the call returns.
    Ok(Response),
    /// Refused or failed: nothing was changed unless the message says otherwise.
    Error(ApiError),
    /// A new event, pushed to a subscriber.
    Event(Event),
}

/// What a successful call returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// To `hello`.
    Hello(ServerInfo),
    /// To `host_status`.
    HostStatus(HostStatus),
    /// To `inventory`.
    Inventory(Inventory),
    /// To `list_instances`.
    Instances(Vec<InstanceSummary, MAX_INSTANCES>),
    /// To instance calls.
    Instance(InstanceInfo),
    /// To `list_templates`.
    Templates(Vec<TemplateSummary, MAX_TEMPLATES>),
    /// To `show_template` and `create_template`.
    Template(TemplateInfo),
    /// To `list_stacks`.
    Stacks(Vec<StackInfo, MAX_STACKS>),
    /// To stack calls.
    Stack(StackInfo),
    /// To `list_events`.
    Events(EventPage),
    /// To `subscribe`: events follow.
    Subscribed,
    /// To `attach_console`: raw console bytes follow.
    ConsoleAttached(crate::InstanceRef),
    /// To deletions.
    Done,
    // Appended, never reordered: postcard encodes the variant's index.
    /// To `fastpath_status` and `restart_fastpath`.
    Fastpath(crate::FastpathStatus),
}

/// What the caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything (root, or a member of the configured admin group).
    Admin,
    /// Instances of their stacks, within the quotas.
    StackAdmin,
    /// Read-only.
    Viewer,
}

/// Reply to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's protocol version.
    pub protocol_version: u16,
    /// hostd's version.
    pub hostd_version: Name,
    /// Running on simulated hardware (`hostd --sim`).
    pub sim: bool,
    /// The caller's user id (from the socket's peer credentials).
    pub uid: u32,
    /// The caller's role.
    pub role: Role,
    /// For a stack admin: their stacks.
    pub stacks: Vec<Name, MAX_STACKS>,
}

/// Instance counts by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCounts {
    /// All.
    pub total: u32,
    /// Running or paused.
    pub running: u32,
    /// Defined or stopped.
    pub stopped: u32,
    /// Starting, stopping.
    pub transitioning: u32,
    /// Down (HA gave up) or error.
    pub failed: u32,
}

/// Guest cores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreSummary {
    /// Cores in the guest set.
    pub guest_total: u32,
    /// Of which not reserved by an instance.
    pub guest_free: u32,
}

/// Guest RAM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySummary {
    /// Host RAM.
    pub total_mib: u64,
    /// Kept for the host (hostd, VMM processes, fast path).
    pub host_reserve_mib: u64,
    /// What guests may have: total minus the reserve.
    pub guest_budget_mib: u64,
    /// Reserved by instances (on normal pages).
    pub reserved_mib: u64,
}

/// Huge pages (the host's default size).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageSummary {
    /// Page size, KiB (0: no huge pages).
    pub page_kib: u64,
    /// Pages in the pool.
    pub total_pages: u64,
    /// Reserved by instances.
    pub reserved_pages: u64,
}

/// VFs of all ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfSummary {
    /// VFs that exist.
    pub total: u32,
    /// Of which not reserved by an instance.
    pub free: u32,
}

/// Reply to `host_status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Seconds since hostd started.
    pub uptime_s: u64,
    /// Simulated hardware.
    pub sim: bool,
    /// Instances the caller may see.
    pub instances: InstanceCounts,
    /// Guest cores.
    pub cores: CoreSummary,
    /// RAM.
    pub memory: MemorySummary,
    /// Huge pages.
    pub hugepages: HugepageSummary,
    /// VFs.
    pub vfs: VfSummary,
}

/// Which instance holds a guest core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreOwner {
    /// Host core.
    pub core: u16,
    /// Instance name.
    pub instance: Name,
}

/// One SR-IOV NIC port (a PF) and its VFs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Netdev name of the PF (`eth0`).
    pub port: Name,
    /// PCI address of the PF.
    pub pf: Name,
    /// PF driver.
    pub driver: Name,
    /// Device name from the PCI ID database, when known.
    pub device: Text,
    /// `sriov_totalvfs`.
    pub total_vfs: u32,
    /// `sriov_numvfs`.
    pub num_vfs: u32,
    /// VFs reserved on this port by instances (admission counts these).
    pub reserved_vfs: u32,
    /// VFs given to running instances now (bound to vfio-pci for their VMMs).
    pub assigned_vfs: u32,
    /// NUMA node of the PF, when the platform reports one.
    pub numa_node: Option<u32>,
}

/// A VF given to an instance now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfOwner {
    /// The VF's PCI address.
    pub vf: Name,
    /// Its port (PF netdev).
    pub port: Name,
    /// Its index under the PF.
    pub index: u16,
    /// The instance holding it.
    pub instance: Name,
    /// Where the guest sees it (`0000:00:01.0`); none when not passed to the guest
    /// (`hostd --sim`).
    pub guest_addr: Option<Name>,
}

/// Reply to `inventory`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Online CPUs.
    pub cpus: u32,
    /// Cores for the host (hostd, VMM control threads), as a list (`0,1`, `0-3`).
    pub housekeeping_cores: Text,
    /// Cores reserved for guests' vCPUs.
    pub guest_cores: Text,
    /// Cores for the fast path.
    pub fastpath_cores: Text,
    /// Guest cores held by instances.
    pub core_owners: Vec<CoreOwner, MAX_LIST>,
    /// RAM.
    pub memory: MemorySummary,
    /// Huge pages.
    pub hugepages: HugepageSummary,
    /// NIC ports.
    pub ports: Vec<PortInfo, MAX_PORTS>,
    /// VFs given to instances now, and to which.
    pub vf_owners: Vec<VfOwner, MAX_VF_OWNERS>,
    /// Simulated hardware.
    pub sim: bool,
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Created, never started.
    Defined,
    /// Its VMM is starting.
    Starting,
    /// Running.
    Running,
    /// vCPUs parked.
    Paused,
    /// A stop is under way.
    Stopping,
    /// Stopped.
    Stopped,
    /// HA gave up after repeated failures; start it again by hand.
    Down,
    /// Its VMM failed (and HA is off, or a restart is pending).
    Error,
}

impl InstanceState {
    /// The lower-case name (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Defined => "defined",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Down => "down",
            Self::Error => "error",
        }
    }

    /// A VMM process exists in this state.
    pub fn has_vmm(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Paused | Self::Stopping
        )
    }
}

/// One line of `list_instances`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSummary {
    /// Immutable id.
    pub id: u32,
    /// Display name.
    pub name: Name,
    /// State.
    pub state: InstanceState,
    /// Stack.
    pub stack: Option<Name>,
    /// Group.
    pub group: Option<Name>,
    /// Template name.
    pub template: Name,
    /// Template version.
    pub template_version: u32,
    /// vCPUs.
    pub vcpus: u16,
    /// RAM, MiB.
    pub ram_mib: u32,
    /// VFs.
    pub vfs: u8,
    /// HA on.
    pub ha: bool,
}

/// One VF of an instance: the port it is reserved on, its settings, and while the instance
/// has a VMM, the VF it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfInfo {
    /// Port (PF netdev).
    pub port: Name,
    /// PF PCI address.
    pub pf: Name,
    /// Index under the PF of the VF held now; none while the instance has no VMM.
    pub index: Option<u16>,
    /// PCI address of the VF held now; none while the instance has no VMM.
    pub addr: Option<Name>,
    /// Where the guest sees it (`0000:00:01.0`); none while not passed to a guest (stopped,
    /// or `hostd --sim`, whose simulated VFs cannot be opened through VFIO).
    pub guest_addr: Option<Name>,
    /// MAC address.
    pub mac: Option<MacText>,
    /// Port VLAN (0: none).
    pub vlan: u16,
    /// VLAN priority.
    pub vlan_qos: u8,
    /// Guaranteed TX rate, Mbit/s (0: none).
    pub min_tx_mbps: u32,
    /// TX ceiling, Mbit/s (0: none).
    pub max_tx_mbps: u32,
}

/// An instance in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Immutable id.
    pub id: u32,
    /// Display name.
    pub name: Name,
    /// State.
    pub state: InstanceState,
    /// Why it is in this state (the last transition's reason).
    pub state_reason: Text,
    /// When it entered this state, ms since the Unix epoch.
    pub state_since_ms: u64,
    /// Stack.
    pub stack: Option<Name>,
    /// Group.
    pub group: Option<Name>,
    /// Template name.
    pub template: Name,
    /// Template version.
    pub template_version: u32,
    /// vCPUs.
    pub vcpus: u16,
    /// RAM, MiB.
    pub ram_mib: u32,
    /// Disk, GiB.
    pub disk_gib: u32,
    /// RAM on huge pages.
    pub hugepages: bool,
    /// HA on.
    pub ha: bool,
    /// HA restarts in the current window.
    pub ha_failures: u32,
    /// Dedicated host cores, vCPU i on `cores[i]`.
    pub cores: Vec<u16, MAX_VCPUS>,
    /// VFs.
    pub vfs: Vec<VfInfo, MAX_VFS_PER_INSTANCE>,
    /// VMM process id while it has one.
    pub vmm_pid: Option<u32>,
    /// Console log file on the host.
    pub console_log: PathText,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// One line of `list_templates`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSummary {
    /// Name.
    pub name: Name,
    /// Latest version.
    pub latest_version: u32,
    /// Description of the latest version.
    pub description: Text,
    /// Instances made from any version.
    pub instances: u32,
}

/// A template version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// Name.
    pub name: Name,
    /// This version.
    pub version: u32,
    /// Its definition.
    pub spec: TemplateSpec,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// What a stack uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackUsage {
    /// Instances.
    pub instances: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM, MiB.
    pub ram_mib: u64,
    /// VFs.
    pub vfs: u32,
}

/// A stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackInfo {
    /// Name.
    pub name: Name,
    /// Admins.
    pub admins: Vec<Principal, { crate::MAX_ADMINS }>,
    /// Limits.
    pub quota: Quota,
    /// Use.
    pub usage: StackUsage,
}

/// Reply to `list_events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// Events, oldest first.
    pub events: Vec<Event, MAX_EVENTS_PER_PAGE>,
    /// More events match after the last one.
    pub more: bool,
    /// The newest sequence number recorded (to follow on from).
    pub last_seq: u64,
}
