//! SR-IOV VFs given to guests through VFIO: which VF an instance gets at start ([`pick`]),
//! what is done to it around its VMM ([`hardware`]: settings, vfio-pci, IOMMU group, and
//! back), the typed refusals ([`VfError`]), and the VF counts hostd sets at start
//! ([`counts`]). The daemon (`daemon/vfs.rs`) records each step in the store before it
//! acts, so a crash at any point is finished from the record (docs/HOSTD.md, "VF
//! assignment").

pub mod counts;
mod error;
pub mod hardware;
pub mod pick;

pub use error::{VfError, VfName};
pub use hardware::{HostKind, Released};

#[cfg(test)]
mod tests;
