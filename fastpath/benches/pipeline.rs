//! In-memory pipeline benchmark: one core, bursts of 32 frames of 64 bytes, through
//! `Switch::process` plus handing the output frames back to the pool (what a port's TX
//! completion does). Frame contents are rewritten between bursts outside the timed region.
//!
//! Variants (ns/packet = reported time per element):
//! - `l2`: two access ports, known destination.
//! - `l2_vlan`: tagged frames in on a trunk, untagged out on an access port (tag pop).
//! - `l2_vlan_acl64`: plus 64 ingress rules, the frame matching the last one (allow).
//! - `l2_vlan_acl64_mirror`: plus an rx mirror (one frame copy per packet).
//! - `l2_vlan_acl64_1024flows`: 1024 distinct flows (MACs and UDP ports) in rotation: every
//!   frame needs FDB and ACL-cache probes that miss the CPU cache (the per-burst memo does
//!   not help), and flows that share a cache set run the bit-vector classifier.
//!
//! Run: `cargo bench -p fastpath --bench pipeline`

// Benchmark setup on fixed, known-good data, like a test: a failure is a bug in the bench.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod setup;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fastpath::pipeline::BURST;

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BURST as u64));
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for v in setup::variants() {
        let mut b = setup::Bench::new(&v);
        group.bench_function(v.name, |bencher| {
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    b.fill();
                    let t = Instant::now();
                    b.run();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
