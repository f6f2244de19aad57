//! Instruction and cache-miss counts of the in-memory pipeline, for machines without
//! hardware counters (this one: `perf stat -e instructions` is "not supported"). Runs the
//! criterion benchmark's setup for one variant, 200 warm-up bursts, then 2000 bursts through
//! `measured`, which callgrind is told to count alone:
//!
//! ```sh
//! valgrind --tool=callgrind --cache-sim=yes --toggle-collect='pipeline_count::measured' \
//!     target-fastpath2/release/examples/pipeline_count l2_vlan_acl64_1024flows
//! ```
//!
//! Per packet = the `summary:` counts / 64000 (2000 bursts of 32).

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../benches/setup/mod.rs"]
mod setup;

#[inline(never)]
fn measured(b: &mut setup::Bench) {
    b.run();
}

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "l2_vlan_acl64_1024flows".into());
    let v = setup::variants()
        .into_iter()
        .find(|v| v.name == name)
        .expect(
            "variant: l2, l2_vlan, l2_vlan_acl64, l2_vlan_acl64_mirror, l2_vlan_acl64_1024flows",
        );
    let mut b = setup::Bench::new(&v);
    for _ in 0..200 {
        b.fill();
        b.run();
    }
    for _ in 0..2000 {
        b.fill();
        measured(&mut b);
    }
    std::hint::black_box(&b);
}
