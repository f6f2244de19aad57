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
    #[error("QEMU exited ({status}) while waiting for {waiting_for}")]
    Exited {
        /// How it ended.
        status: std::process::ExitStatus,
        /// What was awaited.
        waiting_for: String,
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
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(spawn_err)?;
        let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(spawn_err(std::io::Error::other("no stdio pipes")));
        };
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        let reader = thread::Builder::new()
            .name("console-reader".into())
            .spawn(move || {
                let mut log = BufWriter::new(log_file);
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = log.write_all(&buf[..n]);
                    let _ = log.flush();
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
            .map_err(spawn_err)?;
        Ok(Self {
            child,
            stdin,
            output,
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
                return Err(ConsoleError::Exited {
                    status,
                    waiting_for: waiting_for.into(),
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
