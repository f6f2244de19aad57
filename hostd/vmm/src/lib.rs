//! `hostd-vmm`: one KVM virtual machine per process.
//!
//! The process creates the VM from a [`config::VmConfig`], pins one thread per vCPU to its
//! dedicated host core, locks the guest's RAM, emulates the devices of docs/VMM.md and takes
//! control requests ([`api`]) on a private unix socket. hostd spawns one per VM; tests and
//! benchmarks run it standalone.

pub mod api;
pub mod boot;
pub mod config;
pub mod control;
pub mod cores;
pub mod devices;
pub mod events;
pub mod layout;
pub mod memory;
pub mod pci;
pub mod vcpu;
pub mod vfio;
pub mod vm;
