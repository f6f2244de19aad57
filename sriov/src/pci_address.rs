//! PCI addresses (`domain:bus:device.function`), the name every device goes by in sysfs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PCI function address such as `0000:01:10.2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// A string that is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a PCI address: expected domain:bus:device.function, e.g. 0000:01:00.0")]
pub struct PciAddressError {
    /// What was given.
    pub input: String,
}

impl PciAddress {
    /// The address from its parts; `None` when device > 31 or function > 7.
    pub fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// Device and function packed as the 8-bit `devfn` the kernel uses.
    pub fn devfn(&self) -> u8 {
        (self.device << 3) | self.function
    }

    /// The address with the same domain and bus and the given `devfn`.
    pub fn with_devfn(&self, devfn: u8) -> Self {
        Self {
            device: devfn >> 3,
            function: devfn & 7,
            ..*self
        }
    }
}

impl FromStr for PciAddress {
    type Err = PciAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PciAddressError {
            input: s.to_string(),
        };
        let (domain, rest) = s.split_once(':').ok_or_else(err)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(err)?;
        let (device, function) = rest.split_once('.').ok_or_else(err)?;
        let hex_field = |text: &str, width: usize| {
            (text.len() == width && text.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(text, 16).ok())
                .flatten()
        };
        let domain = hex_field(domain, 4).ok_or_else(err)?;
        let bus = hex_field(bus, 2).ok_or_else(err)?;
        let device = hex_field(device, 2).ok_or_else(err)?;
        let function = hex_field(function, 1).ok_or_else(err)?;
        let narrow = |v: u16| u8::try_from(v).map_err(|_| err());
        Self::new(domain, narrow(bus)?, narrow(device)?, narrow(function)?).ok_or_else(err)
    }
}

impl TryFrom<String> for PciAddress {
    type Error = PciAddressError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PciAddress> for String {
    fn from(a: PciAddress) -> String {
        a.to_string()
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_canonical_form() {
        let a: PciAddress = "0000:01:10.2".parse().unwrap();
        assert_eq!(a, PciAddress::new(0, 1, 0x10, 2).unwrap());
        assert_eq!(a.to_string(), "0000:01:10.2");
        assert_eq!(a.devfn(), 0x82);
        assert_eq!(a.with_devfn(0x84).to_string(), "0000:01:10.4");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "01:00.0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:1:00.0",
            "zzzz:01:00.0",
            "0000:01:00.0 ",
        ] {
            let err = bad.parse::<PciAddress>().unwrap_err();
            assert_eq!(err.input, bad, "{bad}");
        }
    }
}
