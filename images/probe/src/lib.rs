//! The probe guest: a tiny PVH payload that reports on COM1 what a VMM gives it (CPUs, RAM,
//! PCI functions) and obeys a few console commands; the guest of every host-KVM test
//! (docs/VMM.md, "The probe guest's console protocol"; images/README.md).
//!
//! This library holds everything but the entry code (`src/main.rs`, `src/boot.rs`). The
//! parsers work on traits ([`phys::PhysMemory`], [`pci::ConfigSpace`]) so their unit tests
//! run on the host against fakes.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod aml;
pub mod command;
pub mod console;
pub mod le;
pub mod line;
pub mod mptable;
pub mod pci;
pub mod phys;
pub mod platform;
pub mod port;
pub mod power;
pub mod shell;
pub mod start_info;
