//! Typed refusals: a machine-readable code, a message that says what is wrong and what to
//! do, and for admission refusals the numbers.

use serde::{Deserialize, Serialize};

use crate::Text;

/// Why a call was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What kind of refusal (clients branch on this; `hostctl` maps it to its exit code).
    pub code: ErrorCode,
    /// For people: what is wrong and what to do.
    pub message: Text,
    /// For admission and quota refusals: what is short, with numbers.
    pub shortfall: Option<Shortfall>,
}

impl ApiError {
    /// An error without a shortfall.
    pub fn new(code: ErrorCode, message: &str) -> Self {
        Self {
            code,
            message: crate::text(message),
            shortfall: None,
        }
    }
}

impl core::fmt::Display for ApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Kinds of refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be decoded (garbage, wrong JSON types, missing fields).
    BadRequest,
    /// The request's protocol version is not the server's.
    UnsupportedVersion,
    /// A frame above the size limit: the server closes the connection after this reply.
    FrameTooLarge,
    /// No such instance, template, template version or stack (or not visible to the caller).
    NotFound,
    /// The name is taken.
    AlreadyExists,
    /// The caller's role does not allow this.
    PermissionDenied,
    /// Not possible in the instance's current state (e.g. resize while running).
    InvalidState,
    /// A value is malformed or out of range.
    InvalidArgument,
    /// Admission control: the box does not have the cores, RAM, huge pages, VFs or disk.
    InsufficientResources,
    /// The stack's quota does not allow it.
    QuotaExceeded,
    /// The VMM process failed to start or to carry out the request.
    VmmFailed,
    /// Too many connections, or another operation on the instance is under way.
    Busy,
    /// hostd could not record the change (storage failure); nothing was acknowledged.
    Internal,
    /// An SR-IOV VF cannot be given to the guest: binding to vfio-pci failed, its IOMMU
    /// group is not viable, there is no IOMMU, or another process holds it. The message names
    /// the VF, its PF and what to do.
    VfUnavailable,
}

impl ErrorCode {
    /// The lower-case name (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnsupportedVersion => "unsupported_version",
            Self::FrameTooLarge => "frame_too_large",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::InvalidState => "invalid_state",
            Self::InvalidArgument => "invalid_argument",
            Self::InsufficientResources => "insufficient_resources",
            Self::QuotaExceeded => "quota_exceeded",
            Self::VmmFailed => "vmm_failed",
            Self::Busy => "busy",
            Self::Internal => "internal",
            Self::VfUnavailable => "vf_unavailable",
        }
    }
}

/// A resource that admission control or a quota counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Dedicated guest cores.
    GuestCores,
    /// Guest RAM, MiB.
    RamMib,
    /// Huge pages.
    Hugepages,
    /// SR-IOV VFs.
    Vfs,
    /// Disk space, GiB.
    DiskGib,
    /// Instances.
    Instances,
    /// vCPUs (quota).
    Vcpus,
}

/// What is short: `needed` of `resource` asked, `available` left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// What.
    pub resource: Resource,
    /// How much the call needs.
    pub needed: u64,
    /// How much is free (or left in the quota).
    pub available: u64,
}
