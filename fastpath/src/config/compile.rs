//! Validation of a `Config` and its compilation into a `Plan`.
//!
//! Everything that can be wrong with a configuration is found here, before anything is
//! published: the running plan is only replaced by a plan that compiled.

use std::sync::Arc;

use crate::config::plan::{
    CorePlan, Plan, PortId, PortPlan, VLAN_COUNT, VlanPlan, VlanSet, fdb_key,
};
use crate::control::messages::{AclAction, Config, MirrorDirection, RateLimit, VlanMode};
use crate::pipeline::acl::{Acl, AclError};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A reference to a port that is not defined.
    #[error(
        "{context} names port {name:?}, which is not defined; add it to [[ports]] or fix the name"
    )]
    UnknownPort {
        /// Where the name was used.
        context: String,
        /// The unknown name.
        name: String,
    },
    /// Two ports share a name.
    #[error("port {name:?} is defined twice; port names must be unique")]
    DuplicatePort {
        /// The name.
        name: String,
    },
    /// A VLAN id outside 1..=4094.
    #[error("{context}: VLAN {vlan} is out of range; use 1..=4094")]
    VlanOutOfRange {
        /// Where.
        context: String,
        /// The id.
        vlan: u16,
    },
    /// A trunk's native VLAN is not in its allowed list.
    #[error("port {port:?}: native VLAN {vlan} is not in its allowed list; add it to `allowed`")]
    NativeNotAllowed {
        /// Port.
        port: String,
        /// VLAN.
        vlan: u16,
    },
    /// An ACL list did not compile.
    #[error("port {port:?} acl_{direction}: {source}")]
    Acl {
        /// Port.
        port: String,
        /// "in" or "out".
        direction: &'static str,
        /// What is wrong.
        #[source]
        source: AclError,
    },
    /// A rate limit with no rate or a zero rate.
    #[error(
        "port {port:?} {direction}_limit: set bits_per_sec and/or packets_per_sec to a value above 0"
    )]
    BadRateLimit {
        /// Port.
        port: String,
        /// "rx" or "tx".
        direction: &'static str,
    },
    /// A port is polled by no core, or by two.
    #[error(
        "port {name:?} is listed by {count} cores; list every port under exactly one [[cores]]"
    )]
    PortCoreCount {
        /// Port.
        name: String,
        /// How many cores list it.
        count: usize,
    },
    /// A VLAN has member ports on two cores.
    #[error(
        "VLAN {vlan} has ports on CPU {cpu_a} and CPU {cpu_b}; each core is its own switch, so put a VLAN's ports on one core"
    )]
    VlanSpansCores {
        /// VLAN.
        vlan: u16,
        /// First CPU.
        cpu_a: u32,
        /// Second CPU.
        cpu_b: u32,
    },
    /// Two cores pinned to the same CPU.
    #[error("CPU {cpu} is listed by two [[cores]]; give each poll thread its own CPU")]
    DuplicateCpu {
        /// CPU.
        cpu: u32,
    },
    /// Mirror problems.
    #[error("mirror {name:?}: {why}")]
    Mirror {
        /// Mirror name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// Static MAC problems.
    #[error("static MAC {mac:?} VLAN {vlan}: {why}")]
    StaticMac {
        /// MAC text.
        mac: String,
        /// VLAN.
        vlan: u16,
        /// What is wrong.
        why: String,
    },
    /// FDB limits.
    #[error("fdb: {why}")]
    Fdb {
        /// What is wrong.
        why: String,
    },
    /// More ports than a `PortId` can index.
    #[error("{count} ports configured; at most {max} are supported")]
    TooManyPorts {
        /// Configured.
        count: usize,
        /// Limit.
        max: usize,
    },
}

fn check_vlan(context: &str, vlan: u16) -> Result<(), ConfigError> {
    if (1..=4094).contains(&vlan) {
        Ok(())
    } else {
        Err(ConfigError::VlanOutOfRange {
            context: context.to_string(),
            vlan,
        })
    }
}

fn check_limit(
    port: &str,
    direction: &'static str,
    l: &Option<RateLimit>,
) -> Result<(), ConfigError> {
    if let Some(l) = l {
        let bps = l.bits_per_sec.unwrap_or(0);
        let pps = l.packets_per_sec.unwrap_or(0);
        if (l.bits_per_sec.is_none() && l.packets_per_sec.is_none())
            || l.bits_per_sec == Some(0)
            || l.packets_per_sec == Some(0)
            || l.burst_ms == Some(0)
            || bps.max(pps) == 0
        {
            return Err(ConfigError::BadRateLimit {
                port: port.to_string(),
                direction,
            });
        }
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff` into the low 48 bits of a u64 (network order, first byte high).
pub fn parse_mac(text: &str) -> Option<u64> {
    let mut mac = 0u64;
    let mut n = 0;
    for part in text.split(':') {
        if part.len() != 2 {
            return None;
        }
        mac = (mac << 8) | u64::from(u8::from_str_radix(part, 16).ok()?);
        n += 1;
    }
    (n == 6).then_some(mac)
}

fn vlan_plan(port: &str, mode: &VlanMode) -> Result<VlanPlan, ConfigError> {
    let mut allowed = VlanSet::default();
    match mode {
        VlanMode::Access { vlan } => {
            check_vlan(&format!("port {port:?} access"), *vlan)?;
            allowed.insert(*vlan);
            Ok(VlanPlan {
                access: true,
                allowed,
                untagged: Some(*vlan),
            })
        }
        VlanMode::Trunk {
            allowed: list,
            native,
        } => {
            for v in list {
                check_vlan(&format!("port {port:?} trunk allowed"), *v)?;
                allowed.insert(*v);
            }
            if let Some(n) = native {
                check_vlan(&format!("port {port:?} trunk native"), *n)?;
                if !allowed.contains(*n) {
                    return Err(ConfigError::NativeNotAllowed {
                        port: port.to_string(),
                        vlan: *n,
                    });
                }
            }
            Ok(VlanPlan {
                access: false,
                allowed,
                untagged: *native,
            })
        }
    }
}

/// Validates `config` and builds the plan the data path runs.
pub fn compile(config: &Config) -> Result<Plan, ConfigError> {
    if config.ports.len() > usize::from(PortId::MAX) {
        return Err(ConfigError::TooManyPorts {
            count: config.ports.len(),
            max: usize::from(PortId::MAX),
        });
    }
    let index_of = |context: &str, name: &str| -> Result<PortId, ConfigError> {
        config
            .ports
            .iter()
            .position(|p| p.name == name)
            .and_then(|i| PortId::try_from(i).ok())
            .ok_or_else(|| ConfigError::UnknownPort {
                context: context.to_string(),
                name: name.to_string(),
            })
    };
    for (i, p) in config.ports.iter().enumerate() {
        if config.ports[..i].iter().any(|q| q.name == p.name) {
            return Err(ConfigError::DuplicatePort {
                name: p.name.clone(),
            });
        }
    }

    // Cores: every port on exactly one core.
    let mut core_of = vec![Vec::new(); config.ports.len()];
    let mut cores = Vec::with_capacity(config.cores.len());
    for (c, core) in config.cores.iter().enumerate() {
        if config.cores[..c].iter().any(|o| o.cpu == core.cpu) {
            return Err(ConfigError::DuplicateCpu { cpu: core.cpu });
        }
        let mut ports = Vec::with_capacity(core.ports.len());
        for name in &core.ports {
            let id = index_of(&format!("core on CPU {}", core.cpu), name)?;
            core_of[usize::from(id)].push(c);
            ports.push(id);
        }
        cores.push(CorePlan {
            cpu: core.cpu,
            ports,
            idle: core.idle,
            napi_threads: core.napi_threads,
            flow_offload: core.flow_offload,
        });
    }
    for (i, p) in config.ports.iter().enumerate() {
        if core_of[i].len() != 1 {
            return Err(ConfigError::PortCoreCount {
                name: p.name.clone(),
                count: core_of[i].len(),
            });
        }
    }

    let mut ports = Vec::with_capacity(config.ports.len());
    for (i, p) in config.ports.iter().enumerate() {
        let vlan = vlan_plan(&p.name, &p.vlan)?;
        let default = if p.guest_facing {
            AclAction::Deny
        } else {
            AclAction::Allow
        };
        let acl = |rules: &[_], direction| -> Result<Option<Arc<Acl>>, ConfigError> {
            if rules.is_empty() && !p.guest_facing {
                return Ok(None);
            }
            Acl::compile(rules, default)
                .map(|a| Some(Arc::new(a)))
                .map_err(|source| ConfigError::Acl {
                    port: p.name.clone(),
                    direction,
                    source,
                })
        };
        check_limit(&p.name, "rx", &p.rx_limit)?;
        check_limit(&p.name, "tx", &p.tx_limit)?;
        ports.push(PortPlan {
            name: p.name.clone(),
            core: core_of[i][0],
            vlan,
            acl_in: acl(&p.acl_in, "in")?,
            acl_out: acl(&p.acl_out, "out")?,
            rx_limit: p.rx_limit,
            tx_limit: p.tx_limit,
            mirror_rx: Vec::new(),
            mirror_tx: Vec::new(),
        });
    }

    // Flood lists, and the one-switch-per-core rule.
    let mut flood: Vec<Box<[PortId]>> = Vec::with_capacity(VLAN_COUNT);
    for vlan in 0..VLAN_COUNT as u16 {
        let members: Vec<PortId> = (0..ports.len())
            .filter(|&i| ports[i].vlan.allowed.contains(vlan))
            .filter_map(|i| PortId::try_from(i).ok())
            .collect();
        if let Some(first) = members.first() {
            let core_a = ports[usize::from(*first)].core;
            if let Some(other) = members
                .iter()
                .find(|m| ports[usize::from(**m)].core != core_a)
            {
                return Err(ConfigError::VlanSpansCores {
                    vlan,
                    cpu_a: cores[core_a].cpu,
                    cpu_b: cores[ports[usize::from(*other)].core].cpu,
                });
            }
        }
        flood.push(members.into_boxed_slice());
    }

    for (i, m) in config.mirrors.iter().enumerate() {
        let err = |why: &str| ConfigError::Mirror {
            name: m.name.clone(),
            why: why.to_string(),
        };
        if config.mirrors[..i].iter().any(|o| o.name == m.name) {
            return Err(err("defined twice; mirror names must be unique"));
        }
        let src = index_of(&format!("mirror {:?} source", m.name), &m.source)?;
        let dst = index_of(&format!("mirror {:?} destination", m.name), &m.destination)?;
        if src == dst {
            return Err(err("source and destination are the same port"));
        }
        if ports[usize::from(src)].core != ports[usize::from(dst)].core {
            return Err(err(
                "source and destination are polled by different cores; put them on one core",
            ));
        }
        let sp = &mut ports[usize::from(src)];
        if matches!(m.direction, MirrorDirection::Rx | MirrorDirection::Both) {
            if sp.mirror_rx.contains(&dst) {
                return Err(err("this source already mirrors rx to this destination"));
            }
            sp.mirror_rx.push(dst);
        }
        if matches!(m.direction, MirrorDirection::Tx | MirrorDirection::Both) {
            if sp.mirror_tx.contains(&dst) {
                return Err(err("this source already mirrors tx to this destination"));
            }
            sp.mirror_tx.push(dst);
        }
    }

    let mut static_macs = Vec::with_capacity(config.static_macs.len());
    for s in &config.static_macs {
        let err = |why: String| ConfigError::StaticMac {
            mac: s.mac.clone(),
            vlan: s.vlan,
            why,
        };
        let mac = parse_mac(&s.mac)
            .ok_or_else(|| err("malformed MAC; write aa:bb:cc:dd:ee:ff".into()))?;
        check_vlan(&format!("static MAC {}", s.mac), s.vlan)?;
        let port = index_of(&format!("static MAC {}", s.mac), &s.port)?;
        if !ports[usize::from(port)].vlan.allowed.contains(s.vlan) {
            return Err(err(format!("port {:?} is not in VLAN {}", s.port, s.vlan)));
        }
        if mac & (1 << 40) != 0 {
            return Err(err(
                "is a multicast address; static entries are for unicast MACs".into(),
            ));
        }
        let key = fdb_key(mac, s.vlan);
        if static_macs.iter().any(|(k, _)| *k == key) {
            return Err(err("is defined twice".into()));
        }
        static_macs.push((key, port));
    }
    if config.fdb.aging_secs == 0 || config.fdb.max_entries == 0 {
        return Err(ConfigError::Fdb {
            why: "aging_secs and max_entries must be above 0".into(),
        });
    }

    Ok(Plan {
        config: config.clone(),
        ports,
        cores,
        flood,
        static_macs,
        fdb: config.fdb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::messages::*;

    pub(crate) fn two_port_config() -> Config {
        let port = |name: &str| PortConfig {
            name: name.into(),
            backend: PortBackend::Memory,
            vlan: VlanMode::Access { vlan: 10 },
            guest_facing: false,
            acl_in: vec![],
            acl_out: vec![],
            rx_limit: None,
            tx_limit: None,
        };
        Config {
            ports: vec![port("a"), port("b")],
            cores: vec![CoreConfig {
                cpu: 0,
                ports: vec!["a".into(), "b".into()],
                idle: IdlePolicy::Spin,
                napi_threads: false,
                flow_offload: false,
            }],
            ..Config::default()
        }
    }

    #[test]
    fn valid_config_compiles_with_flood_lists() {
        let plan = compile(&two_port_config()).unwrap();
        assert_eq!(plan.flood_members(10), &[0, 1]);
        assert!(plan.flood_members(11).is_empty());
        assert!(plan.ports[0].acl_in.is_none());
    }

    #[test]
    fn unknown_port_is_rejected() {
        let mut c = two_port_config();
        c.mirrors.push(MirrorConfig {
            name: "m".into(),
            source: "a".into(),
            direction: MirrorDirection::Rx,
            destination: "nope".into(),
        });
        let e = compile(&c).unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownPort { name, .. } if name == "nope"),
            "{e}"
        );
    }

    #[test]
    fn vlan_above_4094_is_rejected() {
        let mut c = two_port_config();
        c.ports[1].vlan = VlanMode::Trunk {
            allowed: vec![10, 4095],
            native: None,
        };
        let e = compile(&c).unwrap_err();
        assert!(
            matches!(e, ConfigError::VlanOutOfRange { vlan: 4095, .. }),
            "{e}"
        );
    }

    #[test]
    fn duplicate_rule_ids_and_bad_prefix_are_rejected() {
        let mut c = two_port_config();
        let r = AclRule {
            id: 1,
            action: AclAction::Allow,
            src: None,
            dst: None,
            protocol: None,
            src_ports: None,
            dst_ports: None,
        };
        c.ports[0].acl_in = vec![r.clone(), r.clone()];
        let e = compile(&c).unwrap_err();
        assert!(e.to_string().contains("rule id 1 is used twice"), "{e}");
        c.ports[0].acl_in = vec![AclRule {
            src: Some("300.1.1.1".into()),
            ..r
        }];
        let e = compile(&c).unwrap_err();
        assert!(e.to_string().contains("malformed prefix"), "{e}");
    }

    #[test]
    fn guest_facing_port_without_rules_denies_by_default() {
        let mut c = two_port_config();
        c.ports[0].guest_facing = true;
        let plan = compile(&c).unwrap();
        let acl = plan.ports[0].acl_in.as_ref().unwrap();
        assert!(acl.is_empty());
        assert_eq!(acl.default_action(), AclAction::Deny);
    }

    #[test]
    fn vlan_spanning_two_cores_is_rejected() {
        let mut c = two_port_config();
        c.cores = vec![
            CoreConfig {
                cpu: 0,
                ports: vec!["a".into()],
                idle: IdlePolicy::Spin,
                napi_threads: false,
                flow_offload: false,
            },
            CoreConfig {
                cpu: 1,
                ports: vec!["b".into()],
                idle: IdlePolicy::Spin,
                napi_threads: false,
                flow_offload: false,
            },
        ];
        assert!(matches!(
            compile(&c),
            Err(ConfigError::VlanSpansCores { vlan: 10, .. })
        ));
    }

    #[test]
    fn port_on_no_core_is_rejected() {
        let mut c = two_port_config();
        c.cores[0].ports.pop();
        assert!(matches!(
            compile(&c),
            Err(ConfigError::PortCoreCount { count: 0, .. })
        ));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("02:00:00:00:01:ff"), Some(0x0200_0000_01ff));
        assert_eq!(parse_mac("02:00:00:00:01"), None);
        assert_eq!(parse_mac("02:00:00:00:01:zz"), None);
    }
}
