//! The running forwarder: pinned poll threads and the plan they share.
//!
//! Configuration changes are read-copy-update: the control side builds a complete new `Plan`
//! from an edited copy of the configuration, publishes it with one atomic pointer swap and
//! bumps a generation counter. Each poll thread checks the counter once per poll round and,
//! when it moved, loads the new plan and adapts its own state (caches, policers, statics)
//! between two bursts. Old plans are freed when the last thread drops its `Arc`.

mod poll;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, Plan, PortId, compile};
use crate::control::messages::{Config, PortStats};
use crate::lane::LaneCounters;
use crate::pipeline::counters::Counters;
use crate::pool::PoolError;
use crate::port::PortError;
use crate::port::memory::MemPortHandle;

/// Errors starting the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    /// A poll thread could not be spawned.
    #[error("cannot spawn the poll thread for CPU {cpu}")]
    Spawn {
        /// CPU.
        cpu: u32,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Pinning failed.
    #[error(
        "cannot pin the poll thread to CPU {cpu}; is that CPU online and in this process's cpuset?"
    )]
    Pin {
        /// CPU.
        cpu: u32,
        /// OS error.
        #[source]
        source: nix::Error,
    },
    /// The frame pool could not be allocated.
    #[error("poll thread for CPU {cpu}: frame pool")]
    Pool {
        /// CPU.
        cpu: u32,
        /// What failed.
        #[source]
        source: PoolError,
    },
    /// A port could not be opened.
    #[error("poll thread for CPU {cpu}: cannot open a port")]
    Port {
        /// CPU.
        cpu: u32,
        /// What failed.
        #[source]
        source: PortError,
    },
    /// Threaded NAPI could not be set up.
    #[error("poll thread for CPU {cpu}: threaded NAPI")]
    Napi {
        /// CPU.
        cpu: u32,
        /// What failed.
        #[source]
        source: crate::port::napi::NapiError,
    },
    /// The kernel flow lane could not be set up.
    #[error("poll thread for CPU {cpu}: kernel flow lane")]
    Lane {
        /// CPU.
        cpu: u32,
        /// What failed.
        #[source]
        source: crate::lane::LaneError,
    },
    /// A poll thread died during start.
    #[error("poll thread for CPU {cpu} exited before reporting ready")]
    ThreadDied {
        /// CPU.
        cpu: u32,
    },
}

/// Errors applying a configuration change. The running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The edited configuration is invalid.
    #[error("configuration rejected, the running one stays in force: {0}")]
    Invalid(#[source] ConfigError),
    /// The edit itself is impossible (unknown port or rule named by the request).
    #[error("request rejected, the running configuration stays in force: {0}")]
    Request(String),
    /// Ports, backends or cores changed; that needs a restart.
    #[error(
        "the port set, a port backend or the core layout changed; restart fastpath to apply that (the running configuration stays in force)"
    )]
    NeedsRestart,
}

/// State shared between the control side and the poll threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) plan: ArcSwap<Plan>,
    pub(crate) generation: AtomicU64,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stop: AtomicBool,
    /// Generation each poll thread runs with.
    pub(crate) adopted: Box<[AtomicU64]>,
    pub(crate) epoch: Instant,
    /// Per core with a kernel flow lane: its ports and the lane's counters.
    pub(crate) lanes: Mutex<Vec<(Vec<PortId>, Arc<LaneCounters>)>>,
}

/// A running forwarder.
#[derive(Debug)]
pub struct Fastpath {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    memory: Mutex<HashMap<String, MemPortHandle>>,
    /// Serialises edits so two requests never build on the same old configuration.
    edit: Mutex<()>,
}

/// Whether two configurations have the same ports (names, backends, order) and cores.
fn same_layout(a: &Config, b: &Config) -> bool {
    a.ports.len() == b.ports.len()
        && a.ports
            .iter()
            .zip(&b.ports)
            .all(|(x, y)| x.name == y.name && x.backend == y.backend)
        && a.cores == b.cores
}

impl Fastpath {
    /// Validates `config`, starts one pinned poll thread per core and opens every port.
    /// Returns once all threads run or the first error.
    pub fn start(config: Config) -> Result<Self, StartError> {
        let plan = compile(&config).map_err(StartError::Config)?;
        let counters = Arc::new(Counters::new(plan.ports.len()));
        let shared = Arc::new(Shared {
            plan: ArcSwap::from_pointee(plan.clone()),
            generation: AtomicU64::new(1),
            counters,
            stop: AtomicBool::new(false),
            adopted: (0..plan.cores.len()).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            lanes: Mutex::new(Vec::new()),
        });
        let mut memory = HashMap::new();
        let mut threads = Vec::new();
        let mut ready = Vec::new();
        for (core_index, core) in plan.cores.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let mut mem_ports = Vec::new();
            for &pid in &core.ports {
                let p = &plan.config.ports[usize::from(pid)];
                if p.backend == crate::control::messages::PortBackend::Memory {
                    let (port, handle) =
                        crate::port::memory::mem_port(&p.name, crate::port::memory::MEM_RING_SLOTS);
                    mem_ports.push((pid, port));
                    memory.insert(p.name.clone(), handle);
                }
            }
            let thread = poll::PollThread::new(shared.clone(), core_index, mem_ports);
            let cpu = core.cpu;
            let handle = std::thread::Builder::new()
                .name(format!("fp-poll-{cpu}"))
                .spawn(move || thread.run(tx))
                .map_err(|source| StartError::Spawn { cpu, source })?;
            threads.push(handle);
            ready.push((cpu, rx));
        }
        let fp = Self {
            shared,
            threads: Mutex::new(threads),
            memory: Mutex::new(memory),
            edit: Mutex::new(()),
        };
        for (cpu, rx) in ready {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    fp.shutdown();
                    return Err(e);
                }
                Err(_) => {
                    fp.shutdown();
                    return Err(StartError::ThreadDied { cpu });
                }
            }
        }
        log::info!(
            "fastpath running: {} ports on {} cores",
            plan.ports.len(),
            plan.cores.len()
        );
        Ok(fp)
    }

    /// Takes the outside handle of a memory port (once).
    pub fn take_memory_port(&self, name: &str) -> Option<MemPortHandle> {
        self.memory.lock().ok()?.remove(name)
    }

    /// The running configuration.
    pub fn config(&self) -> Config {
        self.shared.plan.load().config.clone()
    }

    /// The generation of the running configuration (1 at start, +1 per applied change).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Counters of every port, in port order: the poll threads' plus the frames the kernel
    /// flow lane forwarded.
    pub fn stats(&self) -> Vec<PortStats> {
        let plan = self.shared.plan.load();
        let mut stats: Vec<PortStats> = plan
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| self.shared.counters.port(i).read(&p.name))
            .collect();
        if let Ok(lanes) = self.shared.lanes.lock() {
            for (ports, counters) in lanes.iter() {
                for &p in ports {
                    let k = counters.read(p);
                    if let Some(s) = stats.get_mut(usize::from(p)) {
                        s.rx_packets += k.rx_packets;
                        s.rx_bytes += k.rx_bytes;
                        s.tx_packets += k.tx_packets;
                        s.tx_bytes += k.tx_bytes;
                        s.lane_rx_packets += k.rx_packets;
                        s.lane_tx_packets += k.tx_packets;
                    }
                }
            }
        }
        stats
    }

    /// Applies `edit` to a copy of the running configuration; publishes it if it validates.
    /// Returns the new generation.
    pub fn update(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<u64, ApplyError> {
        let _guard = self
            .edit
            .lock()
            .map_err(|_| ApplyError::Request("control state poisoned by a panic".into()))?;
        let current = self.shared.plan.load_full();
        let mut next = current.config.clone();
        edit(&mut next).map_err(ApplyError::Request)?;
        if !same_layout(&current.config, &next) {
            return Err(ApplyError::NeedsRestart);
        }
        let plan = compile(&next).map_err(ApplyError::Invalid)?;
        self.shared.plan.store(Arc::new(plan));
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        log::info!("configuration generation {generation} published");
        Ok(generation)
    }

    /// Replaces the whole configuration (same ports and cores).
    pub fn replace(&self, config: Config) -> Result<u64, ApplyError> {
        self.update(|c| {
            *c = config;
            Ok(())
        })
    }

    /// Waits until every poll thread runs with `generation` or newer; false on timeout.
    pub fn wait_adopted(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .shared
                .adopted
                .iter()
                .all(|g| g.load(Ordering::Acquire) >= generation)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    /// Stops the poll threads and closes every port (waits for them).
    pub fn stop(&self) {
        self.shutdown();
        let threads: Vec<_> = match self.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => return,
        };
        for t in threads {
            if t.join().is_err() {
                log::error!("a poll thread panicked");
            }
        }
    }
}

impl Drop for Fastpath {
    fn drop(&mut self) {
        self.stop();
    }
}
