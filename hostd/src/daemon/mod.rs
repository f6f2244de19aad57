//! The state owner: one thread holds the in-memory state and the store, and carries out
//! every request and every VMM report in turn (STYLE.md: socket -> decode -> handler ->
//! state change (persisted) -> effect -> reply). Connection threads and VMM watcher threads
//! talk to it only through [`Command`]s on its channel.
//!
//! A change is committed to the store before it is applied in memory, broadcast to
//! subscribers or acknowledged. Calls that finish later (start waits for the VMM to answer,
//! stop for it to exit) park their reply sender in a [`Waiter`] until the VMM's watcher
//! reports.

mod catalog;
mod fastpath;
mod instances;
mod lifecycle;
mod vfs;
mod views;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostd_proto::{
    Actor, ApiError, ErrorCode, Event, EventInstance, EventKind, Reply, Request, Response, name,
    text,
};

use crate::access::{Caller, Peer};
use crate::admission::Resources;
use crate::config::Config;
use crate::fastpath::{FastpathEvent, FastpathProcess};
use crate::inventory::Inventory;
use crate::store::{Changes, InstanceRecord, StackRecord, Store, TemplateRecord};
use crate::supervisor::{Supervisor, VmmEvent};

/// What the state owner is asked to do.
#[derive(Debug)]
pub enum Command {
    /// A client's call.
    Request {
        /// Who (peer credentials).
        peer: Peer,
        /// The call.
        request: Request,
        /// Where the answer goes.
        reply: Sender<Handled>,
    },
    /// A VMM watcher's report.
    Vmm(VmmEvent),
    /// The fastpath watcher's report.
    Fastpath(FastpathEvent),
    /// SIGTERM or SIGINT: stop fastpath and return from [`Daemon::run`] (guests keep
    /// running, as they do across any hostd restart).
    Shutdown,
}

/// The state owner's answer to a connection.
#[derive(Debug)]
pub enum Handled {
    /// Send this reply.
    Reply(Reply),
    /// Reply `subscribed`, then forward these events.
    Subscribed(Receiver<Event>),
    /// Reply `console_attached`, then proxy this console socket.
    Console {
        /// The instance as asked for.
        instance: hostd_proto::InstanceRef,
        /// The VMM's console socket.
        socket: PathBuf,
    },
}

/// What a handler did.
pub(crate) enum Outcome {
    /// Answer now.
    Now(Result<Response, ApiError>),
    /// A waiter was parked; it answers later.
    Later,
}

/// What a parked reply waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitFor {
    /// The instance runs (start).
    Running,
    /// The instance's VMM has exited (stop, forced delete).
    Stopped,
}

/// A parked reply.
pub(crate) struct Waiter {
    pub(crate) id: u32,
    pub(crate) until: WaitFor,
    pub(crate) reply: Sender<Handled>,
    /// Delete the instance once stopped (forced delete), on behalf of this caller.
    pub(crate) then_delete: Option<Caller>,
}

/// Something to do at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// HA: start the instance again.
    HaRestart,
    /// A graceful stop took too long: force it (if the VMM `pid` still runs).
    ForceStop {
        /// The VMM being stopped.
        pid: u32,
    },
    /// The fast path's restart delay is over (the timer's id is unused).
    FastpathRestart,
}

pub(crate) struct Timer {
    pub(crate) at: Instant,
    pub(crate) id: u32,
    pub(crate) kind: TimerKind,
}

struct Subscriber {
    tx: Sender<Event>,
    caller: Caller,
    instance: Option<u32>,
}

/// The state owner.
pub struct Daemon {
    pub(crate) config: Config,
    store: Store,
    /// The NIC: the real sysfs, or the simulated host of `--sim`.
    pub(crate) nic: sriov::Host,
    pub(crate) host_kind: crate::vfs::HostKind,
    pub(crate) inventory: Inventory,
    pub(crate) instances: BTreeMap<u32, InstanceRecord>,
    pub(crate) templates: BTreeMap<(String, u32), TemplateRecord>,
    pub(crate) stacks: BTreeMap<String, StackRecord>,
    pub(crate) next_instance_id: u32,
    next_event_seq: u64,
    pub(crate) supervisor: Supervisor,
    pub(crate) fastpath: fastpath::Fastpath,
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) timers: Vec<Timer>,
    subscribers: Vec<Subscriber>,
    admin_gid: Option<u32>,
    started: Instant,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("instances", &self.instances.len())
            .finish()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn internal(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        &format!(
            "the change was not recorded: {err}; nothing was changed, retry or check the state directory"
        ),
    )
}

impl Daemon {
    /// Opens the store and builds the state; [`Self::adopt_all`] re-adopts VMMs. `nic` is
    /// the host the VFs are on (`config.sim`: the simulated one).
    pub fn new(
        config: Config,
        nic: sriov::Host,
        inventory: Inventory,
        events: Sender<Command>,
    ) -> Result<Self, crate::store::StoreError> {
        let (store, loaded) = Store::open(&config.state_dir.join("state.redb"))?;
        let fastpath = fastpath::Fastpath::new(FastpathProcess::new(
            config.fastpath.clone(),
            &config.runtime_dir,
            &config.state_dir,
            events.clone(),
        ));
        let supervisor = Supervisor::new(
            config.vmm_path.clone(),
            config.runtime_dir.clone(),
            Duration::from_millis(config.vmm_start_timeout_ms),
            events,
        );
        let admin_gid = config
            .admin_group
            .as_deref()
            .and_then(crate::access::group_gid);
        if let (Some(group), None) = (&config.admin_group, admin_gid) {
            log::warn!("admin_group {group} does not exist: only root is an appliance admin");
        }
        Ok(Self {
            store,
            nic,
            host_kind: if config.sim {
                crate::vfs::HostKind::Simulated
            } else {
                crate::vfs::HostKind::Real
            },
            inventory,
            instances: loaded.instances.into_iter().map(|i| (i.id, i)).collect(),
            templates: loaded
                .templates
                .into_iter()
                .map(|t| ((t.name.clone(), t.version), t))
                .collect(),
            stacks: loaded
                .stacks
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            next_instance_id: loaded.next_instance_id,
            next_event_seq: loaded.next_event_seq,
            supervisor,
            fastpath,
            waiters: Vec::new(),
            timers: Vec::new(),
            subscribers: Vec::new(),
            admin_gid,
            started: Instant::now(),
            config,
        })
    }

    /// Serves commands until [`Command::Shutdown`] (or until every sender is gone), then
    /// stops fastpath.
    pub fn run(mut self, commands: Receiver<Command>) {
        loop {
            let next = self.timers.iter().map(|t| t.at).min();
            let command = match next {
                Some(at) => commands.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Shutdown) => {
                    log::info!("hostd shutting down; guests keep running");
                    break;
                }
                Ok(command) => self.dispatch(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.fire_timers();
        }
        self.stop_fastpath("hostd shut down");
    }

    fn dispatch(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let caller = Caller::resolve(&peer, self.admin_gid, &self.stacks);
                self.handle(&caller, request, reply);
            }
            Command::Vmm(event) => self.on_vmm_event(event),
            Command::Fastpath(event) => self.on_fastpath_event(event),
            Command::Shutdown => {}
        }
    }

    fn handle(&mut self, caller: &Caller, request: Request, reply: Sender<Handled>) {
        let outcome = match request {
            Request::Hello => Outcome::Now(Ok(self.hello(caller))),
            Request::HostStatus => Outcome::Now(Ok(self.host_status(caller))),
            Request::Inventory => {
                self.refresh_ports();
                Outcome::Now(Ok(self.inventory_view()))
            }
            Request::ListInstances(filter) => {
                Outcome::Now(Ok(self.list_instances(caller, &filter)))
            }
            Request::ShowInstance(r) => Outcome::Now(
                self.find(caller, &r.instance)
                    .map(|id| self.instance_response(id)),
            ),
            Request::CreateInstance(args) => self.create_instance(caller, args, &reply),
            Request::StartInstance(r) => self.start_request(caller, &r.instance, &reply),
            Request::StopInstance(args) => self.stop_request(caller, &args, &reply),
            Request::RebootInstance(args) => Outcome::Now(self.reboot(caller, &args)),
            Request::PauseInstance(r) => Outcome::Now(self.pause(caller, &r.instance, true)),
            Request::ResumeInstance(r) => Outcome::Now(self.pause(caller, &r.instance, false)),
            Request::ResizeInstance(args) => Outcome::Now(self.resize(caller, &args)),
            Request::RenameInstance(args) => Outcome::Now(self.rename(caller, &args)),
            Request::RegroupInstance(args) => Outcome::Now(self.regroup(caller, &args)),
            Request::SetInstanceHa(args) => Outcome::Now(self.set_ha(caller, &args)),
            Request::DeleteInstance(args) => self.delete_request(caller, &args, &reply),
            Request::ListTemplates => Outcome::Now(Ok(self.list_templates())),
            Request::ShowTemplate(r) => Outcome::Now(self.show_template(&r)),
            Request::CreateTemplate(args) => Outcome::Now(self.create_template(caller, args)),
            Request::DeleteTemplate(r) => Outcome::Now(self.delete_template(caller, &r.name)),
            Request::ListStacks => Outcome::Now(Ok(self.list_stacks(caller))),
            Request::ShowStack(r) => Outcome::Now(self.show_stack(caller, &r.name)),
            Request::CreateStack(args) => Outcome::Now(self.create_stack(caller, args)),
            Request::SetStackQuota(args) => Outcome::Now(self.set_stack_quota(caller, args)),
            Request::SetStackAdmins(args) => Outcome::Now(self.set_stack_admins(caller, args)),
            Request::DeleteStack(r) => Outcome::Now(self.delete_stack(caller, &r.name)),
            Request::ListEvents(query) => Outcome::Now(self.list_events(caller, &query)),
            Request::Subscribe(filter) => match self.subscribe(caller, &filter) {
                Ok(events) => {
                    let _ = reply.send(Handled::Subscribed(events));
                    return;
                }
                Err(err) => Outcome::Now(Err(err)),
            },
            Request::AttachConsole(r) => match self.console(caller, &r.instance) {
                Ok(socket) => {
                    let _ = reply.send(Handled::Console {
                        instance: r,
                        socket,
                    });
                    return;
                }
                Err(err) => Outcome::Now(Err(err)),
            },
            Request::FastpathStatus => Outcome::Now(Ok(self.fastpath_status())),
            Request::RestartFastpath => Outcome::Now(self.restart_fastpath(caller)),
        };
        if let Outcome::Now(result) = outcome {
            let _ = reply.send(Handled::Reply(match result {
                Ok(response) => Reply::Ok(response),
                Err(err) => Reply::Error(err),
            }));
        }
    }

    /// A new event (not yet committed: put it in a [`Changes`]).
    pub(crate) fn event(
        &mut self,
        actor: &Actor,
        instance: Option<&InstanceRecord>,
        kind: EventKind,
        reason: &str,
    ) -> Event {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        Event {
            seq,
            time_ms: now_ms(),
            actor: actor.clone(),
            instance: instance.map(|i| EventInstance {
                id: i.id,
                name: name(&i.name),
            }),
            stack: instance.and_then(|i| i.stack.as_deref()).map(name),
            kind,
            reason: text(reason),
        }
    }

    /// Commits `changes`, then applies them in memory and tells subscribers. On failure
    /// nothing changes (the event sequence numbers taken are simply skipped).
    pub(crate) fn apply(&mut self, changes: Changes) -> Result<(), ApiError> {
        if let Err(err) = self.store.commit(&changes) {
            log::error!("state store commit failed: {err}");
            return Err(internal(&err));
        }
        for record in changes.put_instances {
            self.instances.insert(record.id, record);
        }
        for id in &changes.delete_instances {
            self.instances.remove(id);
        }
        for record in changes.put_templates {
            self.templates
                .insert((record.name.clone(), record.version), record);
        }
        for name in &changes.delete_templates {
            self.templates.retain(|(n, _), _| n != name);
        }
        for record in changes.put_stacks {
            self.stacks.insert(record.name.clone(), record);
        }
        for name in &changes.delete_stacks {
            self.stacks.remove(name);
        }
        if let Some(next) = changes.next_instance_id {
            self.next_instance_id = next;
        }
        for event in &changes.events {
            self.broadcast(event);
        }
        Ok(())
    }

    fn broadcast(&mut self, event: &Event) {
        self.subscribers.retain(|sub| {
            let wanted = sub
                .instance
                .is_none_or(|id| event.instance.as_ref().is_some_and(|i| i.id == id))
                && visible_event(&sub.caller, event);
            !wanted || sub.tx.send(event.clone()).is_ok()
        });
    }

    fn subscribe(
        &mut self,
        caller: &Caller,
        filter: &hostd_proto::EventFilter,
    ) -> Result<Receiver<Event>, ApiError> {
        let instance = filter
            .instance
            .as_ref()
            .map(|r| self.find(caller, r))
            .transpose()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.subscribers.push(Subscriber {
            tx,
            caller: caller.clone(),
            instance,
        });
        Ok(rx)
    }

    /// What admission looks at now.
    pub(crate) fn resources(&self) -> Resources<'_> {
        Resources {
            config: &self.config,
            inventory: &self.inventory,
            instances: &self.instances,
            fastpath_cores: &self.fastpath.cores,
        }
    }

    pub(crate) fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn last_event_seq(&self) -> u64 {
        self.next_event_seq.saturating_sub(1)
    }

    /// Records that hostd started.
    pub fn record_start(&mut self) {
        let event = self.event(
            &Actor::Hostd,
            None,
            EventKind::HostdStarted,
            "hostd started",
        );
        if let Err(err) = self.apply(Changes {
            events: vec![event],
            ..Default::default()
        }) {
            log::warn!("start event not recorded: {err}");
        }
    }
}

/// Whether `caller` may see `event`.
pub(crate) fn visible_event(caller: &Caller, event: &Event) -> bool {
    match caller.role {
        hostd_proto::Role::StackAdmin => event
            .stack
            .as_ref()
            .is_some_and(|s| caller.stacks.contains(s.as_str())),
        _ => true,
    }
}
