//! A small synchronous rtnetlink client: one request, its replies, its ACK.
//!
//! Messages are built and parsed with `netlink-packet-route`; nothing is hand-encoded. The
//! socket is opened per [`RouteSocket`] and lives in the network namespace of the thread that
//! opens it (tests rely on that).

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::SriovError;

/// Sends route netlink requests and collects their replies: a [`RouteSocket`], or a recorder
/// in tests that checks the exact messages built.
pub trait RouteTransport {
    /// Sends `message`; returns the replies up to the ACK (or the end of a dump).
    fn request(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, SriovError>;
}

impl RouteTransport for RouteSocket {
    fn request(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, SriovError> {
        RouteSocket::request(self, op, message, dump)
    }
}

/// A route netlink socket.
#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

fn netlink_err(op: &str, source: io::Error) -> SriovError {
    let advice = match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => "run as root (CAP_NET_ADMIN)",
        Some(libc::EOPNOTSUPP) => "the driver does not support this setting",
        Some(libc::ENODEV) => "the interface is gone",
        Some(libc::EINVAL) => "the kernel rejected the value",
        _ => "see `dmesg`",
    };
    SriovError::Netlink {
        op: op.to_string(),
        source,
        advice: advice.to_string(),
    }
}

impl RouteSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SriovError> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| netlink_err("open a route netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| netlink_err("bind the route netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| netlink_err("connect the route netlink socket", e))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` and collects the replies until the ACK (or the end of a dump).
    pub fn request(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, SriovError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| netlink_err(op, e))?;

        let mut replies = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let size = self
                .socket
                .recv(&mut &mut rx[..], 0)
                .map_err(|e| netlink_err(op, e))?;
            let mut offset = 0;
            while offset < size {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[offset..size]).map_err(|e| {
                        SriovError::NetlinkProtocol {
                            op: op.to_string(),
                            detail: e.to_string(),
                        }
                    })?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number != self.sequence {
                    // Not ours (a late reply to an earlier request): skip it.
                } else {
                    match reply.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(netlink_err(op, e.to_io()));
                        }
                        // An ACK ends a request; for a dump, DONE comes first and the ACK follows.
                        NetlinkPayload::Error(_) => return Ok(replies),
                        NetlinkPayload::Done(_) if dump => {}
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Sets a link administratively up or down (`ip link set dev X up|down`).
    pub fn set_link_up(&mut self, ifindex: u32, up: bool) -> Result<(), SriovError> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        let op = format!("set link {ifindex} {}", if up { "up" } else { "down" });
        self.request(&op, RouteNetlinkMessage::SetLink(msg), false)
            .map(|_| ())
    }

    /// Reads one link's message: flags and attributes.
    pub fn get_link(&mut self, ifindex: u32) -> Result<LinkMessage, SriovError> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let op = format!("get link {ifindex}");
        let replies = self.request(&op, RouteNetlinkMessage::GetLink(msg), false)?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .ok_or(SriovError::NetlinkProtocol {
                op,
                detail: "no link in the reply".into(),
            })
    }

    /// A link's name, MAC and state.
    pub fn link_info(&mut self, ifindex: u32) -> Result<LinkInfo, SriovError> {
        let msg = self.get_link(ifindex)?;
        let mut info = LinkInfo {
            ifindex,
            name: String::new(),
            mac: None,
            admin_up: msg.header.flags.contains(LinkFlags::Up),
            carrier: false,
            oper_up: false,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name = name,
                LinkAttribute::Address(bytes) => {
                    info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                LinkAttribute::Carrier(c) => info.carrier = c != 0,
                LinkAttribute::OperState(state) => info.oper_up = state == State::Up,
                _ => {}
            }
        }
        Ok(info)
    }
}

/// What rtnetlink says about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its index.
    pub ifindex: u32,
    /// Its name.
    pub name: String,
    /// Its Ethernet address, when it has one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    /// The PHY reports a link partner.
    pub carrier: bool,
    /// Operationally up (RFC 2863 `up`).
    pub oper_up: bool,
}

/// The ifindex of a network interface by name.
pub fn ifindex(name: &str) -> Result<u32, SriovError> {
    nix::net::if_::if_nametoindex(name).map_err(|e| SriovError::NoSuchInterface {
        name: name.to_string(),
        source: io::Error::from(e),
    })
}
