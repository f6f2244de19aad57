//! `storage`: the data disk is mounted where the profile says, and a file written there, synced
//! and evicted from the page cache reads back identical.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

use super::not_in_profile;
use crate::machine::Machine;
use crate::profile::Profile;
use crate::report::CheckResult;

const NAME: &str = "storage";
const CHUNK: usize = 1 << 20;

/// The filesystem type mounted exactly at `path`, from a mountinfo text.
fn mounted_fs(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let wanted = path.to_string_lossy();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?.replace("\\040", " ");
        let mut right = right.split_whitespace();
        let (fstype, source) = (right.next()?, right.next()?);
        (mount_point == wanted).then(|| (fstype.to_string(), source.to_string()))
    })
}

/// Chunk `n` of the test file: xorshift output seeded by the run and the chunk.
fn chunk_data(seed: u64, n: u64, out: &mut [u8]) {
    let mut x = seed ^ (n.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

fn io_advice(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "the data disk is full",
        Some(libc::EROFS) => "the data disk is mounted read-only (filesystem errors?)",
        Some(libc::EIO) => "the disk reported an I/O error: replace it",
        _ => "see dmesg",
    }
}

fn write_and_verify(file_path: &Path, mib: u64, seed: u64) -> Result<(f64, f64), String> {
    let mut buf = vec![0u8; CHUNK];
    let t = Instant::now();
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(file_path)
        .map_err(|e| {
            format!(
                "cannot create {}: {e} ({})",
                file_path.display(),
                io_advice(&e)
            )
        })?;
    for n in 0..mib {
        chunk_data(seed, n, &mut buf);
        file.write_all(&buf).map_err(|e| {
            format!(
                "write to {} failed: {e} ({})",
                file_path.display(),
                io_advice(&e)
            )
        })?;
    }
    file.sync_all().map_err(|e| {
        format!(
            "fsync of {} failed: {e} ({})",
            file_path.display(),
            io_advice(&e)
        )
    })?;
    let write_secs = t.elapsed().as_secs_f64();
    // Drop the cached pages, so the read comes from the disk.
    let _ = posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    drop(file);

    let t = Instant::now();
    let mut file =
        File::open(file_path).map_err(|e| format!("cannot reopen {}: {e}", file_path.display()))?;
    let mut expected = vec![0u8; CHUNK];
    for n in 0..mib {
        file.read_exact(&mut buf).map_err(|e| {
            format!(
                "read of {} failed: {e} ({})",
                file_path.display(),
                io_advice(&e)
            )
        })?;
        chunk_data(seed, n, &mut expected);
        if let Some(i) = buf.iter().zip(&expected).position(|(a, b)| a != b) {
            let offset = n * CHUNK as u64 + i as u64;
            return Err(format!(
                "read back differs from what was written at byte {offset}: data corruption on the data disk; replace it"
            ));
        }
    }
    Ok((write_secs, t.elapsed().as_secs_f64()))
}

pub(super) fn run(profile: &Profile, m: &Machine) -> CheckResult {
    let Some(spec) = &profile.storage else {
        return not_in_profile(NAME, profile, "data disk");
    };
    let mountinfo = match m.read(&m.proc("self/mountinfo")) {
        Ok(t) => t,
        Err(e) => return CheckResult::fail(NAME, e),
    };
    let Some((fstype, source)) = mounted_fs(&mountinfo, &spec.path) else {
        return CheckResult::fail(
            NAME,
            format!(
                "nothing is mounted on {}: the data disk is missing, unformatted or not labelled appliance-data",
                spec.path.display()
            ),
        );
    };
    let mut details = vec![format!(
        "{source} ({fstype}) mounted on {}",
        spec.path.display()
    )];
    let file_path = spec
        .path
        .join(format!(".hw-test-{}.dat", std::process::id()));
    let seed = u64::from(std::process::id()) << 32 | 0x5eed;
    let result = write_and_verify(&file_path, spec.test_mib, seed);
    let removed = fs::remove_file(&file_path);
    match result {
        Err(reason) => CheckResult::fail(NAME, reason).with_details(details),
        Ok(_) if removed.is_err() => CheckResult::fail(
            NAME,
            format!("cannot remove the test file {}", file_path.display()),
        )
        .with_details(details),
        Ok((w, r)) => {
            let mib = spec.test_mib as f64;
            details.push(format!(
                "{} MiB written, synced and read back: write {:.0} MiB/s, read {:.0} MiB/s",
                spec.test_mib,
                mib / w.max(1e-9),
                mib / r.max(1e-9)
            ));
            CheckResult::pass(
                NAME,
                format!("{} MiB verified on {source} ({fstype})", spec.test_mib),
            )
            .with_details(details)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use crate::test_support::{FakeMachine, profile};

    fn mountinfo_for(path: &Path) -> String {
        format!(
            "22 1 0:21 / /proc rw - proc proc rw\n40 1 254:0 / {} rw,relatime - ext4 /dev/vda rw\n",
            path.display()
        )
    }

    #[test]
    fn a_mounted_data_disk_round_trips() {
        let f = FakeMachine::new();
        let data = f.dir.path().join("data");
        fs::create_dir(&data).unwrap();
        f.write("proc/self/mountinfo", &mountinfo_for(&data));
        let p = profile(&format!(
            "[storage]\npath = \"{}\"\ntest_mib = 2\n",
            data.display()
        ));
        let r = run(&p, &f.machine());
        assert_eq!(r.outcome, Outcome::Pass, "{} {:?}", r.reason, r.details);
        assert_eq!(r.reason, "2 MiB verified on /dev/vda (ext4)");
        assert_eq!(
            fs::read_dir(&data).unwrap().count(),
            0,
            "the test file is removed"
        );
    }

    #[test]
    fn nothing_mounted_is_a_failure() {
        let f = FakeMachine::new();
        f.write(
            "proc/self/mountinfo",
            &mountinfo_for(Path::new("/elsewhere")),
        );
        let r = run(&profile("[storage]\npath = \"/data\"\n"), &f.machine());
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.starts_with("nothing is mounted on /data"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn an_unwritable_disk_fails_with_the_path() {
        let f = FakeMachine::new();
        let gone = f.dir.path().join("gone");
        f.write("proc/self/mountinfo", &mountinfo_for(&gone));
        let r = run(
            &profile(&format!("[storage]\npath = \"{}\"\n", gone.display())),
            &f.machine(),
        );
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(
            r.reason.contains("cannot create") && r.reason.contains("gone"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn the_test_data_differs_per_chunk_and_run() {
        let (mut a, mut b, mut c) = (vec![0u8; 64], vec![0u8; 64], vec![0u8; 64]);
        chunk_data(1, 0, &mut a);
        chunk_data(1, 1, &mut b);
        chunk_data(2, 0, &mut c);
        assert!(a != b && a != c && a.iter().any(|&x| x != 0));
    }

    #[test]
    fn mountinfo_parsing_takes_the_last_mount_and_escapes() {
        let info = "1 0 0:1 / /data rw - tmpfs none rw\n2 0 8:1 / /data rw - ext4 /dev/sda1 rw\n3 0 8:2 / /my\\040disk rw - xfs /dev/sdb rw\n";
        assert_eq!(
            mounted_fs(info, Path::new("/data")),
            Some(("ext4".into(), "/dev/sda1".into()))
        );
        assert_eq!(
            mounted_fs(info, Path::new("/my disk")),
            Some(("xfs".into(), "/dev/sdb".into()))
        );
        assert_eq!(mounted_fs(info, Path::new("/d")), None);
    }
}
