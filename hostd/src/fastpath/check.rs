//! Checking the fastpath config before each start: fastpath's own validation (`fastpath
//! check`, run with the binary that will run it, so the two can never disagree), then the
//! file read with hostd-proto's types for what hostd must know: the cores it will hold.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hostd_proto::fastpath::Config;

/// Why the fastpath config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The binary cannot be run.
    #[error(
        "cannot run the fastpath binary {binary}: install it beside hostd or set [fastpath] binary"
    )]
    Binary {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// fastpath's validation refused the file; its own words, which name the file and the
    /// field (hostd's reason texts are bounded: they are not repeated here).
    #[error("`fastpath check` refused it: {message}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// fastpath's message.
        message: String,
    },
    /// fastpath accepted it but hostd cannot read it (the two are of different versions).
    #[error(
        "the fastpath config {path} passes `fastpath check` but hostd cannot read it ({detail}): \
         are hostd and fastpath of the same version?"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// A core number hostd cannot represent.
    #[error("the fastpath config {path} names CPU {cpu}, which is not a core of this host")]
    BadCpu {
        /// The file.
        path: PathBuf,
        /// The number.
        cpu: u32,
    },
}

/// A config that passed: the parsed file and the cores its poll threads are pinned to.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The file's contents.
    pub config: Config,
    /// `cores[].cpu`.
    pub cores: BTreeSet<u16>,
}

/// Runs `binary check --config path`, then reads the file (`.json` as JSON, anything else
/// as TOML: fastpath's rule).
pub fn check(binary: &Path, path: &Path) -> Result<Checked, CheckError> {
    let output = run_check(binary, path).map_err(|source| CheckError::Binary {
        binary: binary.to_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(CheckError::Refused {
            path: path.to_owned(),
            message: refusal(&String::from_utf8_lossy(&output.stderr), &output.status),
        });
    }
    let unreadable = |detail: String| CheckError::Unreadable {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
    let config: Config = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| unreadable(e.to_string()))?
    };
    let cores = config
        .cores
        .iter()
        .map(|c| {
            u16::try_from(c.cpu).map_err(|_| CheckError::BadCpu {
                path: path.to_owned(),
                cpu: c.cpu,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Checked { config, cores })
}

/// Tries to run `binary check` this many times while the kernel says the file is open for
/// writing (ETXTBSY).
const BUSY_TRIES: u32 = 5;

/// Runs `binary check --config path`. ETXTBSY is retried briefly: the binary is being
/// replaced, or a process forked elsewhere in hostd still holds a descriptor that wrote it
/// (closed at that process's exec).
fn run_check(binary: &Path, path: &Path) -> std::io::Result<std::process::Output> {
    let mut tries = 0;
    loop {
        let output = Command::new(binary)
            .arg("check")
            .arg("--config")
            .arg(path)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output();
        match output {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries + 1 < BUSY_TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// fastpath's error line (`fastpath: ...`), else its whole stderr, else the exit status.
fn refusal(stderr: &str, status: &std::process::ExitStatus) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("fastpath: "))
        .map(str::to_owned)
        .or_else(|| Some(stderr.trim().replace('\n', "; ")).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("it ended with {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for the fastpath binary: a script answering `check` like fastpath does.
    fn fake_binary(dir: &Path, script: &str) -> PathBuf {
        let path = dir.join("fastpath");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_passing_config_gives_its_cores() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_binary(dir.path(), "echo \"$3: valid\"");
        let path = dir.path().join("fp.toml");
        std::fs::write(
            &path,
            "[[ports]]\nname = \"a\"\nbackend = \"memory\"\nvlan = { access = { vlan = 1 } }\n\
             [[cores]]\ncpu = 3\nports = [\"a\"]\n[[cores]]\ncpu = 1\nports = []\n",
        )
        .unwrap();
        let checked = check(&binary, &path).unwrap();
        assert_eq!(checked.cores, [1, 3].into());
        assert_eq!(checked.config.ports[0].name, "a");
    }

    #[test]
    fn refusals_carry_fastpaths_own_words() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_binary(
            dir.path(),
            "echo 'a log line' >&2; echo 'fastpath: port \"vm1\": VLAN 5000 is above 4094' >&2; exit 1",
        );
        let path = dir.path().join("fp.toml");
        std::fs::write(&path, "").unwrap();
        let err = check(&binary, &path).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("`fastpath check` refused it: port \"vm1\": VLAN 5000 is above 4094"),
            "{err}"
        );
        let missing = check(&dir.path().join("none"), &path).unwrap_err();
        assert!(matches!(missing, CheckError::Binary { .. }), "{missing}");
    }
}
