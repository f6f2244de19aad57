//! One poll thread: pinned to its CPU, owning its frame pool, its ports and its switch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

use crate::config::plan::{Plan, PortId};
use crate::control::messages::{DropReason, IdlePolicy, PortBackend, XdpAttach};
use crate::lane::{FlowLane, Target, veth_peer_elsewhere};
use crate::pipeline::{BURST, Switch, TX_QUEUE_CAP};
use crate::pool::{Frame, FramePool};
use crate::port::af_packet::AfPacketPort;
use crate::port::af_xdp::{AfXdpPort, FRAMES_PER_PORT};
use crate::port::memory::MemPort;
use crate::port::{Port, PortError};
use crate::runtime::{Shared, StartError};

/// Empty rounds before an idle thread yields or sleeps.
const SPIN_ROUNDS: u32 = 256;
/// Most bursts taken from one port in one poll round.
const MAX_BURSTS_PER_ROUND: usize = 8;
/// Spare frames for flood and mirror copies waiting in output queues.
const SPARE_FRAMES: u32 = 4096;

/// A poll thread before it starts.
pub(crate) struct PollThread {
    shared: Arc<Shared>,
    core: usize,
    memory_ports: Vec<(PortId, MemPort)>,
}

impl PollThread {
    pub(crate) fn new(
        shared: Arc<Shared>,
        core: usize,
        memory_ports: Vec<(PortId, MemPort)>,
    ) -> Self {
        Self {
            shared,
            core,
            memory_ports,
        }
    }

    fn now_ns(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    /// Pins, allocates, opens the ports, reports readiness on `ready`, then polls until stop.
    pub(crate) fn run(mut self, ready: Sender<Result<(), StartError>>) {
        let plan = self.shared.plan.load_full();
        let core = &plan.cores[self.core];
        let cpu = core.cpu;
        let mut set = CpuSet::new();
        if let Err(source) = set
            .set(cpu as usize)
            .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set))
        {
            let _ = ready.send(Err(StartError::Pin { cpu, source }));
            return;
        }
        let frames: u32 = core
            .ports
            .iter()
            .map(|&p| match plan.config.ports[usize::from(p)].backend {
                PortBackend::AfXdp { .. } | PortBackend::Auto { .. } => FRAMES_PER_PORT,
                _ => (2 * TX_QUEUE_CAP + BURST) as u32,
            })
            .sum::<u32>()
            + SPARE_FRAMES;
        let mut pool = match FramePool::new(frames) {
            Ok(p) => p,
            Err(source) => {
                let _ = ready.send(Err(StartError::Pool { cpu, source }));
                return;
            }
        };
        let mut lane = if core.flow_offload {
            match FlowLane::new(plan.ports.len()) {
                Ok(l) => Some(l),
                Err(source) => {
                    let _ = ready.send(Err(StartError::Lane { cpu, source }));
                    return;
                }
            }
        } else {
            None
        };
        // Per port: opened as AF_PACKET (the lane's tc program goes there), or as any
        // kernel port (a lane destination), with its interface.
        let mut packet_ports: Vec<(PortId, String)> = Vec::new();
        let mut kernel_ports: Vec<(PortId, String)> = Vec::new();
        let open_packet = |name: &str, ifname: &str, lane: &Option<FlowLane>| {
            let p = AfPacketPort::open(name, ifname)?;
            if let Some(lane) = lane {
                lane.attach_filter(name, p.socket())
                    .map_err(|e| PortError::Lane {
                        port: name.to_string(),
                        source: Box::new(e),
                    })?;
            }
            Ok::<_, PortError>(p)
        };
        // Local port table, indexed like the plan.
        let mut ports: Vec<Option<Box<dyn Port>>> = (0..plan.ports.len()).map(|_| None).collect();
        for &pid in &core.ports {
            let pc = &plan.config.ports[usize::from(pid)];
            let opened: Result<Box<dyn Port>, PortError> = match &pc.backend {
                PortBackend::AfXdp {
                    ifname,
                    queue,
                    attach,
                    busy_poll,
                } => {
                    kernel_ports.push((pid, ifname.clone()));
                    AfXdpPort::open(&pc.name, ifname, *queue, *attach, *busy_poll, &mut pool)
                        .map(|p| Box::new(p) as Box<dyn Port>)
                }
                PortBackend::AfPacket { ifname } => {
                    kernel_ports.push((pid, ifname.clone()));
                    packet_ports.push((pid, ifname.clone()));
                    open_packet(&pc.name, ifname, &lane).map(|p| Box::new(p) as Box<dyn Port>)
                }
                PortBackend::Auto { ifname } => {
                    kernel_ports.push((pid, ifname.clone()));
                    match AfXdpPort::open(&pc.name, ifname, 0, XdpAttach::Auto, false, &mut pool) {
                        Ok(p) => Ok(Box::new(p) as Box<dyn Port>),
                        Err(e) => {
                            log::warn!(
                                "port {}: AF_XDP unavailable ({e}: {}), falling back to AF_PACKET",
                                pc.name,
                                std::error::Error::source(&e)
                                    .map_or(String::new(), |s| s.to_string())
                            );
                            packet_ports.push((pid, ifname.clone()));
                            open_packet(&pc.name, ifname, &lane)
                                .map(|p| Box::new(p) as Box<dyn Port>)
                        }
                    }
                }
                PortBackend::Memory => {
                    match self.memory_ports.iter().position(|(id, _)| *id == pid) {
                        Some(i) => {
                            Ok(Box::new(self.memory_ports.swap_remove(i).1) as Box<dyn Port>)
                        }
                        None => Err(PortError::MemoryUnsupported {
                            port: pc.name.clone(),
                        }),
                    }
                }
            };
            match opened {
                Ok(p) => ports[usize::from(pid)] = Some(p),
                Err(source) => {
                    let _ = ready.send(Err(StartError::Port { cpu, source }));
                    return;
                }
            }
        }
        if core.napi_threads {
            for (pid, ifname) in &kernel_ports {
                // AF_PACKET ports have no XDP program, so a veth has no NAPI to thread:
                // its receive runs in the backlog, which RPS steers.
                let done = if packet_ports.iter().any(|(p, _)| p == pid) {
                    crate::port::napi::steer_rps(ifname, cpu).map(|_| ())
                } else {
                    crate::port::napi::pin_napi_threads(ifname, cpu).map(|_| ())
                };
                if let Err(source) = done {
                    let _ = ready.send(Err(StartError::Napi { cpu, source }));
                    return;
                }
            }
        }
        let mut switch = Switch::new(&plan, self.shared.counters.clone(), self.now_ns());
        if let Some(lane) = &mut lane {
            let n = plan.ports.len();
            let (mut attached, mut target) = (vec![false; n], vec![false; n]);
            for (pid, ifname) in &kernel_ports {
                let Ok(ifindex) = crate::port::ifindex("", ifname) else {
                    continue;
                };
                let peer = veth_peer_elsewhere(ifname);
                log::info!(
                    "flow lane: {ifname} (ifindex {ifindex}) is a destination{}",
                    if peer {
                        ", frames go straight to its veth peer"
                    } else {
                        ""
                    }
                );
                lane.set_target(*pid, Target { ifindex, peer });
                target[usize::from(*pid)] = true;
                if packet_ports.iter().any(|(p, _)| p == pid) {
                    if let Err(source) = lane.attach_port(*pid, ifname, ifindex) {
                        let _ = ready.send(Err(StartError::Lane { cpu, source }));
                        return;
                    }
                    attached[usize::from(*pid)] = true;
                }
            }
            switch.enable_lane(&plan, attached, target);
            if let Ok(mut lanes) = self.shared.lanes.lock() {
                lanes.push((core.ports.clone(), lane.counters()));
            }
        }
        let generation = self.shared.generation.load(Ordering::Acquire);
        self.shared.adopted[self.core].store(generation, Ordering::Release);
        log::info!(
            "poll thread on CPU {cpu}: {} ports, {} frames",
            core.ports.len(),
            pool.capacity()
        );
        let _ = ready.send(Ok(()));
        self.poll(
            plan,
            generation,
            &mut pool,
            &mut ports,
            &mut switch,
            lane.as_mut(),
        );
        log::info!(
            "poll thread on CPU {cpu} stopped; {} of {} frames free",
            pool.available(),
            pool.capacity()
        );
    }

    fn poll(
        &self,
        mut plan: Arc<Plan>,
        mut generation: u64,
        pool: &mut FramePool,
        ports: &mut [Option<Box<dyn Port>>],
        switch: &mut Switch,
        mut lane: Option<&mut FlowLane>,
    ) {
        let mut fdb_changes: Vec<u64> = Vec::new();
        let mut my_ports: Vec<PortId> = plan.cores[self.core].ports.clone();
        let idle = plan.cores[self.core].idle;
        let mut burst = [Frame::default(); BURST];
        let mut empty_rounds = 0u32;
        let mut last_age = self.now_ns();
        let wait_fds: Vec<libc::pollfd> = my_ports
            .iter()
            .filter_map(|&p| ports[usize::from(p)].as_ref()?.wait_fd())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut wait_fds = wait_fds;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = self.now_ns();
            let g = self.shared.generation.load(Ordering::Acquire);
            if g != generation {
                // Kernel decisions of the old plan go before the new one is in force.
                if let Some(lane) = lane.as_deref_mut() {
                    lane.clear();
                }
                plan = self.shared.plan.load_full();
                switch.apply_plan(&plan, now);
                my_ports.clone_from(&plan.cores[self.core].ports);
                generation = g;
                self.shared.adopted[self.core].store(g, Ordering::Release);
            }
            let mut got = 0;
            for &pid in &my_ports {
                // Up to MAX_BURSTS_PER_ROUND bursts per port and round: enough to keep up
                // with a kernel that filled the RX ring meanwhile, bounded for fairness.
                for _ in 0..MAX_BURSTS_PER_ROUND {
                    let Some(port) = ports[usize::from(pid)].as_mut() else {
                        break;
                    };
                    let n = port.rx_burst(pool, &mut burst);
                    if n == 0 {
                        break;
                    }
                    got += n;
                    switch.process(&plan, pool, pid, &burst[..n], now);
                    if let Some(lane) = lane.as_deref_mut() {
                        sync_lane(lane, switch, &mut fdb_changes);
                    }
                    self.flush(&my_ports, pool, ports, switch);
                    if n < BURST {
                        break;
                    }
                }
            }
            for &pid in &my_ports {
                if let Some(port) = ports[usize::from(pid)].as_mut() {
                    port.maintain(pool);
                }
            }
            if got > 0 {
                empty_rounds = 0;
            } else {
                empty_rounds = empty_rounds.saturating_add(1);
                if empty_rounds > SPIN_ROUNDS {
                    match idle {
                        IdlePolicy::Spin => std::hint::spin_loop(),
                        IdlePolicy::Yield => std::thread::yield_now(),
                        IdlePolicy::Sleep => sleep_on(&mut wait_fds),
                    }
                }
            }
            if now.saturating_sub(last_age) >= 1_000_000_000 {
                // Sources whose frames only the kernel saw are refreshed before aging.
                if let Some(lane) = lane.as_deref_mut() {
                    lane.sweep(|key, port| switch.refresh_learned(key, port, now));
                }
                switch.age(now);
                if let Some(lane) = lane.as_deref_mut() {
                    sync_lane(lane, switch, &mut fdb_changes);
                }
                last_age = now;
            }
        }
    }

    /// Hands every output queue to its port; frames the port refuses are dropped (TxFull).
    fn flush(
        &self,
        my_ports: &[PortId],
        pool: &mut FramePool,
        ports: &mut [Option<Box<dyn Port>>],
        switch: &mut Switch,
    ) {
        for &pid in my_ports {
            let q = switch.tx_queue(pid);
            if q.is_empty() {
                continue;
            }
            let counters = self.shared.counters.port(usize::from(pid));
            let sent = match ports[usize::from(pid)].as_mut() {
                Some(port) => port.tx_burst(pool, q),
                None => 0,
            };
            let bytes: u64 = q[..sent].iter().map(|f| u64::from(f.len)).sum();
            counters.tx(sent as u64, bytes);
            if sent < q.len() {
                counters.drop(DropReason::TxFull, (q.len() - sent) as u64);
                for f in &q[sent..] {
                    pool.free(f.addr);
                }
            }
            q.clear();
        }
    }
}

/// Removes lane flows built on FDB entries that changed, then adds the new offers (in that
/// order: an offer of this burst is built on the current FDB).
fn sync_lane(lane: &mut FlowLane, switch: &mut Switch, changes: &mut Vec<u64>) {
    switch.take_fdb_changes(changes);
    lane.forget(changes);
    for offer in switch.take_offers() {
        // An offer made before a later frame of the burst moved one of its MACs is stale.
        if !changes.contains(&offer.src_fdb) && !changes.contains(&offer.dst_fdb) {
            lane.offer(&offer);
        }
    }
}

/// Sleeps until a port descriptor is readable, 1 ms at most (memory ports have none: 50 us).
fn sleep_on(fds: &mut [libc::pollfd]) {
    if fds.is_empty() {
        std::thread::sleep(std::time::Duration::from_micros(50));
        return;
    }
    // SAFETY: fds is a valid, exclusively borrowed array of pollfd for the call's duration.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
}
