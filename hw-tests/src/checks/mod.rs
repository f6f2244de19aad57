//! The factory checks, run in a fixed order: the ones that only look come first; `sriov`,
//! which changes device state (and restores it), comes last.

mod cpu_virt;
mod iommu;
mod memory;
mod nic_loopback;
mod sriov_check;
mod storage;

use std::time::Instant;

use crate::machine::Machine;
use crate::profile::Profile;
use crate::report::{CHECK_NAMES, CheckResult, Outcome, Report};

pub use memory::{Pattern, fill, verify};

type CheckFn = fn(&Profile, &Machine) -> CheckResult;

/// The checks, by name, in run order (the order of [`CHECK_NAMES`]).
const CHECKS: &[(&str, CheckFn)] = &[
    ("cpu_virt", cpu_virt::run),
    ("memory", memory::run),
    ("iommu", iommu::run),
    ("storage", storage::run),
    ("nic_loopback", nic_loopback::run),
    ("sriov", sriov_check::run),
];

/// A skip for hardware the profile says the SKU lacks.
pub(crate) fn not_in_profile(name: &str, profile: &Profile, what: &str) -> CheckResult {
    CheckResult::new(
        name,
        Outcome::Skip,
        format!("profile {} says this SKU has no {what}", profile.sku),
    )
}

/// Runs every check; `progress` sees each result as it is made.
pub fn run_suite(
    profile: &Profile,
    machine: &Machine,
    mut progress: impl FnMut(&CheckResult),
) -> Report {
    debug_assert!(
        CHECKS
            .iter()
            .map(|(n, _)| *n)
            .eq(CHECK_NAMES.iter().copied())
    );
    let start = Instant::now();
    let mut results = Vec::new();
    for (name, check) in CHECKS {
        log::info!("running {name}");
        let t = Instant::now();
        let mut result = check(profile, machine);
        result.duration_ms = elapsed_ms(t);
        progress(&result);
        results.push(result);
    }
    Report::new(&profile.sku, results, elapsed_ms(start))
}

pub(crate) fn elapsed_ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}
