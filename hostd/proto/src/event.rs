//! Events: every state transition and change, with time, actor and reason.

use serde::{Deserialize, Serialize};

use crate::{FastpathState, InstanceState, Name, Text};

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing, never reused.
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// Who caused it.
    pub actor: Actor,
    /// The instance concerned, if any.
    pub instance: Option<EventInstance>,
    /// The stack concerned, if any.
    pub stack: Option<Name>,
    /// What happened.
    pub kind: EventKind,
    /// Why.
    pub reason: Text,
}

/// An instance as named in an event (its name at the time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInstance {
    /// Immutable id.
    pub id: u32,
    /// Name at the time.
    pub name: Name,
}

/// Who caused an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A client, from the socket's peer credentials.
    User {
        /// User id.
        uid: u32,
        /// Process id.
        pid: u32,
        /// User name when known.
        name: Name,
    },
    /// hostd itself (start-up, supervision of a VMM, re-adoption).
    Hostd,
    /// HA: an automatic restart, or giving up.
    Ha,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An instance changed state.
    State {
        /// Before.
        from: InstanceState,
        /// After.
        to: InstanceState,
    },
    /// An instance was created.
    Created,
    /// An instance was deleted.
    Deleted,
    /// An instance was renamed.
    Renamed {
        /// The old name.
        from: Name,
    },
    /// An instance's group changed.
    Regrouped,
    /// An instance's vCPUs, RAM or disk changed.
    Resized,
    /// An instance's HA flag changed.
    HaChanged,
    /// An instance was rebooted.
    Rebooted {
        /// Reset at once (true) or through the guest.
        hard: bool,
    },
    /// A running VMM was re-adopted after hostd's restart.
    Adopted {
        /// Its process id.
        pid: u32,
    },
    /// A template (version) was added.
    TemplateCreated {
        /// Template name.
        name: Name,
        /// Version.
        version: u32,
    },
    /// A template was removed.
    TemplateDeleted {
        /// Template name.
        name: Name,
    },
    /// A stack was created, changed or deleted.
    StackChanged,
    /// hostd started.
    HostdStarted,
    /// A VF was given to an instance's VMM (settings applied, bound to vfio-pci).
    VfAssigned {
        /// The VF's PCI address.
        vf: Name,
    },
    /// A VF an instance held was given back (settings restored, driver as configured) after
    /// its VMM was gone.
    VfReleased {
        /// The VF's PCI address.
        vf: Name,
    },
    // Appended, never reordered: postcard encodes the variant's index.
    /// The fast path changed state: started, exited, restarted, re-adopted, refused, stopped.
    Fastpath {
        /// Before.
        from: FastpathState,
        /// After.
        to: FastpathState,
    },
}
