//! Guest RAM: one memfd (hugetlb when asked), mapped `MAP_SHARED` per RAM range of the
//! memory map, bound to the VM's NUMA node, pre-faulted and `mlock`ed before any vCPU runs.
//!
//! The VMM refuses to start rather than run with less: it checks `MemAvailable` (or the free
//! huge pages) first, and any failure to reserve, fault or lock a page is an error.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;

use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout;

/// Errors creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// More RAM asked than the host has available.
    #[error(
        "guest memory of {want_mib} MiB is larger than the host's available memory ({available_mib} MiB in MemAvailable): lower memory_mib or stop other VMs"
    )]
    NotEnoughMemory {
        /// Asked for.
        want_mib: u64,
        /// Available now.
        available_mib: u64,
    },
    /// More RAM asked than there are free reserved huge pages.
    #[error(
        "guest memory of {want_mib} MiB is larger than the free huge pages ({free_pages} pages of {page_kib} KiB free): reserve more in /proc/sys/vm/nr_hugepages or lower memory_mib"
    )]
    NotEnoughHugepages {
        /// Asked for.
        want_mib: u64,
        /// Free, unreserved huge pages.
        free_pages: u64,
        /// Huge page size.
        page_kib: u64,
    },
    /// The guest RAM size is not a multiple of the huge page size.
    #[error("memory_mib = {want_mib} is not a multiple of the huge page size ({page_kib} KiB)")]
    HugepageAlignment {
        /// Asked for.
        want_mib: u64,
        /// Huge page size.
        page_kib: u64,
    },
    /// /proc/meminfo could not be read or lacks a field.
    #[error("cannot read {field} from /proc/meminfo: is /proc mounted?")]
    Meminfo {
        /// The field.
        field: &'static str,
    },
    /// A system call on the guest RAM failed.
    #[error("cannot {what} guest memory: the host refused it")]
    Host {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Locking the guest RAM failed.
    #[error(
        "cannot lock {mib} MiB of guest memory in RAM (mlock): raise RLIMIT_MEMLOCK or run with CAP_IPC_LOCK"
    )]
    Lock {
        /// How much.
        mib: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// vm-memory refused a region.
    #[error("cannot set up guest memory region at {addr:#x}")]
    Region {
        /// Guest address of the region.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// vm-memory refused the region list.
    #[error("cannot assemble the guest memory regions")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRequest {
    /// Bytes of guest RAM.
    pub bytes: u64,
    /// Use huge pages.
    pub hugepages: bool,
    /// NUMA node to bind to, when the host has several.
    pub numa_node: Option<u32>,
}

/// Guest RAM and the host facts reported in status.
#[derive(Debug)]
pub struct GuestRam {
    /// The mapped RAM, as vm-memory sees it.
    pub memory: GuestMemoryMmap,
    /// Bytes of RAM.
    pub bytes: u64,
    /// Backed by huge pages.
    pub hugepages: bool,
}

/// Fields of /proc/meminfo the VMM reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meminfo {
    /// `MemAvailable`, bytes.
    pub available: u64,
    /// `HugePages_Free - HugePages_Rsvd`: pages nobody has claimed.
    pub hugepages_free: u64,
    /// `Hugepagesize`, bytes.
    pub hugepage_size: u64,
}

impl Meminfo {
    /// Parses the text of /proc/meminfo.
    pub fn parse(text: &str) -> Result<Self, MemoryError> {
        let field = |name: &'static str| -> Result<u64, MemoryError> {
            text.lines()
                .find_map(|line| {
                    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                    rest.split_whitespace().next()?.parse::<u64>().ok()
                })
                .ok_or(MemoryError::Meminfo { field: name })
        };
        Ok(Self {
            available: field("MemAvailable")? << 10,
            hugepages_free: field("HugePages_Free")?.saturating_sub(field("HugePages_Rsvd")?),
            hugepage_size: field("Hugepagesize")? << 10,
        })
    }

    /// Reads /proc/meminfo.
    pub fn read() -> Result<Self, MemoryError> {
        let text = std::fs::read_to_string("/proc/meminfo").map_err(|_| MemoryError::Meminfo {
            field: "MemAvailable",
        })?;
        Self::parse(&text)
    }

    /// Refuses a request the host cannot hold.
    pub fn check(&self, request: &MemoryRequest) -> Result<(), MemoryError> {
        let want_mib = request.bytes >> 20;
        if request.hugepages {
            let page_kib = self.hugepage_size >> 10;
            if self.hugepage_size == 0 || request.bytes % self.hugepage_size != 0 {
                return Err(MemoryError::HugepageAlignment { want_mib, page_kib });
            }
            if request.bytes / self.hugepage_size > self.hugepages_free {
                return Err(MemoryError::NotEnoughHugepages {
                    want_mib,
                    free_pages: self.hugepages_free,
                    page_kib,
                });
            }
        } else if request.bytes > self.available {
            return Err(MemoryError::NotEnoughMemory {
                want_mib,
                available_mib: self.available >> 20,
            });
        }
        Ok(())
    }
}

/// The NUMA nodes of the host (from sysfs `node<N>` entries); empty when the kernel has no NUMA.
pub fn numa_nodes(sys_node_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(sys_node_dir) else {
        return Vec::new();
    };
    let mut nodes: Vec<u32> = entries
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .strip_prefix("node")?
                .parse()
                .ok()
        })
        .collect();
    nodes.sort_unstable();
    nodes
}

/// The NUMA node of a host core (its `node<N>` link in sysfs).
pub fn node_of_core(sys_cpu_dir: &Path, core: usize) -> Option<u32> {
    let entries = std::fs::read_dir(sys_cpu_dir.join(format!("cpu{core}"))).ok()?;
    entries
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .strip_prefix("node")?
                .parse()
                .ok()
        })
        .next()
}

/// The node to bind guest RAM to: that of the first vCPU core, when the host has several nodes.
pub fn numa_node_for(first_core: usize) -> Option<u32> {
    if numa_nodes(Path::new("/sys/devices/system/node")).len() < 2 {
        return None;
    }
    node_of_core(Path::new("/sys/devices/system/cpu"), first_core)
}

/// Creates, binds, faults in and locks guest RAM as the memory map lays it out.
pub fn create_guest_ram(request: &MemoryRequest) -> Result<GuestRam, MemoryError> {
    Meminfo::read()?.check(request)?;
    let host = |what| move |source| MemoryError::Host { what, source };

    let name = CString::from(c"hostd-vmm-guest-ram");
    let mut flags = libc::MFD_CLOEXEC;
    if request.hugepages {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(host("create (memfd_create)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a freshly created descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(request.bytes)
        .map_err(host("size (ftruncate)"))?;

    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (guest_addr, len) in layout::ram_ranges(request.bytes) {
        let region = map_range(&file, file_offset, len, request)?;
        regions.push(
            GuestRegionMmap::new(region, guest_addr).ok_or(MemoryError::Region {
                addr: guest_addr.0,
                source: vm_memory::mmap::MmapRegionError::InvalidPointer,
            })?,
        );
        file_offset += len;
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestRam {
        memory,
        bytes: request.bytes,
        hugepages: request.hugepages,
    })
}

fn map_range(
    file: &File,
    offset: u64,
    len: u64,
    request: &MemoryRequest,
) -> Result<MmapRegion, MemoryError> {
    let host = |what| move |source| MemoryError::Host { what, source };
    let file = file.try_clone().map_err(host("duplicate the memfd of"))?;
    let size = usize::try_from(len).map_err(|_| MemoryError::Host {
        what: "size",
        source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
    })?;
    let region = MmapRegion::build(
        Some(FileOffset::new(file, offset)),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .map_err(|source| match source {
        // A hugetlb MAP_SHARED mapping reserves its pages at mmap time.
        vm_memory::mmap::MmapRegionError::Mmap(err) if request.hugepages => MemoryError::Host {
            what: "reserve huge pages for",
            source: err,
        },
        source => MemoryError::Region {
            addr: offset,
            source,
        },
    })?;
    let addr = region.as_ptr().cast::<libc::c_void>();
    if let Some(node) = request.numa_node {
        bind_to_node(addr, size, node)?;
    }
    // Fault every page in for writing now, so the guest never waits on a page fault and the
    // host's refusal shows here rather than as a SIGBUS later.
    // SAFETY: addr..addr+size is the mapping just created and owned by `region`.
    let rc = unsafe { libc::madvise(addr, size, libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        return Err(host("fault in (MADV_POPULATE_WRITE)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: as above; mlock only pins the pages of that mapping.
    let rc = unsafe { libc::mlock(addr, size) };
    if rc != 0 {
        return Err(MemoryError::Lock {
            mib: len >> 20,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(region)
}

fn bind_to_node(addr: *mut libc::c_void, size: usize, node: u32) -> Result<(), MemoryError> {
    const MPOL_BIND: libc::c_long = 2;
    const MPOL_MF_STRICT: libc::c_ulong = 1;
    let bits = libc::c_ulong::BITS;
    let mut mask = vec![0 as libc::c_ulong; (node / bits + 1) as usize];
    mask[(node / bits) as usize] |= 1 << (node % bits);
    let maxnode = (mask.len() as libc::c_ulong) * libc::c_ulong::from(bits);
    // SAFETY: mbind reads `mask` (maxnode bits long) and changes the policy of the pages of
    // our own mapping at addr..addr+size; no memory is accessed through the pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            size,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_STRICT,
        )
    };
    if rc != 0 {
        return Err(MemoryError::Host {
            what: "bind to its NUMA node (mbind)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemFree:        20000000 kB\n\
        MemAvailable:   22000000 kB\nHugePages_Total:      10\nHugePages_Free:        8\n\
        HugePages_Rsvd:        2\nHugePages_Surp:        0\nHugepagesize:       2048 kB\n";

    #[test]
    fn meminfo_fields_are_read() {
        let info = Meminfo::parse(MEMINFO).unwrap();
        assert_eq!(info.available, 22_000_000 << 10);
        assert_eq!(info.hugepages_free, 6);
        assert_eq!(info.hugepage_size, 2 << 20);
        assert!(Meminfo::parse("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn requests_beyond_the_host_are_refused() {
        let info = Meminfo::parse(MEMINFO).unwrap();
        let plain = |mib: u64| MemoryRequest {
            bytes: mib << 20,
            hugepages: false,
            numa_node: None,
        };
        info.check(&plain(1024)).unwrap();
        let err = info.check(&plain(30_000)).unwrap_err().to_string();
        assert!(
            err.contains("30000 MiB") && err.contains("MemAvailable"),
            "{err}"
        );

        let huge = |mib: u64| MemoryRequest {
            bytes: mib << 20,
            hugepages: true,
            numa_node: None,
        };
        info.check(&huge(12)).unwrap();
        let err = info.check(&huge(14)).unwrap_err().to_string();
        assert!(err.contains("6 pages of 2048 KiB free"), "{err}");
        assert!(matches!(
            info.check(&huge(3)),
            Err(MemoryError::HugepageAlignment { .. })
        ));
    }

    #[test]
    fn numa_nodes_are_read_from_sysfs_entries() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["node1", "node0", "possible", "has_cpu"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(numa_nodes(dir.path()), [0, 1]);
        std::fs::create_dir_all(dir.path().join("cpu3/node1")).unwrap();
        assert_eq!(node_of_core(dir.path(), 3), Some(1));
        assert_eq!(node_of_core(dir.path(), 4), None);
    }

    #[test]
    fn guest_ram_is_mapped_shared_and_locked() {
        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
        let ram = create_guest_ram(&MemoryRequest {
            bytes: 4 << 20,
            hugepages: false,
            numa_node: None,
        })
        .unwrap();
        assert_eq!(ram.memory.num_regions(), 1);
        ram.memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            ram.memory.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0xdead_beef
        );
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let locked_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(locked_kib >= 4096, "VmLck {locked_kib} kB");
    }
}
