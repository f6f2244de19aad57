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
use crate::netlink::{RouteSocket, RouteTransport, ifindex};
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

/// The `RTM_SETLINK` request that applies one setting to VF `index` of the PF `ifindex`.
pub(crate) fn set_vf_request(ifindex: u32, index: u32, setting: VfSetting) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![vf_info(
            index, setting,
        )])]));
    RouteNetlinkMessage::SetLink(msg)
}

/// The `RTM_GETLINK` request for the PF `ifindex` with its VF list (`RTEXT_FILTER_VF`).
pub(crate) fn get_vfs_request(ifindex: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
    RouteNetlinkMessage::GetLink(msg)
}

/// The VF states in a `RTM_GETLINK` reply, sorted by index.
pub(crate) fn vf_states(replies: Vec<RouteNetlinkMessage>) -> Vec<VfState> {
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
    states
}

/// Applies one setting through `transport`.
pub(crate) fn apply_via(
    transport: &mut dyn RouteTransport,
    pf_netdev: &str,
    ifindex: u32,
    index: u32,
    setting: VfSetting,
) -> Result<(), SriovError> {
    let op = format!("set VF {index} {setting} on {pf_netdev}");
    transport
        .request(&op, set_vf_request(ifindex, index, setting), false)
        .map(|_| ())
}

/// Reads the PF's VF list through `transport`.
pub(crate) fn read_via(
    transport: &mut dyn RouteTransport,
    pf_netdev: &str,
    ifindex: u32,
) -> Result<Vec<VfState>, SriovError> {
    let op = format!("read the VF list of {pf_netdev}");
    Ok(vf_states(transport.request(
        &op,
        get_vfs_request(ifindex),
        false,
    )?))
}

impl VfControl for NetlinkVfControl {
    fn apply(&self, pf_netdev: &str, index: u32, setting: VfSetting) -> io::Result<()> {
        let ifindex = ifindex(pf_netdev).map_err(to_io)?;
        let mut socket = RouteSocket::open().map_err(to_io)?;
        apply_via(&mut socket, pf_netdev, ifindex, index, setting).map_err(to_io)
    }

    fn read(&self, pf_netdev: &str) -> io::Result<Vec<VfState>> {
        let ifindex = ifindex(pf_netdev).map_err(to_io)?;
        let mut socket = RouteSocket::open().map_err(to_io)?;
        read_via(&mut socket, pf_netdev, ifindex).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vf_settings::{TxRate, VfVlan};
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};

    /// Records requests and answers with canned replies.
    #[derive(Default)]
    struct Recorder {
        sent: Vec<RouteNetlinkMessage>,
        replies: Vec<RouteNetlinkMessage>,
    }

    impl RouteTransport for Recorder {
        fn request(
            &mut self,
            _: &str,
            message: RouteNetlinkMessage,
            _: bool,
        ) -> Result<Vec<RouteNetlinkMessage>, SriovError> {
            self.sent.push(message);
            Ok(std::mem::take(&mut self.replies))
        }
    }

    /// The bytes the kernel would receive.
    fn wire(message: RouteNetlinkMessage) -> Vec<u8> {
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    fn le32(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A netlink attribute: u16 length (header included), u16 type, payload.
    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 4) as u16).to_le_bytes().to_vec();
        out.extend(kind.to_le_bytes());
        out.extend(payload);
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn an_802_1q_vlan_is_ifla_vf_vlan_inside_vf_info_inside_the_vf_list() {
        let bytes = wire(set_vf_request(
            7,
            3,
            VfSetting::Vlan(VfVlan::new(100, 3, VlanProto::Dot1Q).unwrap()),
        ));
        // RTM_SETLINK = 19; ifinfomsg.ifi_index = 7.
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 19);
        assert_eq!(&bytes[16 + 4..16 + 8], &7i32.to_le_bytes());
        // IFLA_VFINFO_LIST (22) > IFLA_VF_INFO (1) > IFLA_VF_VLAN (2) {vf 3, vlan 100, qos 3}.
        let vlan = nla(2, &le32(&[3, 100, 3]));
        let info = nla(1, &vlan);
        assert!(contains(&bytes, &nla(22, &info)), "{bytes:02x?}");
    }

    #[test]
    fn an_802_1ad_vlan_carries_its_protocol_in_the_vlan_list() {
        let bytes = wire(set_vf_request(
            7,
            0,
            VfSetting::Vlan(VfVlan::new(10, 0, VlanProto::Dot1Ad).unwrap()),
        ));
        // IFLA_VF_VLAN_LIST (12) > IFLA_VF_VLAN_INFO (1) {vf 0, vlan 10, qos 0, proto 0x88a8 BE, pad}.
        let mut info = le32(&[0, 10, 0]);
        info.extend([0x88, 0xa8, 0, 0]);
        assert!(contains(&bytes, &nla(12, &nla(1, &info))), "{bytes:02x?}");
    }

    #[test]
    fn mac_rate_spoofchk_trust_and_link_state_use_their_attributes() {
        let mac = wire(set_vf_request(
            7,
            2,
            VfSetting::Mac("02:00:00:00:10:01".parse().unwrap()),
        ));
        let mut payload = le32(&[2]);
        payload.extend([2, 0, 0, 0, 0x10, 1]);
        payload.extend([0; 26]);
        assert!(contains(&mac, &nla(1, &payload)), "IFLA_VF_MAC: {mac:02x?}");
        let rate = wire(set_vf_request(
            7,
            2,
            VfSetting::Rate(TxRate::new(0, 250).unwrap()),
        ));
        assert!(
            contains(&rate, &nla(6, &le32(&[2, 0, 250]))),
            "IFLA_VF_RATE"
        );
        let spoof = wire(set_vf_request(7, 2, VfSetting::SpoofCheck(false)));
        assert!(
            contains(&spoof, &nla(4, &le32(&[2, 0]))),
            "IFLA_VF_SPOOFCHK"
        );
        let trust = wire(set_vf_request(7, 2, VfSetting::Trust(true)));
        assert!(contains(&trust, &nla(9, &le32(&[2, 1]))), "IFLA_VF_TRUST");
        let state = wire(set_vf_request(
            7,
            2,
            VfSetting::LinkState(LinkState::Disable),
        ));
        assert!(
            contains(&state, &nla(5, &le32(&[2, 2]))),
            "IFLA_VF_LINK_STATE"
        );
    }

    #[test]
    fn the_vf_dump_asks_for_rtext_filter_vf() {
        let bytes = wire(get_vfs_request(9));
        // RTM_GETLINK = 18; IFLA_EXT_MASK (29) = RTEXT_FILTER_VF (1).
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 18);
        assert!(contains(&bytes, &nla(29, &le32(&[1]))), "{bytes:02x?}");
    }

    #[test]
    fn one_request_per_setting_and_the_reply_is_parsed() {
        let mut link = LinkMessage::default();
        let vf = |id: u32, vlan: u32| {
            LinkVfInfo(vec![
                VfInfo::Mac(VfInfoMac::new(id, &[2, 0, 0, 0, 0, id as u8])),
                VfInfo::Vlan(VfInfoVlan::new(id, vlan, 1)),
                VfInfo::SpoofCheck(VfInfoSpoofCheck::new(id, true)),
                VfInfo::Trust(VfInfoTrust::new(id, false)),
                VfInfo::Rate(VfInfoRate::new(id, 0, 100)),
                VfInfo::LinkState(VfInfoLinkState::new(id, VfLinkState::Auto)),
            ])
        };
        link.attributes
            .push(LinkAttribute::VfInfoList(vec![vf(1, 20), vf(0, 10)]));
        let mut t = Recorder {
            replies: vec![RouteNetlinkMessage::NewLink(link)],
            ..Default::default()
        };
        let states = read_via(&mut t, "eth0", 4).unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].index, 0);
        assert_eq!(states[1].mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!((states[1].vlan.id, states[1].vlan.qos), (20, 1));
        assert_eq!(
            (
                states[1].spoof_check,
                states[1].trust,
                states[1].rate.max_mbps
            ),
            (Some(true), Some(false), 100)
        );
        assert_eq!(states[1].link_state, Some(LinkState::Auto));

        apply_via(&mut t, "eth0", 4, 1, VfSetting::Trust(true)).unwrap();
        assert_eq!(t.sent.len(), 2);
        assert!(
            matches!(&t.sent[1], RouteNetlinkMessage::SetLink(m) if m.header.index == 4 && m.attributes.len() == 1)
        );
    }
}
