//! The VM configuration file (TOML) that `hostd-vmm --config <file>` runs from.
//! hostd writes one per VM; tests and benchmarks write their own. docs/VMM.md shows an example.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or checking a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the VM config {path}: check the path and its permissions")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a VM config.
    #[error("the VM config {path} is not valid: fix the field named below")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with the line.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("the VM config is not valid: {what}")]
    Invalid {
        /// What is wrong and what to change.
        what: String,
    },
}

/// One virtual machine, as the VMM process runs it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Name used in logs and status.
    pub name: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Back guest RAM with hugetlbfs pages (the host's default huge page size) reserved
    /// beforehand in `/proc/sys/vm/nr_hugepages`.
    #[serde(default)]
    pub hugepages: bool,
    /// One vCPU per entry: vCPU `i` runs pinned to host core `vcpu_cores[i]`, which no other
    /// VM may use.
    pub vcpu_cores: Vec<usize>,
    /// Host cores for the VMM's other threads (control loop). Default: the cores this process
    /// may run on that are not vCPU cores, or all of them if there are no others.
    #[serde(default)]
    pub housekeeping_cores: Vec<usize>,
    /// Directory holding the per-core lock files (`<runtime_dir>/cores/<core>.lock`).
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// Unix socket the VMM listens on for control requests (created; removed on exit).
    pub control_socket: PathBuf,
    /// What to boot.
    pub kernel: KernelConfig,
    /// Where the serial console goes.
    pub console: ConsoleConfig,
    /// The virtio block device, if any.
    #[serde(default)]
    pub disk: Option<DiskConfig>,
    /// Host PCI functions (SR-IOV VFs) passed through to the guest with VFIO, `[[vfio]]` in
    /// the file. Each must already be bound to vfio-pci; the VMM resets it when the VM stops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfio: Vec<VfioConfig>,
    /// How long a graceful stop (power button) may take before the VM is stopped by force.
    #[serde(default = "default_graceful_timeout_ms")]
    pub graceful_stop_timeout_ms: u64,
    /// File the process writes its exit code and reason to just before it exits, for a
    /// supervisor that is not its parent (hostd after a restart re-adopts VMMs it cannot
    /// `wait` for). Two lines: the code, then the reason.
    #[serde(default)]
    pub exit_record: Option<PathBuf>,
}

/// The guest kernel: a Linux bzImage, or an ELF with a PVH entry note (Linux vmlinux, probe).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Kernel file; its format is detected from its contents.
    pub path: PathBuf,
    /// Initial RAM disk (Linux), passed as boot params ramdisk or PVH module 0.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line. The VMM appends the virtio-mmio device when a disk is configured.
    #[serde(default)]
    pub cmdline: String,
}

/// The serial console (COM1) outputs and input.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Console log file (created or appended to).
    pub log: PathBuf,
    /// Size cap of the log: past it the file is moved to `<log>.old` and a new one started,
    /// so at most twice this is kept on disk.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Unix socket a console client (hostd, a test) connects to: it receives the output and its
    /// input goes to the guest. One client at a time; a new one replaces the previous.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Also copy the output to this process's standard output (benchmarks).
    #[serde(default)]
    pub stdout: bool,
}

/// The virtio block device backed by a raw image.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw disk image.
    pub path: PathBuf,
    /// Present the disk read-only (the image is then opened read-only).
    #[serde(default)]
    pub read_only: bool,
}

/// A host PCI function passed through to the guest (docs/VMM.md "VF passthrough").
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VfioConfig {
    /// The function: its PCI address (`0000:01:10.0`, or `01:10.0` for domain 0) or its sysfs
    /// directory (`/sys/bus/pci/devices/0000:01:10.0`). It must be bound to vfio-pci.
    pub device: String,
    /// Guest slot: the device number on the guest's bus 0, 1..=31. Default: the lowest free
    /// slot, in the order of the entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
}

fn default_runtime_dir() -> PathBuf {
    PathBuf::from("/run/hostd-vmm")
}

fn default_graceful_timeout_ms() -> u64 {
    10_000
}

fn default_log_max_bytes() -> u64 {
    1 << 20
}

/// Most vCPUs a VM may have: the MADT local APIC entries carry 8-bit APIC ids.
pub const MAX_VCPUS: usize = 254;

impl VmConfig {
    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| Err(ConfigError::Invalid { what });
        if self.vcpu_cores.is_empty() {
            return invalid("vcpu_cores is empty: give one host core per vCPU".into());
        }
        if self.vcpu_cores.len() > MAX_VCPUS {
            return invalid(format!(
                "{} vCPUs asked, at most {MAX_VCPUS} are supported",
                self.vcpu_cores.len()
            ));
        }
        let mut sorted = self.vcpu_cores.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return invalid(format!(
                "host core {} is listed twice in vcpu_cores: each vCPU needs its own core",
                pair[0]
            ));
        }
        let min_mib = crate::layout::MIN_RAM_BYTES >> 20;
        if self.memory_mib < min_mib {
            return invalid(format!(
                "memory_mib = {} is below the minimum {min_mib}",
                self.memory_mib
            ));
        }
        // Keeps the byte count and the 4 GiB split far from overflow.
        if self.memory_mib > (1 << 30) {
            return invalid(format!(
                "memory_mib = {} is not a plausible size",
                self.memory_mib
            ));
        }
        if self.console.log_max_bytes < 4096 {
            return invalid("console.log_max_bytes must be at least 4096".into());
        }
        if self.kernel.cmdline.len() + 1 > crate::layout::CMDLINE_MAX - 128 {
            return invalid("kernel.cmdline is too long".into());
        }
        self.validate_vfio()
    }

    fn validate_vfio(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| Err(ConfigError::Invalid { what });
        // Slot 0 is the host bridge's: 31 slots are left.
        if self.vfio.len() > 31 {
            return invalid(format!(
                "{} [[vfio]] devices asked, a VM has at most 31 PCI slots",
                self.vfio.len()
            ));
        }
        for (index, entry) in self.vfio.iter().enumerate() {
            if entry.device.trim().is_empty() {
                return invalid(format!(
                    "[[vfio]] entry {index} has an empty device: give a PCI address such as 0000:01:10.0"
                ));
            }
            if let Some(slot) = entry.slot {
                if !(1..=31).contains(&slot) {
                    return invalid(format!(
                        "[[vfio]] {}: slot = {slot} is not usable, choose 1 to 31 (0 is the host bridge)",
                        entry.device
                    ));
                }
            }
            let earlier = &self.vfio[..index];
            if earlier.iter().any(|e| e.device == entry.device) {
                return invalid(format!(
                    "[[vfio]] device {} is listed twice: a device is passed through once",
                    entry.device
                ));
            }
            if let Some(slot) = entry.slot {
                if earlier.iter().any(|e| e.slot == Some(slot)) {
                    return invalid(format!(
                        "[[vfio]] slot {slot} is given to two devices: give each its own slot"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        name = "waf-1"
        memory_mib = 64
        vcpu_cores = [2, 3]
        control_socket = "/run/hostd-vmm/waf-1.ctl"
        [kernel]
        path = "/images/probe"
        cmdline = "console=ttyS0"
        [console]
        log = "/var/log/waf-1.console"
        socket = "/run/hostd-vmm/waf-1.console"
        [disk]
        path = "/images/waf.raw"
        read_only = true
    "#;

    #[test]
    fn example_parses_with_defaults() {
        let config: VmConfig = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.memory_bytes(), 64 << 20);
        assert_eq!(config.runtime_dir, PathBuf::from("/run/hostd-vmm"));
        assert_eq!(config.console.log_max_bytes, 1 << 20);
        assert_eq!(config.graceful_stop_timeout_ms, 10_000);
        assert!(config.disk.as_ref().unwrap().read_only);
        assert!(!config.hugepages);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = EXAMPLE.replace("memory_mib", "memory_mb");
        assert!(toml::from_str::<VmConfig>(&text).is_err());
    }

    #[test]
    fn duplicate_and_missing_cores_are_refused() {
        let mut config: VmConfig = toml::from_str(EXAMPLE).unwrap();
        config.vcpu_cores = vec![1, 1];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("core 1 is listed twice"), "{err}");
        config.vcpu_cores.clear();
        assert!(config.validate().is_err());
    }

    #[test]
    fn vfio_entries_parse_round_trip_and_are_checked() {
        let text = format!(
            "{EXAMPLE}\n[[vfio]]\ndevice = \"0000:01:10.0\"\n[[vfio]]\ndevice = \"01:10.2\"\nslot = 4\n"
        );
        let config: VmConfig = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.vfio,
            [
                VfioConfig {
                    device: "0000:01:10.0".into(),
                    slot: None
                },
                VfioConfig {
                    device: "01:10.2".into(),
                    slot: Some(4)
                }
            ]
        );
        // hostd writes configs with toml::to_string: the entries must survive it.
        let written = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<VmConfig>(&written).unwrap(), config);
        // No entries: nothing is written, and an old config still parses.
        let plain: VmConfig = toml::from_str(EXAMPLE).unwrap();
        assert!(plain.vfio.is_empty());
        assert!(!toml::to_string(&plain).unwrap().contains("vfio"));

        let mut bad = config.clone();
        bad.vfio[1].slot = Some(0);
        assert!(bad.validate().unwrap_err().to_string().contains("slot = 0"));
        bad.vfio[1].slot = Some(32);
        assert!(bad.validate().is_err());
        let mut twice = config.clone();
        twice.vfio[1].device = "0000:01:10.0".into();
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
        let mut same_slot = config.clone();
        same_slot.vfio[0].slot = Some(4);
        let err = same_slot.validate().unwrap_err().to_string();
        assert!(err.contains("slot 4 is given to two devices"), "{err}");
        let typo = text.replace("slot = 4", "slott = 4");
        assert!(toml::from_str::<VmConfig>(&typo).is_err());
    }

    #[test]
    fn tiny_memory_is_refused() {
        let mut config: VmConfig = toml::from_str(EXAMPLE).unwrap();
        config.memory_mib = 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("below the minimum")
        );
    }
}
