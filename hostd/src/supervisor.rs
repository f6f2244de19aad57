//! VMM processes: writing a VM's config, spawning `hostd-vmm` in its own session (so hostd's
//! exit or crash never takes it down), watching it by pidfd, talking to its control socket,
//! and finding it again after hostd restarts (re-adoption).
//!
//! Each VMM has a directory `<runtime_dir>/vms/<id>/` with its config (`vm.toml`), control
//! and console sockets and the exit record it writes as it exits. The paths depend only on
//! the instance id, so a VMM whose pid hostd did not get to record (a crash right after
//! spawn) is still found. A watcher thread per VMM reports readiness (the control socket
//! answers) and exit to the daemon's channel.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use vmm::api::{Request as VmmRequest, Response as VmmResponse, VmStatus};
use vmm::config::{ConsoleConfig, DiskConfig, KernelConfig, VfioConfig, VmConfig};
use vmm::control::exit_code;

use crate::daemon::Command as DaemonCommand;
use crate::process::{self, PidFd};
use crate::store::VmmRecord;

/// Errors starting or reaching a VMM.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The VM's runtime directory or config cannot be written.
    #[error("cannot write the VMM files in {path}: check the runtime directory")]
    Files {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The config cannot be serialised.
    #[error("cannot write the VMM config")]
    Config(#[source] toml::ser::Error),
    /// The VMM binary cannot be run.
    #[error("cannot run the VMM {path}: is hostd-vmm installed beside hostd (or vmm_path set)?")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The control socket does not answer.
    #[error("the VMM of instance {id} does not answer on its control socket")]
    Control {
        /// Instance id.
        id: u32,
        /// Why.
        #[source]
        source: vmm::api::FrameError,
    },
    /// The VMM refused the request.
    #[error("the VMM refused: {0}")]
    Refused(String),
    /// The VM config hostd wrote does not pass the VMM's checks.
    #[error("the VM config is not valid for hostd-vmm: {0}")]
    Invalid(String),
}

/// The VM config file hostd writes: the fields of [`VmConfig`] it sets (the VMM's own
/// defaults apply to the rest), serialised to TOML.
#[derive(Debug, serde::Serialize)]
struct VmmConfigFile {
    name: String,
    memory_mib: u64,
    hugepages: bool,
    vcpu_cores: Vec<usize>,
    housekeeping_cores: Vec<usize>,
    runtime_dir: PathBuf,
    control_socket: PathBuf,
    graceful_stop_timeout_ms: u64,
    exit_record: PathBuf,
    kernel: KernelConfig,
    console: ConsoleConfig,
    disk: Option<DiskConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    vfio: Vec<VfioConfig>,
}

/// What hostd tells the VMM to run.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Instance id.
    pub id: u32,
    /// Name (in the VMM's logs and core lock files).
    pub name: String,
    /// Dedicated cores, one per vCPU.
    pub cores: Vec<u16>,
    /// Cores for the VMM's other threads.
    pub housekeeping: Vec<u16>,
    /// RAM, MiB.
    pub ram_mib: u32,
    /// On huge pages.
    pub hugepages: bool,
    /// Kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Command line.
    pub cmdline: String,
    /// Disk image.
    pub disk: Option<PathBuf>,
    /// Graceful stop timeout, ms.
    pub graceful_stop_timeout_ms: u64,
    /// Console log file.
    pub console_log: PathBuf,
    /// The VMM's stderr.
    pub vmm_log: PathBuf,
    /// VFs passed through, already on vfio-pci: PCI address and guest slot.
    pub vfio: Vec<(String, u8)>,
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when known.
    pub code: Option<i32>,
    /// For people: what the code means, or the VMM's own reason.
    pub description: String,
}

impl ExitInfo {
    /// The guest powered itself off (exit code 0).
    pub fn powered_off(&self) -> bool {
        self.code == Some(0)
    }

    /// The VMM refused a passthrough device (exit 9, 11, 12, 13 or 14): the VF, not the
    /// VMM, is the problem (docs/VMM.md, "For hostd").
    pub fn vf_refused(&self) -> bool {
        matches!(
            self.code,
            Some(
                exit_code::VFIO_DEVICE_UNAVAILABLE
                    | exit_code::VFIO_GROUP_NOT_VIABLE
                    | exit_code::VFIO_UNSUPPORTED
                    | exit_code::VFIO_DEVICE_BUSY
                    | exit_code::VFIO_SETUP_FAILED
            )
        )
    }
}

/// A report from a watcher thread.
#[derive(Debug)]
pub enum VmmEvent {
    /// The control socket answers: the VM runs.
    Ready {
        /// Instance id.
        id: u32,
        /// VMM pid.
        pid: u32,
    },
    /// The process ended.
    Exited {
        /// Instance id.
        id: u32,
        /// VMM pid.
        pid: u32,
        /// How.
        info: ExitInfo,
    },
}

/// What was found of a recorded VMM at start-up.
#[derive(Debug)]
pub enum Found {
    /// Alive and answering: watched again.
    Adopted {
        /// Its record.
        record: VmmRecord,
        /// Its status.
        status: VmStatus,
    },
    /// Alive but not answering yet (hostd stopped while it was starting): watched, and
    /// reported ready when it answers.
    Starting {
        /// Its record.
        record: VmmRecord,
    },
    /// Gone: how it ended.
    Gone(ExitInfo),
}

/// Files of one VMM.
#[derive(Debug, Clone)]
pub struct VmmPaths {
    /// Its directory.
    pub dir: PathBuf,
    /// Config.
    pub config: PathBuf,
    /// Control socket.
    pub control: PathBuf,
    /// Console socket.
    pub console: PathBuf,
    /// Exit record.
    pub exit_record: PathBuf,
}

/// Spawns and watches VMMs.
#[derive(Debug, Clone)]
pub struct Supervisor {
    vmm_path: PathBuf,
    runtime_dir: PathBuf,
    start_timeout: Duration,
    events: Sender<DaemonCommand>,
}

/// What an exit code of hostd-vmm means (docs/VMM.md "Exit codes").
pub fn describe_exit_code(code: i32) -> String {
    match code {
        0 => "the guest powered off".into(),
        1 => "the VMM failed while running (exit 1)".into(),
        2 => "the VMM refused its config (exit 2)".into(),
        3 => "the kernel is missing or not bootable (exit 3)".into(),
        4 => "a vCPU core is offline or pinned by another VM (exit 4)".into(),
        5 => "not enough memory or huge pages, or memory cannot be locked (exit 5)".into(),
        6 => "the disk image is missing or in use (exit 6)".into(),
        7 => "/dev/kvm is missing or refused (exit 7)".into(),
        8 => "a VMM socket is in use (exit 8)".into(),
        exit_code::VFIO_DEVICE_UNAVAILABLE => {
            "a VF is gone or not bound to vfio-pci (exit 9)".into()
        }
        10 => "stopped by force (exit 10)".into(),
        exit_code::VFIO_GROUP_NOT_VIABLE => "a VF's IOMMU group is not viable (exit 11)".into(),
        exit_code::VFIO_UNSUPPORTED => "no VFIO or no IOMMU on this host (exit 12)".into(),
        exit_code::VFIO_DEVICE_BUSY => "a VF is in use by another process (exit 13)".into(),
        exit_code::VFIO_SETUP_FAILED => "VFIO refused to set a VF up (exit 14)".into(),
        c if c >= 100 => format!("the guest ended with code {} (exit {c})", c - 100),
        c => format!("the VMM exited with code {c}"),
    }
}

/// The last `hostd-vmm: error:` line of a VMM log, with its causes.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let start = text.rfind("hostd-vmm: error: ")?;
    let rest = &text[start + "hostd-vmm: error: ".len()..];
    let mut lines = rest.lines();
    let mut message = lines.next()?.to_owned();
    for cause in lines.take_while(|l| l.starts_with("  caused by: ")) {
        message.push_str(": ");
        message.push_str(cause.trim_start_matches("  caused by: "));
    }
    Some(message)
}

fn read_exit_record(path: &Path) -> Option<ExitInfo> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let code: i32 = lines.next()?.trim().parse().ok()?;
    let reason = lines.next().unwrap_or("").trim().to_owned();
    Some(ExitInfo {
        code: Some(code),
        description: if reason.is_empty() || code == 0 || code == 10 {
            describe_exit_code(code)
        } else {
            format!("{} ({reason})", describe_exit_code(code))
        },
    })
}

impl Supervisor {
    /// A supervisor reporting to `events`.
    pub fn new(
        vmm_path: PathBuf,
        runtime_dir: PathBuf,
        start_timeout: Duration,
        events: Sender<DaemonCommand>,
    ) -> Self {
        Self {
            vmm_path,
            runtime_dir,
            start_timeout,
            events,
        }
    }

    /// The files of instance `id`'s VMM.
    pub fn paths(&self, id: u32) -> VmmPaths {
        let dir = self.runtime_dir.join("vms").join(id.to_string());
        VmmPaths {
            config: dir.join("vm.toml"),
            control: dir.join("control.sock"),
            console: dir.join("console.sock"),
            exit_record: dir.join("exit"),
            dir,
        }
    }

    /// Writes the config and spawns the VMM; a watcher reports readiness and exit.
    pub fn spawn(&self, spec: &VmSpec) -> Result<VmmRecord, SupervisorError> {
        let paths = self.paths(spec.id);
        let files = |path: &Path| {
            let path = path.to_owned();
            move |source| SupervisorError::Files { path, source }
        };
        std::fs::create_dir_all(&paths.dir).map_err(files(&paths.dir))?;
        let _ = std::fs::remove_file(&paths.exit_record);
        let config = VmmConfigFile {
            name: spec.name.clone(),
            memory_mib: spec.ram_mib.into(),
            hugepages: spec.hugepages,
            vcpu_cores: spec.cores.iter().map(|&c| usize::from(c)).collect(),
            housekeeping_cores: spec.housekeeping.iter().map(|&c| usize::from(c)).collect(),
            runtime_dir: self.runtime_dir.clone(),
            control_socket: paths.control.clone(),
            graceful_stop_timeout_ms: spec.graceful_stop_timeout_ms,
            exit_record: paths.exit_record.clone(),
            kernel: KernelConfig {
                path: spec.kernel.clone(),
                initramfs: spec.initramfs.clone(),
                cmdline: spec.cmdline.clone(),
            },
            console: ConsoleConfig {
                log: spec.console_log.clone(),
                log_max_bytes: 1 << 20,
                socket: Some(paths.console.clone()),
                stdout: false,
            },
            disk: spec.disk.clone().map(|path| DiskConfig {
                path,
                read_only: false,
            }),
            vfio: spec
                .vfio
                .iter()
                .map(|(device, slot)| VfioConfig {
                    device: device.clone(),
                    slot: Some(*slot),
                })
                .collect(),
        };
        let text = toml::to_string(&config).map_err(SupervisorError::Config)?;
        // The VMM's own parser and checks, here, so a mistake is refused with its reason
        // before a process is started.
        toml::from_str::<VmConfig>(&text)
            .map_err(|e| SupervisorError::Invalid(e.to_string()))?
            .validate()
            .map_err(|e| SupervisorError::Invalid(e.to_string()))?;
        std::fs::write(&paths.config, text).map_err(files(&paths.config))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.vmm_log)
            .map_err(files(&spec.vmm_log))?;
        let log_err = log.try_clone().map_err(files(&spec.vmm_log))?;
        let mut command = Command::new(&self.vmm_path);
        command
            .arg("--config")
            .arg(&paths.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setsid, which is async-signal-safe. A new session (and process group) keeps the
        // VMM out of hostd's: a signal to hostd's group, or hostd's terminal going away,
        // does not reach it.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| SupervisorError::Spawn {
            path: self.vmm_path.clone(),
            source,
        })?;
        let pid = child.id();
        let record = VmmRecord {
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
            boot_id: process::boot_id(),
        };
        log::info!(
            "instance {} ({}): VMM started, pid {pid}",
            spec.id,
            spec.name
        );
        let pidfd = PidFd::open(pid);
        self.watch(
            spec.id,
            pid,
            pidfd.ok(),
            Some(child),
            true,
            spec.vmm_log.clone(),
        );
        Ok(record)
    }

    /// Looks for instance `id`'s VMM after a restart: by its control socket (which names
    /// its pid) and the recorded pid and start time.
    pub fn find(&self, id: u32, recorded: Option<&VmmRecord>, vmm_log: &Path) -> Found {
        let paths = self.paths(id);
        let same_boot = recorded.is_none_or(|r| r.boot_id == process::boot_id());
        let status = match vmm::api::call(&paths.control, &VmmRequest::Status) {
            Ok(VmmResponse::Status(status)) => Some(status),
            _ => None,
        };
        let pid = status
            .as_ref()
            .map(|s| s.pid)
            .or(recorded.filter(|_| same_boot).map(|r| r.pid));
        let live = pid.and_then(|pid| {
            let start = process::start_time(pid)?;
            // A recorded start time that differs means the pid now belongs to another
            // process.
            let matches =
                recorded.is_none_or(|r| !same_boot || r.pid != pid || r.start_time == start);
            matches.then_some((pid, start))
        });
        match (live, status) {
            (Some((pid, start_time)), status) => {
                let record = VmmRecord {
                    pid,
                    start_time,
                    boot_id: process::boot_id(),
                };
                match PidFd::open(pid) {
                    Ok(pidfd) => {
                        let starting = status.is_none();
                        self.watch(id, pid, Some(pidfd), None, starting, vmm_log.to_owned());
                        match status {
                            Some(status) => Found::Adopted { record, status },
                            None => Found::Starting { record },
                        }
                    }
                    Err(_) => Found::Gone(self.gone_info(id, vmm_log)),
                }
            }
            (None, _) => Found::Gone(self.gone_info(id, vmm_log)),
        }
    }

    fn gone_info(&self, id: u32, vmm_log: &Path) -> ExitInfo {
        exit_info(&self.paths(id).exit_record, None, vmm_log)
    }

    /// Sends a control request to instance `id`'s VMM.
    pub fn call(&self, id: u32, request: &VmmRequest) -> Result<VmmResponse, SupervisorError> {
        match vmm::api::call(&self.paths(id).control, request) {
            Ok(VmmResponse::Error(message)) => Err(SupervisorError::Refused(message)),
            Ok(response) => Ok(response),
            Err(source) => Err(SupervisorError::Control { id, source }),
        }
    }

    /// Kills instance `id`'s VMM (pid `pid`) with SIGKILL, through a pidfd so a reused pid is
    /// never hit.
    pub fn kill(&self, pid: u32) {
        if let Ok(pidfd) = PidFd::open(pid) {
            let _ = pidfd.kill(libc::SIGKILL);
        }
    }

    fn watch(
        &self,
        id: u32,
        pid: u32,
        pidfd: Option<PidFd>,
        child: Option<Child>,
        wait_ready: bool,
        vmm_log: PathBuf,
    ) {
        let events = self.events.clone();
        let paths = self.paths(id);
        let deadline = Instant::now() + self.start_timeout;
        let spawned = std::thread::Builder::new()
            .name(format!("watch vm{id}"))
            .spawn(move || {
                let Some(pidfd) = pidfd else {
                    let info = exit_info(&paths.exit_record, child, &vmm_log);
                    let _ = events.send(DaemonCommand::Vmm(VmmEvent::Exited { id, pid, info }));
                    return;
                };
                if wait_ready {
                    loop {
                        if pidfd
                            .wait_exit(Some(Duration::from_millis(20)))
                            .unwrap_or(true)
                        {
                            break;
                        }
                        if let Ok(VmmResponse::Status(_)) =
                            vmm::api::call(&paths.control, &VmmRequest::Status)
                        {
                            let _ = events.send(DaemonCommand::Vmm(VmmEvent::Ready { id, pid }));
                            break;
                        }
                        if Instant::now() > deadline {
                            log::error!(
                                "instance {id}: VMM pid {pid} did not answer in time: killing it"
                            );
                            let _ = pidfd.kill(libc::SIGKILL);
                            break;
                        }
                    }
                }
                while !pidfd.wait_exit(None).unwrap_or(true) {}
                let info = exit_info(&paths.exit_record, child, &vmm_log);
                log::info!("instance {id}: VMM pid {pid} exited: {}", info.description);
                let _ = events.send(DaemonCommand::Vmm(VmmEvent::Exited { id, pid, info }));
            });
        if let Err(err) = spawned {
            log::error!("instance {id}: cannot start the VMM watcher thread: {err}");
        }
    }
}

/// How a VMM ended: its exit status when it is hostd's child, else its exit record; with
/// the last error line of its log for start failures.
fn exit_info(record: &Path, child: Option<Child>, vmm_log: &Path) -> ExitInfo {
    let status = child.and_then(|mut c| c.wait().ok());
    let mut info = match (status, read_exit_record(record)) {
        (_, Some(info)) => info,
        (Some(status), None) => match status.code() {
            Some(code) => ExitInfo {
                code: Some(code),
                description: describe_exit_code(code),
            },
            None => ExitInfo {
                code: None,
                description: format!(
                    "the VMM process was killed by signal {}",
                    std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                ),
            },
        },
        (None, None) => ExitInfo {
            code: None,
            description:
                "the VMM process ended without an exit record (killed by a signal or crashed)"
                    .into(),
        },
    };
    if matches!(info.code, Some(2..=9 | 11..=14)) {
        if let Some(line) = last_error(vmm_log) {
            info.description = format!("{}: {line}", info.description);
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_and_logs_explain_how_a_vmm_ended() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("exit");
        std::fs::write(&record, "4\ncore 1 is pinned by another VM\n").unwrap();
        let log = dir.path().join("vmm.log");
        std::fs::write(
            &log,
            "x\nhostd-vmm: error: vCPU core 1 is taken\n  caused by: pid 7 vm a\nnext\n",
        )
        .unwrap();
        let info = exit_info(&record, None, &log);
        assert_eq!(info.code, Some(4));
        assert!(
            info.description.contains("pinned by another VM"),
            "{}",
            info.description
        );
        assert!(
            info.description
                .ends_with("vCPU core 1 is taken: pid 7 vm a"),
            "{}",
            info.description
        );
        std::fs::remove_file(&record).unwrap();
        let info = exit_info(&record, None, &log);
        assert_eq!(info.code, None);
        assert!(info.description.contains("without an exit record"));
        assert_eq!(
            describe_exit_code(103),
            "the guest ended with code 3 (exit 103)"
        );
    }

    #[test]
    fn passthrough_refusals_are_told_apart_and_name_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("exit");
        let log = dir.path().join("vmm.log");
        for (code, what) in [
            (9, "not bound to vfio-pci"),
            (11, "IOMMU group is not viable"),
            (12, "no VFIO or no IOMMU"),
            (13, "in use by another process"),
            (14, "VFIO refused"),
        ] {
            std::fs::write(&record, format!("{code}\n0000:01:10.0: the reason\n")).unwrap();
            std::fs::write(
                &log,
                format!("hostd-vmm: error: passthrough 0000:01:10.0 refused ({code})\n"),
            )
            .unwrap();
            let info = exit_info(&record, None, &log);
            assert!(info.vf_refused(), "{code}");
            assert!(info.description.contains(what), "{}", info.description);
            assert!(
                info.description.contains("(0000:01:10.0: the reason)")
                    && info.description.ends_with(&format!("refused ({code})")),
                "{}",
                info.description
            );
        }
        for code in [0, 1, 4, 10] {
            std::fs::write(&record, format!("{code}\n\n")).unwrap();
            assert!(!exit_info(&record, None, &log).vf_refused(), "{code}");
        }
    }

    #[test]
    fn vfs_reach_the_vmm_config_with_their_slots() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let dir = tempfile::tempdir().unwrap();
        let supervisor = Supervisor::new(
            dir.path().join("no-such-vmm"),
            dir.path().to_owned(),
            Duration::from_secs(1),
            tx,
        );
        let spec = VmSpec {
            id: 9,
            name: "v".into(),
            cores: vec![1],
            housekeeping: vec![0],
            ram_mib: 64,
            hugepages: false,
            kernel: dir.path().join("k"),
            initramfs: None,
            cmdline: String::new(),
            disk: None,
            graceful_stop_timeout_ms: 1000,
            console_log: dir.path().join("console.log"),
            vmm_log: dir.path().join("vmm.log"),
            vfio: vec![("0000:01:10.0".into(), 1), ("0000:02:10.0".into(), 2)],
        };
        // The binary does not exist: the config is written and checked, the spawn fails.
        assert!(matches!(
            supervisor.spawn(&spec),
            Err(SupervisorError::Spawn { .. })
        ));
        let text = std::fs::read_to_string(supervisor.paths(9).config).unwrap();
        let config: VmConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            config.vfio,
            [
                VfioConfig {
                    device: "0000:01:10.0".into(),
                    slot: Some(1)
                },
                VfioConfig {
                    device: "0000:02:10.0".into(),
                    slot: Some(2)
                }
            ]
        );
    }
}
