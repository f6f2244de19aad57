//! `iommu`: an IOMMU is registered with the kernel and has put devices into groups; without
//! it there is no safe device assignment.

use super::not_in_profile;
use crate::machine::Machine;
use crate::profile::Profile;
use crate::report::CheckResult;

const NAME: &str = "iommu";

fn list(m: &Machine, rel: &str) -> Result<Vec<String>, String> {
    let dir = m.sys(rel);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", dir.display())),
    }
}

pub(super) fn run(profile: &Profile, m: &Machine) -> CheckResult {
    let Some(spec) = &profile.iommu else {
        return not_in_profile(NAME, profile, "IOMMU");
    };
    let units = match list(m, "class/iommu") {
        Ok(u) => u,
        Err(e) => return CheckResult::fail(NAME, e),
    };
    if units.is_empty() {
        return CheckResult::fail(
            NAME,
            "no IOMMU is active: enable VT-d / AMD-Vi in the firmware setup and boot with intel_iommu=on (or amd_iommu=on)",
        );
    }
    let groups = match list(m, "kernel/iommu_groups") {
        Ok(g) => g,
        Err(e) => return CheckResult::fail(NAME, e),
    };
    let mut details = vec![
        format!("IOMMU units: {}", units.join(", ")),
        format!("{} IOMMU groups", groups.len()),
    ];
    if let Some(first) = groups.first() {
        if let Ok(kind) = m.read(&m.sys(&format!("kernel/iommu_groups/{first}/type"))) {
            details.push(format!("default domain type: {}", kind.trim()));
        }
    }
    let count = u32::try_from(groups.len()).unwrap_or(u32::MAX);
    if count < spec.min_groups {
        return CheckResult::fail(NAME, format!("{count} IOMMU groups, the profile needs at least {}; is the IOMMU enabled for all devices?", spec.min_groups))
            .with_details(details);
    }
    CheckResult::pass(NAME, format!("{} active, {count} groups", units.join(", ")))
        .with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use crate::test_support::{FakeMachine, profile};

    #[test]
    fn no_iommu_fails_with_firmware_advice() {
        let f = FakeMachine::new();
        let r = run(&profile("[iommu]\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.reason.contains("VT-d"), "{}", r.reason);
    }

    #[test]
    fn too_few_groups_fail() {
        let f = FakeMachine::new();
        f.write("sys/class/iommu/dmar0/name", "dmar0");
        f.write("sys/kernel/iommu_groups/0/type", "identity\n");
        let r = run(&profile("[iommu]\nmin_groups = 2\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.reason);
        assert!(
            r.reason
                .starts_with("1 IOMMU groups, the profile needs at least 2")
        );
    }

    #[test]
    fn active_iommu_with_groups_passes() {
        let f = FakeMachine::new();
        f.write("sys/class/iommu/dmar0/name", "dmar0");
        for g in 0..3 {
            f.write(&format!("sys/kernel/iommu_groups/{g}/type"), "identity\n");
        }
        let r = run(&profile("[iommu]\nmin_groups = 2\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Pass);
        assert_eq!(r.reason, "dmar0 active, 3 groups");
        assert!(
            r.details
                .contains(&"default domain type: identity".to_string())
        );
    }
}
