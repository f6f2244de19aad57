//! virtio block device backed by a raw image file, read-only or read-write as configured.
//! Requests are served synchronously with positioned reads and writes on the image.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::virtio_mmio::VirtioDevice;
use super::write_le;

const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const REQUEST_HEADER_LEN: u32 = 16;
const ID_LEN: usize = 20;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Errors opening the disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image does not exist.
    #[error("disk image {path} does not exist: check disk.path in the config")]
    Missing {
        /// The image.
        path: PathBuf,
    },
    /// Read-write was asked of an image that is read-only.
    #[error(
        "disk image {path} is read-only but the config asks for read-write: set disk.read_only = true, or make the image writable"
    )]
    ReadOnly {
        /// The image.
        path: PathBuf,
    },
    /// Another VM uses the image in a conflicting way.
    #[error("disk image {path} is in use by another VM: a read-write image is exclusive to one VM")]
    InUse {
        /// The image.
        path: PathBuf,
    },
    /// Any other failure opening or sizing it.
    #[error("cannot open the disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The block device.
#[derive(Debug)]
pub struct Block {
    image: Flock<File>,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_LEN],
}

impl Block {
    /// Opens `path`; a read-write image is locked exclusively, a read-only one shared.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => DiskError::Missing {
                path: path.to_owned(),
            },
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                if !read_only =>
            {
                DiskError::ReadOnly {
                    path: path.to_owned(),
                }
            }
            _ => DiskError::Open {
                path: path.to_owned(),
                source,
            },
        };
        let metadata = std::fs::metadata(path).map_err(open_err)?;
        // Root could write an image whose mode says read-only; the mode is the owner's word.
        if !read_only && metadata.permissions().mode() & 0o222 == 0 {
            return Err(DiskError::ReadOnly {
                path: path.to_owned(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let mode = if read_only {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let mut image = Flock::lock(file, mode).map_err(|(_, errno)| match errno {
            nix::Error::EWOULDBLOCK => DiskError::InUse {
                path: path.to_owned(),
            },
            errno => open_err(errno.into()),
        })?;
        let len = image.seek(SeekFrom::End(0)).map_err(open_err)?;
        let mut id = [0u8; ID_LEN];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (dst, src) in id.iter_mut().zip(name.bytes()) {
            *dst = src;
        }
        Ok(Self {
            image,
            read_only,
            sectors: len / SECTOR_SIZE,
            id,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Serves one request; returns the status and the bytes written into guest buffers.
    fn serve(&mut self, memory: &GuestMemoryMmap, descriptors: &[Descriptor]) -> (u8, u32) {
        let [header, data @ .., _status] = descriptors else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if header.is_write_only() || header.len() < REQUEST_HEADER_LEN {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let (Ok(kind), Ok(sector)) = (
            memory.read_obj::<u32>(header.addr()),
            memory.read_obj::<u64>(header.addr().unchecked_add(8)),
        ) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = kind == VIRTIO_BLK_T_OUT;
                if write && self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match self.transfer(memory, data, sector, write) {
                    Ok(written) => (VIRTIO_BLK_S_OK, written),
                    Err(err) => {
                        log::warn!("virtio-blk sector {sector}: {err}");
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH if !self.read_only => match self.image.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_FLUSH => (VIRTIO_BLK_S_OK, 0),
            VIRTIO_BLK_T_GET_ID => match data.first() {
                Some(d) if d.is_write_only() => {
                    let len = (d.len() as usize).min(ID_LEN);
                    match memory.write_slice(&self.id[..len], d.addr()) {
                        Ok(()) => (VIRTIO_BLK_S_OK, len as u32),
                        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                    }
                }
                _ => (VIRTIO_BLK_S_IOERR, 0),
            },
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    fn transfer(
        &mut self,
        memory: &GuestMemoryMmap,
        data: &[Descriptor],
        sector: u64,
        write: bool,
    ) -> Result<u32, String> {
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(total))
            .ok_or("request overflows")?;
        if end > self.sectors * SECTOR_SIZE {
            return Err(format!(
                "request ends at byte {end}, past the end of the image"
            ));
        }
        self.image
            .seek(SeekFrom::Start(sector * SECTOR_SIZE))
            .map_err(|e| e.to_string())?;
        let mut written = 0u32;
        for d in data {
            // The driver marks buffers the device writes; a mismatch is a broken request.
            if d.is_write_only() == write {
                return Err("buffer direction does not match the request".into());
            }
            let len = d.len() as usize;
            if write {
                memory
                    .write_all_volatile_to(d.addr(), &mut *self.image, len)
                    .map_err(|e| e.to_string())?;
            } else {
                memory
                    .read_exact_volatile_from(d.addr(), &mut *self.image, len)
                    .map_err(|e| e.to_string())?;
                written += d.len();
            }
        }
        Ok(written)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Configuration: capacity (u64, sectors) first; the rest is unused and reads zero.
        let mut config = [0u8; 8];
        write_le(&mut config, self.sectors);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let descriptors: Vec<Descriptor> = chain.collect();
            let (status, written) = self.serve(memory, &descriptors);
            let status_written = match descriptors.last() {
                Some(d) if d.is_write_only() && d.len() >= 1 => {
                    memory.write_obj(status, d.addr()).is_ok()
                }
                _ => false,
            };
            let used_len = written + u32::from(status_written);
            if let Err(err) = queue.add_used(memory, head, used_len) {
                log::warn!("virtio-blk cannot return a used buffer: {err}");
                return used_any;
            }
            used_any = true;
        }
        used_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;
    use crate::devices::virtio_mmio::MmioTransport;
    use crate::devices::virtio_mmio::tests::{read32, reg, write32};
    use std::io::Write;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn addr(value: u64) -> GuestAddress {
        GuestAddress(value)
    }

    fn image(dir: &Path, content: &[u8]) -> PathBuf {
        let path = dir.join("disk.raw");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(content)
            .unwrap();
        path
    }

    /// Sets up the transport like a driver does and submits one request.
    fn request(
        block: Block,
        kind: u32,
        sector: u64,
        data: &[u8],
        data_write_only: bool,
    ) -> (
        MmioTransport<Block>,
        GuestMemoryMmap,
        EventFd,
        Vec<u8>,
        u8,
        u32,
    ) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let queue = MockSplitQueue::create(&memory, GuestAddress(0x1_0000), 16);
        let (header_at, data_at, status_at) = (addr(0x4_0000), addr(0x5_0000), addr(0x6_0000));
        memory.write_obj(kind, header_at).unwrap();
        memory
            .write_obj(sector, header_at.unchecked_add(8))
            .unwrap();
        memory.write_slice(data, data_at).unwrap();
        let chain = [
            (header_at, 16, VRING_DESC_F_NEXT),
            (
                data_at,
                data.len() as u32,
                VRING_DESC_F_NEXT
                    | if data_write_only {
                        VRING_DESC_F_WRITE
                    } else {
                        0
                    },
            ),
            (status_at, 1, VRING_DESC_F_WRITE),
        ];
        for (i, (at, len, flags)) in chain.iter().enumerate() {
            let desc = Descriptor::new(at.0, *len, *flags as u16, i as u16 + 1);
            queue
                .desc_table()
                .store(i as u16, RawDescriptor::from(desc))
                .unwrap();
        }
        queue.avail().ring().ref_at(0).unwrap().store(0);
        queue.avail().idx().store(1);

        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(block, memory.clone(), irq.try_clone().unwrap());
        assert_eq!(read32(&mut t, reg::MAGIC), 0x7472_6976);
        assert_eq!(read32(&mut t, reg::DEVICE_ID), 2);
        write32(&mut t, reg::STATUS, 1 | 2 | 8);
        write32(&mut t, reg::QUEUE_SEL, 0);
        write32(&mut t, reg::QUEUE_NUM, 16);
        for (low, value) in [
            (reg::QUEUE_DESC_LOW, queue.desc_table_addr()),
            (reg::QUEUE_DRIVER_LOW, queue.avail_addr()),
            (reg::QUEUE_DEVICE_LOW, queue.used_addr()),
        ] {
            write32(&mut t, low, value.0 as u32);
            write32(&mut t, low + 4, (value.0 >> 32) as u32);
        }
        write32(&mut t, reg::QUEUE_READY, 1);
        write32(&mut t, reg::STATUS, 1 | 2 | 8 | 4);
        write32(&mut t, reg::QUEUE_NOTIFY, 0);
        let used_len = queue.used().ring().ref_at(0).unwrap().load().len();
        let mut out = vec![0u8; data.len()];
        memory.read_slice(&mut out, data_at).unwrap();
        let status: u8 = memory.read_obj(status_at).unwrap();
        (t, memory, irq, out, status, used_len)
    }

    #[test]
    fn reads_a_sector_and_interrupts() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = vec![0u8; 4096];
        content[512..1024].fill(0xAB);
        let block = Block::open(&image(dir.path(), &content), true).unwrap();
        assert_eq!(block.sectors(), 8);
        let (mut t, _, irq, out, status, used_len) =
            request(block, VIRTIO_BLK_T_IN, 1, &[0u8; 512], true);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert!(out.iter().all(|b| *b == 0xAB));
        assert_eq!(used_len, 513);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 1);
        write32(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn writes_reach_the_image_unless_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 2048]);
        let (_, _, _, _, status, _) = request(
            Block::open(&path, false).unwrap(),
            VIRTIO_BLK_T_OUT,
            2,
            &[0x5A; 512],
            false,
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let content = std::fs::read(&path).unwrap();
        assert!(content[1024..1536].iter().all(|b| *b == 0x5A));
        assert!(content[..1024].iter().all(|b| *b == 0));

        let (_, _, _, _, status, _) = request(
            Block::open(&path, true).unwrap(),
            VIRTIO_BLK_T_OUT,
            0,
            &[1; 512],
            false,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert!(std::fs::read(&path).unwrap()[..512].iter().all(|b| *b == 0));
    }

    #[test]
    fn requests_past_the_end_fail_and_unknown_ones_are_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 1024]);
        let (_, _, _, _, status, _) = request(
            Block::open(&path, true).unwrap(),
            VIRTIO_BLK_T_IN,
            1,
            &[0; 1024],
            true,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        let (_, _, _, _, status, _) =
            request(Block::open(&path, true).unwrap(), 99, 0, &[0; 16], true);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn read_only_features_and_capacity_are_offered() {
        let dir = tempfile::tempdir().unwrap();
        let block = Block::open(&image(dir.path(), &[0u8; 1 << 20]), true).unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 2048);
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let mut t = MmioTransport::new(block, memory, EventFd::new(EFD_NONBLOCK).unwrap());
        let mut high = [0u8; 4];
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        t.read(reg::DEVICE_FEATURES, &mut high);
        assert_eq!(u32::from_le_bytes(high), 1, "VIRTIO_F_VERSION_1");
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Block::open(&dir.path().join("nope.raw"), true).unwrap_err();
        assert!(matches!(missing, DiskError::Missing { .. }), "{missing}");
        let path = image(dir.path(), &[0u8; 512]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let ro = Block::open(&path, false).unwrap_err();
        assert!(matches!(ro, DiskError::ReadOnly { .. }), "{ro}");
        assert!(ro.to_string().contains("disk.read_only = true"));
        Block::open(&path, true).unwrap();
    }

    #[test]
    fn a_read_write_image_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 512]);
        let first = Block::open(&path, false).unwrap();
        assert!(matches!(
            Block::open(&path, true),
            Err(DiskError::InUse { .. })
        ));
        drop(first);
        let _shared = Block::open(&path, true).unwrap();
        let _also_shared = Block::open(&path, true).unwrap();
        assert!(matches!(
            Block::open(&path, false),
            Err(DiskError::InUse { .. })
        ));
    }
}
