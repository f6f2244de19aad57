//! Builds the appliance boot image: a zstd-compressed newc cpio holding busybox, the kernel
//! modules the appliance needs (dependencies resolved from `modules.dep`, loaded in order),
//! our static binaries, the factory profiles, and a generated `/init`.
//!
//! Reproducible: the same inputs give the same bytes (sorted entries, fixed owners and mtimes,
//! no timestamps in the compressed frame), whatever the input files' own metadata.

pub mod archive;
pub mod binaries;
pub mod etc;
pub mod host_program;
pub mod image;
pub mod init_script;
pub mod inputs;
pub mod modules;
