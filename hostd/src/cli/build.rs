//! Command lines turned into API requests: parsing of VF specs, admins and
//! template@version references.

use hostd_proto::{
    CreateInstance, CreateStack, CreateTemplate, DeleteInstance, EventQuery, InstanceRef,
    ListFilter, NameRef, Principal, RebootInstance, RegroupInstance, RenameInstance, Request,
    ResizeInstance, SetHa, SetStackAdmins, SetStackQuota, StopInstance, TemplateRef, TemplateSpec,
    VfRequest, bounded, name, text,
};

use super::{CliError, Cmd, FastpathCmd, StackCmd, TemplateCmd, usage};

pub(super) fn parse_principal(s: &str) -> Result<Principal, CliError> {
    let bad = || {
        usage(format!(
            "`{s}` is not an admin: use user:NAME, group:NAME, uid:N or gid:N"
        ))
    };
    let (kind, value) = s.split_once(':').ok_or_else(bad)?;
    Ok(match kind {
        "user" => Principal::User(name(value)),
        "group" => Principal::Group(name(value)),
        "uid" => Principal::Uid(value.parse().map_err(|_| bad())?),
        "gid" => Principal::Gid(value.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

pub(super) fn parse_vf(s: &str) -> Result<VfRequest, CliError> {
    let mut vf = VfRequest::default();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| usage(format!("`{part}` in --vf is not key=value")))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| usage(format!("`{v}` for {key} in --vf is not a number")))
        };
        match key {
            "port" => vf.port = Some(name(value)),
            "mac" => vf.mac = Some(bounded(value)),
            "vlan" => vf.vlan = Some(number(value)?.try_into().unwrap_or(u16::MAX)),
            "qos" => vf.vlan_qos = Some(number(value)?.try_into().unwrap_or(u8::MAX)),
            "min" => vf.min_tx_mbps = Some(number(value)?),
            "max" => vf.max_tx_mbps = Some(number(value)?),
            _ => {
                return Err(usage(format!(
                    "unknown --vf key `{key}`: use port, mac, vlan, qos, min, max"
                )));
            }
        }
    }
    Ok(vf)
}

pub(super) fn template_ref(s: &str) -> Result<(String, Option<u32>), CliError> {
    match s.split_once('@') {
        Some((n, v)) => Ok((
            n.to_owned(),
            Some(
                v.parse()
                    .map_err(|_| usage(format!("`{v}` in {s} is not a version number")))?,
            ),
        )),
        None => Ok((s.to_owned(), None)),
    }
}

fn iref(s: &str) -> InstanceRef {
    InstanceRef { instance: name(s) }
}

/// The request a command sends (None: commands that are not one call).
pub(super) fn request(cmd: &Cmd) -> Result<Option<Request>, CliError> {
    Ok(Some(match cmd {
        Cmd::Status => Request::HostStatus,
        Cmd::Inventory => Request::Inventory,
        Cmd::Whoami => Request::Hello,
        Cmd::Fastpath { action } => match action {
            None | Some(FastpathCmd::Status) => Request::FastpathStatus,
            Some(FastpathCmd::Restart) => Request::RestartFastpath,
        },
        Cmd::List { stack, group } => Request::ListInstances(ListFilter {
            stack: stack.as_deref().map(name),
            group: group.as_deref().map(name),
        }),
        Cmd::Show { instance } => Request::ShowInstance(iref(instance)),
        Cmd::Create(a) => {
            let (template, template_version) = template_ref(&a.template)?;
            let mut vfs: Vec<VfRequest> =
                a.vf.iter().map(|s| parse_vf(s)).collect::<Result<_, _>>()?;
            if let Some(n) = a.vfs {
                while vfs.len() < usize::from(n) {
                    vfs.push(VfRequest::default());
                }
            }
            let given = !vfs.is_empty() || a.vfs.is_some();
            let mut list = hostd_proto::heapless::Vec::new();
            for vf in vfs {
                list.push(vf).map_err(|_| {
                    usage(format!(
                        "at most {} VFs per instance",
                        hostd_proto::MAX_VFS_PER_INSTANCE
                    ))
                })?;
            }
            Request::CreateInstance(CreateInstance {
                name: name(&a.name),
                template: name(&template),
                template_version,
                stack: a.stack.as_deref().map(name),
                group: a.group.as_deref().map(name),
                vcpus: a.vcpus,
                ram_mib: a.ram,
                disk_gib: a.disk,
                ha: a.ha.then_some(true),
                vfs: given.then_some(list),
                start: a.start,
            })
        }
        Cmd::Start { instance } => Request::StartInstance(iref(instance)),
        Cmd::Stop {
            instance,
            force,
            timeout,
        } => Request::StopInstance(StopInstance {
            instance: name(instance),
            force: *force,
            timeout_ms: timeout.map(|s| s.saturating_mul(1000)),
        }),
        Cmd::Reboot { instance, hard } => Request::RebootInstance(RebootInstance {
            instance: name(instance),
            hard: *hard,
        }),
        Cmd::Pause { instance } => Request::PauseInstance(iref(instance)),
        Cmd::Resume { instance } => Request::ResumeInstance(iref(instance)),
        Cmd::Resize {
            instance,
            vcpus,
            ram,
            disk,
        } => Request::ResizeInstance(ResizeInstance {
            instance: name(instance),
            vcpus: *vcpus,
            ram_mib: *ram,
            disk_gib: *disk,
        }),
        Cmd::Rename { instance, new_name } => Request::RenameInstance(RenameInstance {
            instance: name(instance),
            new_name: name(new_name),
        }),
        Cmd::Regroup { instance, group } => Request::RegroupInstance(RegroupInstance {
            instance: name(instance),
            group: group.as_deref().map(name),
        }),
        Cmd::Ha { instance, setting } => Request::SetInstanceHa(SetHa {
            instance: name(instance),
            enabled: setting == "on",
        }),
        Cmd::Delete { instance, force } => Request::DeleteInstance(DeleteInstance {
            instance: name(instance),
            force: *force,
        }),
        Cmd::Template(t) => match t {
            TemplateCmd::List => Request::ListTemplates,
            TemplateCmd::Show { template } => {
                let (n, version) = template_ref(template)?;
                Request::ShowTemplate(TemplateRef {
                    name: name(&n),
                    version,
                })
            }
            TemplateCmd::Create {
                name: n,
                kernel,
                initramfs,
                cmdline,
                description,
                vcpus,
                ram,
                disk,
                vfs,
                hugepages,
                ha,
                stop_timeout_ms,
            } => Request::CreateTemplate(CreateTemplate {
                name: name(n),
                spec: TemplateSpec {
                    description: text(description),
                    kernel: bounded(&kernel.to_string_lossy()),
                    initramfs: initramfs.as_ref().map(|p| bounded(&p.to_string_lossy())),
                    cmdline: text(cmdline),
                    vcpus: *vcpus,
                    ram_mib: *ram,
                    disk_gib: *disk,
                    hugepages: *hugepages,
                    vfs: *vfs,
                    ha: *ha,
                    graceful_stop_timeout_ms: *stop_timeout_ms,
                },
            }),
            TemplateCmd::Delete { name: n } => Request::DeleteTemplate(NameRef { name: name(n) }),
        },
        Cmd::Stack(s) => match s {
            StackCmd::List => Request::ListStacks,
            StackCmd::Show { name: n } => Request::ShowStack(NameRef { name: name(n) }),
            StackCmd::Create {
                name: n,
                admins,
                quota,
            } => Request::CreateStack(CreateStack {
                name: name(n),
                admins: principals(admins)?,
                quota: quota.quota(),
            }),
            StackCmd::Quota { name: n, quota } => Request::SetStackQuota(SetStackQuota {
                name: name(n),
                quota: quota.quota(),
            }),
            StackCmd::Admins { name: n, admins } => Request::SetStackAdmins(SetStackAdmins {
                name: name(n),
                admins: principals(admins)?,
            }),
            StackCmd::Delete { name: n } => Request::DeleteStack(NameRef { name: name(n) }),
        },
        Cmd::Events {
            follow: false,
            instance,
            limit,
        } => Request::ListEvents(EventQuery {
            after: 0,
            limit: *limit,
            instance: instance.as_deref().map(name),
            newest: true,
        }),
        Cmd::Events { .. }
        | Cmd::Console { .. }
        | Cmd::Shell
        | Cmd::Completions { .. }
        | Cmd::Raw { .. } => return Ok(None),
    }))
}

fn principals(
    list: &[String],
) -> Result<hostd_proto::heapless::Vec<Principal, { hostd_proto::MAX_ADMINS }>, CliError> {
    let mut out = hostd_proto::heapless::Vec::new();
    for p in list {
        out.push(parse_principal(p)?)
            .map_err(|_| usage(format!("at most {} admins", hostd_proto::MAX_ADMINS)))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vf_specs_admins_and_template_refs_parse() {
        let vf = parse_vf("port=eth0,mac=02:00:00:00:00:01,vlan=10,qos=3,max=1000").unwrap();
        assert_eq!(vf.port.as_deref(), Some("eth0"));
        assert_eq!(vf.vlan, Some(10));
        assert_eq!(vf.max_tx_mbps, Some(1000));
        assert!(parse_vf("colour=red").is_err());
        assert_eq!(parse_principal("uid:7").unwrap(), Principal::Uid(7));
        assert!(parse_principal("alice").is_err());
        assert_eq!(template_ref("probe@2").unwrap(), ("probe".into(), Some(2)));
        assert!(template_ref("probe@x").is_err());
    }
}
