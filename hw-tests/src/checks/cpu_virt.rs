//! `cpu_virt`: enough cores, a virtualization extension (svm or vmx), and a working KVM: the
//! device opens, its API version is the stable one, and a VM with a vCPU can be created.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use kvm_ioctls::Kvm;

use super::not_in_profile;
use crate::machine::Machine;
use crate::profile::Profile;
use crate::report::CheckResult;

const NAME: &str = "cpu_virt";
/// KVM_GET_API_VERSION of every KVM since 2.6.22.
const KVM_API_VERSION: i32 = 12;

pub(super) fn run(profile: &Profile, m: &Machine) -> CheckResult {
    let Some(spec) = &profile.cpu else {
        return not_in_profile(NAME, profile, "CPU requirements");
    };
    let cpuinfo = match m.read(&m.proc("cpuinfo")) {
        Ok(text) => text,
        Err(e) => return CheckResult::fail(NAME, e),
    };
    let cores = u32::try_from(
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
    )
    .unwrap_or(u32::MAX);
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mut details = vec![format!("{cores} cores online: {model}")];
    if cores < spec.min_cores {
        return CheckResult::fail(NAME, format!("{cores} cores online, the profile needs {}; check the CPU population and that none is disabled in firmware", spec.min_cores))
            .with_details(details);
    }
    if !spec.virtualization {
        return CheckResult::pass(
            NAME,
            format!("{cores} cores (virtualization not required by the profile)"),
        )
        .with_details(details);
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let Some(flag) = ["svm", "vmx"]
        .into_iter()
        .find(|f| flags.split_whitespace().any(|w| w == *f))
    else {
        return CheckResult::fail(
            NAME,
            "the CPU reports neither svm nor vmx: enable SVM / VT-x in the firmware setup",
        )
        .with_details(details);
    };
    details.push(format!("virtualization extension: {flag}"));

    let path = m.dev("kvm");
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return CheckResult::fail(NAME, format!("bad device path {}", path.display()));
    };
    let kvm = match Kvm::new_with_path(&c_path) {
        Ok(kvm) => kvm,
        Err(e) if e.errno() == libc::ENOENT => {
            return CheckResult::fail(NAME, format!("{} does not exist: the kvm-amd / kvm-intel module did not load (see /run/modules.log and dmesg)", path.display()))
                .with_details(details);
        }
        Err(e) => {
            return CheckResult::fail(NAME, format!("cannot open {}: {e}", path.display()))
                .with_details(details);
        }
    };
    let api = kvm.get_api_version();
    details.push(format!("KVM API version {api}"));
    if api != KVM_API_VERSION {
        return CheckResult::fail(
            NAME,
            format!(
                "KVM API version {api}, expected {KVM_API_VERSION}: this kernel's KVM is not usable"
            ),
        )
        .with_details(details);
    }
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => {
            return CheckResult::fail(NAME, format!("KVM_CREATE_VM failed: {e}"))
                .with_details(details);
        }
    };
    if let Err(e) = vm.create_vcpu(0) {
        return CheckResult::fail(NAME, format!("KVM_CREATE_VCPU failed: {e}"))
            .with_details(details);
    }
    details.push(format!(
        "VM created, vCPU 0 created, max vCPUs {}",
        kvm.get_max_vcpus()
    ));
    CheckResult::pass(
        NAME,
        format!("{cores} cores, {flag}, KVM API {api}, VM and vCPU created"),
    )
    .with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use crate::test_support::{FakeMachine, profile};

    const CPUINFO: &str = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu svm sse\n\nprocessor\t: 1\nflags\t\t: fpu svm sse\n";

    #[test]
    fn too_few_cores_fail_with_the_numbers() {
        let f = FakeMachine::new();
        f.write("proc/cpuinfo", CPUINFO);
        let p = profile("[cpu]\nmin_cores = 4\n");
        let r = run(&p, &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.starts_with("2 cores online, the profile needs 4"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn no_virtualization_flag_fails_with_advice() {
        let f = FakeMachine::new();
        f.write("proc/cpuinfo", &CPUINFO.replace("svm ", ""));
        let r = run(&profile("[cpu]\nmin_cores = 2\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.reason.contains("enable SVM / VT-x"), "{}", r.reason);
    }

    #[test]
    fn missing_dev_kvm_is_a_failure_not_a_skip() {
        let f = FakeMachine::new();
        f.write("proc/cpuinfo", CPUINFO);
        let r = run(&profile("[cpu]\nmin_cores = 2\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("kvm") && r.reason.contains("does not exist"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn virtualization_not_required_passes_on_cores_alone() {
        let f = FakeMachine::new();
        f.write("proc/cpuinfo", &CPUINFO.replace("svm ", ""));
        let r = run(
            &profile("[cpu]\nmin_cores = 2\nvirtualization = false\n"),
            &f.machine(),
        );
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.reason);
    }

    #[test]
    fn absent_from_the_profile_is_a_skip() {
        let f = FakeMachine::new();
        let r = run(&profile(""), &f.machine());
        assert_eq!(r.outcome, Outcome::Skip);
    }

    #[test]
    fn real_kvm_creates_a_vm() {
        // This machine's /dev/kvm, with a CPU flag line that says svm (a nested guest's
        // cpuinfo may not show it even where KVM works).
        let dev_kvm = std::path::Path::new("/dev/kvm");
        assert!(
            dev_kvm.exists(),
            "this test needs /dev/kvm (load kvm-amd or kvm-intel)"
        );
        let f = FakeMachine::new();
        f.write("proc/cpuinfo", CPUINFO);
        let mut m = f.machine();
        m.dev = "/dev".into();
        let r = run(&profile("[cpu]\nmin_cores = 2\n"), &m);
        assert_eq!(r.outcome, Outcome::Pass, "{} {:?}", r.reason, r.details);
        assert!(r.reason.contains("KVM API 12"), "{}", r.reason);
    }
}
