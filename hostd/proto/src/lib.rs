//! hostd's wire protocol: every request, response, event and error type, the protocol
//! version, the binary framing and the JSON-lines form (docs/API.md).
//!
//! The crate is `no_std` without its `std` feature (front-panel firmware links it): every
//! string and list is a `heapless` type with a fixed capacity, so a message has a known
//! upper size and decoding never allocates. With `std` (the default) it adds framing over
//! `std::io` ([`frame`]) and the JSON-lines form ([`json`]). [`fastpath`] holds the wire
//! types of the fastpath process's own config file and control socket; they allocate, and
//! need the `alloc` feature (which `std` turns on; the module says why).
//!
//! Binary form: each message is a little-endian `u32` length, then that many bytes of
//! postcard, at most [`MAX_FRAME_BYTES`]. A client sends [`RequestEnvelope`]s and gets one
//! [`ReplyEnvelope`] per request, with the request's `id`; after [`Request::Subscribe`] the
//! server also pushes [`Reply::Event`]s, and after [`Request::AttachConsole`] the connection
//! carries the guest console's raw bytes both ways.
//!
//! JSON form: a connection whose first byte is `{` speaks JSON lines instead: one JSON
//! object per line, the same types (serde's externally tagged enums, snake_case names).
//!
//! ```
//! use hostd_proto::{Request, RequestEnvelope, InstanceRef, PROTOCOL_VERSION, name};
//! let envelope = RequestEnvelope {
//!     version: PROTOCOL_VERSION,
//!     id: 7,
//!     request: Request::StartInstance(InstanceRef { instance: name("web-1") }),
//! };
//! let mut buf = [0u8; 256];
//! let frame = hostd_proto::encode_frame(&envelope, &mut buf).unwrap();
//! let body = &frame[4..];
//! assert_eq!(hostd_proto::decode_request(body).unwrap(), envelope);
//! ```
#![no_std]
// Messages are fixed-capacity values (no allocator on the front panel): enums and errors
// are as large as their largest variant on purpose, and the sizes are bounded.
#![allow(clippy::large_enum_variant, clippy::result_large_err)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub use heapless;

mod error;
mod event;
mod fastpath_status;
mod framing;
mod request;
mod response;

pub mod fastpath;
#[cfg(feature = "std")]
pub mod frame;
#[cfg(feature = "std")]
pub mod json;

pub use error::{ApiError, ErrorCode, Resource, Shortfall};
pub use event::{Actor, Event, EventInstance, EventKind};
pub use fastpath_status::{FastpathPort, FastpathState, FastpathStatus};
pub use framing::{
    DecodeError, EncodeError, decode_reply, decode_request, encode_frame, frame_length,
    peek_version,
};
pub use request::{
    CreateInstance, CreateStack, CreateTemplate, DeleteInstance, EventFilter, EventQuery,
    InstanceRef, ListFilter, NameRef, Principal, Quota, RebootInstance, RegroupInstance,
    RenameInstance, Request, RequestEnvelope, ResizeInstance, SetHa, SetStackAdmins, SetStackQuota,
    StopInstance, TemplateRef, TemplateSpec, VfRequest,
};
pub use response::{
    CoreOwner, CoreSummary, EventPage, HostStatus, HugepageSummary, InstanceCounts, InstanceInfo,
    InstanceState, InstanceSummary, Inventory, MemorySummary, PortInfo, Reply, ReplyEnvelope,
    Response, Role, ServerInfo, StackInfo, StackUsage, TemplateInfo, TemplateSummary, VfInfo,
    VfOwner, VfSummary,
};

/// The protocol version this crate speaks. A request with another version is refused with
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest message body (the `u32` length does not count), in either form.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024;

/// Most instances the box holds, and so the longest instance list (each instance has at
/// least one dedicated core).
pub const MAX_INSTANCES: usize = 64;
/// Longest template or core-owner list in one reply.
pub const MAX_LIST: usize = 64;
/// Most templates.
pub const MAX_TEMPLATES: usize = 32;
/// Most stacks.
pub const MAX_STACKS: usize = 32;
/// Most events in one [`EventPage`].
pub const MAX_EVENTS_PER_PAGE: usize = 32;
/// Most VFs per instance.
pub const MAX_VFS_PER_INSTANCE: usize = 8;
/// Most vCPUs (dedicated cores) per instance.
pub const MAX_VCPUS: usize = 64;
/// Most admins per stack.
pub const MAX_ADMINS: usize = 8;
/// Most NIC ports (PFs) reported.
pub const MAX_PORTS: usize = 16;
/// Most VF owners in an [`Inventory`] reply (VFs given to instances at one time).
pub const MAX_VF_OWNERS: usize = 64;
/// Most fast-path ports in a [`FastpathStatus`] reply (more are left out).
pub const MAX_FASTPATH_PORTS: usize = 64;
/// Most fast-path cores in a [`FastpathStatus`] reply.
pub const MAX_FASTPATH_CORES: usize = 64;

/// Names: instances, templates, stacks, groups, users, ports (at most 32 bytes).
pub type Name = heapless::String<32>;
/// Free text: reasons, messages, descriptions, command lines (at most 240 bytes).
pub type Text = heapless::String<240>;
/// A host file path (at most 160 bytes).
pub type PathText = heapless::String<160>;
/// A MAC address as text, `02:00:00:00:00:01`.
pub type MacText = heapless::String<17>;

/// `s` as a [`heapless::String`] of capacity `N`, cut at a character boundary when it is
/// longer (a trailing `~` marks the cut).
pub fn bounded<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    if s.len() <= N {
        // Cannot fail: it fits.
        let _ = out.push_str(s);
        return out;
    }
    let mut end = N.saturating_sub(1);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let _ = out.push_str(&s[..end]);
    let _ = out.push('~');
    out
}

/// A [`Name`] from `s` (cut to 32 bytes: callers validate names before sending).
pub fn name(s: &str) -> Name {
    bounded(s)
}

/// A [`Text`] from `s` (cut to 240 bytes).
pub fn text(s: &str) -> Text {
    bounded(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_strings_cut_at_a_char_boundary() {
        assert_eq!(name("web-1").as_str(), "web-1");
        let long = "é".repeat(40); // 80 bytes
        let cut = name(&long);
        assert!(cut.len() <= 32);
        assert!(cut.ends_with('~'));
        let exact: heapless::String<4> = bounded("abcd");
        assert_eq!(exact.as_str(), "abcd");
    }

    /// The first byte of a value's postcard encoding: an enum's variant index (< 128).
    fn index<T: serde::Serialize>(value: &T) -> u8 {
        let mut buf = [0u8; 256];
        postcard::to_slice(value, &mut buf).unwrap()[0]
    }

    /// Variants are appended, never reordered: postcard encodes their index, so the calls
    /// a front panel of this protocol version knows keep their numbers.
    #[test]
    fn appended_variants_keep_the_earlier_indices() {
        assert_eq!(index(&Request::Hello), 0);
        assert_eq!(index(&Request::AttachConsole(InstanceRef::default())), 28);
        assert_eq!(index(&Request::FastpathStatus), 29);
        assert_eq!(index(&Request::RestartFastpath), 30);
        assert_eq!(index(&Response::Done), 12);
        let status = FastpathStatus {
            state: FastpathState::Disabled,
            reason: Text::new(),
            since_ms: 0,
            pid: None,
            cores: heapless::Vec::new(),
            config: PathText::new(),
            control_socket: PathText::new(),
            exits: 0,
            restart_in_ms: None,
            ports: heapless::Vec::new(),
            stats_error: None,
        };
        assert_eq!(index(&Response::Fastpath(status)), 13);
        let kind = EventKind::Fastpath {
            from: FastpathState::Disabled,
            to: FastpathState::Starting,
        };
        assert_eq!(index(&kind), 15);
    }
}
