//! `memory`: enough RAM, and a pattern test over part of it: each pattern is written over the
//! whole buffer, then read back, so a stuck or coupled bit shows as a mismatch.

use std::time::Instant;

use super::not_in_profile;
use crate::machine::Machine;
use crate::profile::Profile;
use crate::report::CheckResult;

const NAME: &str = "memory";

/// A test pattern: the value each 64-bit word at a given index must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Every bit 0.
    Zeros,
    /// Every bit 1.
    Ones,
    /// 0101...
    Checker,
    /// 1010...
    InverseChecker,
    /// The word's own index (finds address line faults).
    OwnAddress,
    /// One bit set, walking with the index.
    WalkingOne,
}

impl Pattern {
    /// Every pattern, in test order.
    pub const ALL: [Pattern; 6] = [
        Pattern::Zeros,
        Pattern::Ones,
        Pattern::Checker,
        Pattern::InverseChecker,
        Pattern::OwnAddress,
        Pattern::WalkingOne,
    ];

    fn word(self, index: usize) -> u64 {
        match self {
            Pattern::Zeros => 0,
            Pattern::Ones => u64::MAX,
            Pattern::Checker => 0x5555_5555_5555_5555,
            Pattern::InverseChecker => 0xAAAA_AAAA_AAAA_AAAA,
            Pattern::OwnAddress => index as u64,
            Pattern::WalkingOne => 1u64 << (index % 64),
        }
    }
}

/// Writes `pattern` over `buf`.
pub fn fill(buf: &mut [u64], pattern: Pattern) {
    for (i, w) in buf.iter_mut().enumerate() {
        // Volatile, so the compiler cannot prove the later read and drop the work.
        let p: *mut u64 = w;
        // SAFETY: `p` comes from a live `&mut u64` of `buf`, so it is valid and aligned.
        unsafe { p.write_volatile(pattern.word(i)) };
    }
}

/// The first word of `buf` that does not hold `pattern`: (index, expected, found).
pub fn verify(buf: &[u64], pattern: Pattern) -> Option<(usize, u64, u64)> {
    buf.iter().enumerate().find_map(|(i, w)| {
        let p: *const u64 = w;
        // SAFETY: `p` comes from a live `&u64` of `buf`, so it is valid and aligned.
        let found = unsafe { p.read_volatile() };
        let expected = pattern.word(i);
        (found != expected).then_some((i, expected, found))
    })
}

fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

pub(super) fn run(profile: &Profile, m: &Machine) -> CheckResult {
    let Some(spec) = &profile.memory else {
        return not_in_profile(NAME, profile, "memory requirements");
    };
    let meminfo = match m.read(&m.proc("meminfo")) {
        Ok(t) => t,
        Err(e) => return CheckResult::fail(NAME, e),
    };
    let Some(total) = mem_total_mib(&meminfo) else {
        return CheckResult::fail(NAME, "no MemTotal line in /proc/meminfo");
    };
    let mut details = vec![format!(
        "MemTotal {total} MiB (profile minimum {} MiB)",
        spec.min_total_mib
    )];
    if total < spec.min_total_mib {
        return CheckResult::fail(
            NAME,
            format!(
                "{total} MiB of RAM, the profile needs {} MiB; check the DIMM population",
                spec.min_total_mib
            ),
        )
        .with_details(details);
    }
    let words = usize::try_from(spec.pattern_test_mib * (1 << 20) / 8).unwrap_or(usize::MAX);
    let mut buf: Vec<u64> = Vec::new();
    if buf.try_reserve_exact(words).is_err() {
        return CheckResult::fail(
            NAME,
            format!(
                "cannot allocate {} MiB for the pattern test",
                spec.pattern_test_mib
            ),
        )
        .with_details(details);
    }
    buf.resize(words, 0);
    let start = Instant::now();
    for pattern in Pattern::ALL {
        fill(&mut buf, pattern);
        if let Some((index, expected, found)) = verify(&buf, pattern) {
            details.push(format!(
                "word {index} (byte offset {:#x}): wrote {expected:#018x}, read {found:#018x}",
                index * 8
            ));
            return CheckResult::fail(NAME, format!("memory pattern {pattern:?} failed: a RAM fault; run a full memory test and replace the DIMM"))
                .with_details(details);
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let moved_mib = (spec.pattern_test_mib * 2 * Pattern::ALL.len() as u64) as f64;
    details.push(format!(
        "{} patterns over {} MiB, {:.0} MiB/s",
        Pattern::ALL.len(),
        spec.pattern_test_mib,
        moved_mib / secs
    ));
    CheckResult::pass(
        NAME,
        format!(
            "{total} MiB RAM, {} MiB pattern-tested",
            spec.pattern_test_mib
        ),
    )
    .with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use crate::test_support::{FakeMachine, profile};

    #[test]
    fn every_pattern_catches_a_flipped_bit() {
        let mut buf = vec![0u64; 4096];
        for pattern in Pattern::ALL {
            fill(&mut buf, pattern);
            assert_eq!(verify(&buf, pattern), None);
            buf[1234] ^= 1 << 17;
            let (index, expected, found) = verify(&buf, pattern).unwrap();
            assert_eq!(index, 1234);
            assert_eq!(expected ^ found, 1 << 17);
        }
    }

    #[test]
    fn own_address_catches_aliased_words() {
        let mut buf = vec![0u64; 64];
        fill(&mut buf, Pattern::OwnAddress);
        buf[40] = buf[8];
        assert_eq!(verify(&buf, Pattern::OwnAddress), Some((40, 40, 8)));
    }

    #[test]
    fn too_little_ram_fails_with_numbers() {
        let f = FakeMachine::new();
        f.write(
            "proc/meminfo",
            "MemTotal:        1024000 kB\nMemFree: 1 kB\n",
        );
        let r = run(
            &profile("[memory]\nmin_total_mib = 2048\npattern_test_mib = 1\n"),
            &f.machine(),
        );
        assert_eq!(r.outcome, Outcome::Fail);
        assert_eq!(
            r.reason,
            "1000 MiB of RAM, the profile needs 2048 MiB; check the DIMM population"
        );
    }

    #[test]
    fn enough_ram_passes_the_pattern_test() {
        let f = FakeMachine::new();
        f.write("proc/meminfo", "MemTotal:        4096000 kB\n");
        let r = run(
            &profile("[memory]\nmin_total_mib = 2048\npattern_test_mib = 4\n"),
            &f.machine(),
        );
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.reason);
        assert!(
            r.details
                .iter()
                .any(|d| d.contains("6 patterns over 4 MiB")),
            "{:?}",
            r.details
        );
    }

    #[test]
    fn unreadable_meminfo_is_named() {
        let f = FakeMachine::new();
        let r = run(&profile("[memory]\nmin_total_mib = 2048\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.reason.contains("proc/meminfo"), "{}", r.reason);
    }
}
