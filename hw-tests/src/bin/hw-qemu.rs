//! `hw-qemu`: boots the appliance image on an emulated machine with SR-IOV NICs, an IOMMU and
//! SVM (QEMU), runs the factory suite there over the serial console, and prints its report.
//!
//! By default it boots the lab image, which also holds the crates' lab tests (tests that need
//! this emulated hardware: the sriov crate on igb, a Linux guest under our VMM), and runs them
//! after the suite.
//!
//! Exit codes: 0 the suite and every lab test passed; 1 they ran and something failed; 2 the
//! lab could not produce a trustworthy report (missing QEMU or kernel, boot failure, timeout,
//! corrupt report).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hw_tests::lab::{self, LabRun, qemu::LabMachine};
use initramfs::binaries::{self, APPLIANCE_BINARIES, LAB_TESTS};
use initramfs::image::{self, DEFAULT_HUGEPAGES, DEFAULT_ZSTD_LEVEL, ImageConfig, LabExtras};
use initramfs::inputs::{self, LabInputs};

/// Run the factory suite on the emulated appliance.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The appliance image; built (with our binaries) when not given.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The lab inputs manifest written by hw-tests/setup.sh.
    #[arg(long, default_value_os_t = inputs::default_manifest())]
    inputs: PathBuf,
    /// The factory profile to run.
    #[arg(long, default_value_os_t = binaries::workspace_root().join("hw-tests/profiles/qemu-lab.toml"))]
    profile: PathBuf,
    /// Time limit for boot and the suite, in seconds.
    #[arg(long, default_value_t = 240)]
    timeout: u64,
    /// Time limit for each lab test, in seconds (they take 5 to 40 s on an idle machine; the
    /// limit leaves room for a loaded CI machine).
    #[arg(long, default_value_t = 300)]
    lab_test_timeout: u64,
    /// Where to write the guest's console output.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Also write the report as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Boot the plain appliance image: no lab tests, no guest kernel (with --image: the image
    /// has none).
    #[arg(long)]
    no_lab: bool,
    /// Run only this lab test (its file name, e.g. `hostd-lab_assign`; repeat the option
    /// for more). Default: all of them.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Run the lab tests this many times over, in one boot (to chase a flaky one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hw-qemu: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let inputs = LabInputs::load(&args.inputs)?;
    let profile_text = std::fs::read_to_string(&args.profile)
        .map_err(|e| format!("cannot read profile {}: {e}", args.profile.display()))?;
    hw_tests::profile::Profile::parse(&profile_text, &args.profile)?;
    let work = binaries::workspace_root().join("target/hw-qemu");
    std::fs::create_dir_all(&work)?;

    let image = match args.image {
        Some(image) => image,
        None => {
            let t = Instant::now();
            let bin_dir = binaries::build_static(APPLIANCE_BINARIES)?;
            let out = work.join(if args.no_lab {
                "appliance.cpio.zst"
            } else {
                "lab.cpio.zst"
            });
            let mut config = ImageConfig::appliance(inputs.clone(), bin_dir, DEFAULT_HUGEPAGES);
            if !args.no_lab {
                config.lab = Some(LabExtras::build()?);
            }
            let summary = image::build(&config, &out, DEFAULT_ZSTD_LEVEL)?;
            eprintln!(
                "hw-qemu: image {} ({} KiB) built in {:.1} s",
                out.display(),
                summary.compressed_bytes / 1024,
                t.elapsed().as_secs_f64()
            );
            out
        }
    };
    let data_dir = tempfile::tempdir()?;
    let data_disk = data_dir.path().join("data.img");
    lab::make_data_disk(&inputs.mkfs_ext4, &data_disk, 64)?;
    let console_log = args.console_log.unwrap_or_else(|| work.join("console.log"));
    let run = LabRun {
        machine: LabMachine {
            qemu: inputs.qemu.clone(),
            kernel: inputs.vmlinuz.clone(),
            initrd: image,
            data_disk: Some(data_disk),
            // No more vCPUs than this machine has cores: with 3 (or 4), QEMU's multi-threaded
            // TCG hung or aborted in half of the lab runs, always while VFs were created,
            // removed or mapped (docs/PERF.md, "vCPUs of the lab machine").
            cpus: 2,
            memory_mib: 1536,
        },
        profile_text,
        timeout: Duration::from_secs(args.timeout),
        lab_test_timeout: Duration::from_secs(args.lab_test_timeout),
        console_log: console_log.clone(),
        lab_tests: if args.no_lab {
            Vec::new()
        } else {
            lab_tests(&args.only, args.repeat)?
        },
    };
    eprintln!(
        "hw-qemu: booting {} with kernel {}",
        run.machine.initrd.display(),
        inputs.kernel_version
    );
    let t = Instant::now();
    let result = match lab::run(&run) {
        Err(lab::LabError::Console(e)) if e.is_qemu_assertion() => {
            // QEMU 10's multi-threaded TCG now and then fails an assertion when the guest
            // changes its memory map (VFs created or removed) while another vCPU does MMIO
            // (`iotlb_to_section`, QEMU issue 1921). One-threaded TCG avoids it but is too
            // slow for a Linux guest under our VMM. Only this crash of QEMU itself is retried,
            // once; a failing check or lab test never is.
            let first = console_log.with_extension("qemu-abort.log");
            let _ = std::fs::rename(&console_log, &first);
            eprintln!("hw-qemu: QEMU itself aborted: {e}");
            eprintln!(
                "hw-qemu: a QEMU bug, not a failure of what runs in it (docs/FACTORY.md); \
                 booting again, once (that run's console: {})",
                first.display()
            );
            lab::run(&run)
        }
        other => other,
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            show_console(&console_log);
            return Err(e.into());
        }
    };
    let total = t.elapsed();
    println!("{}", result.report.to_json());
    eprint!("{}", result.report.to_text());
    eprintln!(
        "hw-qemu: boot to ready {:.1} s, to hostd ready {:.1} s, suite {:.1} s, QEMU start to report {:.1} s",
        result.boot.as_secs_f64(),
        result.hostd_ready.as_secs_f64(),
        result.suite.as_secs_f64(),
        (result.boot + result.suite).as_secs_f64()
    );
    eprintln!(
        "hw-qemu: whole run {:.1} s; console log {}",
        total.as_secs_f64(),
        console_log.display()
    );
    for t in &result.lab_tests {
        let (p, f) = t.summary.unwrap_or((0, 0));
        if t.timed_out {
            eprintln!(
                "hw-qemu: lab test {}: FAILED (TIMED OUT after {:.1} s, over --lab-test-timeout; the lab tests after it did not run)",
                t.name,
                t.duration.as_secs_f64()
            );
        } else {
            let verdict = if t.passed() { "passed" } else { "FAILED" };
            eprintln!(
                "hw-qemu: lab test {}: {verdict} ({p} passed, {f} failed, exit {}, {:.1} s)",
                t.name,
                t.exit,
                t.duration.as_secs_f64()
            );
        }
    }
    for t in result.lab_tests.iter().filter(|t| !t.passed()) {
        eprintln!("hw-qemu: ---- what lab test {} printed ----", t.name);
        eprintln!("{}", t.output.replace('\r', ""));
    }
    if let Some(path) = &args.report {
        std::fs::write(path, result.report.to_json())?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, result.report.to_junit())?;
    }
    let consistent = result.report.passed == (result.suite_exit == 0);
    if !consistent {
        show_console(&console_log);
        return Err(format!(
            "hw-test exited {} but its report says passed={}",
            result.suite_exit, result.report.passed
        )
        .into());
    }
    if result.report.passed && result.lab_tests.iter().all(|t| t.passed()) {
        Ok(ExitCode::SUCCESS)
    } else {
        show_console(&console_log);
        Ok(ExitCode::FAILURE)
    }
}

/// The lab tests to run, in order: `only` (all when empty), `repeat` times over.
fn lab_tests(only: &[String], repeat: u32) -> Result<Vec<String>, String> {
    let all: Vec<String> = LAB_TESTS.iter().map(|t| t.file_name()).collect();
    if let Some(unknown) = only.iter().find(|name| !all.contains(name)) {
        return Err(format!(
            "no lab test {unknown}: the lab tests are {}",
            all.join(", ")
        ));
    }
    let chosen: Vec<String> = all
        .into_iter()
        .filter(|name| only.is_empty() || only.contains(name))
        .collect();
    Ok((0..repeat).flat_map(|_| chosen.clone()).collect())
}

/// Lines of the guest console shown on a failure (the whole log is in the file).
const CONSOLE_TAIL_LINES: usize = 120;

fn show_console(path: &std::path::Path) {
    eprintln!(
        "hw-qemu: ---- guest console, last {CONSOLE_TAIL_LINES} lines (all of it: {}) ----",
        path.display()
    );
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.replace('\r', "");
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
            eprintln!("{}", lines[from..].join("\n"));
        }
        Err(e) => eprintln!("(cannot read it: {e})"),
    }
    eprintln!("hw-qemu: ---- end of guest console ----");
}
