//! Templates (versioned), stacks (with admins and quotas) and the event log.

use hostd_proto::{
    ApiError, CreateStack, CreateTemplate, ErrorCode, EventKind, EventPage, EventQuery,
    MAX_EVENTS_PER_PAGE, MAX_STACKS, Response, SetStackAdmins, SetStackQuota, StackInfo,
    StackUsage, TemplateInfo, TemplateRef, TemplateSummary, name,
};

use super::{Daemon, internal, visible_event};
use crate::access::Caller;
use crate::admission::stack_usage;
use crate::store::{Changes, StackRecord, TemplateRecord};

use super::instances::validate_name;

pub(super) fn admin_only(caller: &Caller, action: &str) -> Result<(), ApiError> {
    if caller.role != hostd_proto::Role::Admin {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            &format!(
                "{} may not {action}: appliance admins only",
                caller.describe()
            ),
        ));
    }
    Ok(())
}

impl Daemon {
    /// Template `name` at `version` (the latest when `None`).
    pub(crate) fn template(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<&TemplateRecord, ApiError> {
        let found = match version {
            Some(v) => self.templates.get(&(name.to_owned(), v)),
            None => self
                .templates
                .range((name.to_owned(), 0)..=(name.to_owned(), u32::MAX))
                .next_back()
                .map(|(_, t)| t),
        };
        found.ok_or_else(|| {
            let what = match version {
                Some(v) => format!("{name}@{v}"),
                None => name.to_owned(),
            };
            ApiError::new(
                ErrorCode::NotFound,
                &format!("no template {what}: `hostctl template list` shows them"),
            )
        })
    }

    pub(crate) fn list_templates(&self) -> Response {
        let mut list = hostd_proto::heapless::Vec::new();
        let mut names: Vec<&String> = self.templates.keys().map(|(n, _)| n).collect();
        names.dedup();
        for template_name in names {
            let Ok(latest) = self.template(template_name, None) else {
                continue;
            };
            let instances = self
                .instances
                .values()
                .filter(|i| &i.template == template_name)
                .count() as u32;
            let _ = list.push(TemplateSummary {
                name: name(template_name),
                latest_version: latest.version,
                description: latest.spec.description.clone(),
                instances,
            });
        }
        Response::Templates(list)
    }

    pub(crate) fn show_template(&self, r: &TemplateRef) -> Result<Response, ApiError> {
        let t = self.template(&r.name, r.version)?;
        Ok(Response::Template(TemplateInfo {
            name: name(&t.name),
            version: t.version,
            spec: t.spec.clone(),
            created_ms: t.created_ms,
        }))
    }

    pub(crate) fn create_template(
        &mut self,
        caller: &Caller,
        args: CreateTemplate,
    ) -> Result<Response, ApiError> {
        admin_only(caller, "create templates")?;
        validate_name("template", &args.name)?;
        let spec = args.spec;
        if !spec.kernel.starts_with('/') {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                &format!(
                    "kernel `{}` must be an absolute path on the host",
                    spec.kernel
                ),
            ));
        }
        if spec.vcpus == 0 || spec.ram_mib < 16 {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "a template needs at least 1 vCPU and 16 MiB of RAM",
            ));
        }
        let version = self
            .template(&args.name, None)
            .map_or(1, |latest| latest.version + 1);
        let record = TemplateRecord {
            name: args.name.to_string(),
            version,
            spec,
            created_ms: super::now_ms(),
        };
        let event = self.event(
            &caller.actor(),
            None,
            EventKind::TemplateCreated {
                name: args.name.clone(),
                version,
            },
            &format!("template {}@{version} created", args.name),
        );
        self.apply(Changes {
            put_templates: vec![record],
            events: vec![event],
            ..Default::default()
        })?;
        self.show_template(&TemplateRef {
            name: args.name,
            version: Some(version),
        })
    }

    pub(crate) fn delete_template(
        &mut self,
        caller: &Caller,
        template: &str,
    ) -> Result<Response, ApiError> {
        admin_only(caller, "delete templates")?;
        self.template(template, None)?;
        let users: Vec<&str> = self
            .instances
            .values()
            .filter(|i| i.template == template)
            .map(|i| i.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                &format!(
                    "template {template} is used by {}: delete those instances first",
                    users.join(", ")
                ),
            ));
        }
        let event = self.event(
            &caller.actor(),
            None,
            EventKind::TemplateDeleted {
                name: name(template),
            },
            &format!("template {template} deleted"),
        );
        self.apply(Changes {
            delete_templates: vec![template.to_owned()],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(Response::Done)
    }

    fn stack_info(&self, stack: &StackRecord) -> StackInfo {
        let usage = stack_usage(&stack.name, &self.instances, None);
        StackInfo {
            name: name(&stack.name),
            admins: stack.admins.iter().cloned().collect(),
            quota: stack.quota.clone(),
            usage: StackUsage {
                instances: usage.instances,
                vcpus: usage.vcpus,
                ram_mib: usage.ram_mib,
                vfs: usage.vfs,
            },
        }
    }

    fn find_stack(&self, caller: &Caller, stack: &str) -> Result<&StackRecord, ApiError> {
        self.stacks
            .get(stack)
            .filter(|_| caller.can_see(Some(stack)))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    &format!("no stack {stack} that you can see: `hostctl stack list` shows them"),
                )
            })
    }

    pub(crate) fn list_stacks(&self, caller: &Caller) -> Response {
        let mut list = hostd_proto::heapless::Vec::new();
        for stack in self
            .stacks
            .values()
            .filter(|s| caller.can_see(Some(&s.name)))
        {
            let _ = list.push(self.stack_info(stack));
        }
        Response::Stacks(list)
    }

    pub(crate) fn show_stack(&self, caller: &Caller, stack: &str) -> Result<Response, ApiError> {
        Ok(Response::Stack(
            self.stack_info(self.find_stack(caller, stack)?),
        ))
    }

    fn put_stack(
        &mut self,
        caller: &Caller,
        record: StackRecord,
        reason: &str,
    ) -> Result<Response, ApiError> {
        let mut event = self.event(&caller.actor(), None, EventKind::StackChanged, reason);
        event.stack = Some(name(&record.name));
        let info = self.stack_info(&record);
        self.apply(Changes {
            put_stacks: vec![record],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(Response::Stack(info))
    }

    pub(crate) fn create_stack(
        &mut self,
        caller: &Caller,
        args: CreateStack,
    ) -> Result<Response, ApiError> {
        admin_only(caller, "create stacks")?;
        validate_name("stack", &args.name)?;
        if self.stacks.contains_key(args.name.as_str()) {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                &format!("stack {} exists", args.name),
            ));
        }
        if self.stacks.len() >= MAX_STACKS {
            return Err(ApiError::new(
                ErrorCode::InsufficientResources,
                &format!("at most {MAX_STACKS} stacks: delete one first"),
            ));
        }
        let record = StackRecord {
            name: args.name.to_string(),
            admins: args.admins.into_iter().collect(),
            quota: args.quota,
        };
        let reason = format!("stack {} created", args.name);
        self.put_stack(caller, record, &reason)
    }

    pub(crate) fn set_stack_quota(
        &mut self,
        caller: &Caller,
        args: SetStackQuota,
    ) -> Result<Response, ApiError> {
        admin_only(caller, "change stack quotas")?;
        let mut record = self.find_stack(caller, &args.name)?.clone();
        record.quota = args.quota;
        let reason = format!("stack {} quota changed", args.name);
        self.put_stack(caller, record, &reason)
    }

    pub(crate) fn set_stack_admins(
        &mut self,
        caller: &Caller,
        args: SetStackAdmins,
    ) -> Result<Response, ApiError> {
        admin_only(caller, "change stack admins")?;
        let mut record = self.find_stack(caller, &args.name)?.clone();
        record.admins = args.admins.into_iter().collect();
        let reason = format!("stack {} admins changed", args.name);
        self.put_stack(caller, record, &reason)
    }

    pub(crate) fn delete_stack(
        &mut self,
        caller: &Caller,
        stack: &str,
    ) -> Result<Response, ApiError> {
        admin_only(caller, "delete stacks")?;
        self.find_stack(caller, stack)?;
        let members: Vec<&str> = self
            .instances
            .values()
            .filter(|i| i.stack.as_deref() == Some(stack))
            .map(|i| i.name.as_str())
            .collect();
        if !members.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                &format!(
                    "stack {stack} still has instances {}: delete them first",
                    members.join(", ")
                ),
            ));
        }
        let mut event = self.event(
            &caller.actor(),
            None,
            EventKind::StackChanged,
            &format!("stack {stack} deleted"),
        );
        event.stack = Some(name(stack));
        self.apply(Changes {
            delete_stacks: vec![stack.to_owned()],
            events: vec![event],
            ..Default::default()
        })?;
        Ok(Response::Done)
    }

    pub(crate) fn list_events(
        &self,
        caller: &Caller,
        query: &EventQuery,
    ) -> Result<Response, ApiError> {
        let instance = query
            .instance
            .as_ref()
            .map(|r| self.find(caller, r))
            .transpose()?;
        let limit = match usize::from(query.limit) {
            0 => MAX_EVENTS_PER_PAGE,
            n => n.min(MAX_EVENTS_PER_PAGE),
        };
        let (events, more) = self
            .store()
            .events(query.after, limit, query.newest, |e| {
                visible_event(caller, e)
                    && instance.is_none_or(|id| e.instance.as_ref().is_some_and(|i| i.id == id))
            })
            .map_err(internal)?;
        let last_seq = self.last_event_seq();
        Ok(Response::Events(EventPage {
            events: events.into_iter().take(MAX_EVENTS_PER_PAGE).collect(),
            more,
            last_seq,
        }))
    }
}

impl Daemon {
    /// Defines template `template` version 1 when there are no templates at all (first
    /// start of `hostd --sim`).
    pub fn seed_template(&mut self, template: &str, spec: hostd_proto::TemplateSpec) {
        if !self.templates.is_empty() {
            return;
        }
        let record = TemplateRecord {
            name: template.to_owned(),
            version: 1,
            spec,
            created_ms: super::now_ms(),
        };
        let event = self.event(
            &hostd_proto::Actor::Hostd,
            None,
            EventKind::TemplateCreated {
                name: name(template),
                version: 1,
            },
            &format!("template {template}@1 defined at first start"),
        );
        if let Err(err) = self.apply(Changes {
            put_templates: vec![record],
            events: vec![event],
            ..Default::default()
        }) {
            log::warn!("template {template} not defined: {err}");
        }
    }
}
