//! hostd's configuration file (TOML, `/etc/hostd/hostd.toml`) and the `--sim` defaults.
//! docs/HOSTD.md shows an example.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cpulist;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read the hostd config {path}: check its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML for this config.
    #[error("the hostd config {path} is not valid: fix the field named below")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: toml::de::Error,
    },
    /// A core list does not parse.
    #[error("cores.{which} in the hostd config is not valid")]
    Cores {
        /// Which set.
        which: &'static str,
        /// Why.
        #[source]
        source: cpulist::CpuListError,
    },
    /// Inconsistent values.
    #[error("the hostd config is not valid: {what}")]
    Invalid {
        /// What and how to fix it.
        what: String,
    },
    /// `--sim` needs a home or data directory.
    #[error(
        "cannot find the user's data directory for --sim: set XDG_DATA_HOME or HOME, or pass --state-dir"
    )]
    NoDataDir,
}

/// The file's contents; every field has a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// State store, VM directories (disks, logs). Default `/var/lib/hostd`.
    pub state_dir: Option<PathBuf>,
    /// Sockets and VMM runtime files (tmpfs). Default `/run/hostd`.
    pub runtime_dir: Option<PathBuf>,
    /// The API socket. Default `<runtime_dir>/hostd.sock`.
    pub socket: Option<PathBuf>,
    /// Group owning the API socket (mode 0660): who may connect at all.
    pub socket_group: Option<String>,
    /// Members of this group are appliance admins (as root is).
    pub admin_group: Option<String>,
    /// The `hostd-vmm` binary. Default: beside the `hostd` executable.
    pub vmm_path: Option<PathBuf>,
    /// Core split.
    pub cores: CoresFile,
    /// Memory.
    pub memory: MemoryFile,
    /// HA policy.
    pub ha: HaFile,
    /// VMM start.
    pub vmm: VmmFile,
    /// SR-IOV VFs.
    pub sriov: SriovFile,
    /// The fast path (the fastpath process hostd starts and supervises).
    pub fastpath: FastpathFile,
}

/// `[cores]`: the split of the online CPUs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoresFile {
    /// For the host. Default: the first online core.
    pub housekeeping: Option<String>,
    /// For guests' vCPUs (dedicated, never shared). Default: every other online core.
    pub guest: Option<String>,
    /// For the fast path. Default: none.
    pub fastpath: Option<String>,
}

/// `[memory]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryFile {
    /// RAM kept for the host, MiB. Default 2048 (1024 with `--sim`).
    pub host_reserve_mib: Option<u64>,
}

/// `[ha]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaFile {
    /// Failures within the window after which an instance goes `down`. Default 3.
    pub max_failures: Option<u32>,
    /// The window, seconds. Default 600.
    pub window_s: Option<u64>,
    /// First restart delay, ms; doubled per failure. Default 1000.
    pub backoff_initial_ms: Option<u64>,
    /// Longest restart delay, ms. Default 60000.
    pub backoff_max_ms: Option<u64>,
}

/// `[vmm]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmmFile {
    /// How long a VMM may take to answer its control socket after spawn, ms. Default 15000.
    pub start_timeout_ms: Option<u64>,
}

/// `[sriov]`: how many VFs each PF has, and what a VF goes back to after its guest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SriovFile {
    /// What a VF goes back to once its guest's VMM is gone. Default `host-driver`.
    pub release: Option<VfRelease>,
    /// VF count per PF (by PCI address or port name), set when hostd starts if none of
    /// the PF's VFs is in use. PFs not named keep the VFs they have.
    pub num_vfs: BTreeMap<String, u32>,
}

/// `[fastpath]`: whether hostd runs the fastpath process, and with what.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastpathFile {
    /// Start and supervise fastpath. Default false.
    pub enabled: Option<bool>,
    /// The `fastpath` binary. Default: beside the `hostd` executable.
    pub binary: Option<PathBuf>,
    /// Its config file (TOML, or JSON when it ends in `.json`). Default
    /// `/etc/hostd/fastpath.toml` (`<state_dir>/fastpath.toml` with `--sim`).
    pub config: Option<PathBuf>,
    /// Its control socket. Default `<runtime_dir>/fastpath.sock`.
    pub control_socket: Option<PathBuf>,
    /// How long it may take to answer on its control socket after spawn, ms. Default 15000.
    pub start_timeout_ms: Option<u64>,
    /// How long it gets after SIGTERM before SIGKILL when hostd stops it, ms. Default 5000.
    pub stop_timeout_ms: Option<u64>,
}

/// Where a VF goes when its guest is done with it (its settings are restored either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VfRelease {
    /// Back to the driver it had before hostd took it (usually the VF's network driver,
    /// e.g. igbvf, so the host sees it as a NIC again; unbound if it had none).
    #[default]
    HostDriver,
    /// Stays on vfio-pci: no host netdev appears, and the next guest gets it without a
    /// rebind.
    VfioPci,
}

/// How hostd runs the fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastpathSettings {
    /// hostd starts and supervises it.
    pub enabled: bool,
    /// The binary.
    pub binary: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its control socket.
    pub control_socket: PathBuf,
    /// Start timeout (control socket answering), ms.
    pub start_timeout_ms: u64,
    /// SIGTERM to SIGKILL, ms.
    pub stop_timeout_ms: u64,
}

/// The HA policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaPolicy {
    /// Failures within the window that make an instance `down`.
    pub max_failures: u32,
    /// The window, ms.
    pub window_ms: u64,
    /// First restart delay, ms.
    pub backoff_initial_ms: u64,
    /// Longest restart delay, ms.
    pub backoff_max_ms: u64,
}

/// What the HA policy says after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Start again after `delay_ms`; this was failure `failures` within the window.
    After {
        /// The delay, ms.
        delay_ms: u64,
        /// Failures within the window, this one included.
        failures: u32,
    },
    /// Too many failures within the window: do not restart.
    GiveUp {
        /// Failures within the window, this one included.
        failures: u32,
    },
}

impl HaPolicy {
    /// Delay before restart number `failures` (1-based): doubled each time, capped.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(32);
        self.backoff_initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms)
    }

    /// Records a failure at `now_ms` in `failures` (the times of earlier ones; those out of
    /// the window are dropped) and says whether to restart. Guests with HA and the fast path
    /// both follow this.
    pub fn on_failure(&self, failures: &mut Vec<u64>, now_ms: u64) -> Restart {
        failures.retain(|t| now_ms.saturating_sub(*t) < self.window_ms);
        failures.push(now_ms);
        let count = failures.len() as u32;
        if count >= self.max_failures {
            Restart::GiveUp { failures: count }
        } else {
            Restart::After {
                delay_ms: self.backoff_ms(count),
                failures: count,
            }
        }
    }
}

/// The configuration hostd runs with, every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Simulated hardware.
    pub sim: bool,
    /// State store and VM directories.
    pub state_dir: PathBuf,
    /// VMM sockets, core locks, exit records.
    pub runtime_dir: PathBuf,
    /// API socket.
    pub socket: PathBuf,
    /// Group of the API socket.
    pub socket_group: Option<String>,
    /// Admin group.
    pub admin_group: Option<String>,
    /// The VMM binary.
    pub vmm_path: PathBuf,
    /// Housekeeping cores.
    pub housekeeping_cores: BTreeSet<u16>,
    /// Guest cores.
    pub guest_cores: BTreeSet<u16>,
    /// Fast-path cores.
    pub fastpath_cores: BTreeSet<u16>,
    /// RAM kept for the host, MiB.
    pub host_reserve_mib: u64,
    /// HA policy.
    pub ha: HaPolicy,
    /// VMM start timeout, ms.
    pub vmm_start_timeout_ms: u64,
    /// What a released VF goes back to.
    pub vf_release: VfRelease,
    /// VF count per PF (PCI address or port name) to set at start.
    pub num_vfs: BTreeMap<String, u32>,
    /// The fast path.
    pub fastpath: FastpathSettings,
}

/// Where the config file is by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hostd/hostd.toml";

/// The state directory of `hostd --sim`: `$XDG_DATA_HOME/hostd-sim`, usually
/// `~/.local/share/hostd-sim`.
pub fn sim_state_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("hostd-sim"))
}

impl ConfigFile {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Fills in the defaults. `online` is the set of online CPUs; `sim` selects the
    /// `--sim` layout (everything under the user's data directory unless given).
    pub fn resolve(self, sim: bool, online: &BTreeSet<u16>) -> Result<Config, ConfigError> {
        let state_dir = match (self.state_dir, sim) {
            (Some(dir), _) => dir,
            (None, true) => sim_state_dir().ok_or(ConfigError::NoDataDir)?,
            (None, false) => PathBuf::from("/var/lib/hostd"),
        };
        let runtime_dir = match (self.runtime_dir, sim) {
            (Some(dir), _) => dir,
            (None, true) => state_dir.join("run"),
            (None, false) => PathBuf::from("/run/hostd"),
        };
        let socket = match (self.socket, sim) {
            (Some(path), _) => path,
            (None, true) => state_dir.join("hostd.sock"),
            (None, false) => runtime_dir.join("hostd.sock"),
        };
        let parse = |which: &'static str, list: &Option<String>| {
            list.as_deref()
                .map(cpulist::parse)
                .transpose()
                .map_err(|source| ConfigError::Cores { which, source })
        };
        let first = online.iter().next().copied().unwrap_or(0);
        let housekeeping =
            parse("housekeeping", &self.cores.housekeeping)?.unwrap_or_else(|| [first].into());
        let fastpath = parse("fastpath", &self.cores.fastpath)?.unwrap_or_default();
        let guest = match parse("guest", &self.cores.guest)? {
            Some(guest) => guest,
            None => {
                let rest: BTreeSet<u16> = online
                    .iter()
                    .filter(|c| !housekeeping.contains(c) && !fastpath.contains(c))
                    .copied()
                    .collect();
                if rest.is_empty() && sim {
                    // A one-core machine: the demo guest shares the only core.
                    housekeeping.clone()
                } else {
                    rest
                }
            }
        };
        if let Some(core) = guest.intersection(&fastpath).next() {
            return Err(ConfigError::Invalid {
                what: format!(
                    "core {core} is in both cores.guest and cores.fastpath: a core has one role"
                ),
            });
        }
        if !sim {
            if let Some(core) = guest.intersection(&housekeeping).next() {
                return Err(ConfigError::Invalid {
                    what: format!(
                        "core {core} is in both cores.guest and cores.housekeeping: guest \
                         cores are dedicated"
                    ),
                });
            }
        }
        let vmm_path = self.vmm_path.unwrap_or_else(|| beside_hostd("hostd-vmm"));
        let fastpath_settings = FastpathSettings {
            enabled: self.fastpath.enabled.unwrap_or(false),
            binary: self
                .fastpath
                .binary
                .unwrap_or_else(|| beside_hostd("fastpath")),
            config: self.fastpath.config.unwrap_or_else(|| {
                if sim {
                    state_dir.join("fastpath.toml")
                } else {
                    PathBuf::from("/etc/hostd/fastpath.toml")
                }
            }),
            control_socket: self
                .fastpath
                .control_socket
                .unwrap_or_else(|| runtime_dir.join("fastpath.sock")),
            start_timeout_ms: self.fastpath.start_timeout_ms.unwrap_or(15_000),
            stop_timeout_ms: self.fastpath.stop_timeout_ms.unwrap_or(5_000),
        };
        let defaults = HaPolicy {
            max_failures: 3,
            window_ms: 600_000,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
        };
        let ha = HaPolicy {
            max_failures: self.ha.max_failures.unwrap_or(defaults.max_failures).max(1),
            window_ms: self
                .ha
                .window_s
                .map_or(defaults.window_ms, |s| s.saturating_mul(1000)),
            backoff_initial_ms: self
                .ha
                .backoff_initial_ms
                .unwrap_or(defaults.backoff_initial_ms),
            backoff_max_ms: self.ha.backoff_max_ms.unwrap_or(defaults.backoff_max_ms),
        };
        Ok(Config {
            sim,
            state_dir,
            runtime_dir,
            socket,
            socket_group: self.socket_group,
            admin_group: self.admin_group,
            vmm_path,
            housekeeping_cores: housekeeping,
            guest_cores: guest,
            fastpath_cores: fastpath,
            host_reserve_mib: self
                .memory
                .host_reserve_mib
                .unwrap_or(if sim { 1024 } else { 2048 }),
            ha,
            vmm_start_timeout_ms: self.vmm.start_timeout_ms.unwrap_or(15_000),
            vf_release: self.sriov.release.unwrap_or_default(),
            num_vfs: self.sriov.num_vfs,
            fastpath: fastpath_settings,
        })
    }
}

/// The binary `name` (`hostd-vmm`, `fastpath`) beside the running executable (cargo puts
/// the workspace's binaries in one directory; the appliance image installs them together).
/// Test executables live one level deeper (`target/debug/deps`), so the parent is tried too.
fn beside_hostd(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(Path::parent);
    if let Some(dir) = dir {
        for candidate in [dir.join(name), dir.join("..").join(name)] {
            if candidate.exists() {
                return candidate;
            }
        }
        return dir.join(name);
    }
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(n: u16) -> BTreeSet<u16> {
        (0..n).collect()
    }

    #[test]
    fn defaults_split_housekeeping_from_guest_cores() {
        let config = ConfigFile::default().resolve(false, &online(8)).unwrap();
        assert_eq!(config.housekeeping_cores, [0].into());
        assert_eq!(config.guest_cores, (1..8).collect());
        assert!(config.fastpath_cores.is_empty());
        assert_eq!(config.socket, PathBuf::from("/run/hostd/hostd.sock"));
        assert_eq!(config.ha.backoff_ms(1), 1000);
        assert_eq!(config.ha.backoff_ms(3), 4000);
        assert_eq!(config.ha.backoff_ms(30), 60_000);
    }

    #[test]
    fn overlapping_sets_and_typos_are_refused() {
        let file: ConfigFile =
            toml::from_str("[cores]\nhousekeeping = \"0\"\nguest = \"1-3\"\nfastpath = \"3\"\n")
                .unwrap();
        let err = file.resolve(false, &online(4)).unwrap_err().to_string();
        assert!(err.contains("core 3 is in both"), "{err}");
        assert!(toml::from_str::<ConfigFile>("[cores]\nguests = \"1\"\n").is_err());
    }

    #[test]
    fn sriov_counts_and_the_release_policy_are_read() {
        let file: ConfigFile = toml::from_str(
            "[sriov]\nrelease = \"vfio-pci\"\n[sriov.num_vfs]\n\"0000:01:00.0\" = 2\neth1 = 4\n",
        )
        .unwrap();
        let config = file.resolve(false, &online(4)).unwrap();
        assert_eq!(config.vf_release, VfRelease::VfioPci);
        assert_eq!(config.num_vfs["0000:01:00.0"], 2);
        assert_eq!(config.num_vfs["eth1"], 4);
        let default = ConfigFile::default().resolve(false, &online(4)).unwrap();
        assert_eq!(default.vf_release, VfRelease::HostDriver);
        assert!(default.num_vfs.is_empty());
        assert!(toml::from_str::<ConfigFile>("[sriov]\nrelease = \"igbvf\"\n").is_err());
        assert!(toml::from_str::<ConfigFile>("[sriov]\nnumvfs = {}\n").is_err());
    }

    #[test]
    fn the_fast_path_is_off_by_default_and_its_section_is_read() {
        let default = ConfigFile::default().resolve(false, &online(4)).unwrap();
        assert!(!default.fastpath.enabled);
        assert_eq!(
            default.fastpath.config,
            PathBuf::from("/etc/hostd/fastpath.toml")
        );
        assert_eq!(
            default.fastpath.control_socket,
            PathBuf::from("/run/hostd/fastpath.sock")
        );
        assert!(default.fastpath.binary.ends_with("fastpath"));
        let file: ConfigFile = toml::from_str(
            "[fastpath]\nenabled = true\nbinary = \"/usr/bin/fastpath\"\nconfig = \"/x/fp.toml\"\n\
             control_socket = \"/x/fp.sock\"\nstart_timeout_ms = 100\nstop_timeout_ms = 200\n",
        )
        .unwrap();
        let config = file.resolve(false, &online(4)).unwrap();
        assert_eq!(
            config.fastpath,
            FastpathSettings {
                enabled: true,
                binary: "/usr/bin/fastpath".into(),
                config: "/x/fp.toml".into(),
                control_socket: "/x/fp.sock".into(),
                start_timeout_ms: 100,
                stop_timeout_ms: 200,
            }
        );
        assert!(toml::from_str::<ConfigFile>("[fastpath]\nenable = true\n").is_err());
    }

    #[test]
    fn the_restart_policy_backs_off_then_gives_up_within_its_window() {
        let policy = ConfigFile::default().resolve(false, &online(4)).unwrap().ha;
        let mut failures = vec![];
        assert_eq!(
            policy.on_failure(&mut failures, 1_000),
            Restart::After {
                delay_ms: 1000,
                failures: 1
            }
        );
        assert_eq!(
            policy.on_failure(&mut failures, 2_000),
            Restart::After {
                delay_ms: 2000,
                failures: 2
            }
        );
        // The first failure left the 600 s window: two count, not three.
        assert_eq!(
            policy.on_failure(&mut failures, 601_500),
            Restart::After {
                delay_ms: 2000,
                failures: 2
            }
        );
        assert_eq!(
            policy.on_failure(&mut failures, 601_900),
            Restart::GiveUp { failures: 3 }
        );
    }

    #[test]
    fn sim_on_one_core_shares_it_with_the_guest() {
        let file = ConfigFile {
            state_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let config = file.resolve(true, &online(1)).unwrap();
        assert_eq!(config.guest_cores, [0].into());
        assert_eq!(config.socket, PathBuf::from("/tmp/x/hostd.sock"));
        assert_eq!(config.runtime_dir, PathBuf::from("/tmp/x/run"));
    }
}
