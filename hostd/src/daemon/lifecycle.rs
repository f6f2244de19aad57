//! Starting and stopping VMMs, their reports (ready, exited), HA restarts with backoff, and
//! re-adoption of running VMMs when hostd starts.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use hostd_proto::{Actor, ApiError, ErrorCode, EventKind, InstanceState, Reply};
use vmm::api::{Request as VmmRequest, VmState};

use super::{Daemon, Handled, Outcome, Timer, TimerKind, WaitFor, Waiter, now_ms};
use crate::admission::{Usage, check_quota};
use crate::config::Restart;
use crate::store::{Changes, InstanceRecord};
use crate::supervisor::{ExitInfo, Found, VmSpec, VmmEvent};

impl Daemon {
    /// Starts instance `id`: checks its state and resources again, records `starting`,
    /// spawns its VMM. With `reply`, answers once it runs (or failed to start).
    pub(crate) fn start(
        &mut self,
        id: u32,
        actor: &Actor,
        reply: Option<&Sender<Handled>>,
        reason: &str,
    ) -> Outcome {
        let record = self.instances[&id].clone();
        match record.state {
            InstanceState::Running | InstanceState::Paused => {
                return Outcome::Now(Ok(self.instance_response(id)));
            }
            InstanceState::Starting | InstanceState::Stopping => {
                return Outcome::Now(Err(ApiError::new(
                    ErrorCode::Busy,
                    &format!(
                        "instance {} is {}: wait for it to finish",
                        record.name,
                        record.state.as_str()
                    ),
                )));
            }
            _ => {}
        }
        // VFs still recorded from an earlier run (a release whose record failed) go back
        // first, each restored from its own record.
        if record.vfs.iter().any(|v| v.assigned.is_some()) {
            let mut cleared = record.clone();
            let events = self.release_vfs(&mut cleared);
            if let Err(err) = self.apply(Changes {
                put_instances: vec![cleared],
                events,
                ..Default::default()
            }) {
                return Outcome::Now(Err(err));
            }
        }
        let record = self.instances[&id].clone();
        let mut updated = match self.start_checks(&record) {
            Ok(updated) => updated,
            Err(err) => return Outcome::Now(Err(err)),
        };
        if let Err(err) = self.pick_vfs(&mut updated) {
            return Outcome::Now(Err(err));
        }
        if *actor != Actor::Ha {
            // An operator's start is a fresh start: HA counts from zero again.
            updated.ha_failures.clear();
        }
        updated.want_running = true;
        let events = vec![self.transition(&mut updated, InstanceState::Starting, actor, reason)];
        // The picked VFs are recorded before anything touches them: a crash from here on
        // leaves a record that the next start-up finishes from (gives them back).
        if let Err(err) = self.apply(Changes {
            put_instances: vec![updated.clone()],
            events,
            ..Default::default()
        }) {
            return Outcome::Now(Err(err));
        }
        let vf_events = match self.prepare_vfs(&updated) {
            Ok(events) => events,
            Err(err) => return self.start_failed(id, actor, err, Vec::new()),
        };
        let spec = match self.vm_spec(&updated) {
            Ok(spec) => spec,
            Err(err) => return self.start_failed(id, actor, err, vf_events),
        };
        match self.supervisor.spawn(&spec) {
            Ok(vmm) => {
                updated.vmm = Some(vmm);
                if let Err(err) = self.apply(Changes {
                    put_instances: vec![updated],
                    events: vf_events,
                    ..Default::default()
                }) {
                    // The VMM runs but its pid is not recorded: it is found again by its
                    // control socket at the next start-up.
                    log::error!("instance {id}: VMM pid not recorded: {err}");
                }
                if let Some(reply) = reply {
                    self.waiters.push(Waiter {
                        id,
                        until: WaitFor::Running,
                        reply: reply.clone(),
                        then_delete: None,
                    });
                }
                Outcome::Later
            }
            Err(err) => {
                log::error!("instance {id}: {err}");
                let err = ApiError::new(ErrorCode::VmmFailed, &format!("start failed: {err}"));
                self.start_failed(id, actor, err, vf_events)
            }
        }
    }

    /// A start that got as far as recording `starting` failed before a VMM ran: the VFs
    /// are given back and the instance goes `error` (an HA start counts as a failure).
    /// `assigned` are the events of VFs prepared before the failure, recorded with it.
    fn start_failed(
        &mut self,
        id: u32,
        actor: &Actor,
        err: ApiError,
        assigned: Vec<hostd_proto::Event>,
    ) -> Outcome {
        if !assigned.is_empty() {
            if let Err(commit) = self.apply(Changes {
                events: assigned,
                ..Default::default()
            }) {
                log::error!("instance {id}: VF assignment events not recorded: {commit}");
            }
        }
        if *actor == Actor::Ha {
            let info = ExitInfo {
                code: None,
                description: err.message.to_string(),
            };
            self.vmm_ended(id, &info, "");
            return Outcome::Later;
        }
        let mut failed = self.instances[&id].clone();
        failed.want_running = false;
        let mut events = self.release_vfs(&mut failed);
        let reason = if err.message.starts_with("start failed") {
            err.message.to_string()
        } else {
            format!("start failed: {}", err.message)
        };
        events.push(self.transition(&mut failed, InstanceState::Error, &Actor::Hostd, &reason));
        if let Err(commit) = self.apply(Changes {
            put_instances: vec![failed],
            events,
            ..Default::default()
        }) {
            log::error!("instance {id}: failed start not recorded: {commit}");
        }
        Outcome::Now(Err(err))
    }

    /// Admission again at start (the host or a quota may have changed since create): cores
    /// that are no longer usable guest cores are replaced, RAM and the quota re-checked,
    /// the kernel must exist.
    fn start_checks(&self, record: &InstanceRecord) -> Result<InstanceRecord, ApiError> {
        let res = self.resources();
        let mut updated = record.clone();
        updated.cores = res.allocate_cores(Some(record.id), &record.cores, record.vcpus)?;
        res.check_memory(Some(record.id), record.ram_mib, record.hugepages)?;
        if let Some(stack) = record.stack.as_ref().and_then(|s| self.stacks.get(s)) {
            let need = Usage {
                instances: 1,
                vcpus: record.vcpus.into(),
                ram_mib: record.ram_mib.into(),
                vfs: record.vfs.len() as u32,
            };
            check_quota(stack, &self.instances, Some(record.id), need)?;
        }
        let template = self.template(&record.template, Some(record.template_version))?;
        let kernel = PathBuf::from(template.spec.kernel.as_str());
        if !kernel.is_file() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                &format!(
                    "the kernel {} of template {}@{} does not exist: install it or create a new template version",
                    kernel.display(),
                    template.name,
                    template.version
                ),
            ));
        }
        Ok(updated)
    }

    fn vm_spec(&self, record: &InstanceRecord) -> Result<VmSpec, ApiError> {
        let template = self.template(&record.template, Some(record.template_version))?;
        let (console_log, vmm_log, disk) = self.instance_files(record.id);
        let files_failed = |err: std::io::Error, path: &PathBuf| {
            ApiError::new(
                ErrorCode::Internal,
                &format!(
                    "cannot prepare {}: {err}; check the state directory",
                    path.display()
                ),
            )
        };
        if let Some(dir) = disk.parent() {
            std::fs::create_dir_all(dir).map_err(|e| files_failed(e, &disk))?;
        }
        let disk = if record.disk_gib > 0 {
            // Created sparse, grown after a resize; never shrunk.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&disk)
                .map_err(|e| files_failed(e, &disk))?;
            let size = u64::from(record.disk_gib) << 30;
            let current = file.metadata().map(|m| m.len()).unwrap_or(0);
            if current < size {
                file.set_len(size).map_err(|e| files_failed(e, &disk))?;
            }
            Some(disk)
        } else {
            None
        };
        let spec = &template.spec;
        Ok(VmSpec {
            id: record.id,
            name: record.name.clone(),
            cores: record.cores.clone(),
            housekeeping: self.config.housekeeping_cores.iter().copied().collect(),
            ram_mib: record.ram_mib,
            hugepages: record.hugepages,
            kernel: PathBuf::from(spec.kernel.as_str()),
            initramfs: spec.initramfs.as_ref().map(|p| PathBuf::from(p.as_str())),
            cmdline: spec.cmdline.to_string(),
            disk,
            graceful_stop_timeout_ms: spec.graceful_stop_timeout_ms.into(),
            console_log,
            vmm_log,
            vfio: record
                .vfs
                .iter()
                .filter_map(|v| v.assigned.as_ref())
                .filter_map(|a| Some((a.addr.clone(), a.guest_slot?)))
                .collect(),
        })
    }

    /// Asks instance `id`'s VMM to stop (records `stopping` first). A VMM that does not
    /// answer is killed; a graceful stop is forced after `timeout_ms` (the template's by
    /// default).
    pub(crate) fn stop(
        &mut self,
        id: u32,
        actor: &Actor,
        force: bool,
        timeout_ms: Option<u64>,
        reason: &str,
    ) -> Result<(), ApiError> {
        let mut updated = self.instances[&id].clone();
        updated.want_running = false;
        let mut events = Vec::new();
        if updated.state != InstanceState::Stopping {
            events.push(self.transition(&mut updated, InstanceState::Stopping, actor, reason));
        }
        self.apply(Changes {
            put_instances: vec![updated.clone()],
            events,
            ..Default::default()
        })?;
        let Some(pid) = updated.vmm.as_ref().map(|v| v.pid) else {
            return Ok(());
        };
        let request = if force {
            VmmRequest::StopForced
        } else {
            VmmRequest::StopGraceful
        };
        if let Err(err) = self.supervisor.call(id, &request) {
            log::warn!("instance {id}: stop request not taken ({err}): killing VMM pid {pid}");
            self.supervisor.kill(pid);
            return Ok(());
        }
        if !force {
            let template_ms = self
                .template(&updated.template, Some(updated.template_version))
                .map(|t| u64::from(t.spec.graceful_stop_timeout_ms))
                .unwrap_or(10_000);
            let timeout = timeout_ms.unwrap_or(template_ms);
            self.timers.push(Timer {
                at: Instant::now() + Duration::from_millis(timeout),
                id,
                kind: TimerKind::ForceStop { pid },
            });
        }
        Ok(())
    }

    pub(crate) fn on_vmm_event(&mut self, event: VmmEvent) {
        match event {
            VmmEvent::Ready { id, pid } => {
                let Some(record) = self.instances.get(&id) else {
                    return;
                };
                if record.vmm.as_ref().map(|v| v.pid) != Some(pid)
                    || record.state != InstanceState::Starting
                {
                    return;
                }
                let mut updated = record.clone();
                let not_passed = updated
                    .vfs
                    .iter()
                    .filter_map(|v| v.assigned.as_ref())
                    .filter(|a| a.guest_slot.is_none())
                    .count();
                let reason = match not_passed {
                    0 => format!("VMM pid {pid} running"),
                    n => format!(
                        "VMM pid {pid} running without its {n} VF{}: simulated VFs cannot be \
                         passed to a guest (hostd --sim)",
                        if n == 1 { "" } else { "s" }
                    ),
                };
                let event =
                    self.transition(&mut updated, InstanceState::Running, &Actor::Hostd, &reason);
                let result = self.apply(Changes {
                    put_instances: vec![updated],
                    events: vec![event],
                    ..Default::default()
                });
                let reply = match result {
                    Ok(()) => Reply::Ok(self.instance_response(id)),
                    Err(err) => Reply::Error(err),
                };
                self.answer(id, WaitFor::Running, &reply);
            }
            VmmEvent::Exited { id, pid, info } => {
                let Some(record) = self.instances.get(&id) else {
                    return;
                };
                // A report about an earlier VMM of this instance is stale.
                if record.vmm.as_ref().is_some_and(|v| v.pid != pid) {
                    return;
                }
                if record.vmm.is_none() && !record.state.has_vmm() {
                    return;
                }
                self.vmm_ended(id, &info, "");
            }
        }
    }

    /// Instance `id`'s VMM is gone: stopped as asked, failed to start, or died. `context`
    /// prefixes the reason (e.g. while hostd was down).
    pub(crate) fn vmm_ended(&mut self, id: u32, info: &ExitInfo, context: &str) {
        let mut updated = self.instances[&id].clone();
        updated.vmm = None;
        // The VMM is gone (its watcher saw the pidfd exit, or it never ran): its VFs were
        // reset by vfio-pci as it closed them and can go back now.
        let mut events = self.release_vfs(&mut updated);
        self.timers
            .retain(|t| !(t.id == id && matches!(t.kind, TimerKind::ForceStop { .. })));
        let operator_start = self
            .waiters
            .iter()
            .any(|w| w.id == id && w.until == WaitFor::Running);
        let description = format!("{context}{}", info.description);
        if !updated.want_running || updated.state == InstanceState::Stopping {
            events.push(self.transition(
                &mut updated,
                InstanceState::Stopped,
                &Actor::Hostd,
                &format!("stopped: {description}"),
            ));
        } else if operator_start && updated.state == InstanceState::Starting {
            updated.want_running = false;
            events.push(self.transition(
                &mut updated,
                InstanceState::Error,
                &Actor::Hostd,
                &format!("start failed: {description}"),
            ));
        } else if updated.ha {
            let policy = self.config.ha.clone();
            match policy.on_failure(&mut updated.ha_failures, now_ms()) {
                Restart::GiveUp { failures } => {
                    updated.want_running = false;
                    let reason = format!(
                        "HA gave up after {failures} failures in {} s; last: {description}; start it again when fixed",
                        policy.window_ms / 1000
                    );
                    events.push(self.transition(
                        &mut updated,
                        InstanceState::Down,
                        &Actor::Ha,
                        &reason,
                    ));
                }
                Restart::After { delay_ms, failures } => {
                    let reason = format!(
                        "{description}; HA restart in {delay_ms} ms (failure {failures} of {})",
                        policy.max_failures
                    );
                    events.push(self.transition(
                        &mut updated,
                        InstanceState::Error,
                        &Actor::Ha,
                        &reason,
                    ));
                    self.timers.push(Timer {
                        at: Instant::now() + Duration::from_millis(delay_ms),
                        id,
                        kind: TimerKind::HaRestart,
                    });
                }
            }
        } else {
            updated.want_running = false;
            let (to, reason) = if info.powered_off() {
                (
                    InstanceState::Stopped,
                    format!("the guest stopped by itself: {description}"),
                )
            } else {
                (InstanceState::Error, description.clone())
            };
            events.push(self.transition(&mut updated, to, &Actor::Hostd, &reason));
        }
        let result = self.apply(Changes {
            put_instances: vec![updated.clone()],
            events,
            ..Default::default()
        });
        if let Err(err) = &result {
            log::error!("instance {id}: end of VMM not recorded: {err}");
        }
        // Parked replies: a start that did not make it, stops that did.
        let code = if info.vf_refused() {
            ErrorCode::VfUnavailable
        } else {
            ErrorCode::VmmFailed
        };
        let start_reply = Reply::Error(ApiError::new(
            code,
            &format!("instance {} did not start: {description}", updated.name),
        ));
        self.answer(id, WaitFor::Running, &start_reply);
        let waiting: Vec<Waiter> = self.take_waiters(id, WaitFor::Stopped);
        for waiter in waiting {
            let reply = match (&waiter.then_delete, &result) {
                (_, Err(err)) => Reply::Error(err.clone()),
                (Some(caller), Ok(())) => match self.delete_now(caller, id) {
                    Ok(response) => Reply::Ok(response),
                    Err(err) => Reply::Error(err),
                },
                (None, Ok(())) => match self.instances.get(&id) {
                    Some(_) => Reply::Ok(self.instance_response(id)),
                    None => Reply::Ok(hostd_proto::Response::Done),
                },
            };
            let _ = waiter.reply.send(Handled::Reply(reply));
        }
    }

    fn take_waiters(&mut self, id: u32, until: WaitFor) -> Vec<Waiter> {
        let (taken, kept) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.id == id && w.until == until);
        self.waiters = kept;
        taken
    }

    fn answer(&mut self, id: u32, until: WaitFor, reply: &Reply) {
        for waiter in self.take_waiters(id, until) {
            let _ = waiter.reply.send(Handled::Reply(reply.clone()));
        }
    }

    pub(crate) fn fire_timers(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<Timer>, Vec<Timer>) = std::mem::take(&mut self.timers)
            .into_iter()
            .partition(|t| t.at <= now);
        self.timers = later;
        for timer in due {
            if timer.kind == TimerKind::FastpathRestart {
                self.fastpath_restart_due();
                continue;
            }
            let Some(record) = self.instances.get(&timer.id) else {
                continue;
            };
            match timer.kind {
                TimerKind::HaRestart => {
                    if record.want_running && record.ha && record.state == InstanceState::Error {
                        let failures = record.ha_failures.len();
                        let reason = format!("HA restart (failure {failures})");
                        if let Outcome::Now(Err(err)) =
                            self.start(timer.id, &Actor::Ha, None, &reason)
                        {
                            // Admission refused (cores, RAM, quota): HA cannot fix that.
                            self.vmm_ended(
                                timer.id,
                                &ExitInfo {
                                    code: None,
                                    description: err.message.to_string(),
                                },
                                "HA restart refused: ",
                            );
                        }
                    }
                }
                TimerKind::FastpathRestart => {}
                TimerKind::ForceStop { pid } => {
                    if record.vmm.as_ref().is_some_and(|v| v.pid == pid) {
                        log::warn!("instance {}: graceful stop timed out: forcing", timer.id);
                        if self
                            .supervisor
                            .call(timer.id, &VmmRequest::StopForced)
                            .is_err()
                        {
                            self.supervisor.kill(pid);
                        }
                    }
                }
            }
        }
    }

    /// At start-up: finds the VMM of every instance that had one. Running VMMs are
    /// re-adopted as they are, with their VFs; VMMs that ended while hostd was down are
    /// handled as if their exit had just been seen (HA included, their VFs given back); VFs
    /// recorded for instances without a VMM are given back; HA restarts that were pending
    /// are scheduled again.
    pub fn adopt_all(&mut self) {
        let ids: Vec<u32> = self.instances.keys().copied().collect();
        for id in ids {
            let record = self.instances[&id].clone();
            if record.state.has_vmm() || record.vmm.is_some() {
                let (_, vmm_log, _) = self.instance_files(id);
                match self.supervisor.find(id, record.vmm.as_ref(), &vmm_log) {
                    Found::Adopted {
                        record: vmm,
                        status,
                    } => {
                        let mut updated = record.clone();
                        updated.vmm = Some(vmm.clone());
                        let to = match (status.state, record.state) {
                            (VmState::Paused, _) => InstanceState::Paused,
                            (_, InstanceState::Stopping) => InstanceState::Stopping,
                            _ => InstanceState::Running,
                        };
                        let mut events = Vec::new();
                        if to != record.state {
                            events.push(self.transition(
                                &mut updated,
                                to,
                                &Actor::Hostd,
                                "VMM found running after hostd restart",
                            ));
                        }
                        events.push(self.event(
                            &Actor::Hostd,
                            Some(&updated),
                            EventKind::Adopted { pid: vmm.pid },
                            &format!("re-adopted VMM pid {} after hostd restart", vmm.pid),
                        ));
                        log::info!(
                            "instance {id} ({}): re-adopted VMM pid {}",
                            record.name,
                            vmm.pid
                        );
                        if let Err(err) = self.apply(Changes {
                            put_instances: vec![updated],
                            events,
                            ..Default::default()
                        }) {
                            log::error!("instance {id}: adoption not recorded: {err}");
                        }
                        if to == InstanceState::Stopping {
                            let _ = self.stop(
                                id,
                                &Actor::Hostd,
                                false,
                                None,
                                "stop resumed after hostd restart",
                            );
                        }
                    }
                    Found::Starting { record: vmm } => {
                        let mut updated = record.clone();
                        updated.vmm = Some(vmm);
                        if updated.state != InstanceState::Starting {
                            let event = self.transition(
                                &mut updated,
                                InstanceState::Starting,
                                &Actor::Hostd,
                                "VMM found starting after hostd restart",
                            );
                            let _ = self.apply(Changes {
                                put_instances: vec![updated],
                                events: vec![event],
                                ..Default::default()
                            });
                        } else {
                            let _ = self.apply(Changes {
                                put_instances: vec![updated],
                                ..Default::default()
                            });
                        }
                    }
                    Found::Gone(info) => {
                        log::info!(
                            "instance {id} ({}): VMM ended while hostd was down: {}",
                            record.name,
                            info.description
                        );
                        self.vmm_ended(id, &info, "while hostd was down: ");
                    }
                }
            } else if record.state == InstanceState::Error && record.want_running && record.ha {
                let delay = self.config.ha.backoff_ms(record.ha_failures.len() as u32);
                self.timers.push(Timer {
                    at: Instant::now() + Duration::from_millis(delay),
                    id,
                    kind: TimerKind::HaRestart,
                });
            }
        }
        self.release_orphaned_vfs();
    }
}
