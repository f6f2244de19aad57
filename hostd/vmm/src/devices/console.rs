//! Where the guest's serial output goes: the console log (size-capped, rotated once to
//! `<log>.old`), the attached console client if any, and optionally this process's stdout.
//!
//! Output never blocks the vCPU: a client that does not read fast enough loses bytes, a
//! client that went away is detached, and a log write error is reported once.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The console log and its cap.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    failed: bool,
}

impl ConsoleLog {
    /// Opens (appends to) the log.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            written,
            max_bytes,
            failed: false,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".old");
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) {
        let result = (|| {
            if self.written + bytes.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            self.file.write_all(bytes)?;
            self.written += bytes.len() as u64;
            Ok::<(), std::io::Error>(())
        })();
        match result {
            Err(err) if !self.failed => {
                self.failed = true;
                log::error!("console log {} stopped: {err}", self.path.display());
            }
            Err(_) => {}
            Ok(()) => self.failed = false,
        }
    }
}

/// The serial port's output sink.
#[derive(Debug)]
pub struct ConsoleOutput {
    log: ConsoleLog,
    client: Option<UnixStream>,
    stdout: bool,
}

impl ConsoleOutput {
    /// Output to `log`, and to stdout when asked.
    pub fn new(log: ConsoleLog, stdout: bool) -> Self {
        Self {
            log,
            client: None,
            stdout,
        }
    }

    /// Attaches a console client (non-blocking), replacing the previous one.
    pub fn attach(&mut self, client: UnixStream) {
        if let Err(err) = client.set_nonblocking(true) {
            log::warn!("console client not attached: {err}");
            return;
        }
        if self.client.replace(client).is_some() {
            log::info!("console client replaced by a new one");
        }
    }

    /// Detaches the console client.
    pub fn detach(&mut self) {
        self.client = None;
    }

    fn send_to_client(&mut self, bytes: &[u8]) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        match client.write(bytes) {
            Ok(_) => {}
            // A slow client loses output rather than stalling the guest.
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.client = None,
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.log.append(bytes);
        self.send_to_client(bytes);
        if self.stdout {
            let mut out = std::io::stdout().lock();
            // Benchmarks read this; a closed stdout is not the guest's problem.
            let _ = out.write_all(bytes).and_then(|()| out.flush());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn log_rotates_at_the_cap_keeping_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut out = ConsoleOutput::new(ConsoleLog::open(&path, 10).unwrap(), false);
        out.write_all(b"12345678").unwrap();
        out.write_all(b"abcd").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        assert_eq!(
            std::fs::read(dir.path().join("console.log.old")).unwrap(),
            b"12345678"
        );
    }

    #[test]
    fn attached_client_gets_output_and_a_gone_client_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = ConsoleOutput::new(
            ConsoleLog::open(&dir.path().join("log"), 4096).unwrap(),
            false,
        );
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        out.attach(ours);
        out.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        drop(theirs);
        out.write_all(b"x").unwrap();
        out.write_all(b"y").unwrap();
        assert!(out.client.is_none());
        assert_eq!(std::fs::read(dir.path().join("log")).unwrap(), b"helloxy");
    }
}
