//! Control requests and their replies on the VMM's private unix socket.
//!
//! Wire format (the same as hostd's, whose no_std `hostd-proto` crate these types will move
//! to): each message is a little-endian `u32` length followed by that many bytes of postcard.
//! A client connects, sends one request and reads one response; the VMM then closes the
//! connection. Types are kept plain (no borrowed data, no maps) so they move as they are.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest frame accepted; status replies of 254 vCPUs stay far below it.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024;

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// State, per-vCPU cores and exit counts, RSS.
    Status,
    /// Press the power button; stop by force if the guest has not powered off within the
    /// configured `graceful_stop_timeout_ms`. The reply comes at once; the process exits when
    /// the VM has stopped.
    StopGraceful,
    /// Stop the VM now.
    StopForced,
    /// Reboot the VM.
    Reboot(RebootMode),
    /// Park all vCPUs (no KVM_RUN until resumed).
    Pause,
    /// Release the parked vCPUs.
    Resume,
}

/// How to reboot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebootMode {
    /// Ask the guest: press the power button and, when the guest powers off (or resets),
    /// restart it from its boot state instead of exiting. Falls back to a hard reboot after
    /// the graceful stop timeout.
    Soft,
    /// Restart all vCPUs from the boot state now.
    Hard,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done (or, for stops and soft reboots, under way).
    Ok,
    /// The status asked for.
    Status(VmStatus),
    /// The request cannot be carried out in the VM's state.
    Error(String),
}

/// Run state of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs running.
    Running,
    /// vCPUs parked by a Pause request.
    Paused,
    /// Power button pressed for a graceful stop; waiting for the guest.
    Stopping,
    /// Power button pressed for a soft reboot; waiting for the guest.
    Rebooting,
}

/// Status of the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// VM name from the config.
    pub name: String,
    /// VMM process id.
    pub pid: u32,
    /// Run state.
    pub state: VmState,
    /// One entry per vCPU, in order.
    pub vcpus: Vec<VcpuStatus>,
    /// Guest RAM, bytes.
    pub guest_memory_bytes: u64,
    /// Guest RAM is backed by huge pages.
    pub hugepages: bool,
    /// Resident set of the VMM process (`VmRSS`), bytes. Includes guest RAM unless it is on
    /// huge pages.
    pub rss_bytes: u64,
    /// Locked memory of the process (`VmLck`), bytes.
    pub locked_bytes: u64,
    /// Resets since start (guest-initiated or requested).
    pub resets: u32,
    /// Host PCI functions passed through to the guest, in config order.
    pub passthrough: Vec<PassthroughStatus>,
}

/// A host PCI function passed through to the guest (`[[vfio]]` in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassthroughStatus {
    /// Host PCI address, e.g. `0000:01:10.0`.
    pub host_address: String,
    /// Address in the guest, e.g. `0000:00:01.0`.
    pub guest_address: String,
    /// Host IOMMU group (`/dev/vfio/<group>`), which this VMM holds open.
    pub iommu_group: u32,
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// MSI-X vectors of the function (0: no MSI-X).
    pub msix_vectors: u16,
    /// What the guest driver has enabled: no interrupts (no driver yet), MSI or MSI-X.
    pub interrupts: InterruptMode,
    /// Vectors routed to the guest now (enabled and unmasked).
    pub live_vectors: u32,
    /// Times the VMM reset the function since start (each VM reset resets it).
    pub resets: u32,
}

/// Interrupt mode of a passthrough function, as its guest driver set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterruptMode {
    /// Neither MSI nor MSI-X enabled (VFs have no INTx).
    None,
    /// MSI with this many vectors.
    Msi {
        /// Vectors enabled.
        vectors: u32,
    },
    /// MSI-X.
    Msix,
}

/// Status of one vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStatus {
    /// vCPU index (= APIC id).
    pub index: u32,
    /// Host core it is pinned to.
    pub host_core: u32,
    /// Host thread id.
    pub tid: u32,
    /// All KVM_RUN exits to the VMM.
    pub exits: u64,
    /// Port I/O exits.
    pub io_exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
}

/// Errors on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Socket I/O failed (or the peer closed it).
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    /// A frame larger than [`MAX_FRAME_BYTES`].
    #[error("control frame of {0} bytes is larger than the {MAX_FRAME_BYTES} allowed")]
    TooLarge(u32),
    /// The payload is not a valid message.
    #[error("control message cannot be decoded or encoded")]
    Codec(#[from] postcard::Error),
}

/// Writes one framed message.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> Result<(), FrameError> {
    let payload = postcard::to_stdvec(message)?;
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&payload);
    out.write_all(&frame)?;
    Ok(())
}

/// Reads one framed message.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload)?;
    Ok(postcard::from_bytes(&payload)?)
}

/// Client helper: connects to `socket`, sends `request`, returns the reply.
pub fn call(socket: &Path, request: &Request) -> Result<Response, FrameError> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write_frame(&mut stream, request)?;
    read_frame(&mut stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let status = Response::Status(VmStatus {
            name: "waf-1".into(),
            pid: 42,
            state: VmState::Paused,
            vcpus: vec![VcpuStatus {
                index: 0,
                host_core: 3,
                tid: 43,
                exits: 10,
                io_exits: 9,
                mmio_exits: 1,
            }],
            guest_memory_bytes: 64 << 20,
            hugepages: false,
            rss_bytes: 70 << 20,
            locked_bytes: 64 << 20,
            resets: 1,
            passthrough: vec![PassthroughStatus {
                host_address: "0000:01:10.0".into(),
                guest_address: "0000:00:01.0".into(),
                iommu_group: 7,
                vendor_id: 0x8086,
                device_id: 0x10ca,
                msix_vectors: 3,
                interrupts: InterruptMode::Msix,
                live_vectors: 3,
                resets: 0,
            }],
        });
        let mut wire = Vec::new();
        write_frame(&mut wire, &Request::Reboot(RebootMode::Soft)).unwrap();
        write_frame(&mut wire, &status).unwrap();
        let len = u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(wire.len(), 4 + len + 4 + (wire.len() - 8 - len));
        let mut reader = wire.as_slice();
        assert_eq!(
            read_frame::<Request>(&mut reader).unwrap(),
            Request::Reboot(RebootMode::Soft)
        );
        assert_eq!(read_frame::<Response>(&mut reader).unwrap(), status);
        assert!(reader.is_empty());
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut wire = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
        wire.extend([0; 8]);
        assert!(matches!(
            read_frame::<Request>(&mut wire.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        let mut short = Vec::new();
        write_frame(&mut short, &Request::Status).unwrap();
        short.truncate(short.len() - 1);
        short[0] += 1;
        assert!(matches!(
            read_frame::<Request>(&mut short.as_slice()),
            Err(FrameError::Io(_))
        ));
    }
}
