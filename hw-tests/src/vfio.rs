//! Opening a device through VFIO, the way a VMM will: container, group (which must be
//! viable), device; then reading its PCI config space through the device fd.

use std::path::Path;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

/// What opening a device through VFIO showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioProbe {
    /// Vendor id read from config space through VFIO.
    pub vendor_id: u16,
    /// Device id, likewise.
    pub device_id: u16,
    /// Size of BAR0's region.
    pub bar0_size: u64,
    /// Interrupt vectors the device reports (MSI-X/MSI/INTx, the largest).
    pub max_interrupts: u32,
}

/// Opens devices through VFIO.
pub trait VfioOpener: Send + Sync + std::fmt::Debug {
    /// Opens the device at `sysfs_dev` (`/sys/bus/pci/devices/<addr>`), reads it, closes it.
    fn probe(&self, sysfs_dev: &Path) -> Result<VfioProbe, String>;
}

/// The kernel's VFIO, through vfio-ioctls.
#[derive(Debug, Default)]
pub struct RealVfio;

impl VfioOpener for RealVfio {
    fn probe(&self, sysfs_dev: &Path) -> Result<VfioProbe, String> {
        let container =
            VfioContainer::new(None).map_err(|e| format!("cannot open /dev/vfio/vfio: {e}"))?;
        let ops: Arc<dyn VfioOps> = Arc::new(container);
        // Opens /dev/vfio/<group>, checks VFIO_GROUP_FLAGS_VIABLE, attaches it to the container
        // (type1 IOMMU) and gets the device fd.
        let device = VfioDevice::new(sysfs_dev, ops, false)
            .map_err(|e| format!("VFIO open of {} failed: {e}", sysfs_dev.display()))?;
        let mut ids = [0u8; 4];
        device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut ids, 0);
        Ok(VfioProbe {
            vendor_id: u16::from_le_bytes([ids[0], ids[1]]),
            device_id: u16::from_le_bytes([ids[2], ids[3]]),
            bar0_size: device.get_region_size(0),
            max_interrupts: device.max_interrupts(),
        })
    }
}
