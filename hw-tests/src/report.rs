//! The suite's report: each check's outcome with a one-line reason and details, rendered as
//! text for a person (80 columns), JSON for machines, JUnit XML for CI dashboards.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The hardware is there and works.
    Pass,
    /// Missing or broken, or the check could not run.
    Fail,
    /// The profile says this SKU lacks the hardware.
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// The check's name (`cpu_virt`, `sriov`, ...).
    pub name: String,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// One line: what was found, or what is wrong and what to do.
    pub reason: String,
    /// Measurements and steps, a line each.
    pub details: Vec<String>,
    /// How long it ran.
    pub duration_ms: u64,
}

impl CheckResult {
    /// A result with no details yet.
    pub fn new(name: &str, outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome,
            reason: reason.into(),
            details: Vec::new(),
            duration_ms: 0,
        }
    }

    /// A pass.
    pub fn pass(name: &str, reason: impl Into<String>) -> Self {
        Self::new(name, Outcome::Pass, reason)
    }

    /// A failure.
    pub fn fail(name: &str, reason: impl Into<String>) -> Self {
        Self::new(name, Outcome::Fail, reason)
    }

    /// Adds details.
    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

/// The whole suite's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always `hw-test`.
    pub suite: String,
    /// hw-test's version.
    pub version: String,
    /// The profile's SKU.
    pub sku: String,
    /// True only when no check failed.
    pub passed: bool,
    /// Each check, in the order run.
    pub checks: Vec<CheckResult>,
    /// Total time.
    pub duration_ms: u64,
}

/// The checks every report must carry, in order.
pub const CHECK_NAMES: &[&str] = &[
    "cpu_virt",
    "memory",
    "iommu",
    "storage",
    "nic_loopback",
    "sriov",
];

/// A report that cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// Not the JSON a report is.
    #[error("the report is not valid report JSON: {0}")]
    Json(String),
    /// A check is missing, extra or out of order.
    #[error("the report's checks are {found:?}, expected {expected:?}")]
    Checks {
        /// What it has.
        found: Vec<String>,
        /// What it must have.
        expected: Vec<String>,
    },
    /// The verdict contradicts the checks.
    #[error("the report says passed={claimed} but its checks say {actual}")]
    Verdict {
        /// What it claims.
        claimed: bool,
        /// What its checks say.
        actual: bool,
    },
}

impl Report {
    /// A report of `checks` for `sku`; the verdict follows from them.
    pub fn new(sku: &str, checks: Vec<CheckResult>, duration_ms: u64) -> Self {
        let passed = checks.iter().all(|c| c.outcome != Outcome::Fail);
        Self {
            suite: "hw-test".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sku: sku.into(),
            passed,
            checks,
            duration_ms,
        }
    }

    /// Parses a report and checks it is whole and consistent: every check present, and the
    /// verdict matching the checks. Anything else is an error, never a pass.
    pub fn from_json_checked(json: &str) -> Result<Self, ReportError> {
        let report: Report =
            serde_json::from_str(json).map_err(|e| ReportError::Json(e.to_string()))?;
        let found: Vec<String> = report.checks.iter().map(|c| c.name.clone()).collect();
        if found != CHECK_NAMES {
            return Err(ReportError::Checks {
                found,
                expected: CHECK_NAMES.iter().map(|s| s.to_string()).collect(),
            });
        }
        let actual = report.checks.iter().all(|c| c.outcome != Outcome::Fail);
        if report.passed != actual {
            return Err(ReportError::Verdict {
                claimed: report.passed,
                actual,
            });
        }
        Ok(report)
    }

    /// JSON on one line (for a console frame).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and vectors always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Counts of (pass, fail, skip).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |o| self.checks.iter().filter(|c| c.outcome == o).count();
        (
            count(Outcome::Pass),
            count(Outcome::Fail),
            count(Outcome::Skip),
        )
    }

    /// Text for a person: a line per check, details indented, no line over 80 columns.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "hw-test {}  profile {}", self.version, self.sku);
        for c in &self.checks {
            let head = format!(
                "{:<13}{:<5}{:>7} ",
                c.name,
                c.outcome.label(),
                format_ms(c.duration_ms)
            );
            push_wrapped(&mut out, &head, &c.reason);
            for d in &c.details {
                push_wrapped(&mut out, "    ", d);
            }
        }
        let (p, f, s) = self.counts();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "{verdict}: {p} passed, {f} failed, {s} skipped in {}",
            format_ms(self.duration_ms)
        );
        out
    }

    /// JUnit XML, a test case per check.
    pub fn to_junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(format!("hw-test {}", self.sku));
        for c in &self.checks {
            let mut status = match c.outcome {
                Outcome::Pass => TestCaseStatus::success(),
                Outcome::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
                Outcome::Skip => TestCaseStatus::skipped(),
            };
            if c.outcome != Outcome::Pass {
                status.set_message(c.reason.clone());
                status.set_description(c.details.join("\n"));
            }
            let mut case = TestCase::new(c.name.clone(), status);
            case.set_time(std::time::Duration::from_millis(c.duration_ms));
            case.set_system_out(format!("{}\n{}", c.reason, c.details.join("\n")));
            suite.add_test_case(case);
        }
        let mut report = JReport::new("hw-test");
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }
}

fn format_ms(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
}

/// Appends `head` + `text`, wrapping at 80 columns with continuation lines under the text.
fn push_wrapped(out: &mut String, head: &str, text: &str) {
    const WIDTH: usize = 80;
    let indent = head.chars().count().min(40);
    let mut line = head.to_string();
    let mut col = indent;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if col > indent && col + 1 + len > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent);
            col = indent;
        }
        if col > indent {
            line.push(' ');
            col += 1;
        }
        if len > WIDTH - indent {
            // A word longer than the line: cut it.
            let cut: String = word.chars().take(WIDTH - col).collect();
            col += cut.chars().count();
            line.push_str(&cut);
        } else {
            line.push_str(word);
            col += len;
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let checks = CHECK_NAMES
            .iter()
            .map(|n| CheckResult::pass(n, "ok").with_details(vec![format!("{n} detail")]))
            .collect();
        Report::new("qemu-lab", checks, 1234)
    }

    #[test]
    fn verdict_follows_the_checks() {
        let mut r = sample();
        assert!(r.passed);
        r.checks[1] = CheckResult::new("memory", Outcome::Skip, "no memory section");
        assert!(
            Report::new("x", r.checks.clone(), 0).passed,
            "a skip is not a failure"
        );
        r.checks[2] = CheckResult::fail("iommu", "no IOMMU");
        assert!(!Report::new("x", r.checks, 0).passed);
    }

    #[test]
    fn json_round_trips_and_is_checked() {
        let r = sample();
        assert_eq!(Report::from_json_checked(&r.to_json()).unwrap(), r);

        let mut lying = r.clone();
        lying.checks[0].outcome = Outcome::Fail;
        let err = Report::from_json_checked(&lying.to_json()).unwrap_err();
        assert_eq!(
            err,
            ReportError::Verdict {
                claimed: true,
                actual: false
            }
        );

        let mut short = r.clone();
        short.checks.pop();
        assert!(matches!(
            Report::from_json_checked(&short.to_json()),
            Err(ReportError::Checks { .. })
        ));

        let json = r.to_json();
        let truncated = &json[..json.len() / 2];
        assert!(matches!(
            Report::from_json_checked(truncated),
            Err(ReportError::Json(_))
        ));
        let extra = json.replacen("\"suite\"", "\"extra\": 1, \"suite\"", 1);
        assert!(matches!(
            Report::from_json_checked(&extra),
            Err(ReportError::Json(_))
        ));
    }

    #[test]
    fn text_fits_80_columns_and_says_the_verdict() {
        let mut r = sample();
        r.checks[5] = CheckResult::fail("sriov", "PF 0000:01:00.0 has sriov_totalvfs 4, the profile needs 7; check the NIC model and its firmware SR-IOV setting")
            .with_details(vec!["x".repeat(120)]);
        let r = Report::new("qemu-lab", r.checks, 61_500);
        let text = r.to_text();
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        assert!(text.contains("sriov        FAIL"), "{text}");
        assert!(
            text.ends_with("FAIL: 5 passed, 1 failed, 0 skipped in 61.5s\n"),
            "{text}"
        );
        assert!(
            text.contains("firmware SR-IOV\n"),
            "continuation lines wrap: {text}"
        );
    }

    #[test]
    fn junit_marks_failures_and_skips() {
        let mut r = sample();
        r.checks[3] = CheckResult::new("storage", Outcome::Skip, "SKU has no data disk");
        r.checks[4] = CheckResult::fail("nic_loopback", "998 of 1000 frames arrived");
        let xml = Report::new("qemu-lab", r.checks, 10).to_junit();
        assert!(xml.contains("tests=\"6\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("skipped=\"1\""), "{xml}");
        assert!(xml.contains("998 of 1000 frames arrived"), "{xml}");
    }
}
