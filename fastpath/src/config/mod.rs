//! Configuration: loading the file, validating it and compiling it into a `Plan`.

pub mod compile;
pub mod plan;

use std::path::{Path, PathBuf};

use crate::control::messages::Config;

pub use compile::{ConfigError, compile};
pub use plan::{Plan, PortId};

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read config file {path}: check the path and permissions")]
    Read {
        /// File.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or schema error.
    #[error("config file {path} is not valid TOML for the fastpath schema (see docs/FASTPATH.md)")]
    Toml {
        /// File.
        path: PathBuf,
        /// Parser error with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// JSON syntax or schema error.
    #[error("config file {path} is not valid JSON for the fastpath schema (see docs/FASTPATH.md)")]
    Json {
        /// File.
        path: PathBuf,
        /// Parser error with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The content parsed but is not a valid configuration.
    #[error("config file {path} is invalid")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
}

/// Reads a configuration file (`.json` as JSON, anything else as TOML) and validates it.
pub fn load_file(path: &Path) -> Result<(Config, Plan), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config: Config = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|source| LoadError::Json {
            path: path.to_path_buf(),
            source,
        })?
    } else {
        toml::from_str(&text).map_err(|source| LoadError::Toml {
            path: path.to_path_buf(),
            source,
        })?
    };
    let plan = compile(&config).map_err(|source| LoadError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((config, plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::messages::{PortBackend, VlanMode};

    #[test]
    fn toml_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp.toml");
        std::fs::write(
            &path,
            r#"
[[ports]]
name = "up"
backend = { af_packet = { ifname = "eth0" } }
vlan = { trunk = { allowed = [10, 20], native = 10 } }

[[ports]]
name = "vm1"
backend = "memory"
vlan = { access = { vlan = 20 } }
guest_facing = true
rx_limit = { bits_per_sec = 1000000 }
acl_in = [ { id = 10, action = "allow", src = "10.0.0.0/8", protocol = 17, dst_ports = { lo = 53, hi = 53 } } ]

[[cores]]
cpu = 1
ports = ["up", "vm1"]
idle = "spin"

[[mirrors]]
name = "tap"
source = "vm1"
direction = "both"
destination = "up"

[fdb]
aging_secs = 60
"#,
        )
        .unwrap();
        let (config, plan) = load_file(&path).unwrap();
        assert_eq!(
            config.ports[0].backend,
            PortBackend::AfPacket {
                ifname: "eth0".into()
            }
        );
        assert_eq!(config.ports[1].vlan, VlanMode::Access { vlan: 20 });
        assert_eq!(config.fdb.aging_secs, 60);
        assert_eq!(config.fdb.max_entries, 65_536);
        assert_eq!(plan.ports[1].mirror_rx, vec![0]);
        assert_eq!(plan.ports[1].acl_in.as_ref().map(|a| a.len()), Some(1));
    }

    #[test]
    fn bad_file_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp.toml");
        std::fs::write(&path, "[[ports]]\nname = 3\n").unwrap();
        let e = load_file(&path).unwrap_err();
        assert!(matches!(e, LoadError::Toml { .. }), "{e}");
        let e = load_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");
    }
}
