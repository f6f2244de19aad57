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
