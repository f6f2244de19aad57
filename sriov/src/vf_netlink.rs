//! VF settings through rtnetlink: `RTM_SETLINK` on the PF with one `IFLA_VF_INFO`, and
//! `RTM_GETLINK` with `RTEXT_FILTER_VF` to read the PF's VF list. Messages come from
//! netlink-packet-route's `VfInfo*` types; nothing is hand-encoded.

use std::io;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac,
    VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState, VfVlan, VfVlanInfo,
    VlanProtocol,
};

use crate::error::SriovError;
use crate::netlink::{RouteSocket, ifindex};
use crate::vf_config::VfControl;
use crate::vf_settings::{LinkState, MacAddr, TxRate, VfSetting, VfState, VlanProto};

/// The running kernel's PF drivers, through rtnetlink (in the calling thread's namespace).
#[derive(Debug, Default)]
pub struct NetlinkVfControl;

fn to_io(e: SriovError) -> io::Error {
    match e.errno() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::other(e.to_string()),
    }
}

fn vf_info(index: u32, setting: VfSetting) -> VfInfo {
    match setting {
        VfSetting::Mac(mac) => VfInfo::Mac(VfInfoMac::new(index, &mac.0)),
        // 802.1Q through the classic attribute every driver knows; 802.1ad needs the list form,
        // which carries the protocol.
        VfSetting::Vlan(v) if v.proto == VlanProto::Dot1Q => {
            VfInfo::Vlan(VfInfoVlan::new(index, v.id.into(), v.qos.into()))
        }
        VfSetting::Vlan(v) => VfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
            index,
            v.id.into(),
            v.qos.into(),
            VlanProtocol::Ieee8021Ad,
        ))]),
        VfSetting::SpoofCheck(on) => VfInfo::SpoofCheck(VfInfoSpoofCheck::new(index, on)),
        VfSetting::Trust(on) => VfInfo::Trust(VfInfoTrust::new(index, on)),
        VfSetting::Rate(r) => VfInfo::Rate(VfInfoRate::new(index, r.min_mbps, r.max_mbps)),
        VfSetting::LinkState(l) => VfInfo::LinkState(VfInfoLinkState::new(
            index,
            match l {
                LinkState::Auto => VfLinkState::Auto,
                LinkState::Enable => VfLinkState::Enable,
                LinkState::Disable => VfLinkState::Disable,
            },
        )),
    }
}

/// A VF's state from its `IFLA_VF_INFO` attributes.
fn vf_state(info: &LinkVfInfo) -> Option<VfState> {
    let mut state = VfState::default();
    let mut index = None;
    for attr in &info.0 {
        match attr {
            VfInfo::Mac(m) => {
                index = Some(m.vf_id);
                let mac = MacAddr([m.mac[0], m.mac[1], m.mac[2], m.mac[3], m.mac[4], m.mac[5]]);
                state.mac = (mac.0 != [0; 6]).then_some(mac);
            }
            VfInfo::Vlan(v) => {
                state.vlan.id = u16::try_from(v.vlan_id).unwrap_or(u16::MAX);
                state.vlan.qos = u8::try_from(v.qos).unwrap_or(u8::MAX);
            }
            VfInfo::VlanList(list) => {
                for item in list {
                    if let VfVlan::Info(v) = item {
                        if v.protocol == VlanProtocol::Ieee8021Ad {
                            state.vlan.proto = VlanProto::Dot1Ad;
                        }
                    }
                }
            }
            VfInfo::SpoofCheck(s) => state.spoof_check = Some(s.enabled),
            VfInfo::Trust(t) => state.trust = Some(t.enabled),
            VfInfo::Rate(r) => {
                state.rate = TxRate {
                    min_mbps: r.min_tx_rate,
                    max_mbps: r.max_tx_rate,
                }
            }
            VfInfo::LinkState(l) => {
                state.link_state = match l.state {
                    VfLinkState::Auto => Some(LinkState::Auto),
                    VfLinkState::Enable => Some(LinkState::Enable),
                    VfLinkState::Disable => Some(LinkState::Disable),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    state.index = index?;
    Some(state)
}

impl VfControl for NetlinkVfControl {
    fn apply(&self, pf_netdev: &str, index: u32, setting: VfSetting) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex(pf_netdev).map_err(to_io)?;
        msg.attributes
            .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![vf_info(
                index, setting,
            )])]));
        let op = format!("set VF {index} {setting} on {pf_netdev}");
        RouteSocket::open()
            .and_then(|mut s| s.request(&op, RouteNetlinkMessage::SetLink(msg), false))
            .map(|_| ())
            .map_err(to_io)
    }

    fn read(&self, pf_netdev: &str) -> io::Result<Vec<VfState>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex(pf_netdev).map_err(to_io)?;
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
        let op = format!("read the VF list of {pf_netdev}");
        let replies = RouteSocket::open()
            .and_then(|mut s| s.request(&op, RouteNetlinkMessage::GetLink(msg), false))
            .map_err(to_io)?;
        let mut states = Vec::new();
        for reply in replies {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                for attr in link.attributes {
                    if let LinkAttribute::VfInfoList(list) = attr {
                        states.extend(list.iter().filter_map(vf_state));
                    }
                }
            }
        }
        states.sort_by_key(|s| s.index);
        Ok(states)
    }
}
