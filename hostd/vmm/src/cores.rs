//! Host cores: which exist, which this VM holds, and pinning threads to them.
//!
//! A vCPU core belongs to one VM. hostd allocates cores, but a standalone VMM must not trust
//! its config either, so each VMM takes an exclusive `flock` on
//! `<runtime_dir>/cores/<core>.lock` for each of its vCPU cores and holds it for its whole
//! life. The kernel drops the lock when the process dies, however it dies, so a crashed VMM
//! never leaves a core taken. The file holds the holder's pid and VM name, for the error
//! message of the next VMM that asks for the core.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Errors about host cores.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The core is not online on this host, or this process may not run on it (cgroup cpuset,
    /// taskset).
    #[error(
        "host core {core} is not present or not available to this process (available: {available}): pick cores from that list"
    )]
    NotPresent {
        /// The core asked for.
        core: usize,
        /// The cores this process may use, as a list.
        available: String,
    },
    /// Another running VM holds the core.
    #[error(
        "host core {core} is already pinned by another VM ({holder}): pick a free core or stop that VM"
    )]
    Taken {
        /// The core asked for.
        core: usize,
        /// Who holds it, from the lock file.
        holder: String,
    },
    /// The lock directory or file could not be used.
    #[error("cannot use the core lock file {path}: check that the runtime directory is writable")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or setting thread affinity failed.
    #[error("cannot {what} the CPU affinity: the host refused it")]
    Affinity {
        /// "read" or "set".
        what: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// The cores this process may run on: online and in its affinity mask.
pub fn available_cores() -> Result<Vec<usize>, CoreError> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|source| CoreError::Affinity {
        what: "read",
        source,
    })?;
    Ok((0..CpuSet::count())
        .filter(|&core| set.is_set(core).unwrap_or(false))
        .collect())
}

/// Formats a core list as `0-3,6`.
pub fn format_core_list(cores: &[usize]) -> String {
    let mut out = Vec::new();
    let mut iter = cores.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Checks that every core in `wanted` is in `available`.
pub fn check_present(wanted: &[usize], available: &[usize]) -> Result<(), CoreError> {
    match wanted.iter().find(|core| !available.contains(core)) {
        Some(&core) => Err(CoreError::NotPresent {
            core,
            available: format_core_list(available),
        }),
        None => Ok(()),
    }
}

/// Exclusive hold on one host core for this VM, released when dropped or when the process dies.
#[derive(Debug)]
pub struct CoreLock {
    core: usize,
    _lock: Flock<File>,
}

impl CoreLock {
    /// The held core.
    pub fn core(&self) -> usize {
        self.core
    }
}

/// Path of the lock file of `core` under `runtime_dir`.
pub fn lock_path(runtime_dir: &Path, core: usize) -> PathBuf {
    runtime_dir.join("cores").join(format!("{core}.lock"))
}

/// Takes the locks of all `cores` for the VM `vm_name`, or none of them.
pub fn lock_cores(
    runtime_dir: &Path,
    cores: &[usize],
    vm_name: &str,
) -> Result<Vec<CoreLock>, CoreError> {
    let dir = runtime_dir.join("cores");
    std::fs::create_dir_all(&dir).map_err(|source| CoreError::LockFile {
        path: dir.clone(),
        source,
    })?;
    // Dropping the ones taken so far on error releases them: all or nothing.
    cores
        .iter()
        .map(|&core| lock_core(runtime_dir, core, vm_name))
        .collect()
}

fn lock_core(runtime_dir: &Path, core: usize, vm_name: &str) -> Result<CoreLock, CoreError> {
    let path = lock_path(runtime_dir, core);
    let io_err = |source| CoreError::LockFile {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(io_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::Error::EWOULDBLOCK)) => {
            let mut holder = String::new();
            // Best effort: the holder may be writing it right now.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "unknown holder"
            } else {
                holder
            };
            return Err(CoreError::Taken {
                core,
                holder: holder.to_owned(),
            });
        }
        Err((_, errno)) => return Err(io_err(errno.into())),
    };
    let owner = format!("pid {} vm {vm_name}\n", std::process::id());
    lock.set_len(0)
        .and_then(|()| lock.seek(SeekFrom::Start(0)))
        .and_then(|_| lock.write_all(owner.as_bytes()))
        .map_err(io_err)?;
    Ok(CoreLock { core, _lock: lock })
}

/// Pins the calling thread to `cores`.
pub fn pin_current_thread(cores: &[usize]) -> Result<(), CoreError> {
    let mut set = CpuSet::new();
    for &core in cores {
        set.set(core).map_err(|source| CoreError::Affinity {
            what: "set",
            source,
        })?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|source| CoreError::Affinity {
        what: "set",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_are_compact() {
        assert_eq!(format_core_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_core_list(&[]), "");
    }

    #[test]
    fn absent_core_names_the_core_and_the_choices() {
        let err = check_present(&[0, 9], &[0, 1]).unwrap_err().to_string();
        assert!(err.contains("core 9") && err.contains("0-1"), "{err}");
        check_present(&[1, 0], &[0, 1]).unwrap();
    }

    #[test]
    fn a_core_is_locked_once_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_cores(dir.path(), &[0, 1], "a").unwrap();
        assert_eq!(first.iter().map(CoreLock::core).collect::<Vec<_>>(), [0, 1]);
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts like another process would.
        let err = lock_cores(dir.path(), &[2, 1], "b").unwrap_err();
        match &err {
            CoreError::Taken { core, holder } => {
                assert_eq!(*core, 1);
                assert!(holder.contains("vm a"), "{holder}");
            }
            other => panic!("unexpected {other}"),
        }
        // All or nothing: core 2 was released when the request failed.
        drop(lock_cores(dir.path(), &[2], "c").unwrap());
        drop(first);
        lock_cores(dir.path(), &[0, 1], "d").unwrap();
    }
}
