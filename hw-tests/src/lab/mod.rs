//! The lab run: boot the appliance image on the emulated machine, wait for init to be ready,
//! hand the factory suite its profile over the serial console, run it, and bring back its
//! framed JSON report.

pub mod console;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use initramfs::image::DATA_LABEL;
use initramfs::init_script::READY_LINE;

use crate::frame::{self, FrameError};
use crate::report::{Report, ReportError};
use console::{Console, ConsoleError};
use qemu::LabMachine;

/// Where the lab image keeps its test executables.
const GUEST_LAB_TESTS: &str = "/usr/lib/hostd-lab/tests";
/// Where the profile goes inside the guest.
const GUEST_PROFILE: &str = "/tmp/hw-test-profile.toml";
/// What the guest prints after the suite, with its exit status.
const EXIT_MARKER: &str = "hw-test exit status ";

/// A lab run's settings.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// The machine (QEMU, kernel, image).
    pub machine: LabMachine,
    /// The factory profile's text.
    pub profile_text: String,
    /// Time limit for boot, hostd and the suite.
    pub timeout: Duration,
    /// Time limit for each lab test. A test over it is recorded as timed out and ends the
    /// run (the guest's shell is still busy with it).
    pub lab_test_timeout: Duration,
    /// Where the guest's console output is written.
    pub console_log: PathBuf,
    /// Lab tests to run after the suite (their file names in the lab image).
    pub lab_tests: Vec<String>,
}

/// One lab test executable's run inside the guest.
#[derive(Debug, Clone)]
pub struct LabTestRun {
    /// Its file name in the image.
    pub name: String,
    /// Its exit status.
    pub exit: i32,
    /// libtest's summary: tests passed and failed (`None` without a summary line).
    pub summary: Option<(u32, u32)>,
    /// What it printed.
    pub output: String,
    /// How long it took.
    pub duration: Duration,
    /// It did not finish within the lab test time limit (`exit` is then meaningless).
    pub timed_out: bool,
}

impl LabTestRun {
    /// Passed: finished, exit status 0 and a summary with no failure and at least one test.
    pub fn passed(&self) -> bool {
        !self.timed_out && self.exit == 0 && matches!(self.summary, Some((p, 0)) if p > 0)
    }
}

/// What a lab run brought back.
#[derive(Debug)]
pub struct LabResult {
    /// The suite's report (checked: whole and consistent).
    pub report: Report,
    /// The suite's exit status inside the guest.
    pub suite_exit: i32,
    /// QEMU start to `appliance-init: ready`.
    pub boot: Duration,
    /// QEMU start to hostd answering `hostctl status`.
    pub hostd_ready: Duration,
    /// Suite start to report received.
    pub suite: Duration,
    /// The lab tests, in the order run.
    pub lab_tests: Vec<LabTestRun>,
}

/// A lab run that produced no trustworthy report.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The console failed: QEMU would not start, died, or a step timed out.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The report frame was missing, truncated or corrupt.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The report was not whole or not consistent.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// hostd, started by init, did not answer.
    #[error(
        "hostd did not answer `hostctl status` within {secs} s of boot; its log is on the console above (/var/log/hostd.log)"
    )]
    HostdNotReady {
        /// How long it was given.
        secs: u64,
    },
    /// The suite's exit status line was unreadable.
    #[error("cannot read hw-test's exit status from the console")]
    ExitStatus,
    /// The data disk could not be made.
    #[error("cannot make the data disk image: {0}")]
    DataDisk(String),
}

/// Makes a raw disk image of `mib` MiB with an ext4 filesystem labelled for the appliance.
pub fn make_data_disk(mkfs_ext4: &Path, path: &Path, mib: u64) -> Result<(), LabError> {
    let file = std::fs::File::create(path)
        .map_err(|e| LabError::DataDisk(format!("{}: {e}", path.display())))?;
    file.set_len(mib << 20)
        .map_err(|e| LabError::DataDisk(format!("{}: {e}", path.display())))?;
    let out = Command::new(mkfs_ext4)
        .args(["-q", "-F", "-L", DATA_LABEL])
        .arg(path)
        .output()
        .map_err(|e| {
            LabError::DataDisk(format!(
                "cannot run {}: {e}; install e2fsprogs",
                mkfs_ext4.display()
            ))
        })?;
    if !out.status.success() {
        return Err(LabError::DataDisk(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Boots the machine and runs the suite. On error, the console log has what the guest said.
pub fn run(lab: &LabRun) -> Result<LabResult, LabError> {
    let start = Instant::now();
    let deadline = start + lab.timeout;
    let mut console = Console::spawn(&lab.machine.qemu, &lab.machine.args(), &lab.console_log)?;
    console.wait_until(
        0,
        "the appliance to boot (`appliance-init: ready`)",
        deadline,
        |out| out.contains(READY_LINE),
    )?;
    let boot = start.elapsed();
    // Let the shell print its prompt before typing, so nothing typed is lost.
    console.wait_until(0, "the console shell's prompt", deadline, |out| {
        out.split(READY_LINE)
            .nth(1)
            .is_some_and(|after| after.contains("# "))
    })?;
    wait_for_hostd(&mut console, deadline)?;
    let hostd_ready = start.elapsed();

    let suite_start = Instant::now();
    let mark = console.output().len();
    console.send_line(&format!("cat > {GUEST_PROFILE} <<'HWTEST_PROFILE_END'"))?;
    for line in lab.profile_text.lines() {
        console.send_line(line)?;
    }
    console.send_line("HWTEST_PROFILE_END")?;
    console.send_line(&format!(
        "hw-test --profile {GUEST_PROFILE} --frame; echo \"{EXIT_MARKER}$?\""
    ))?;
    let tail = console.wait_until(mark, "hw-test's report and exit status", deadline, |out| {
        exit_status(out).is_some()
    })?;
    let suite = suite_start.elapsed();
    let suite_exit = exit_status(&tail).ok_or(LabError::ExitStatus)?;
    let report = Report::from_json_checked(&frame::decode(&tail)?)?;

    let mut lab_tests = Vec::new();
    for name in &lab.lab_tests {
        let run = run_lab_test(&mut console, name, lab.lab_test_timeout)?;
        let timed_out = run.timed_out;
        lab_tests.push(run);
        if timed_out {
            break;
        }
    }

    console.send_line("poweroff -f")?;
    console.finish(Duration::from_secs(15));
    Ok(LabResult {
        report,
        suite_exit,
        boot,
        hostd_ready,
        suite,
        lab_tests,
    })
}

/// How long hostd may take to answer after init is ready.
const HOSTD_READY_SECS: u64 = 30;

/// Waits (in the guest, polling every 100 ms) until hostd answers `hostctl status`; on a
/// timeout prints hostd's log to the console and fails.
fn wait_for_hostd(console: &mut Console, deadline: Instant) -> Result<(), LabError> {
    let mark = console.output().len();
    let polls = HOSTD_READY_SECS * 10;
    // The marker is assembled by printf, so the echoed command line never matches it.
    console.send_line(&format!(
        "i=0; until hostctl status >/dev/null 2>&1 || [ $i -ge {polls} ]; do usleep 100000; i=$((i+1)); done; \
         if hostctl status >/dev/null 2>&1; then printf 'hostd-%s\\n' up; else cat /var/log/hostd.log; printf 'hostd-%s\\n' down; fi"
    ))?;
    let out = console.wait_until(mark, "hostd to answer `hostctl status`", deadline, |out| {
        out.contains("hostd-up") || out.contains("hostd-down")
    })?;
    if out.contains("hostd-up") {
        Ok(())
    } else {
        Err(LabError::HostdNotReady {
            secs: HOSTD_READY_SECS,
        })
    }
}

/// Runs one lab test executable in the guest, one test at a time (they share the hardware).
/// Over `limit`, the run is returned as timed out with what the test printed so far.
fn run_lab_test(
    console: &mut Console,
    name: &str,
    limit: Duration,
) -> Result<LabTestRun, LabError> {
    let start = Instant::now();
    let mark = console.output().len();
    let marker = format!("lab test {name} exit status ");
    console.send_line(&format!(
        "{GUEST_LAB_TESTS}/{name} --test-threads=1 --nocapture; echo \"{marker}$?\""
    ))?;
    let waited = console.wait_until(mark, &format!("lab test {name}"), start + limit, |out| {
        status_after(out, &marker).is_some()
    });
    let (output, timed_out) = match waited {
        Ok(output) => (output, false),
        Err(ConsoleError::Timeout { .. }) => {
            diagnose_hang(console)?;
            (console.output().get(mark..).unwrap_or("").to_string(), true)
        }
        Err(e) => return Err(e.into()),
    };
    let exit = match status_after(&output, &marker) {
        Some(exit) => exit,
        None if timed_out => -1,
        None => return Err(LabError::ExitStatus),
    };
    Ok(LabTestRun {
        name: name.into(),
        exit,
        summary: libtest_summary(&output),
        output,
        duration: start.elapsed(),
        timed_out,
    })
}

/// What the guest shows of a hung lab test, typed after a Ctrl-C (which ends the test
/// unless it is stuck in the kernel; typed lines wait in the tty until the shell reads them):
/// every process with its state and kernel wait channel, the kernel stacks of those in
/// uninterruptible sleep and of hostd's and the VMMs' threads, the end of hostd's logs and of
/// the kernel's. The end marker is assembled by printf, so the echoed line never matches it.
const HANG_DIAGNOSTICS: &[&str] = &[
    "echo '---- processes: pid state comm wchan ----'",
    "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cut -d' ' -f3 $p/stat 2>/dev/null) $(cat $p/comm 2>/dev/null) $(cat $p/wchan 2>/dev/null)\"; done",
    "echo '---- kernel stacks ----'",
    "for t in /proc/[0-9]*/task/*; do c=$(cat $t/comm 2>/dev/null); s=$(cut -d' ' -f3 $t/stat 2>/dev/null); case \"$s $c\" in D*|*hostd*|*vcpu*|*lab_as*|*vmm*) echo \"$t $c $s\"; cat $t/stack 2>/dev/null;; esac; done",
    "echo '---- hostd logs ----'; tail -n 40 /var/log/hostd*.log",
    "echo '---- dmesg ----'; dmesg | tail -n 40",
    "printf 'lab-hang-%s\\n' diagnosed",
];

/// How long the hang diagnostics may take.
const DIAGNOSTICS_TIME: Duration = Duration::from_secs(60);

/// Interrupts a hung lab test and has the guest print what it was doing (into the console
/// output, which the caller keeps with the test's).
fn diagnose_hang(console: &mut Console) -> Result<(), LabError> {
    let mark = console.output().len();
    console.send_raw(&[0x03])?;
    std::thread::sleep(Duration::from_secs(1));
    for line in HANG_DIAGNOSTICS {
        console.send_line(line)?;
    }
    let deadline = Instant::now() + DIAGNOSTICS_TIME;
    match console.wait_until(mark, "the hang diagnostics", deadline, |out| {
        out.contains("lab-hang-diagnosed")
    }) {
        Ok(_) | Err(ConsoleError::Timeout { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// libtest's `test result: ok. N passed; M failed; ...` as (N, M).
fn libtest_summary(output: &str) -> Option<(u32, u32)> {
    let line = output.lines().rev().find(|l| l.contains("test result:"))?;
    let count = |word: &str| -> Option<u32> {
        let before = line.split(&format!(" {word}")).next()?;
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((count("passed")?, count("failed")?))
}

/// The exit status the guest printed after the suite, if it has (the echoed command line,
/// which holds the marker followed by `$?`, does not count).
fn exit_status(console: &str) -> Option<i32> {
    status_after(console, EXIT_MARKER)
}

/// The number after `marker` on a line of its own (not the echoed command, where `$?`
/// follows it).
fn status_after(console: &str, marker: &str) -> Option<i32> {
    console
        .replace('\r', "")
        .lines()
        .find_map(|line| line.trim().strip_prefix(marker)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_is_read_from_the_result_not_the_echo() {
        let echoed = "appliance# hw-test --profile p --frame; echo \"hw-test exit status $?\"\r\n";
        assert_eq!(exit_status(echoed), None);
        assert_eq!(
            exit_status(&format!("{echoed}hw-test exit status 1\r\n")),
            Some(1)
        );
    }

    #[test]
    fn libtest_summaries_and_lab_verdicts() {
        let out = "running 6 tests\r\ntest a ... ok\r\n\r\ntest result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s\r\n";
        assert_eq!(libtest_summary(out), Some((6, 0)));
        let bad =
            "test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(libtest_summary(bad), Some((5, 1)));
        let run = |exit, summary| LabTestRun {
            name: "t".into(),
            exit,
            summary,
            output: String::new(),
            duration: Duration::ZERO,
            timed_out: false,
        };
        assert!(run(0, Some((6, 0))).passed());
        assert!(!run(101, Some((5, 1))).passed());
        assert!(
            !run(0, Some((0, 0))).passed(),
            "a binary that ran no test did not pass"
        );
        assert!(!run(0, None).passed(), "no summary: output lost or mangled");
        let late = LabTestRun {
            timed_out: true,
            ..run(0, Some((6, 0)))
        };
        assert!(!late.passed(), "a test over its time limit did not pass");
    }

    #[test]
    fn the_data_disk_has_the_label_init_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let mkfs = Path::new("/usr/sbin/mkfs.ext4");
        assert!(
            mkfs.exists(),
            "this test needs mkfs.ext4 (apt-get install e2fsprogs)"
        );
        make_data_disk(mkfs, &img, 8).unwrap();
        let out = Command::new("/usr/sbin/dumpe2fs")
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("Filesystem volume name:   {DATA_LABEL}")),
            "{text}"
        );
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    }
}
