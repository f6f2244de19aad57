//! Driving a guest's serial console: QEMU's stdin and stdout. A reader thread collects
//! everything the guest prints (and copies it to a log file); the caller waits for text to
//! appear and types lines.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running guest and its console.
#[derive(Debug)]
pub struct Console {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
    /// What QEMU itself printed on stderr (also passed on to ours).
    qemu_said: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// Waiting on the console failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The program would not start.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text did not appear in time.
    #[error("timed out after {secs} s waiting for {waiting_for}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// How long.
        secs: u64,
    },
    /// The guest (QEMU) ended.
    #[error("QEMU exited ({status}) while waiting for {waiting_for}; QEMU said: {qemu_said}")]
    Exited {
        /// How it ended.
        status: std::process::ExitStatus,
        /// What was awaited.
        waiting_for: String,
        /// The end of QEMU's own stderr.
        qemu_said: String,
    },
    /// Typing failed.
    #[error("cannot write to the console: {0}")]
    Write(#[source] std::io::Error),
}

impl Console {
    /// Starts `program args`, with its stdout copied to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Self, ConsoleError> {
        let spawn_err = |source| ConsoleError::Spawn {
            program: program.display().to_string(),
            source,
        };
        let log_file = File::create(log).map_err(spawn_err)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(spawn_err(std::io::Error::other("no stdio pipes")));
        };
        let output = Arc::new(Mutex::new(String::new()));
        let reader =
            copy_out("console-reader", stdout, log_file, output.clone()).map_err(spawn_err)?;
        // QEMU's own messages go on to our stderr as before, and are kept for the errors.
        let qemu_said = Arc::new(Mutex::new(String::new()));
        copy_out("qemu-stderr", stderr, std::io::stderr(), qemu_said.clone()).map_err(spawn_err)?;
        Ok(Self {
            child,
            stdin,
            output,
            qemu_said,
            reader: Some(reader),
        })
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `done` says yes to the output printed since byte `from`; returns the output
    /// from `from`.
    pub fn wait_until(
        &mut self,
        from: usize,
        waiting_for: &str,
        deadline: Instant,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<String, ConsoleError> {
        let started = Instant::now();
        loop {
            let out = self.output();
            let tail = out.get(from..).unwrap_or("");
            if done(tail) {
                return Ok(tail.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its stderr reader may still be copying the last words.
                thread::sleep(Duration::from_millis(200));
                let said = self.qemu_said.lock().unwrap_or_else(|p| p.into_inner());
                return Err(ConsoleError::Exited {
                    status,
                    waiting_for: waiting_for.into(),
                    qemu_said: said.trim().to_string(),
                });
            }
            if Instant::now() >= deadline {
                return Err(ConsoleError::Timeout {
                    waiting_for: waiting_for.into(),
                    secs: started.elapsed().as_secs(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types bytes as they are (a control character such as Ctrl-C, 0x03).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConsoleError> {
        self.stdin.write_all(bytes).map_err(ConsoleError::Write)?;
        self.stdin.flush().map_err(ConsoleError::Write)
    }

    /// Types a line.
    pub fn send_line(&mut self, line: &str) -> Result<(), ConsoleError> {
        self.stdin
            .write_all(line.as_bytes())
            .map_err(ConsoleError::Write)?;
        self.stdin.write_all(b"\n").map_err(ConsoleError::Write)?;
        self.stdin.flush().map_err(ConsoleError::Write)
    }

    /// Waits up to `timeout` for the guest to end, then kills it.
    pub fn finish(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Never leave a QEMU behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies `source` to `copy` and to the end of `kept` until it ends, on a thread of its own.
fn copy_out(
    name: &str,
    mut source: impl Read + Send + 'static,
    copy: impl Write + Send + 'static,
    kept: Arc<Mutex<String>>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name.into()).spawn(move || {
        let mut copy = BufWriter::new(copy);
        let mut buf = [0u8; 4096];
        while let Ok(n) = source.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = copy.write_all(&buf[..n]);
            let _ = copy.flush();
            kept.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl ConsoleError {
    /// QEMU itself died of a failed assertion (SIGABRT with `Assertion` on its stderr): a bug
    /// of the emulator, not of what runs in it.
    pub fn is_qemu_assertion(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        matches!(self, Self::Exited { status, qemu_said, .. }
            if status.signal() == Some(libc::SIGABRT) && qemu_said.contains("Assertion"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn exited(raw_wait_status: i32, qemu_said: &str) -> ConsoleError {
        ConsoleError::Exited {
            status: ExitStatus::from_raw(raw_wait_status),
            waiting_for: "the report".into(),
            qemu_said: qemu_said.into(),
        }
    }

    #[test]
    fn only_qemus_own_failed_assertion_counts_as_its_bug() {
        let assertion = "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: \
                         Assertion `section_index < d->map.sections_nb' failed.";
        // A wait status of 6: killed by SIGABRT.
        assert!(exited(6, assertion).is_qemu_assertion());
        assert!(!exited(6, "").is_qemu_assertion(), "SIGABRT alone");
        assert!(!exited(9, assertion).is_qemu_assertion(), "killed");
        assert!(!exited(1 << 8, assertion).is_qemu_assertion(), "exit 1");
        let timeout = ConsoleError::Timeout {
            waiting_for: "x".into(),
            secs: 1,
        };
        assert!(!timeout.is_qemu_assertion());
    }
}
