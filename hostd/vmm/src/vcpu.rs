//! vCPU threads. Each vCPU runs in its own thread named `vcpu<N>`, pinned to its host core
//! before it first enters the guest. The control loop talks to it only through requests
//! ([`VcpuRequest`], over a channel) and replies ([`VcpuReply`]); the thread owns its
//! `VcpuFd`. Exit counters are the only state shared the other way (atomics, read-only for
//! the loop).
//!
//! Parking: a request is followed by a "kick", a real-time signal to the thread whose handler
//! sets `kvm_run.immediate_exit`. Whether the signal lands inside KVM_RUN (which returns
//! EINTR) or just before it (KVM_RUN then returns at once), the thread looks at its requests
//! before it enters the guest again, so a paused vCPU never runs.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;

use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, kvm_lapic_state, kvm_mp_state, kvm_run, kvm_vcpu_events,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::boot::{EntryMode, cpu};
use crate::cores;
use crate::devices::Bus;
use crate::events::{EventSender, VmEvent};

/// Errors starting a vCPU thread.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The thread could not be created.
    #[error("cannot start the thread of vCPU {index}")]
    Spawn {
        /// vCPU index.
        index: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not pin itself to its core.
    #[error("vCPU {index} cannot be pinned to host core {core}")]
    Pin {
        /// vCPU index.
        index: usize,
        /// Its core.
        core: usize,
        /// Why.
        #[source]
        source: cores::CoreError,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread ended before answering.
    #[error("vCPU {index} thread ended unexpectedly")]
    Gone {
        /// vCPU index.
        index: usize,
    },
}

/// What the control loop asks of a vCPU.
#[derive(Debug)]
pub enum VcpuRequest {
    /// Stop entering the guest; reply [`VcpuReply::Paused`].
    Pause,
    /// Enter the guest again.
    Resume,
    /// Load the boot state (only sent while paused).
    Reset(Option<EntryMode>),
    /// End the thread.
    Exit,
}

/// What a vCPU answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuReply {
    /// The vCPU is parked.
    Paused,
}

/// Counters of one vCPU, read by status.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// All exits.
    pub exits: AtomicU64,
    /// Port I/O exits.
    pub io_exits: AtomicU64,
    /// MMIO exits.
    pub mmio_exits: AtomicU64,
    /// Host thread id.
    pub tid: AtomicU32,
}

/// The control loop's handle on a vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    /// vCPU index (= APIC id).
    pub index: usize,
    /// Host core it is pinned to.
    pub core: usize,
    /// Its counters.
    pub stats: Arc<VcpuStats>,
    requests: Sender<VcpuRequest>,
    thread: Option<JoinHandle<()>>,
}

/// Signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run`, for the kick handler; null outside vCPU threads.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's kvm_run mapping, set by the vCPU thread
            // while it owns the VcpuFd and cleared before the fd is dropped. The handler runs
            // on that same thread, so nothing else touches the field concurrently.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler; once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)
}

impl VcpuHandle {
    /// Sends a request and kicks the thread out of the guest.
    pub fn request(&self, request: VcpuRequest) {
        if self.requests.send(request).is_ok() {
            if let Some(thread) = &self.thread {
                // The thread may have ended (failure); the request then goes nowhere.
                let _ = thread.kill(kick_signal());
            }
        }
    }

    /// Asks the thread to end and waits for it.
    pub fn stop(&mut self) {
        self.request(VcpuRequest::Exit);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("vCPU {} thread panicked", self.index);
            }
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a vCPU thread needs.
#[derive(Debug)]
pub struct VcpuSetup {
    /// vCPU index.
    pub index: usize,
    /// Host core.
    pub core: usize,
    /// Its KVM fd, with CPUID already set.
    pub fd: VcpuFd,
    /// Port I/O devices.
    pub io_bus: Arc<Bus>,
    /// MMIO devices.
    pub mmio_bus: Arc<Bus>,
    /// Events to the control loop.
    pub events: EventSender,
    /// Replies to the control loop.
    pub replies: Sender<(usize, VcpuReply)>,
}

/// Starts the thread of a vCPU, parked. Returns once the thread has pinned itself.
pub fn spawn(setup: VcpuSetup) -> Result<VcpuHandle, VcpuError> {
    let (index, core) = (setup.index, setup.core);
    let stats = Arc::new(VcpuStats::default());
    let (requests, rx) = channel();
    let (ready_tx, ready_rx) = channel();
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            // Pin before anything else: the thread never enters the guest elsewhere.
            if let Err(source) = cores::pin_current_thread(&[core]) {
                let _ = ready_tx.send(Err(VcpuError::Pin {
                    index,
                    core,
                    source,
                }));
                return;
            }
            thread_stats
                .tid
                .store(nix::unistd::gettid().as_raw() as u32, Ordering::Relaxed);
            let _ = ready_tx.send(Ok(()));
            VcpuThread {
                setup,
                rx,
                stats: thread_stats,
                initial_lapic: None,
            }
            .run();
        })
        .map_err(|source| VcpuError::Spawn { index, source })?;
    let mut handle = VcpuHandle {
        index,
        core,
        stats,
        requests,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(err)) => {
            handle.stop();
            Err(err)
        }
        Err(_) => {
            handle.stop();
            Err(VcpuError::Gone { index })
        }
    }
}

struct VcpuThread {
    setup: VcpuSetup,
    rx: Receiver<VcpuRequest>,
    stats: Arc<VcpuStats>,
    initial_lapic: Option<kvm_lapic_state>,
}

/// Whether the thread goes on after a request.
enum Next {
    Run,
    Park,
    Exit,
}

impl VcpuThread {
    fn run(mut self) {
        KVM_RUN.with(|run| run.set(self.setup.fd.get_kvm_run()));
        let mut running = false;
        loop {
            let request = if running {
                match self.rx.try_recv() {
                    Ok(request) => Some(request),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(request) => Some(request),
                    Err(_) => break,
                }
            };
            if let Some(request) = request {
                match self.handle(request) {
                    Next::Run => running = true,
                    Next::Park => running = false,
                    Next::Exit => break,
                }
                continue;
            }
            if !self.run_once() {
                running = false;
            }
        }
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    }

    fn handle(&mut self, request: VcpuRequest) -> Next {
        match request {
            VcpuRequest::Pause => {
                self.complete_pending_exit();
                let _ = self
                    .setup
                    .replies
                    .send((self.setup.index, VcpuReply::Paused));
                Next::Park
            }
            VcpuRequest::Resume => Next::Run,
            VcpuRequest::Reset(entry) => {
                if let Err(err) = self.load_boot_state(entry) {
                    self.fail(format!("cannot load the boot state: {err}"));
                }
                Next::Park
            }
            VcpuRequest::Exit => Next::Exit,
        }
    }

    /// Lets KVM finish the instruction of the last I/O or MMIO exit without entering the
    /// guest. Until then the vCPU state is not consistent: registers set now would be
    /// overwritten when KVM completes the instruction (a reset would start past its entry).
    fn complete_pending_exit(&mut self) {
        self.setup.fd.set_kvm_immediate_exit(1);
        match self.setup.fd.run() {
            Err(err) if err.errno() == libc::EINTR => {}
            Err(err) => log::warn!("vCPU {}: completing the last exit: {err}", self.setup.index),
            Ok(_) => {}
        }
        self.setup.fd.set_kvm_immediate_exit(0);
    }

    fn fail(&self, message: String) {
        log::error!("vCPU {}: {message}", self.setup.index);
        self.setup.events.send(VmEvent::VcpuFailed {
            vcpu: self.setup.index,
            message,
        });
    }

    /// Registers at reset: the BSP gets the entry state, APs wait for INIT/SIPI.
    fn load_boot_state(&mut self, entry: Option<EntryMode>) -> Result<(), kvm_ioctls::Error> {
        let fd = &self.setup.fd;
        let lapic = match self.initial_lapic {
            Some(lapic) => lapic,
            None => {
                let lapic = cpu::lapic(fd.get_lapic()?);
                self.initial_lapic = Some(lapic);
                lapic
            }
        };
        fd.set_lapic(&lapic)?;
        fd.set_vcpu_events(&kvm_vcpu_events::default())?;
        fd.set_fpu(&cpu::fpu())?;
        let msrs = cpu::boot_msrs().map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
        fd.set_msrs(&msrs)?;
        let mp_state = match entry {
            Some(mode) => {
                fd.set_sregs(&cpu::sregs(mode, fd.get_sregs()?))?;
                fd.set_regs(&cpu::regs(mode))?;
                KVM_MP_STATE_RUNNABLE
            }
            None => KVM_MP_STATE_UNINITIALIZED,
        };
        fd.set_mp_state(kvm_mp_state { mp_state })
    }

    /// Enters the guest once and handles the exit. Returns false when the vCPU must park
    /// (reset, failure) until the control loop says otherwise.
    fn run_once(&mut self) -> bool {
        let index = self.setup.index;
        let result = self.setup.fd.run();
        let exit = match result {
            Ok(exit) => exit,
            Err(err) if err.errno() == libc::EINTR => {
                self.setup.fd.set_kvm_immediate_exit(0);
                return true;
            }
            Err(err) if err.errno() == libc::EAGAIN => return true,
            Err(err) => {
                self.fail(format!("KVM_RUN failed: {err}"));
                return false;
            }
        };
        self.stats.exits.fetch_add(1, Ordering::Relaxed);
        let stats = &self.stats;
        let (io_bus, mmio_bus, events) =
            (&self.setup.io_bus, &self.setup.mmio_bus, &self.setup.events);
        let failure = match exit {
            VcpuExit::IoIn(port, data) => {
                stats.io_exits.fetch_add(1, Ordering::Relaxed);
                io_bus.read(u64::from(port), data);
                return true;
            }
            VcpuExit::IoOut(port, data) => {
                stats.io_exits.fetch_add(1, Ordering::Relaxed);
                io_bus.write(u64::from(port), data);
                return true;
            }
            VcpuExit::MmioRead(addr, data) => {
                stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
                mmio_bus.read(addr, data);
                return true;
            }
            VcpuExit::MmioWrite(addr, data) => {
                stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
                mmio_bus.write(addr, data);
                return true;
            }
            VcpuExit::Hlt => return true,
            VcpuExit::Shutdown => {
                let rip = self.setup.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                log::info!(
                    "vCPU {index}: shutdown (triple fault) at rip {rip:#x}: resetting the VM"
                );
                events.send(VmEvent::Reset {
                    reason: "triple fault",
                });
                return false;
            }
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => {
                events.send(VmEvent::PowerOff);
                return false;
            }
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => {
                events.send(VmEvent::Reset {
                    reason: "system reset",
                });
                return false;
            }
            VcpuExit::FailEntry(reason, cpu) => {
                format!("VM entry failed (reason {reason:#x}, host cpu {cpu})")
            }
            VcpuExit::InternalError => String::new(),
            other => format!("unexpected exit {other:?}"),
        };
        let failure = if failure.is_empty() {
            self.internal_error()
        } else {
            failure
        };
        self.fail(failure);
        false
    }

    /// Describes a KVM internal error: its suberror and where the guest was.
    fn internal_error(&mut self) -> String {
        let rip = self.setup.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit, `internal` is the active union member.
        let suberror = unsafe {
            self.setup
                .fd
                .get_kvm_run()
                .__bindgen_anon_1
                .internal
                .suberror
        };
        let sregs = self.setup.fd.get_sregs().unwrap_or_default();
        format!(
            "KVM internal error (suberror {suberror}, guest rip {rip:#x}, cr0 {:#x}, cr4 {:#x}, efer {:#x})",
            sregs.cr0, sregs.cr4, sregs.efer
        )
    }
}
