//! What can be set on a VF through its PF (MAC, VLAN with QoS and protocol, spoof check,
//! trust, TX rate limits, link state), with every value checked before any I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

/// A malformed or unusable setting, refused before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not `xx:xx:xx:xx:xx:xx`.
    #[error("`{0}` is not a MAC address: expected six hex bytes like 02:00:00:00:00:01")]
    MacSyntax(String),
    /// Multicast or all zeros: a VF needs a unicast address.
    #[error("{0} is not a unicast MAC address (the first byte must be even, and not all zeros)")]
    MacNotUnicast(MacAddr),
    /// VLAN id outside 1..=4094.
    #[error("VLAN {0} is out of range: use 1 to 4094 (0 and 4095 are reserved)")]
    VlanRange(u32),
    /// 802.1p priority outside 0..=7.
    #[error("VLAN QoS {0} is out of range: use 0 to 7")]
    QosRange(u32),
    /// Minimum rate above maximum.
    #[error("TX rate minimum {min} Mbit/s is above the maximum {max} Mbit/s")]
    RateOrder {
        /// Minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
}

impl MacAddr {
    /// True for a unicast, non-zero address.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = SettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SettingError::MacSyntax(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = SettingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The VLAN tag protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VlanProto {
    /// 802.1Q (C-tag).
    #[default]
    #[serde(rename = "802.1q")]
    Dot1Q,
    /// 802.1ad (S-tag, QinQ).
    #[serde(rename = "802.1ad")]
    Dot1Ad,
}

/// A VF's port VLAN: frames leave tagged with it; `id` 0 means untagged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfVlan {
    /// VLAN id, 0 (none) or 1..=4094.
    pub id: u16,
    /// 802.1p priority, 0..=7.
    pub qos: u8,
    /// Tag protocol.
    pub proto: VlanProto,
}

impl VfVlan {
    /// A checked VLAN setting.
    pub fn new(id: u32, qos: u32, proto: VlanProto) -> Result<Self, SettingError> {
        if id > 4094 {
            return Err(SettingError::VlanRange(id));
        }
        if qos > 7 {
            return Err(SettingError::QosRange(qos));
        }
        Ok(Self {
            id: id as u16,
            qos: qos as u8,
            proto,
        })
    }
}

/// TX rate limits in Mbit/s; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRate {
    /// Guaranteed minimum.
    pub min_mbps: u32,
    /// Ceiling.
    pub max_mbps: u32,
}

impl TxRate {
    /// Checked limits: the minimum may not exceed a non-zero maximum.
    pub fn new(min_mbps: u32, max_mbps: u32) -> Result<Self, SettingError> {
        if max_mbps != 0 && min_mbps > max_mbps {
            return Err(SettingError::RateOrder {
                min: min_mbps,
                max: max_mbps,
            });
        }
        Ok(Self { min_mbps, max_mbps })
    }
}

/// Whether the VF's link follows the PF's, or is forced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Follows the PF.
    #[default]
    Auto,
    /// Always up.
    Enable,
    /// Always down.
    Disable,
}

/// What to change on a VF; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfSettings {
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// Port VLAN.
    pub vlan: Option<VfVlan>,
    /// Drop frames whose source MAC is not the VF's.
    pub spoof_check: Option<bool>,
    /// Let the VF change its MAC and enter promiscuous mode.
    pub trust: Option<bool>,
    /// TX rate limits.
    pub rate: Option<TxRate>,
    /// Link state.
    pub link_state: Option<LinkState>,
}

impl VfSettings {
    /// Checks what `new` cannot (a MAC parsed from bytes).
    pub fn validate(&self) -> Result<(), SettingError> {
        if let Some(mac) = self.mac {
            if !mac.is_unicast() {
                return Err(SettingError::MacNotUnicast(mac));
            }
        }
        if let Some(v) = self.vlan {
            VfVlan::new(v.id.into(), v.qos.into(), v.proto)?;
        }
        if let Some(r) = self.rate {
            TxRate::new(r.min_mbps, r.max_mbps)?;
        }
        Ok(())
    }
}

/// One setting, as applied and reported on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfSetting {
    /// MAC address.
    Mac(MacAddr),
    /// Port VLAN.
    Vlan(VfVlan),
    /// Spoof check.
    SpoofCheck(bool),
    /// Trust.
    Trust(bool),
    /// TX rates.
    Rate(TxRate),
    /// Link state.
    LinkState(LinkState),
}

impl VfSetting {
    /// The setting's name, as the operator knows it (`ip link set ... vf N <name>`).
    pub fn name(&self) -> &'static str {
        match self {
            VfSetting::Mac(_) => "mac",
            VfSetting::Vlan(v) if v.proto == VlanProto::Dot1Ad => "vlan (802.1ad)",
            VfSetting::Vlan(_) => "vlan",
            VfSetting::SpoofCheck(_) => "spoofchk",
            VfSetting::Trust(_) => "trust",
            VfSetting::Rate(r) if r.min_mbps != 0 => "min_tx_rate",
            VfSetting::Rate(_) => "max_tx_rate",
            VfSetting::LinkState(_) => "state",
        }
    }

    /// Whether `state` shows this setting applied.
    pub fn applied_in(&self, state: &VfState) -> bool {
        match *self {
            VfSetting::Mac(m) => state.mac == Some(m),
            VfSetting::Vlan(v) => {
                state.vlan.id == v.id && state.vlan.qos == v.qos && state.vlan.proto == v.proto
            }
            VfSetting::SpoofCheck(on) => state.spoof_check == Some(on),
            VfSetting::Trust(on) => state.trust == Some(on),
            VfSetting::Rate(r) => state.rate == r,
            VfSetting::LinkState(l) => state.link_state == Some(l),
        }
    }
}

impl fmt::Display for VfSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfSetting::Mac(m) => write!(f, "mac {m}"),
            VfSetting::Vlan(v) => write!(f, "vlan {} qos {} proto {:?}", v.id, v.qos, v.proto),
            VfSetting::SpoofCheck(on) => write!(f, "spoofchk {}", if *on { "on" } else { "off" }),
            VfSetting::Trust(on) => write!(f, "trust {}", if *on { "on" } else { "off" }),
            VfSetting::Rate(r) => {
                write!(f, "min_tx_rate {} max_tx_rate {}", r.min_mbps, r.max_mbps)
            }
            VfSetting::LinkState(l) => write!(f, "state {l:?}"),
        }
    }
}

impl VfSettings {
    /// The settings to apply, one by one, in a fixed order.
    pub fn each(&self) -> Vec<VfSetting> {
        let mut out = Vec::new();
        out.extend(self.mac.map(VfSetting::Mac));
        out.extend(self.vlan.map(VfSetting::Vlan));
        out.extend(self.spoof_check.map(VfSetting::SpoofCheck));
        out.extend(self.trust.map(VfSetting::Trust));
        out.extend(self.rate.map(VfSetting::Rate));
        out.extend(self.link_state.map(VfSetting::LinkState));
        out
    }
}

/// A VF's settings as the PF's driver reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfState {
    /// VF index.
    pub index: u32,
    /// MAC address (`None` when the driver reports none).
    pub mac: Option<MacAddr>,
    /// Port VLAN (id 0: none).
    pub vlan: VfVlan,
    /// Spoof check, when reported.
    pub spoof_check: Option<bool>,
    /// Trust, when reported.
    pub trust: Option<bool>,
    /// TX rates.
    pub rate: TxRate,
    /// Link state, when reported.
    pub link_state: Option<LinkState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_must_be_unicast() {
        let m: MacAddr = "02:00:0A:0b:0c:0d".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:0b:0c:0d");
        assert!(m.is_unicast());
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-01",
            "0g:00:00:00:00:01",
            "2:00:00:00:00:01",
            "",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(SettingError::MacSyntax(bad.into())),
                "{bad}"
            );
        }
        let multicast = VfSettings {
            mac: Some("01:00:5e:00:00:01".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            multicast.validate(),
            Err(SettingError::MacNotUnicast(_))
        ));
        let zero = VfSettings {
            mac: Some(MacAddr([0; 6])),
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn vlan_qos_and_rates_are_range_checked() {
        assert_eq!(
            VfVlan::new(4095, 0, VlanProto::Dot1Q),
            Err(SettingError::VlanRange(4095))
        );
        assert_eq!(
            VfVlan::new(100, 8, VlanProto::Dot1Q),
            Err(SettingError::QosRange(8))
        );
        assert!(VfVlan::new(4094, 7, VlanProto::Dot1Ad).is_ok());
        assert_eq!(
            TxRate::new(200, 100),
            Err(SettingError::RateOrder { min: 200, max: 100 })
        );
        assert!(TxRate::new(200, 0).is_ok(), "no ceiling");
        let sneaky = VfSettings {
            vlan: Some(VfVlan {
                id: 5000,
                qos: 0,
                proto: VlanProto::Dot1Q,
            }),
            ..Default::default()
        };
        assert_eq!(sneaky.validate(), Err(SettingError::VlanRange(5000)));
        assert_eq!(
            SettingError::VlanRange(4095).to_string(),
            "VLAN 4095 is out of range: use 1 to 4094 (0 and 4095 are reserved)"
        );
    }

    #[test]
    fn settings_apply_one_by_one_with_names() {
        let s = VfSettings {
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            link_state: Some(LinkState::Disable),
            rate: Some(TxRate {
                min_mbps: 0,
                max_mbps: 100,
            }),
            ..Default::default()
        };
        let names: Vec<&str> = s.each().iter().map(|x| x.name()).collect();
        assert_eq!(names, ["mac", "max_tx_rate", "state"]);
    }

    #[test]
    fn serde_uses_operator_words() {
        let v = VfVlan {
            id: 10,
            qos: 3,
            proto: VlanProto::Dot1Ad,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"id":10,"qos":3,"proto":"802.1ad"}"#
        );
        let bad: Result<MacAddr, _> = serde_json::from_str("\"nonsense\"");
        assert!(bad.is_err());
    }
}
