//! Load benchmark (not a test): 64 clients issue `host_status` calls to one `hostd --sim`
//! for a while; prints requests/s and latency percentiles. docs/PERF.md has the figures.
//!
//! `cargo bench -p hostd --bench load` (HOSTD_BENCH_CLIENTS, HOSTD_BENCH_SECS override the
//! defaults of 64 clients and 10 s).
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code: a failure ends it

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hostd::client::Client;
use hostd_proto::{Request, Response};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients = env_or("HOSTD_BENCH_CLIENTS", 64) as usize;
    let secs = env_or("HOSTD_BENCH_SECS", 10);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut hostd = Command::new(env!("CARGO_BIN_EXE_hostd"))
        .args(["--sim", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = state.join("hostd.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "hostd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let barrier = Arc::new(Barrier::new(clients + 1));
    let run_for = Duration::from_secs(secs);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.clone();
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(16 << 20)
                .spawn(move || {
                    let mut client = Client::connect(&socket).unwrap();
                    let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed() < run_for {
                        let t = Instant::now();
                        let response = client.call(Request::HostStatus).unwrap();
                        latencies_us.push(t.elapsed().as_micros() as u32);
                        assert!(matches!(response, Response::HostStatus(_)));
                    }
                    latencies_us
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut all: Vec<u32> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", hostd.id()))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .unwrap_or_default();
    hostd.kill().unwrap();
    hostd.wait().unwrap();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!("hostd load: {clients} clients, host_status, {secs} s");
    println!("requests:     {}", all.len());
    println!("requests/s:   {:.0}", all.len() as f64 / elapsed);
    println!("latency p50:  {} us", pct(0.50));
    println!("latency p99:  {} us", pct(0.99));
    println!("latency max:  {} us", all[all.len() - 1]);
    println!("hostd VmRSS after the run: {rss_kib} kB");
}
