//! Instance calls: create, start, stop, reboot, pause/resume, resize, rename, regroup,
//! HA, delete, console. Each checks the caller's role and the instance's state, runs
//! admission where sizes change, commits, then acts on the VMM.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use hostd_proto::{
    ApiError, CreateInstance, DeleteInstance, ErrorCode, EventKind, InstanceState, MAX_INSTANCES,
    MAX_VCPUS, RebootInstance, RegroupInstance, RenameInstance, ResizeInstance, Response, SetHa,
    StopInstance, VfRequest,
};
use vmm::api::{RebootMode, Request as VmmRequest};

use super::{Daemon, Handled, Outcome, WaitFor, Waiter};
use crate::access::Caller;
use crate::admission::{Usage, check_quota};
use crate::store::{Changes, InstanceRecord};

/// Checks a display name: lower-case letters, digits, `-`, `_`, `.`, starting with a letter
/// or digit, at most 32 bytes, and not `i-<digits>` (the id form).
pub fn validate_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let id_form = name
        .strip_prefix("i-")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()));
    if !ok_chars || !ok_start || name.len() > 32 || id_form {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            &format!(
                "`{name}` is not a valid {what} name: use lower-case letters, digits, '-', '_' \
                 and '.', starting with a letter or digit, at most 32 characters (and not i-<number>)"
            ),
        ));
    }
    Ok(())
}

fn invalid_state(record: &InstanceRecord, action: &str, hint: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        &format!(
            "cannot {action} instance {}: it is {}{hint}",
            record.name,
            record.state.as_str()
        ),
    )
}

fn denied(caller: &Caller, action: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PermissionDenied,
        &format!(
            "{} may not {action}: ask an appliance admin",
            caller.describe()
        ),
    )
}

fn stopped_like(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Defined
            | InstanceState::Stopped
            | InstanceState::Down
            | InstanceState::Error
    )
}

impl Daemon {
    /// The id of the instance `r` (name or `i-<id>`) if the caller may see it.
    pub(crate) fn find(&self, caller: &Caller, r: &str) -> Result<u32, ApiError> {
        let by_id = r
            .strip_prefix("i-")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|id| self.instances.contains_key(id));
        let id = by_id.or_else(|| self.instances.values().find(|i| i.name == r).map(|i| i.id));
        match id {
            Some(id) if caller.can_see(self.instances[&id].stack.as_deref()) => Ok(id),
            _ => Err(ApiError::new(
                ErrorCode::NotFound,
                &format!("no instance {r} that you can see: `hostctl list` shows them"),
            )),
        }
    }

    /// Like [`Self::find`], and the caller must be allowed to change it.
    fn find_managed(&self, caller: &Caller, r: &str, action: &str) -> Result<u32, ApiError> {
        let id = self.find(caller, r)?;
        if !caller.can_manage(self.instances[&id].stack.as_deref()) {
            return Err(denied(caller, action));
        }
        Ok(id)
    }

    pub(crate) fn instance_response(&self, id: u32) -> Response {
        Response::Instance(self.instance_info(&self.instances[&id]))
    }

    fn vm_dir(&self, id: u32) -> PathBuf {
        self.config.state_dir.join("vms").join(id.to_string())
    }

    /// Moves a (cloned) record to `to` and returns the event.
    pub(crate) fn transition(
        &mut self,
        record: &mut InstanceRecord,
        to: InstanceState,
        actor: &hostd_proto::Actor,
        reason: &str,
    ) -> hostd_proto::Event {
        let from = record.state;
        record.state = to;
        record.state_reason = reason.to_owned();
        record.state_since_ms = super::now_ms();
        log::info!(
            "instance {} ({}): {} -> {}: {reason}",
            record.id,
            record.name,
            from.as_str(),
            to.as_str()
        );
        self.event(actor, Some(record), EventKind::State { from, to }, reason)
    }

    pub(crate) fn create_instance(
        &mut self,
        caller: &Caller,
        args: CreateInstance,
        reply: &Sender<Handled>,
    ) -> Outcome {
        let start = args.start;
        match self.create(caller, args) {
            Ok(id) if start => {
                let actor = caller.actor();
                self.start(id, &actor, Some(reply), "created with --start")
            }
            Ok(id) => Outcome::Now(Ok(self.instance_response(id))),
            Err(err) => Outcome::Now(Err(err)),
        }
    }

    fn create(&mut self, caller: &Caller, args: CreateInstance) -> Result<u32, ApiError> {
        validate_name("instance", &args.name)?;
        let stack = args.stack.as_ref().map(|s| s.to_string());
        if !caller.can_manage(stack.as_deref()) {
            return Err(match &stack {
                Some(s) => denied(caller, &format!("create instances in stack {s}")),
                None => denied(caller, "create instances outside a stack"),
            });
        }
        if self
            .instances
            .values()
            .any(|i| i.name == args.name.as_str())
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                &format!(
                    "an instance named {} exists: choose another name",
                    args.name
                ),
            ));
        }
        let stack_record = match &stack {
            Some(s) => Some(self.stacks.get(s).cloned().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    &format!("no stack {s}: `hostctl stack list` shows them"),
                )
            })?),
            None => None,
        };
        let template = self
            .template(&args.template, args.template_version)?
            .clone();
        if self.instances.len() >= MAX_INSTANCES {
            return Err(ApiError::new(
                ErrorCode::InsufficientResources,
                &format!("the box holds at most {MAX_INSTANCES} instances: delete one first"),
            ));
        }
        let spec = &template.spec;
        let vcpus = args.vcpus.unwrap_or(spec.vcpus);
        let ram_mib = args.ram_mib.unwrap_or(spec.ram_mib);
        let disk_gib = args.disk_gib.unwrap_or(spec.disk_gib);
        check_sizes(vcpus, ram_mib)?;
        let vf_requests: Vec<VfRequest> = match &args.vfs {
            Some(list) => list.iter().cloned().collect(),
            None => vec![VfRequest::default(); usize::from(spec.vfs)],
        };
        let id = self.next_instance_id;
        if !vf_requests.is_empty() {
            self.refresh_ports();
        }
        let res = self.resources();
        if let Some(stack) = &stack_record {
            let need = Usage {
                instances: 1,
                vcpus: vcpus.into(),
                ram_mib: ram_mib.into(),
                vfs: vf_requests.len() as u32,
            };
            check_quota(stack, &self.instances, None, need)?;
        }
        // VFs are checked first: they are the scarcest (per port, fixed by the NIC), so a
        // refusal names them even when cores are short too. Where they go depends on the
        // cores (NUMA), so they are placed once the cores are known.
        res.allocate_vfs(None, &vf_requests, &[])?;
        let cores = res.allocate_cores(None, &[], vcpus)?;
        res.check_memory(None, ram_mib, spec.hugepages)?;
        let vfs = res.allocate_vfs(None, &vf_requests, &cores)?;
        let state_dir = self.config.state_dir.clone();
        res.check_disk(None, disk_gib, &|i| {
            state_dir.join("vms").join(i.to_string())
        })?;
        let now = super::now_ms();
        let record = InstanceRecord {
            id,
            name: args.name.to_string(),
            stack,
            group: args.group.map(|g| g.to_string()),
            template: template.name.clone(),
            template_version: template.version,
            vcpus,
            ram_mib,
            disk_gib,
            hugepages: spec.hugepages,
            ha: args.ha.unwrap_or(spec.ha),
            cores,
            vfs,
            state: InstanceState::Defined,
            state_reason: "created".into(),
            state_since_ms: now,
            want_running: false,
            vmm: None,
            ha_failures: Vec::new(),
            created_ms: now,
        };
        let reason = format!("created from {}@{}", template.name, template.version);
        let event = self.event(&caller.actor(), Some(&record), EventKind::Created, &reason);
        self.apply(Changes {
            put_instances: vec![record],
            events: vec![event],
            next_instance_id: Some(id + 1),
            ..Default::default()
        })?;
        Ok(id)
    }

    pub(crate) fn start_request(
        &mut self,
        caller: &Caller,
        r: &str,
        reply: &Sender<Handled>,
    ) -> Outcome {
        match self.find_managed(caller, r, "start instances") {
            Ok(id) => {
                let actor = caller.actor();
                self.start(id, &actor, Some(reply), "start requested")
            }
            Err(err) => Outcome::Now(Err(err)),
        }
    }

    pub(crate) fn stop_request(
        &mut self,
        caller: &Caller,
        args: &StopInstance,
        reply: &Sender<Handled>,
    ) -> Outcome {
        let id = match self.find_managed(caller, &args.instance, "stop instances") {
            Ok(id) => id,
            Err(err) => return Outcome::Now(Err(err)),
        };
        let record = &self.instances[&id];
        if stopped_like(record.state) {
            return Outcome::Now(Ok(self.instance_response(id)));
        }
        let timeout = args.timeout_ms.map(u64::from);
        let reason = if args.force {
            "forced stop requested"
        } else {
            "stop requested"
        };
        match self.stop(id, &caller.actor(), args.force, timeout, reason) {
            Ok(()) => {
                self.waiters.push(Waiter {
                    id,
                    until: WaitFor::Stopped,
                    reply: reply.clone(),
                    then_delete: None,
                });
                Outcome::Later
            }
            Err(err) => Outcome::Now(Err(err)),
        }
    }

    pub(crate) fn reboot(
        &mut self,
        caller: &Caller,
        args: &RebootInstance,
    ) -> Result<Response, ApiError> {
        let id = self.find_managed(caller, &args.instance, "reboot instances")?;
        let record = self.instances[&id].clone();
        if !matches!(record.state, InstanceState::Running | InstanceState::Paused) {
            return Err(invalid_state(&record, "reboot", ": start it instead"));
        }
        let mode = if args.hard {
            RebootMode::Hard
        } else {
            RebootMode::Soft
        };
        self.supervisor
            .call(id, &VmmRequest::Reboot(mode))
            .map_err(|e| vmm_failed(&record, &e))?;
        let mut updated = record;
        let mut events = Vec::new();
        if updated.state == InstanceState::Paused && args.hard {
            events.push(self.transition(
                &mut updated,
                InstanceState::Running,
                &caller.actor(),
                "hard reboot resumes it",
            ));
        }
        let what = if args.hard {
            "hard reboot"
        } else {
            "soft reboot"
        };
        events.push(self.event(
            &caller.actor(),
            Some(&updated),
            EventKind::Rebooted { hard: args.hard },
            &format!("{what} requested"),
        ));
        self.apply(Changes {
            put_instances: vec![updated],
            events,
            ..Default::default()
        })?;
        Ok(self.instance_response(id))
    }

    pub(crate) fn pause(
        &mut self,
        caller: &Caller,
        r: &str,
        pause: bool,
    ) -> Result<Response, ApiError> {
        let action = if pause { "pause" } else { "resume" };
        let id = self.find_managed(caller, r, &format!("{action} instances"))?;
        let record = self.instances[&id].clone();
        let (from, to, request) = if pause {
            (
                InstanceState::Running,
                InstanceState::Paused,
                VmmRequest::Pause,
            )
        } else {
            (
                InstanceState::Paused,
                InstanceState::Running,
                VmmRequest::Resume,
            )
        };
        if record.state == to {
            return Ok(self.instance_response(id));
        }
        if record.state != from {
            return Err(invalid_state(&record, action, ""));
        }
        self.supervisor
            .call(id, &request)
            .map_err(|e| vmm_failed(&record, &e))?;
        let mut updated = record;
        let event = self.transition(
            &mut updated,
            to,
            &caller.actor(),
            &format!("{action} requested"),
        );
        self.apply(Changes {
            put_instances: vec![updated],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(self.instance_response(id))
    }

    pub(crate) fn resize(
        &mut self,
        caller: &Caller,
        args: &ResizeInstance,
    ) -> Result<Response, ApiError> {
        let id = self.find_managed(caller, &args.instance, "resize instances")?;
        let record = self.instances[&id].clone();
        if !stopped_like(record.state) {
            return Err(invalid_state(&record, "resize", ": stop it first"));
        }
        let vcpus = args.vcpus.unwrap_or(record.vcpus);
        let ram_mib = args.ram_mib.unwrap_or(record.ram_mib);
        let disk_gib = args.disk_gib.unwrap_or(record.disk_gib);
        check_sizes(vcpus, ram_mib)?;
        if disk_gib < record.disk_gib {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                &format!(
                    "disks only grow: {} has {} GiB, {disk_gib} GiB asked (shrinking would cut the guest's file systems)",
                    record.name, record.disk_gib
                ),
            ));
        }
        let res = self.resources();
        if let Some(stack) = record.stack.as_ref().and_then(|s| self.stacks.get(s)) {
            let need = Usage {
                instances: 1,
                vcpus: vcpus.into(),
                ram_mib: ram_mib.into(),
                vfs: record.vfs.len() as u32,
            };
            check_quota(stack, &self.instances, Some(id), need)?;
        }
        let cores = res.allocate_cores(Some(id), &record.cores, vcpus)?;
        res.check_memory(Some(id), ram_mib, record.hugepages)?;
        let state_dir = self.config.state_dir.clone();
        res.check_disk(Some(id), disk_gib - record.disk_gib, &|i| {
            state_dir.join("vms").join(i.to_string())
        })?;
        let reason = format!(
            "resized: {} vCPUs, {} MiB, {} GiB disk (was {}, {}, {})",
            vcpus, ram_mib, disk_gib, record.vcpus, record.ram_mib, record.disk_gib
        );
        let mut updated = record;
        updated.vcpus = vcpus;
        updated.ram_mib = ram_mib;
        updated.disk_gib = disk_gib;
        updated.cores = cores;
        let event = self.event(&caller.actor(), Some(&updated), EventKind::Resized, &reason);
        self.apply(Changes {
            put_instances: vec![updated],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(self.instance_response(id))
    }

    pub(crate) fn rename(
        &mut self,
        caller: &Caller,
        args: &RenameInstance,
    ) -> Result<Response, ApiError> {
        let id = self.find_managed(caller, &args.instance, "rename instances")?;
        validate_name("instance", &args.new_name)?;
        if self
            .instances
            .values()
            .any(|i| i.name == args.new_name.as_str() && i.id != id)
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                &format!(
                    "an instance named {} exists: choose another name",
                    args.new_name
                ),
            ));
        }
        let mut updated = self.instances[&id].clone();
        let from = std::mem::replace(&mut updated.name, args.new_name.to_string());
        let event = self.event(
            &caller.actor(),
            Some(&updated),
            EventKind::Renamed {
                from: hostd_proto::name(&from),
            },
            &format!("renamed from {from}"),
        );
        self.apply(Changes {
            put_instances: vec![updated],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(self.instance_response(id))
    }

    pub(crate) fn regroup(
        &mut self,
        caller: &Caller,
        args: &RegroupInstance,
    ) -> Result<Response, ApiError> {
        let id = self.find_managed(caller, &args.instance, "regroup instances")?;
        if let Some(group) = &args.group {
            validate_name("group", group)?;
        }
        let mut updated = self.instances[&id].clone();
        updated.group = args.group.as_ref().map(|g| g.to_string());
        let reason = match &updated.group {
            Some(g) => format!("group set to {g}"),
            None => "group cleared".to_owned(),
        };
        let event = self.event(
            &caller.actor(),
            Some(&updated),
            EventKind::Regrouped,
            &reason,
        );
        self.apply(Changes {
            put_instances: vec![updated],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(self.instance_response(id))
    }

    pub(crate) fn set_ha(&mut self, caller: &Caller, args: &SetHa) -> Result<Response, ApiError> {
        let id = self.find_managed(caller, &args.instance, "change HA")?;
        let mut updated = self.instances[&id].clone();
        updated.ha = args.enabled;
        updated.ha_failures.clear();
        let reason = if args.enabled { "HA on" } else { "HA off" };
        let event = self.event(
            &caller.actor(),
            Some(&updated),
            EventKind::HaChanged,
            reason,
        );
        self.apply(Changes {
            put_instances: vec![updated],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(self.instance_response(id))
    }

    pub(crate) fn delete_request(
        &mut self,
        caller: &Caller,
        args: &DeleteInstance,
        reply: &Sender<Handled>,
    ) -> Outcome {
        let id = match self.find_managed(caller, &args.instance, "delete instances") {
            Ok(id) => id,
            Err(err) => return Outcome::Now(Err(err)),
        };
        let record = &self.instances[&id];
        if !stopped_like(record.state) {
            if !args.force {
                return Outcome::Now(Err(invalid_state(
                    record,
                    "delete",
                    ": stop it first, or delete with --force to stop it by force",
                )));
            }
            if let Err(err) = self.stop(id, &caller.actor(), true, None, "forced delete") {
                return Outcome::Now(Err(err));
            }
            self.waiters.push(Waiter {
                id,
                until: WaitFor::Stopped,
                reply: reply.clone(),
                then_delete: Some(caller.clone()),
            });
            return Outcome::Later;
        }
        Outcome::Now(self.delete_now(caller, id))
    }

    /// Deletes a stopped instance: its record (and so its cores, RAM and VFs), then its
    /// files.
    pub(crate) fn delete_now(&mut self, caller: &Caller, id: u32) -> Result<Response, ApiError> {
        // Two forced deletes of one instance both wait for its stop; the second finds it
        // gone, which is what it asked for.
        let Some(record) = self.instances.get(&id).cloned() else {
            return Ok(Response::Done);
        };
        let reason = format!(
            "deleted; released cores {}, {} MiB, {} VFs",
            crate::cpulist::format(&record.cores),
            record.ram_mib,
            record.vfs.len()
        );
        // A stopped instance holds no VF; one whose release was never recorded gives it
        // back here rather than lose track of it.
        let mut record = record;
        let mut events = self.release_vfs(&mut record);
        events.push(self.event(&caller.actor(), Some(&record), EventKind::Deleted, &reason));
        self.apply(Changes {
            delete_instances: vec![id],
            events,
            ..Default::default()
        })?;
        for dir in [self.vm_dir(id), self.supervisor.paths(id).dir] {
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("instance {id}: cannot remove {}: {err}", dir.display());
                }
            }
        }
        Ok(Response::Done)
    }

    pub(crate) fn console(&mut self, caller: &Caller, r: &str) -> Result<PathBuf, ApiError> {
        let id = self.find_managed(caller, r, "use a console")?;
        let record = &self.instances[&id];
        if !matches!(
            record.state,
            InstanceState::Running | InstanceState::Paused | InstanceState::Stopping
        ) {
            return Err(invalid_state(
                record,
                "attach to the console of",
                ": start it first",
            ));
        }
        Ok(self.supervisor.paths(id).console)
    }

    /// Files of instance `id` under the state directory.
    pub(crate) fn instance_files(&self, id: u32) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.vm_dir(id);
        (
            dir.join("console.log"),
            dir.join("vmm.log"),
            dir.join("disk.raw"),
        )
    }
}

pub(crate) fn vmm_failed(
    record: &InstanceRecord,
    err: &crate::supervisor::SupervisorError,
) -> ApiError {
    ApiError::new(
        ErrorCode::VmmFailed,
        &format!(
            "the VMM of {} did not carry out the request: {err}",
            record.name
        ),
    )
}

fn check_sizes(vcpus: u16, ram_mib: u32) -> Result<(), ApiError> {
    if vcpus == 0 || usize::from(vcpus) > MAX_VCPUS {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            &format!("{vcpus} vCPUs asked: use 1 to {MAX_VCPUS}"),
        ));
    }
    if ram_mib < 16 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            &format!("{ram_mib} MiB of RAM asked: use at least 16"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["web-1", "a", "db.primary", "x_y", "9lives"] {
            validate_name("instance", good).unwrap();
        }
        for bad in ["", "Web", "-x", "a b", "i-12", &"x".repeat(33)] {
            assert_eq!(
                validate_name("instance", bad).unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{bad}"
            );
        }
        validate_name("instance", "i-x").unwrap();
    }
}
