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
    /// The whole run's time limit.
    pub timeout: Duration,
    /// Where the guest's console output is written.
    pub console_log: PathBuf,
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
    /// Suite start to report received.
    pub suite: Duration,
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

    console.send_line("poweroff -f")?;
    console.finish(Duration::from_secs(15));
    Ok(LabResult {
        report,
        suite_exit,
        boot,
        suite,
    })
}

/// The exit status the guest printed after the suite, if it has (the echoed command line,
/// which holds the marker followed by `$?`, does not count).
fn exit_status(console: &str) -> Option<i32> {
    console
        .replace('\r', "")
        .lines()
        .find_map(|line| line.trim().strip_prefix(EXIT_MARKER)?.parse().ok())
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
