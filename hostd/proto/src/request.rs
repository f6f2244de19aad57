//! Requests: one enum value per API call, each with its parameters (docs/API.md).

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::{MAX_ADMINS, MAX_VFS_PER_INSTANCE, MacText, Name, PathText, Text};

/// What a client sends: the protocol version first (so a server can refuse another version
/// before decoding the rest), a client-chosen id echoed in the reply, and the call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub version: u16,
    /// Echoed in the reply.
    pub id: u32,
    /// The call.
    pub request: Request,
}

/// Every API call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Protocol and daemon versions, and the caller's role. Reply: `hello`.
    Hello,
    /// Host summary: instance counts, free cores, RAM, VFs. Reply: `host_status`.
    HostStatus,
    /// Cores by role and owner, memory, NIC ports. Reply: `inventory`.
    Inventory,
    /// Instances the caller may see. Reply: `instances`.
    ListInstances(ListFilter),
    /// One instance in full. Reply: `instance`.
    ShowInstance(InstanceRef),
    /// Define an instance from template@version (reserving its cores, RAM and VFs), and
    /// optionally start it. Reply: `instance`.
    CreateInstance(CreateInstance),
    /// Start a defined, stopped, down or failed instance; the reply comes once it runs.
    /// Reply: `instance`.
    StartInstance(InstanceRef),
    /// Stop: graceful (power button, then forced after the timeout) or forced; the reply
    /// comes once it has stopped. Reply: `instance`.
    StopInstance(StopInstance),
    /// Reboot: soft (through the guest) or hard (reset now). Reply: `instance`.
    RebootInstance(RebootInstance),
    /// Park the vCPUs. Reply: `instance`.
    PauseInstance(InstanceRef),
    /// Release the vCPUs. Reply: `instance`.
    ResumeInstance(InstanceRef),
    /// Change vCPUs, RAM or disk of a stopped instance. Reply: `instance`.
    ResizeInstance(ResizeInstance),
    /// Change the display name. Reply: `instance`.
    RenameInstance(RenameInstance),
    /// Change the group. Reply: `instance`.
    RegroupInstance(RegroupInstance),
    /// Turn HA on or off. Reply: `instance`.
    SetInstanceHa(SetHa),
    /// Delete (releases cores, RAM, VFs); refused while running unless forced.
    /// Reply: `done`.
    DeleteInstance(DeleteInstance),
    /// Every template's latest version. Reply: `templates`.
    ListTemplates,
    /// One template version. Reply: `template`.
    ShowTemplate(TemplateRef),
    /// Add a template, or a new version of one. Reply: `template`.
    CreateTemplate(CreateTemplate),
    /// Remove a template (all versions), refused while an instance uses it. Reply: `done`.
    DeleteTemplate(NameRef),
    /// Stacks the caller may see. Reply: `stacks`.
    ListStacks,
    /// One stack with its usage. Reply: `stack`.
    ShowStack(NameRef),
    /// Create a stack. Reply: `stack`.
    CreateStack(CreateStack),
    /// Change a stack's quota. Reply: `stack`.
    SetStackQuota(SetStackQuota),
    /// Change a stack's admins. Reply: `stack`.
    SetStackAdmins(SetStackAdmins),
    /// Delete an empty stack. Reply: `done`.
    DeleteStack(NameRef),
    /// Recorded events after a sequence number. Reply: `events`.
    ListEvents(EventQuery),
    /// Follow events: reply `subscribed`, then one `event` reply per new event.
    Subscribe(EventFilter),
    /// Attach to the guest's serial console: reply `console_attached`, then the connection
    /// carries raw console bytes both ways until either side closes it.
    AttachConsole(InstanceRef),
    // Calls are appended, never reordered: postcard encodes the variant's index.
    /// The fast path: hostd's supervision state and the forwarder's port counters.
    /// Reply: `fastpath`.
    FastpathStatus,
    /// Start the fast path afresh (admins): its config is read and checked again and the
    /// exit count cleared; a running fastpath is stopped first. Reply: `fastpath`.
    RestartFastpath,
}

/// Which instances to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListFilter {
    /// Only this stack's.
    pub stack: Option<Name>,
    /// Only this group's.
    pub group: Option<Name>,
}

/// An instance, by display name or by id (`i-<id>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    /// Name or `i-<id>`.
    pub instance: Name,
}

/// A template, stack or other named thing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRef {
    /// Its name.
    pub name: Name,
}

/// A template version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// Template name.
    pub name: Name,
    /// Version; the latest when absent.
    #[serde(default)]
    pub version: Option<u32>,
}

/// One VF asked for; unset fields keep the port's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VfRequest {
    /// NIC port (PF netdev name, e.g. `eth0`); any port with a free VF when absent.
    pub port: Option<Name>,
    /// Unicast MAC address `xx:xx:xx:xx:xx:xx`.
    pub mac: Option<MacText>,
    /// Port VLAN id, 1..=4094.
    pub vlan: Option<u16>,
    /// 802.1p priority for the port VLAN, 0..=7.
    pub vlan_qos: Option<u8>,
    /// Guaranteed TX rate, Mbit/s.
    pub min_tx_mbps: Option<u32>,
    /// TX rate ceiling, Mbit/s.
    pub max_tx_mbps: Option<u32>,
}

/// Parameters of `create_instance`. Unset sizes come from the template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateInstance {
    /// Display name: lower-case letters, digits, `-`, `_`, `.`; starts with a letter or
    /// digit; at most 32 bytes; not of the form `i-<digits>`.
    pub name: Name,
    /// Template name.
    pub template: Name,
    /// Template version; the latest when absent.
    pub template_version: Option<u32>,
    /// Stack; none for an appliance-level instance (admins only).
    pub stack: Option<Name>,
    /// Free-form group (for display and filtering).
    pub group: Option<Name>,
    /// vCPUs (= dedicated guest cores).
    pub vcpus: Option<u16>,
    /// Guest RAM, MiB.
    pub ram_mib: Option<u32>,
    /// Disk image size, GiB (0: no disk).
    pub disk_gib: Option<u32>,
    /// Restart on failure.
    pub ha: Option<bool>,
    /// The VFs; absent: the template's count, with default settings.
    pub vfs: Option<Vec<VfRequest, MAX_VFS_PER_INSTANCE>>,
    /// Start it once created.
    pub start: bool,
}

/// Parameters of `stop_instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopInstance {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// Stop now instead of asking the guest.
    #[serde(default)]
    pub force: bool,
    /// Graceful stop timeout (then forced); the template's when absent.
    #[serde(default)]
    pub timeout_ms: Option<u32>,
}

/// Parameters of `reboot_instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootInstance {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// Reset now instead of asking the guest.
    #[serde(default)]
    pub hard: bool,
}

/// Parameters of `resize_instance` (stopped instances only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeInstance {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// New vCPU count.
    #[serde(default)]
    pub vcpus: Option<u16>,
    /// New RAM, MiB.
    #[serde(default)]
    pub ram_mib: Option<u32>,
    /// New disk size, GiB (grow only).
    #[serde(default)]
    pub disk_gib: Option<u32>,
}

/// Parameters of `rename_instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameInstance {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// The new display name.
    pub new_name: Name,
}

/// Parameters of `regroup_instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegroupInstance {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// The new group; none clears it.
    #[serde(default)]
    pub group: Option<Name>,
}

/// Parameters of `set_instance_ha`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetHa {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// HA on or off.
    pub enabled: bool,
}

/// Parameters of `delete_instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteInstance {
    /// Name or `i-<id>`.
    pub instance: Name,
    /// Stop it by force first if it runs.
    #[serde(default)]
    pub force: bool,
}

/// What a template defines: what to boot and the default sizes of its instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TemplateSpec {
    /// For people.
    pub description: Text,
    /// Kernel file on the host (bzImage, or ELF with a PVH note).
    pub kernel: PathText,
    /// Initial RAM disk.
    pub initramfs: Option<PathText>,
    /// Kernel command line.
    pub cmdline: Text,
    /// Default vCPUs.
    pub vcpus: u16,
    /// Default RAM, MiB.
    pub ram_mib: u32,
    /// Default disk, GiB (0: none).
    pub disk_gib: u32,
    /// Back RAM with huge pages.
    pub hugepages: bool,
    /// Default VF count.
    pub vfs: u8,
    /// Default HA.
    pub ha: bool,
    /// How long a graceful stop may take before it is forced, ms.
    pub graceful_stop_timeout_ms: u32,
}

impl Default for TemplateSpec {
    fn default() -> Self {
        Self {
            description: Text::new(),
            kernel: PathText::new(),
            initramfs: None,
            cmdline: Text::new(),
            vcpus: 1,
            ram_mib: 64,
            disk_gib: 0,
            hugepages: false,
            vfs: 0,
            ha: false,
            graceful_stop_timeout_ms: 10_000,
        }
    }
}

/// Parameters of `create_template`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTemplate {
    /// Template name (same rules as instance names).
    pub name: Name,
    /// The new version's definition.
    pub spec: TemplateSpec,
}

/// A Unix user or group, by name or number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// A user name.
    User(Name),
    /// A group name: its members.
    Group(Name),
    /// A user id.
    Uid(u32),
    /// A group id: its members.
    Gid(u32),
}

/// Limits of a stack; absent: unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quota {
    /// Instances.
    pub instances: Option<u32>,
    /// vCPUs, all instances together.
    pub vcpus: Option<u32>,
    /// RAM, MiB, all instances together.
    pub ram_mib: Option<u64>,
    /// VFs, all instances together.
    pub vfs: Option<u32>,
}

/// Parameters of `create_stack`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateStack {
    /// Stack name.
    pub name: Name,
    /// Who administers it.
    pub admins: Vec<Principal, MAX_ADMINS>,
    /// Its limits.
    pub quota: Quota,
}

/// Parameters of `set_stack_quota`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStackQuota {
    /// Stack name.
    pub name: Name,
    /// The new limits (replacing the old).
    pub quota: Quota,
}

/// Parameters of `set_stack_admins`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStackAdmins {
    /// Stack name.
    pub name: Name,
    /// The new admins (replacing the old).
    pub admins: Vec<Principal, MAX_ADMINS>,
}

/// Parameters of `list_events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventQuery {
    /// Events with a sequence number above this (0: from the oldest kept).
    pub after: u64,
    /// At most this many (capped at [`crate::MAX_EVENTS_PER_PAGE`]); 0 means the cap.
    pub limit: u16,
    /// Only this instance's (name or `i-<id>`).
    pub instance: Option<Name>,
    /// Only the newest `limit` events instead of the oldest after `after`.
    pub newest: bool,
}

/// Parameters of `subscribe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    /// Only this instance's (name or `i-<id>`).
    pub instance: Option<Name>,
}
