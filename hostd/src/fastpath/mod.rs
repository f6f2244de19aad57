//! The fastpath process: its config checked before each start ([`check`]), spawned in its
//! own session (so hostd's exit or crash never takes the data path down), watched by pidfd,
//! asked for its counters on its control socket ([`control`]), found again after hostd
//! restarts, and stopped (SIGTERM, then SIGKILL) when hostd shuts down.
//!
//! Files: `<runtime_dir>/fastpath.pid` (pid, start time, boot id of the process hostd
//! started, so a restarted hostd can tell it from a later process with the same pid) and
//! `<state_dir>/fastpath.log` (its stdout and stderr). A watcher thread per process reports
//! readiness (the control socket answers) and exit to the daemon's channel. What to do about
//! them (restarts, core reservations, events) is the daemon's (`daemon::fastpath`).

pub mod check;
pub mod control;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use hostd_proto::fastpath::{Request, Response};

use crate::config::FastpathSettings;
use crate::daemon::Command as DaemonCommand;
use crate::process::{self, PidFd};

/// How long a control call may take (the forwarder answers from memory, in microseconds).
pub const CONTROL_TIMEOUT: Duration = Duration::from_millis(500);

/// Errors starting fastpath.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Its log file cannot be opened.
    #[error("cannot open the fastpath log {path}: check the state directory")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The binary cannot be run.
    #[error(
        "cannot run the fastpath binary {path}: install it beside hostd or set [fastpath] binary"
    )]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A report from a watcher thread.
#[derive(Debug)]
pub enum FastpathEvent {
    /// The control socket answers.
    Ready {
        /// fastpath's pid.
        pid: u32,
        /// The cores of the configuration it runs.
        cores: BTreeSet<u16>,
        /// Its ports.
        ports: usize,
    },
    /// The process ended.
    Exited {
        /// Its pid.
        pid: u32,
        /// How, for people.
        description: String,
    },
}

/// What was found of a fastpath process when hostd starts.
#[derive(Debug)]
pub enum Found {
    /// Its control socket answers: watched again.
    Running {
        /// Its pid.
        pid: u32,
        /// The cores of the configuration it runs.
        cores: BTreeSet<u16>,
    },
    /// The process hostd recorded is alive but does not answer (yet): watched, reported
    /// ready when it answers, killed when it does not in time.
    Starting {
        /// Its pid.
        pid: u32,
    },
    /// The process hostd recorded ended while hostd was down.
    Gone {
        /// Its pid.
        pid: u32,
    },
    /// No trace of one.
    None,
}

/// Spawns, watches, finds and stops the fastpath process.
#[derive(Debug, Clone)]
pub struct FastpathProcess {
    settings: FastpathSettings,
    record: PathBuf,
    log: PathBuf,
    events: Sender<DaemonCommand>,
}

/// The error and its causes on one line (for state reasons and events).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl FastpathProcess {
    /// A fastpath run with `settings`, its files under `runtime_dir` and `state_dir`,
    /// reporting to `events`.
    pub fn new(
        settings: FastpathSettings,
        runtime_dir: &Path,
        state_dir: &Path,
        events: Sender<DaemonCommand>,
    ) -> Self {
        Self {
            settings,
            record: runtime_dir.join("fastpath.pid"),
            log: state_dir.join("fastpath.log"),
            events,
        }
    }

    /// How hostd runs it.
    pub fn settings(&self) -> &FastpathSettings {
        &self.settings
    }

    /// Checks the config file with the binary that will run it.
    pub fn check(&self) -> Result<check::Checked, check::CheckError> {
        check::check(&self.settings.binary, &self.settings.config)
    }

    /// Spawns `fastpath run` in its own session; a watcher reports readiness and exit.
    pub fn spawn(&self) -> Result<u32, SpawnError> {
        let log_err = |source| SpawnError::Log {
            path: self.log.clone(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_err)?;
        let stderr = log.try_clone().map_err(log_err)?;
        // Where this run's output starts: an exit is explained by its own error line, never
        // by an earlier run's.
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new(&self.settings.binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.settings.config)
            .arg("--control")
            .arg(&self.settings.control_socket)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setsid, which is async-signal-safe. Its own session keeps fastpath out of hostd's
        // process group: a signal to the group, or hostd's terminal going away, does not
        // reach it, so the data path survives a hostd restart.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| SpawnError::Spawn {
            path: self.settings.binary.clone(),
            source,
        })?;
        let pid = child.id();
        self.write_record(pid);
        log::info!("fastpath started, pid {pid}");
        self.watch(pid, PidFd::open(pid).ok(), Some((child, log_start)), true);
        Ok(pid)
    }

    /// Records `pid` with its start time and the boot id; a failure only costs re-adoption
    /// by pid (the control socket still finds it).
    fn write_record(&self, pid: u32) {
        let text = format!(
            "{pid}\n{}\n{}\n",
            process::start_time(pid).unwrap_or(0),
            process::boot_id()
        );
        if let Err(err) = std::fs::write(&self.record, text) {
            log::warn!(
                "cannot write {}: {err}; a restarted hostd finds fastpath by its control socket only",
                self.record.display()
            );
        }
    }

    /// The recorded process, if it is still the one hostd started: same pid, start time and
    /// boot.
    fn recorded(&self) -> Option<(u32, bool)> {
        let text = std::fs::read_to_string(&self.record).ok()?;
        let mut lines = text.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let start: u64 = lines.next()?.trim().parse().ok()?;
        let boot = lines.next().unwrap_or("").trim();
        let alive = boot == process::boot_id() && process::start_time(pid) == Some(start);
        Some((pid, alive))
    }

    /// Looks for a running fastpath after hostd (re)starts: its control socket (whose
    /// server's pid the kernel tells), else the process hostd recorded.
    pub fn find(&self) -> Found {
        if let Ok(answer) = control::call(
            &self.settings.control_socket,
            &Request::GetConfig,
            CONTROL_TIMEOUT,
        ) {
            if let (Response::Config(config), Some(pid)) = (&answer.response, answer.pid) {
                if let Ok(pidfd) = PidFd::open(pid) {
                    let cores = config
                        .cores
                        .iter()
                        .filter_map(|c| u16::try_from(c.cpu).ok())
                        .collect();
                    self.write_record(pid);
                    self.watch(pid, Some(pidfd), None, false);
                    return Found::Running { pid, cores };
                }
            }
        }
        match self.recorded() {
            Some((pid, true)) => match PidFd::open(pid) {
                Ok(pidfd) => {
                    self.watch(pid, Some(pidfd), None, true);
                    Found::Starting { pid }
                }
                Err(_) => Found::Gone { pid },
            },
            Some((pid, false)) => {
                let _ = std::fs::remove_file(&self.record);
                Found::Gone { pid }
            }
            None => Found::None,
        }
    }

    /// The forwarder's port counters.
    pub fn stats(&self) -> Result<Vec<hostd_proto::fastpath::PortStats>, control::ControlError> {
        let answer = control::call(
            &self.settings.control_socket,
            &Request::GetStats,
            CONTROL_TIMEOUT,
        )?;
        match answer.response {
            Response::Stats(stats) => Ok(stats),
            other => Err(control::ControlError::Refused(format!(
                "unexpected reply to get_stats: {other:?}"
            ))),
        }
    }

    /// Stops process `pid`: SIGTERM (fastpath detaches its XDP and tc programs and exits),
    /// then SIGKILL after the stop timeout. Returns how it went, for the event.
    pub fn stop(&self, pid: u32) -> String {
        let Ok(pidfd) = PidFd::open(pid) else {
            return format!("fastpath pid {pid} had already ended");
        };
        let _ = std::fs::remove_file(&self.record);
        let timeout = Duration::from_millis(self.settings.stop_timeout_ms);
        if pidfd.kill(libc::SIGTERM).is_ok() && pidfd.wait_exit(Some(timeout)).unwrap_or(false) {
            return format!("fastpath pid {pid} stopped (SIGTERM)");
        }
        log::warn!("fastpath pid {pid} did not stop within {timeout:?} of SIGTERM: SIGKILL");
        let _ = pidfd.kill(libc::SIGKILL);
        let _ = pidfd.wait_exit(Some(Duration::from_secs(5)));
        format!(
            "fastpath pid {pid} did not stop within {} ms of SIGTERM: killed (SIGKILL)",
            self.settings.stop_timeout_ms
        )
    }

    /// Watches process `pid`: with `child` (hostd's own, and where its log output starts)
    /// its exit status is known.
    fn watch(&self, pid: u32, pidfd: Option<PidFd>, child: Option<(Child, u64)>, wait_ready: bool) {
        let events = self.events.clone();
        let control_socket = self.settings.control_socket.clone();
        let log = self.log.clone();
        let deadline = Instant::now() + Duration::from_millis(self.settings.start_timeout_ms);
        let spawned = std::thread::Builder::new()
            .name("watch fastpath".into())
            .spawn(move || {
                let send = |event| {
                    let _ = events.send(DaemonCommand::Fastpath(event));
                };
                let Some(pidfd) = pidfd else {
                    let description = exit_description(pid, child, &log);
                    send(FastpathEvent::Exited { pid, description });
                    return;
                };
                while wait_ready
                    && !pidfd
                        .wait_exit(Some(Duration::from_millis(20)))
                        .unwrap_or(true)
                {
                    if let Ok(answer) =
                        control::call(&control_socket, &Request::GetConfig, CONTROL_TIMEOUT)
                    {
                        if let Response::Config(config) = answer.response {
                            let cores = config
                                .cores
                                .iter()
                                .filter_map(|c| u16::try_from(c.cpu).ok())
                                .collect();
                            let ports = config.ports.len();
                            send(FastpathEvent::Ready { pid, cores, ports });
                            break;
                        }
                    }
                    if Instant::now() > deadline {
                        log::error!("fastpath pid {pid} did not answer in time: killing it");
                        let _ = pidfd.kill(libc::SIGKILL);
                        break;
                    }
                }
                while !pidfd.wait_exit(None).unwrap_or(true) {}
                let description = exit_description(pid, child, &log);
                log::info!("{description}");
                send(FastpathEvent::Exited { pid, description });
            });
        if let Err(err) = spawned {
            log::error!("cannot start the fastpath watcher thread: {err}");
        }
    }
}

/// How fastpath ended: its exit status when it is hostd's child (else unknown), with the
/// last error line it wrote to its log (from `log_start` on).
fn exit_description(pid: u32, child: Option<(Child, u64)>, log: &Path) -> String {
    let log_start = child.as_ref().map_or(0, |(_, start)| *start);
    let status = child.and_then(|(mut c, _)| c.wait().ok());
    let how = match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(0), _) => "exited (code 0)".to_owned(),
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!(
                "was killed by signal {signal}{}",
                nix::sys::signal::Signal::try_from(signal)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            (None, None) => "ended".to_owned(),
        },
        None => "ended (re-adopted after a hostd restart, so its exit status is unknown)".into(),
    };
    let error = status
        .filter(|s| !s.success() && s.signal().is_none())
        .and_then(|_| last_error(log, log_start));
    match error {
        Some(error) => format!("fastpath pid {pid} {how}: {error}"),
        None => format!("fastpath pid {pid} {how}"),
    }
}

/// The last `fastpath: ...` error line of the log after byte `start`.
fn last_error(log: &Path, start: u64) -> Option<String> {
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("fastpath: "))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_with_the_signal_or_fastpaths_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fastpath.log");
        let earlier = "fastpath: an earlier run's error\n";
        std::fs::write(
            &log,
            format!("{earlier}fastpath: cannot pin the poll thread to CPU 9\n"),
        )
        .unwrap();
        let start = earlier.len() as u64;
        let child = Command::new("sh").args(["-c", "exit 1"]).spawn().unwrap();
        let pid = child.id();
        let text = exit_description(pid, Some((child, start)), &log);
        assert_eq!(
            text,
            format!("fastpath pid {pid} exited with code 1: cannot pin the poll thread to CPU 9")
        );
        // An exit that wrote no error line of its own is not explained by an earlier one.
        let end = std::fs::metadata(&log).unwrap().len();
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let pid = child.id();
        assert_eq!(
            exit_description(pid, Some((child, end)), &log),
            format!("fastpath pid {pid} exited with code 3")
        );
        let child = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(
            exit_description(pid, Some((child, start)), &log),
            format!("fastpath pid {pid} was killed by signal 9 (SIGKILL)")
        );
        assert!(exit_description(1, None, &log).contains("exit status is unknown"));
    }
}
