//! Moving a device between drivers: to vfio-pci for a guest, and back to its host driver.
//!
//! The sequence is the one the kernel documents for `driver_override`: set the override, unbind
//! from the current driver, ask the bus to probe (`drivers_probe`), then put the override back
//! as it was. With the override set, no other driver can grab the device in between. Nothing
//! is loaded implicitly: a missing vfio-pci is an error that says so.

use crate::PciAddress;
use crate::discovery::{Driver, VFIO_PCI, device_dir, read_function};
use crate::error::SriovError;
use crate::host::Host;

/// Binds `addr` to vfio-pci. Returns the driver it had before, to restore later.
pub fn bind_to_vfio(host: &Host, addr: PciAddress) -> Result<Driver, SriovError> {
    let vfio_dir = host.pci_bus().join("drivers").join(VFIO_PCI);
    if !vfio_dir.exists() {
        return Err(SriovError::VfioPciUnavailable { path: vfio_dir });
    }
    let before = read_function(host, addr)?.driver;
    if before == Driver::Vfio {
        return Ok(before);
    }
    let after = rebind(host, addr, &before, Some(VFIO_PCI))?;
    if after != Driver::Vfio {
        return Err(SriovError::BindFailed {
            addr,
            wanted: VFIO_PCI.into(),
            actual: after.name().into(),
        });
    }
    log::info!("{addr}: {} -> vfio-pci", before.name());
    Ok(before)
}

/// Binds `addr` to a host driver: `driver` by name, or `None` for whatever driver the kernel
/// matches (none when no matching driver is loaded). Returns the driver it ends up with.
pub fn bind_to_host_driver(
    host: &Host,
    addr: PciAddress,
    driver: Option<&str>,
) -> Result<Driver, SriovError> {
    let before = read_function(host, addr)?.driver;
    if let Some(wanted) = driver {
        if before.name() == wanted {
            return Ok(before);
        }
    }
    let after = rebind(host, addr, &before, driver)?;
    match driver {
        Some(wanted) if after.name() != wanted => Err(SriovError::BindFailed {
            addr,
            wanted: wanted.into(),
            actual: after.name().into(),
        }),
        _ => {
            log::info!("{addr}: {} -> {}", before.name(), after.name());
            Ok(after)
        }
    }
}

/// Unbinds `addr` from its driver, leaving it idle.
pub fn unbind(host: &Host, addr: PciAddress) -> Result<(), SriovError> {
    let current = read_function(host, addr)?.driver;
    if current != Driver::None {
        host.write_attr(
            &host
                .pci_bus()
                .join("drivers")
                .join(current.name())
                .join("unbind"),
            &addr.to_string(),
        )?;
    }
    let after = read_function(host, addr)?.driver;
    if after != Driver::None {
        return Err(SriovError::BindFailed {
            addr,
            wanted: "none".into(),
            actual: after.name().into(),
        });
    }
    Ok(())
}

/// Override, unbind, probe, restore the override. Returns the driver the device then has.
fn rebind(
    host: &Host,
    addr: PciAddress,
    current: &Driver,
    target: Option<&str>,
) -> Result<Driver, SriovError> {
    let override_path = device_dir(host, addr).join("driver_override");
    let previous = host.read_attr(&override_path)?;
    // An empty write clears the override; the kernel shows a cleared one as "(null)".
    host.write_attr(&override_path, target.unwrap_or("\n"))?;
    let moved = (|| {
        if *current != Driver::None {
            let unbind = host
                .pci_bus()
                .join("drivers")
                .join(current.name())
                .join("unbind");
            host.write_attr(&unbind, &addr.to_string())?;
        }
        host.write_attr(&host.pci_bus().join("drivers_probe"), &addr.to_string())
    })();
    let restore = if previous == "(null)" {
        "\n"
    } else {
        previous.as_str()
    };
    let restored = host.write_attr(&override_path, restore);
    moved?;
    restored?;
    Ok(read_function(host, addr)?.driver)
}
