//! The probe guest image: a PVH entry (boot.rs) that hands the `hvm_start_info` address to
//! [`probe::shell::run`]. Everything else lives in the library, where it is unit-tested.
#![no_std]
#![no_main]

mod boot;
mod mem;

use core::panic::PanicInfo;

/// Called by boot.rs in long mode with the guest-physical address of `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn probe_main(start_info: u64) -> ! {
    probe::shell::run(start_info)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    probe::power::panic_exit(info)
}
