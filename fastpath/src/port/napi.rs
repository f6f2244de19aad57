//! Threaded NAPI: moves a netdev's NAPI polling (for veth with XDP: running the XDP program
//! and copying frames into the UMEM) out of the softirq of whichever CPU sent the frame into
//! kernel threads, and pins those threads to the fast-path core. The kernel receive work a
//! port causes is then charged to the core that polls the port.

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Errors setting up threaded NAPI.
#[derive(Debug, thiserror::Error)]
pub enum NapiError {
    /// Writing /sys/class/net/IF/threaded failed.
    #[error(
        "cannot enable threaded NAPI on {ifname} (/sys/class/net/{ifname}/threaded); needs Linux >= 5.12, root, and a driver with NAPI (veth needs XDP attached first)"
    )]
    Enable {
        /// Interface.
        ifname: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing rps_cpus failed.
    #[error(
        "cannot steer RPS of {ifname} (/sys/class/net/{ifname}/queues/rx-*/rps_cpus); needs root and CONFIG_RPS"
    )]
    Rps {
        /// Interface.
        ifname: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// No NAPI thread showed up.
    #[error("no napi/{ifname}-* kernel thread found after enabling threaded NAPI")]
    NoThreads {
        /// Interface.
        ifname: String,
    },
    /// Pinning a thread failed.
    #[error("cannot pin NAPI thread {pid} of {ifname} to CPU {cpu}")]
    Pin {
        /// Interface.
        ifname: String,
        /// Thread id.
        pid: i32,
        /// CPU.
        cpu: u32,
        /// OS error.
        #[source]
        source: nix::Error,
    },
}

/// Enables threaded NAPI on `ifname` and pins its NAPI threads to `cpu`; returns how many.
pub fn pin_napi_threads(ifname: &str, cpu: u32) -> Result<usize, NapiError> {
    std::fs::write(format!("/sys/class/net/{ifname}/threaded"), "1").map_err(|source| {
        NapiError::Enable {
            ifname: ifname.to_string(),
            source,
        }
    })?;
    // Thread names are "napi/<ifname>-<napi id>", cut to 15 bytes by the kernel.
    let prefix: String = format!("napi/{ifname}-").chars().take(15).collect();
    let mut set = CpuSet::new();
    set.set(cpu as usize).map_err(|source| NapiError::Pin {
        ifname: ifname.to_string(),
        pid: 0,
        cpu,
        source,
    })?;
    let mut pinned = 0;
    let entries = std::fs::read_dir("/proc").map_err(|source| NapiError::Enable {
        ifname: ifname.to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end().starts_with(&prefix) {
            sched_setaffinity(Pid::from_raw(pid), &set).map_err(|source| NapiError::Pin {
                ifname: ifname.to_string(),
                pid,
                cpu,
                source,
            })?;
            log::info!(
                "NAPI thread {} (pid {pid}) pinned to CPU {cpu}",
                comm.trim_end()
            );
            pinned += 1;
        }
    }
    if pinned == 0 {
        return Err(NapiError::NoThreads {
            ifname: ifname.to_string(),
        });
    }
    Ok(pinned)
}

/// Steers the receive work of `ifname`'s queues to `cpu` with RPS (for devices without
/// NAPI, such as a veth with no XDP program: their receive runs in the backlog of the CPU
/// RPS picks, else in the sender's). Returns how many queues were set.
pub fn steer_rps(ifname: &str, cpu: u32) -> Result<usize, NapiError> {
    let dir = format!("/sys/class/net/{ifname}/queues");
    let err = |source| NapiError::Rps {
        ifname: ifname.to_string(),
        source,
    };
    let mask = rps_mask(cpu);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).map_err(err)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            std::fs::write(entry.path().join("rps_cpus"), &mask).map_err(err)?;
            n += 1;
        }
    }
    log::info!("{ifname}: RPS of {n} receive queues steered to CPU {cpu}");
    Ok(n)
}

/// The rps_cpus bitmap text for one CPU: hex words of 32 bits, comma-separated, highest
/// first.
fn rps_mask(cpu: u32) -> String {
    let words = (cpu / 32 + 1) as usize;
    (0..words)
        .rev()
        .map(|w| {
            let bits = if w == (cpu / 32) as usize {
                1u32 << (cpu % 32)
            } else {
                0
            };
            format!("{bits:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rps_masks_name_one_cpu() {
        assert_eq!(rps_mask(1), "00000002");
        assert_eq!(rps_mask(33), "00000002,00000000");
    }
}
