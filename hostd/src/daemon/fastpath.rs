//! The fast path on the state owner: starting fastpath (its config checked and its cores
//! reserved against the guests'), its reports (ready, exited), restarts by the HA policy
//! (`[ha]`, the one guests follow), re-adoption when hostd starts, stopping it when hostd
//! shuts down, and the `fastpath_status` / `restart_fastpath` calls. The process itself is
//! `crate::fastpath`'s.
//!
//! Every state change is an event (`EventKind::Fastpath`), recorded like the instances'.
//! While fastpath starts, runs or waits for a restart, the cores its config names are held:
//! admission gives them to no guest.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostd_proto::{
    Actor, ApiError, ErrorCode, EventKind, FastpathPort, FastpathState, FastpathStatus, Response,
    bounded, name, text,
};

use super::catalog::admin_only;
use super::{Daemon, Timer, TimerKind, now_ms};
use crate::access::Caller;
use crate::config::Restart;
use crate::cpulist;
use crate::fastpath::{FastpathEvent, FastpathProcess, Found, chain};
use crate::store::Changes;

/// hostd's view of the fast path.
#[derive(Debug)]
pub(crate) struct Fastpath {
    pub(crate) process: FastpathProcess,
    state: FastpathState,
    reason: String,
    since_ms: u64,
    pid: Option<u32>,
    /// Cores held (admission keeps guests off them).
    pub(crate) cores: BTreeSet<u16>,
    /// Times of exits the restart policy counts.
    exits: Vec<u64>,
    restart_at: Option<Instant>,
}

impl Fastpath {
    /// Disabled until hostd starts or finds it.
    pub(crate) fn new(process: FastpathProcess) -> Self {
        Self {
            process,
            state: FastpathState::Disabled,
            reason: "not enabled in hostd's config ([fastpath] enabled)".into(),
            since_ms: now_ms(),
            pid: None,
            cores: BTreeSet::new(),
            exits: Vec::new(),
            restart_at: None,
        }
    }
}

impl Daemon {
    fn fastpath_transition(&mut self, to: FastpathState, reason: &str) {
        let from = self.fastpath.state;
        self.fastpath.state = to;
        self.fastpath.reason = reason.to_owned();
        self.fastpath.since_ms = now_ms();
        if to == FastpathState::Failed {
            log::error!("fastpath: {} -> {}: {reason}", from.as_str(), to.as_str());
        } else {
            log::info!("fastpath: {} -> {}: {reason}", from.as_str(), to.as_str());
        }
        let event = self.event(
            &Actor::Hostd,
            None,
            EventKind::Fastpath { from, to },
            reason,
        );
        if let Err(err) = self.apply(Changes {
            events: vec![event],
            ..Default::default()
        }) {
            log::error!("fastpath event not recorded: {err}");
        }
    }

    fn fastpath_failed(&mut self, reason: &str) {
        self.fastpath.pid = None;
        self.fastpath.cores.clear();
        self.fastpath.restart_at = None;
        self.fastpath_transition(FastpathState::Failed, reason);
    }

    /// Checks the config, reserves its cores and spawns fastpath. A refusal leaves it
    /// `failed` with the reason; hostd keeps serving either way. `context` says why it
    /// starts (a restart, hostd's start).
    fn start_fastpath(&mut self, context: &str) {
        let checked = match self.fastpath.process.check() {
            Ok(checked) => checked,
            Err(err) => {
                self.fastpath_failed(&format!(
                    "{context}not started: {}; fix it, then `hostctl fastpath restart`",
                    chain(&err)
                ));
                return;
            }
        };
        let file = self.fastpath.process.settings().config.clone();
        if let Err(why) = self.resources().check_fastpath_cores(&checked.cores, &file) {
            self.fastpath_failed(&format!(
                "{context}not started: {why}; then `hostctl fastpath restart`"
            ));
            return;
        }
        match self.fastpath.process.spawn() {
            Ok(pid) => {
                self.fastpath.pid = Some(pid);
                self.fastpath.cores = checked.cores;
                self.fastpath.restart_at = None;
                let reason = format!(
                    "{context}pid {pid} started on cores {}",
                    cpulist::format(&self.fastpath.cores)
                );
                self.fastpath_transition(FastpathState::Starting, &reason);
            }
            Err(err) => {
                self.fastpath_failed(&format!("{context}not started: {}", chain(&err)));
            }
        }
    }

    /// At hostd's start (after the guests were re-adopted): finds a fastpath that runs and
    /// adopts it as it is, or starts one when enabled. A fastpath found while the config
    /// says disabled is stopped.
    pub fn adopt_fastpath(&mut self) {
        let enabled = self.fastpath.process.settings().enabled;
        match self.fastpath.process.find() {
            Found::Running { pid, .. } | Found::Starting { pid } if !enabled => {
                let how = self.fastpath.process.stop(pid);
                log::warn!("fastpath is not enabled in hostd's config: {how}");
            }
            Found::Running { pid, cores } => {
                self.fastpath.pid = Some(pid);
                self.fastpath.cores = cores;
                let reason = format!(
                    "re-adopted fastpath pid {pid} (cores {}) after hostd restart",
                    cpulist::format(&self.fastpath.cores)
                );
                self.fastpath_transition(FastpathState::Running, &reason);
            }
            Found::Starting { pid } => {
                // Its cores are those of the file it was started with; the file may have
                // changed since, but it is the best hostd knows until fastpath answers.
                self.fastpath.cores = self
                    .fastpath
                    .process
                    .check()
                    .map(|c| c.cores)
                    .unwrap_or_default();
                self.fastpath.pid = Some(pid);
                let reason = format!("found fastpath pid {pid} starting after hostd restart");
                self.fastpath_transition(FastpathState::Starting, &reason);
            }
            Found::Gone { .. } | Found::None if !enabled => {}
            Found::Gone { pid } => {
                self.start_fastpath(&format!("fastpath pid {pid} ended while hostd was down; "));
            }
            Found::None => self.start_fastpath(""),
        }
    }

    pub(crate) fn on_fastpath_event(&mut self, event: FastpathEvent) {
        match event {
            FastpathEvent::Ready { pid, cores, ports } => {
                if self.fastpath.pid != Some(pid) || self.fastpath.state != FastpathState::Starting
                {
                    return;
                }
                if cores != self.fastpath.cores {
                    log::warn!(
                        "fastpath pid {pid} runs on cores {}, its config named {} when checked",
                        cpulist::format(&cores),
                        cpulist::format(&self.fastpath.cores)
                    );
                    self.fastpath.cores.extend(cores);
                }
                let reason = format!(
                    "pid {pid} running on cores {}, {ports} port{}",
                    cpulist::format(&self.fastpath.cores),
                    if ports == 1 { "" } else { "s" }
                );
                self.fastpath_transition(FastpathState::Running, &reason);
            }
            FastpathEvent::Exited { pid, description } => {
                // A report about an earlier process (stopped for a restart) is stale.
                if self.fastpath.pid != Some(pid) {
                    return;
                }
                self.fastpath.pid = None;
                let policy = self.config.ha.clone();
                match policy.on_failure(&mut self.fastpath.exits, now_ms()) {
                    Restart::After { delay_ms, failures } => {
                        self.fastpath.restart_at =
                            Some(Instant::now() + Duration::from_millis(delay_ms));
                        self.timers.push(Timer {
                            at: Instant::now() + Duration::from_millis(delay_ms),
                            id: 0,
                            kind: TimerKind::FastpathRestart,
                        });
                        let reason = format!(
                            "{description}; restart in {delay_ms} ms (exit {failures} of {})",
                            policy.max_failures
                        );
                        self.fastpath_transition(FastpathState::Restarting, &reason);
                    }
                    Restart::GiveUp { failures } => {
                        self.fastpath_failed(&format!(
                            "gave up after {failures} exits in {} s; last: {description}; \
                             `hostctl fastpath restart` when fixed",
                            policy.window_ms / 1000
                        ));
                    }
                }
            }
        }
    }

    /// The restart timer fired.
    pub(crate) fn fastpath_restart_due(&mut self) {
        let due = self
            .fastpath
            .restart_at
            .is_some_and(|at| at <= Instant::now());
        if self.fastpath.state != FastpathState::Restarting || !due {
            return;
        }
        let exits = self.fastpath.exits.len();
        // Its cores are free for the check (they are its own); the new config's are held.
        self.fastpath.cores.clear();
        self.start_fastpath(&format!("restart after exit {exits}: "));
    }

    /// Stops fastpath if it runs (hostd shuts down, or a restart was asked for).
    pub(crate) fn stop_fastpath(&mut self, why: &str) {
        self.fastpath.restart_at = None;
        let Some(pid) = self.fastpath.pid.take() else {
            if self.fastpath.state == FastpathState::Restarting {
                self.fastpath.cores.clear();
                self.fastpath_transition(FastpathState::Disabled, why);
            }
            return;
        };
        let how = self.fastpath.process.stop(pid);
        self.fastpath.cores.clear();
        self.fastpath_transition(FastpathState::Disabled, &format!("{why}: {how}"));
    }

    /// `restart_fastpath`: a fresh start (config read and checked again, exits forgotten).
    pub(crate) fn restart_fastpath(&mut self, caller: &Caller) -> Result<Response, ApiError> {
        admin_only(caller, "restart the fast path")?;
        if !self.fastpath.process.settings().enabled {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                "the fast path is not enabled: set [fastpath] enabled = true in hostd's config \
                 and restart hostd",
            ));
        }
        self.stop_fastpath(&format!("restart asked by {}", caller.describe()));
        self.fastpath.exits.clear();
        self.start_fastpath("restart asked for: ");
        Ok(self.fastpath_status())
    }

    /// `fastpath_status`: the supervision state, and while it runs the port counters from
    /// its control socket.
    pub(crate) fn fastpath_status(&self) -> Response {
        let fp = &self.fastpath;
        let settings = fp.process.settings();
        let mut ports = hostd_proto::heapless::Vec::new();
        let mut stats_error = None;
        if fp.state == FastpathState::Running {
            match fp.process.stats() {
                Ok(stats) => {
                    for s in stats {
                        let drops = s
                            .drops
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .take(hostd_proto::fastpath::DropReason::ALL.len())
                            .copied()
                            .collect();
                        let port = FastpathPort {
                            name: name(&s.name),
                            rx_packets: s.rx_packets,
                            rx_bytes: s.rx_bytes,
                            tx_packets: s.tx_packets,
                            tx_bytes: s.tx_bytes,
                            drops,
                            lane_rx_packets: s.lane_rx_packets,
                            lane_tx_packets: s.lane_tx_packets,
                        };
                        if ports.push(port).is_err() {
                            stats_error = Some(text(&format!(
                                "only the first {} ports are shown",
                                hostd_proto::MAX_FASTPATH_PORTS
                            )));
                            break;
                        }
                    }
                }
                Err(err) => stats_error = Some(text(&chain(&err))),
            }
        }
        let enabled = settings.enabled;
        let path = |p: &std::path::Path| {
            if enabled {
                bounded(&p.to_string_lossy())
            } else {
                Default::default()
            }
        };
        Response::Fastpath(FastpathStatus {
            state: fp.state,
            reason: text(&fp.reason),
            since_ms: fp.since_ms,
            pid: fp.pid,
            cores: fp
                .cores
                .iter()
                .copied()
                .take(hostd_proto::MAX_FASTPATH_CORES)
                .collect(),
            config: path(&settings.config),
            control_socket: path(&settings.control_socket),
            exits: fp
                .exits
                .iter()
                .filter(|t| now_ms().saturating_sub(**t) < self.config.ha.window_ms)
                .count() as u32,
            restart_in_ms: fp
                .restart_at
                .filter(|_| fp.state == FastpathState::Restarting)
                .map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
            ports,
            stats_error,
        })
    }
}
