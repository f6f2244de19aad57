//! The control loop: the VMM's main thread. It owns the [`Vm`] and waits (epoll) on the
//! control socket, the console socket and its client, device and vCPU events, the graceful
//! stop timer and SIGTERM/SIGINT. A request goes: socket -> [`api::read_frame`] ->
//! [`ControlLoop::handle_request`] -> VM operation -> reply, all on this thread.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{self, RebootMode, Request, Response, VcpuStatus, VmState, VmStatus};
use crate::config::VmConfig;
use crate::devices::lock;
use crate::events::VmEvent;
use crate::vm::{StartError, Vm};

/// Errors of the control sockets.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another live process listens on the socket path.
    #[error("socket {path} is in use by another running process: is this VM already running?")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// The socket could not be created.
    #[error("cannot create the socket {path}: check that its directory exists and is writable")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// epoll, timerfd or signalfd setup failed.
    #[error("cannot set up the control loop ({what})")]
    Setup {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why the VM ended; each maps to a process exit code (docs/VMM.md "Exit codes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (ACPI S5, or debug exit 0).
    PoweredOff,
    /// The guest wrote a non-zero value to the debug exit port.
    GuestExit(u8),
    /// Stopped by force: forced stop, graceful stop timeout, SIGTERM/SIGINT.
    Forced,
    /// A vCPU or the VMM failed.
    Failed(String),
}

/// Process exit codes.
pub mod exit_code {
    /// Guest powered off.
    pub const POWERED_OFF: i32 = 0;
    /// Failure while running.
    pub const RUNTIME_FAILURE: i32 = 1;
    /// Bad command line or config file.
    pub const BAD_CONFIG: i32 = 2;
    /// Kernel or initramfs missing or not a kernel.
    pub const BAD_KERNEL: i32 = 3;
    /// vCPU cores not present or taken.
    pub const CORES_UNAVAILABLE: i32 = 4;
    /// Not enough memory or huge pages, or memory cannot be locked.
    pub const MEMORY_UNAVAILABLE: i32 = 5;
    /// Disk image missing, read-only when rw was asked, or in use.
    pub const BAD_DISK: i32 = 6;
    /// /dev/kvm missing or refusing.
    pub const KVM_UNAVAILABLE: i32 = 7;
    /// Control or console socket in use or not creatable.
    pub const SOCKET_UNAVAILABLE: i32 = 8;
    /// A passthrough device is missing or not bound to vfio-pci.
    pub const VFIO_DEVICE_UNAVAILABLE: i32 = 9;
    /// A passthrough device's IOMMU group is not viable.
    pub const VFIO_GROUP_NOT_VIABLE: i32 = 11;
    /// No VFIO or no IOMMU on the host (or KVM without its VFIO device).
    pub const VFIO_UNSUPPORTED: i32 = 12;
    /// A passthrough device is in use by another process (another VM).
    pub const VFIO_DEVICE_BUSY: i32 = 13;
    /// VFIO or KVM refused to set up a passthrough device, or its BARs do not fit.
    pub const VFIO_SETUP_FAILED: i32 = 14;
    /// Stopped by force.
    pub const FORCED_STOP: i32 = 10;
    /// Debug exit `v != 0` exits with `GUEST_EXIT_BASE + v`, capped at 127.
    pub const GUEST_EXIT_BASE: i32 = 100;
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::PoweredOff => exit_code::POWERED_OFF,
            Self::GuestExit(v) => (exit_code::GUEST_EXIT_BASE + i32::from(*v)).min(127),
            Self::Forced => exit_code::FORCED_STOP,
            Self::Failed(_) => exit_code::RUNTIME_FAILURE,
        }
    }
}

/// The exit code of a start failure.
pub fn start_exit_code(err: &StartError) -> i32 {
    match err {
        StartError::Boot(_) => exit_code::BAD_KERNEL,
        StartError::Cores(_) => exit_code::CORES_UNAVAILABLE,
        StartError::Memory(_) => exit_code::MEMORY_UNAVAILABLE,
        StartError::Disk(_) => exit_code::BAD_DISK,
        StartError::Kvm { .. } => exit_code::KVM_UNAVAILABLE,
        StartError::ConsoleLog { .. } => exit_code::BAD_CONFIG,
        StartError::Passthrough(err) => err.exit_code(),
        StartError::Host { .. } | StartError::Bus(_) | StartError::Vcpu(_) => {
            exit_code::RUNTIME_FAILURE
        }
    }
}

/// A unix socket bound for this process, removed when dropped.
#[derive(Debug)]
pub struct OwnedSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl OwnedSocket {
    /// Binds `path` (mode 0600), replacing a stale socket file nobody listens on.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| ControlError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the VM is in a stop or soft reboot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping,
    Rebooting,
}

const TOKEN_EVENTS: u64 = 0;
const TOKEN_CONTROL: u64 = 1;
const TOKEN_CONSOLE_LISTENER: u64 = 2;
const TOKEN_CONSOLE_CLIENT: u64 = 3;
const TOKEN_TIMER: u64 = 4;
const TOKEN_SIGNALS: u64 = 5;

/// Blocks SIGTERM and SIGINT in this thread (and so in threads started after) and returns
/// a signalfd that receives them.
pub fn take_stop_signals() -> Result<SignalFd, ControlError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    let setup = |source: nix::Error| ControlError::Setup {
        what: "signalfd",
        source: source.into(),
    };
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(setup)?;
    SignalFd::new(&mask).map_err(setup)
}

/// The sockets, opened before the VM is created so a second VMM on the same paths fails early.
#[derive(Debug)]
pub struct Sockets {
    /// Control socket.
    pub control: OwnedSocket,
    /// Console socket, when configured.
    pub console: Option<OwnedSocket>,
}

impl Sockets {
    /// Binds the sockets of `config`.
    pub fn bind(config: &VmConfig) -> Result<Self, ControlError> {
        let control = OwnedSocket::bind(&config.control_socket)?;
        let console = config
            .console
            .socket
            .as_deref()
            .map(OwnedSocket::bind)
            .transpose()?;
        Ok(Self { control, console })
    }
}

/// The main thread's loop around one VM.
pub struct ControlLoop {
    vm: Vm,
    sockets: Sockets,
    signals: SignalFd,
    epoll: Epoll,
    timer: TimerFd,
    console_client: Option<UnixStream>,
    pending_input: VecDeque<u8>,
    paused: bool,
    phase: Phase,
}

impl std::fmt::Debug for ControlLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLoop")
            .field("vm", &self.vm)
            .field("phase", &self.phase)
            .finish()
    }
}

impl ControlLoop {
    /// Sets up the loop around a created (parked) VM.
    pub fn new(vm: Vm, sockets: Sockets, signals: SignalFd) -> Result<Self, ControlError> {
        let setup = |what| move |source| ControlError::Setup { what, source };
        let epoll = Epoll::new().map_err(setup("epoll"))?;
        let timer = TimerFd::new().map_err(|e| setup("timerfd")(e.into()))?;
        let add = |fd: i32, token| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(setup("epoll registration"))
        };
        add(vm.events.wake_fd().as_raw_fd(), TOKEN_EVENTS)?;
        add(sockets.control.listener.as_raw_fd(), TOKEN_CONTROL)?;
        if let Some(console) = &sockets.console {
            add(console.listener.as_raw_fd(), TOKEN_CONSOLE_LISTENER)?;
        }
        add(timer.as_raw_fd(), TOKEN_TIMER)?;
        add(signals.as_raw_fd(), TOKEN_SIGNALS)?;
        Ok(Self {
            vm,
            sockets,
            signals,
            epoll,
            timer,
            console_client: None,
            pending_input: VecDeque::new(),
            paused: false,
            phase: Phase::Running,
        })
    }

    /// Starts the guest and serves until the VM ends.
    pub fn run(mut self) -> Outcome {
        log::info!(
            "{}: starting {} vCPUs on cores {:?}, {} MiB",
            self.vm.config.name,
            self.vm.vcpus.len(),
            self.vm.config.vcpu_cores,
            self.vm.config.memory_mib
        );
        self.vm.resume();
        let mut ready = vec![EpollEvent::default(); 8];
        let outcome = loop {
            let count = match self.epoll.wait(-1, &mut ready) {
                Ok(count) => count,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => break Outcome::Failed(format!("epoll: {err}")),
            };
            let mut ended = None;
            for event in &ready[..count] {
                let result = match event.data() {
                    TOKEN_EVENTS => self.on_vm_events(),
                    TOKEN_CONTROL => self.on_control_connection(),
                    TOKEN_CONSOLE_LISTENER => {
                        self.on_console_connection();
                        None
                    }
                    TOKEN_CONSOLE_CLIENT => {
                        self.on_console_input(event.event_set());
                        None
                    }
                    TOKEN_TIMER => self.on_timer(),
                    TOKEN_SIGNALS => self.on_signal(),
                    _ => None,
                };
                if result.is_some() {
                    ended = result;
                    break;
                }
            }
            if let Some(outcome) = ended {
                break outcome;
            }
        };
        log::info!("{}: VM ends: {outcome:?}", self.vm.config.name);
        self.vm.stop();
        outcome
    }

    fn on_vm_events(&mut self) -> Option<Outcome> {
        for event in self.vm.events.drain() {
            let outcome = match event {
                VmEvent::PowerOff | VmEvent::DebugExit(0) if self.phase == Phase::Rebooting => {
                    self.restart("soft reboot")
                }
                VmEvent::PowerOff | VmEvent::DebugExit(0) => Some(Outcome::PoweredOff),
                VmEvent::DebugExit(value) => Some(Outcome::GuestExit(value)),
                VmEvent::Reset { reason } => self.restart(reason),
                VmEvent::VcpuFailed { vcpu, message } => {
                    Some(Outcome::Failed(format!("vCPU {vcpu}: {message}")))
                }
                VmEvent::ConsoleInputSpace => {
                    self.deliver_input();
                    None
                }
            };
            if outcome.is_some() {
                return outcome;
            }
        }
        None
    }

    /// Restarts the machine from its boot state (keeping it paused if it was).
    fn restart(&mut self, reason: &str) -> Option<Outcome> {
        log::info!("{}: reset ({reason})", self.vm.config.name);
        if let Err(err) = self.vm.pause().and_then(|()| self.vm.reset()) {
            return Some(Outcome::Failed(format!("reset failed: {err}")));
        }
        if self.phase == Phase::Rebooting {
            self.phase = Phase::Running;
            self.disarm_timer();
        }
        if !self.paused {
            self.vm.resume();
        }
        None
    }

    fn arm_timer(&mut self) {
        let timeout = Duration::from_millis(self.vm.config.graceful_stop_timeout_ms.max(1));
        if let Err(err) = self.timer.reset(timeout, None) {
            log::error!("cannot arm the graceful stop timer: {err}");
        }
    }

    fn disarm_timer(&mut self) {
        if let Err(err) = self.timer.clear() {
            log::warn!("cannot disarm the graceful stop timer: {err}");
        }
    }

    fn on_timer(&mut self) -> Option<Outcome> {
        // Non-blocking here: epoll said it expired.
        let _ = self.timer.wait();
        match self.phase {
            Phase::Stopping => {
                log::warn!(
                    "{}: guest did not power off in time: forced stop",
                    self.vm.config.name
                );
                Some(Outcome::Forced)
            }
            Phase::Rebooting => {
                log::warn!(
                    "{}: guest did not power off in time: hard reboot",
                    self.vm.config.name
                );
                self.restart("soft reboot timeout")
            }
            Phase::Running => None,
        }
    }

    fn on_signal(&mut self) -> Option<Outcome> {
        match self.signals.read_signal() {
            Ok(Some(info)) => {
                log::info!(
                    "{}: signal {} received: forced stop",
                    self.vm.config.name,
                    info.ssi_signo
                );
                Some(Outcome::Forced)
            }
            _ => None,
        }
    }

    fn on_control_connection(&mut self) -> Option<Outcome> {
        let mut stream = match self.sockets.control.listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) => {
                if err.kind() != ErrorKind::WouldBlock {
                    log::warn!("control socket accept: {err}");
                }
                return None;
            }
        };
        // One request per connection; a client that does not send it promptly is dropped
        // rather than stalling the loop.
        let timeout = Some(Duration::from_secs(1));
        if stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(timeout))
            .is_err()
        {
            return None;
        }
        let request: Request = match api::read_frame(&mut stream) {
            Ok(request) => request,
            Err(err) => {
                log::warn!("control request not read: {err}");
                return None;
            }
        };
        log::info!("{}: control request {request:?}", self.vm.config.name);
        let (response, outcome) = self.handle_request(request);
        if let Err(err) = api::write_frame(&mut stream, &response) {
            log::warn!("control reply not sent: {err}");
        }
        outcome
    }

    /// Carries out one control request.
    pub fn handle_request(&mut self, request: Request) -> (Response, Option<Outcome>) {
        match request {
            Request::Status => (Response::Status(self.status()), None),
            Request::StopForced => (Response::Ok, Some(Outcome::Forced)),
            Request::StopGraceful => {
                self.press_power_button(Phase::Stopping);
                (Response::Ok, None)
            }
            Request::Reboot(RebootMode::Soft) => {
                self.press_power_button(Phase::Rebooting);
                (Response::Ok, None)
            }
            Request::Reboot(RebootMode::Hard) => {
                let was_paused = std::mem::replace(&mut self.paused, false);
                if was_paused {
                    log::info!(
                        "{}: hard reboot of a paused VM resumes it",
                        self.vm.config.name
                    );
                }
                self.phase = Phase::Running;
                self.disarm_timer();
                match self.restart("hard reboot request") {
                    None => (Response::Ok, None),
                    Some(outcome) => (Response::Error("reset failed".into()), Some(outcome)),
                }
            }
            Request::Pause => {
                if self.paused {
                    return (Response::Ok, None);
                }
                match self.vm.pause() {
                    Ok(()) => {
                        self.paused = true;
                        (Response::Ok, None)
                    }
                    Err(err) => (Response::Error(err), None),
                }
            }
            Request::Resume => {
                self.paused = false;
                self.vm.resume();
                (Response::Ok, None)
            }
        }
    }

    fn press_power_button(&mut self, phase: Phase) {
        if self.paused {
            // A parked guest cannot see the button.
            self.paused = false;
            self.vm.resume();
        }
        self.phase = phase;
        lock(&self.vm.pm).press_power_button();
        self.arm_timer();
    }

    fn status(&self) -> VmStatus {
        let proc_status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |field: &str| -> u64 {
            proc_status
                .lines()
                .find_map(|line| {
                    line.strip_prefix(field)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        VmStatus {
            name: self.vm.config.name.clone(),
            pid: std::process::id(),
            state: match (self.paused, self.phase) {
                (true, _) => VmState::Paused,
                (false, Phase::Running) => VmState::Running,
                (false, Phase::Stopping) => VmState::Stopping,
                (false, Phase::Rebooting) => VmState::Rebooting,
            },
            vcpus: self
                .vm
                .vcpus
                .iter()
                .map(|v| VcpuStatus {
                    index: v.index as u32,
                    host_core: v.core as u32,
                    tid: v.stats.tid.load(Ordering::Relaxed),
                    exits: v.stats.exits.load(Ordering::Relaxed),
                    io_exits: v.stats.io_exits.load(Ordering::Relaxed),
                    mmio_exits: v.stats.mmio_exits.load(Ordering::Relaxed),
                })
                .collect(),
            guest_memory_bytes: self.vm.ram.bytes,
            hugepages: self.vm.ram.hugepages,
            rss_bytes: kib("VmRSS:") << 10,
            locked_bytes: kib("VmLck:") << 10,
            resets: self.vm.resets,
            passthrough: self.vm.passthrough.status(),
        }
    }

    fn on_console_connection(&mut self) {
        let Some(console) = &self.sockets.console else {
            return;
        };
        let stream = match console.listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => return,
        };
        let output = match stream.try_clone() {
            Ok(output) => output,
            Err(err) => {
                log::warn!("console client not attached: {err}");
                return;
            }
        };
        self.drop_console_client();
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let registered = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_CONSOLE_CLIENT),
        );
        if let Err(err) = registered {
            log::warn!("console client not attached: {err}");
            return;
        }
        lock(&self.vm.serial).uart.writer_mut().attach(output);
        self.console_client = Some(stream);
        log::info!("{}: console client attached", self.vm.config.name);
    }

    fn drop_console_client(&mut self) {
        if let Some(client) = self.console_client.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                client.as_raw_fd(),
                EpollEvent::default(),
            );
            lock(&self.vm.serial).uart.writer_mut().detach();
        }
    }

    fn set_client_interest(&self, events: EventSet) {
        if let Some(client) = &self.console_client {
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                client.as_raw_fd(),
                EpollEvent::new(events, TOKEN_CONSOLE_CLIENT),
            );
        }
    }

    fn on_console_input(&mut self, events: EventSet) {
        let Some(client) = self.console_client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 256];
        match client.read(&mut buf) {
            Ok(0) => self.drop_console_client(),
            Ok(n) => {
                self.pending_input.extend(&buf[..n]);
                self.deliver_input();
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    self.drop_console_client();
                }
            }
            Err(_) => self.drop_console_client(),
        }
    }

    /// Moves pending console input into the UART FIFO; stops reading the client while the
    /// FIFO is full (the guest's draining it sends [`VmEvent::ConsoleInputSpace`]).
    fn deliver_input(&mut self) {
        if !self.pending_input.is_empty() {
            let (front, _) = self.pending_input.as_slices();
            let taken = lock(&self.vm.serial).enqueue_input(front);
            self.pending_input.drain(..taken);
        }
        let interest = if self.pending_input.is_empty() {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        self.set_client_interest(interest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_guest_codes_capped() {
        assert_eq!(Outcome::PoweredOff.exit_code(), 0);
        assert_eq!(Outcome::Forced.exit_code(), 10);
        assert_eq!(Outcome::GuestExit(3).exit_code(), 103);
        assert_eq!(Outcome::GuestExit(200).exit_code(), 127);
        assert_eq!(Outcome::Failed(String::new()).exit_code(), 1);
    }

    #[test]
    fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let first = OwnedSocket::bind(&path).unwrap();
        assert!(matches!(
            OwnedSocket::bind(&path),
            Err(ControlError::SocketInUse { .. })
        ));
        // A socket file whose listener is gone is stale.
        let stale = UnixListener::bind(dir.path().join("stale")).unwrap();
        drop(stale);
        OwnedSocket::bind(&dir.path().join("stale")).unwrap();
        drop(first);
        assert!(!path.exists());
    }
}
