//! Building the real appliance image twice, from the lab's real inputs, gives identical bytes.
//! Needs the inputs `hw-tests/setup.sh` fetches; fails saying so when they are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::process::Command;
use std::time::{Duration, SystemTime};

#[test]
fn the_real_image_builds_reproducibly() {
    let manifest = initramfs::inputs::default_manifest();
    assert!(
        manifest.exists(),
        "no lab inputs at {}: run `hw-tests/setup.sh` (as root) first",
        manifest.display()
    );
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for our static binaries: this test is about the image, not about them.
    let bin_dir = dir.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    for b in initramfs::binaries::APPLIANCE_BINARIES {
        fs::write(
            bin_dir.join(b.bin),
            format!("#!/bin/sh\necho stand-in for {}\n", b.bin),
        )
        .unwrap();
    }

    let build = |out: &str| {
        let out = dir.path().join(out);
        let status = Command::new(env!("CARGO_BIN_EXE_initramfs"))
            .args(["--level", "3", "--out"])
            .arg(&out)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .status()
            .unwrap();
        assert!(status.success());
        fs::read(out).unwrap()
    };
    let first = build("one.cpio.zst");
    fs::File::options()
        .write(true)
        .open(bin_dir.join("hw-test"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(42))
        .unwrap();
    let second = build("two.cpio.zst");
    assert!(
        first.len() > 1 << 20,
        "the image holds busybox and the modules"
    );
    assert!(first == second, "two builds differ");

    let listing = zstd::decode_all(first.as_slice()).unwrap();
    let text = String::from_utf8_lossy(&listing);
    for needed in [
        "lib/modules/igb.ko",
        "lib/modules/vfio_pci.ko",
        "lib/modules/kvm_amd.ko",
        "lib/modules/crc32c_generic.ko",
        "bin/busybox",
        "usr/bin/hw-test",
        "etc/hw-test/profiles/qemu-lab.toml",
    ] {
        assert!(text.contains(needed), "the image lacks {needed}");
    }
}
