//! The factory test suite (`hw-test`, run on the appliance) and its lab runner (`hw-qemu`,
//! which boots the appliance image on emulated SR-IOV hardware and runs the suite there).
//!
//! A profile ([`profile::Profile`]) says what one SKU must have; [`checks::run_suite`] checks
//! the machine against it and returns a [`report::Report`].

pub mod checks;
pub mod frame;
pub mod lab;
pub mod loopback_frame;
pub mod machine;
pub mod packet_socket;
pub mod profile;
pub mod report;
pub mod vfio;

#[cfg(test)]
mod test_support;
