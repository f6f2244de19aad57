//! VM start benchmark (docs/PERF.md "## VMM"): time from spawning the VMM process to the
//! guest's first serial output, for `hostd-vmm` and for `qemu-system-x86_64 -machine microvm`
//! booting the same payload, median of N runs each; and the VMM's resident memory beyond
//! guest RAM.
//!
//! `cargo bench -p vmm --bench vm_start [-- <kernel ELF> [runs]]`: the probe guest
//! (images/probe-image) and 20 runs unless told otherwise. The marker is the payload's first bytes
//! (VMM_BENCH_MARKER, default "probe"), so firmware output before the guest (QEMU's SeaBIOS)
//! does not count as the guest's first byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const MEMORY_MIB: u64 = 64;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Spawns `command`, returns the time until `marker` appears on its stdout, and the child.
fn time_to_marker(mut command: Command, marker: &[u8]) -> (Duration, Child) {
    let start = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let marker = marker.to_vec();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(marker.len()).any(|w| w == marker) {
                        let _ = tx.send(start.elapsed());
                        // Keep draining so the guest never blocks on a full pipe.
                        while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {}
                        return;
                    }
                }
            }
        }
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(elapsed) => (elapsed, child),
        Err(_) => {
            let _ = child.kill();
            panic!("no marker on the console within {TIMEOUT:?}");
        }
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn vmm_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hostd-vmm"));
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn qemu_command(kernel: &Path) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-machine",
            "microvm",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args(["-m", &MEMORY_MIB.to_string(), "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .stdin(Stdio::null());
    command
}

fn write_config(dir: &Path, kernel: &Path, core: usize) -> PathBuf {
    let config = dir.join("bench.toml");
    let text = format!(
        "name = \"bench\"\nmemory_mib = {MEMORY_MIB}\nvcpu_cores = [{core}]\n\
         runtime_dir = \"{dir}/run\"\ncontrol_socket = \"{dir}/bench.ctl\"\n\
         [kernel]\npath = \"{kernel}\"\n[console]\nlog = \"{dir}/console.log\"\nstdout = true\n",
        dir = dir.display(),
        kernel = kernel.display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let kernel = args
        .first()
        .cloned()
        .map(PathBuf::from)
        .unwrap_or_else(|| probe_image::path().to_owned());
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(20);
    let marker = std::env::var("VMM_BENCH_MARKER").unwrap_or_else(|_| "probe".into());
    let dir = tempfile::tempdir().unwrap();
    let core = vmm::cores::available_cores().unwrap()[0];
    let config = write_config(dir.path(), &kernel, core);

    // Warm-up: page cache for both binaries and the kernel.
    stop(time_to_marker(vmm_command(&config), marker.as_bytes()).1);
    stop(time_to_marker(qemu_command(&kernel), marker.as_bytes()).1);

    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    for _ in 0..runs {
        let (elapsed, child) = time_to_marker(vmm_command(&config), marker.as_bytes());
        ours.push(elapsed);
        stop(child);
        let (elapsed, child) = time_to_marker(qemu_command(&kernel), marker.as_bytes());
        qemu.push(elapsed);
        stop(child);
    }

    // Memory: a running VM, once the guest is up (all of its RAM is faulted in and locked
    // before it starts, so RSS does not grow with the guest's own use).
    let (_, child) = time_to_marker(vmm_command(&config), marker.as_bytes());
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let rss_kib = status_kib(pid, "VmRSS:");
    let shmem_kib = status_kib(pid, "RssShmem:");
    let anon_kib = status_kib(pid, "RssAnon:");
    let file_kib = status_kib(pid, "RssFile:");
    let locked_kib = status_kib(pid, "VmLck:");
    stop(child);

    let (ours_median, qemu_median) = (median(ours.clone()), median(qemu.clone()));
    let guest_kib = MEMORY_MIB * 1024;
    println!(
        "payload: {} (marker {marker:?}), {runs} runs each, 1 vCPU, {MEMORY_MIB} MiB",
        kernel.display()
    );
    println!(
        "hostd-vmm spawn -> first guest output: median {:.2} ms (min {:.2}, max {:.2})",
        ours_median.as_secs_f64() * 1e3,
        ours.iter().min().unwrap().as_secs_f64() * 1e3,
        ours.iter().max().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "qemu microvm spawn -> first guest output: median {:.2} ms (min {:.2}, max {:.2})",
        qemu_median.as_secs_f64() * 1e3,
        qemu.iter().min().unwrap().as_secs_f64() * 1e3,
        qemu.iter().max().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "ratio hostd-vmm / qemu: {:.3} (target <= 0.2)",
        ours_median.as_secs_f64() / qemu_median.as_secs_f64()
    );
    println!(
        "hostd-vmm RSS {rss_kib} KiB = guest RAM {guest_kib} KiB + overhead {} KiB \
         (RssShmem {shmem_kib}, RssAnon {anon_kib}, RssFile {file_kib}; VmLck {locked_kib}) (target <= 5120 KiB)",
        rss_kib.saturating_sub(guest_kib)
    );
}
