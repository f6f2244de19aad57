//! Boots the probe under QEMU and talks to it: console on QEMU's stdio, QMP on a unix socket.
// Test harness: a broken pipe or a poisoned lock here is a failed test, like in a #[test] fn.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use probe_image::console::{PROMPT, READY};

/// QEMU from the Debian package `qemu-system-x86`.
pub const QEMU: &str = "qemu-system-x86_64";
/// Boot to `probe: ready`: with KVM, QEMU's firmware runs slowly on this project's nested
/// KVM (4 to 15 s seen while other builds load the two cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// One command's reply, or QEMU's exit after `off`.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The machine types the tests boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// PC with PCIe, ACPI PM1 blocks and SeaBIOS; an igb NIC is added.
    Q35,
    /// QEMU's minimal machine: no PCI, hardware-reduced ACPI, qboot.
    Microvm,
}

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// `/dev/kvm`: what the VMM tests use, so the probe must work there.
    Kvm,
    /// Software emulation. On this project's nested-KVM machines it boots QEMU's firmware
    /// about 40 times faster than KVM does (images/README.md), so most scenarios use it.
    Tcg,
}

impl Accel {
    /// The `-accel` value, after checking that KVM is usable when asked for.
    fn qemu_arg(self) -> &'static str {
        match self {
            Self::Kvm => {
                if let Err(error) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
                    panic!(
                        "this test boots QEMU with -accel kvm and needs read-write /dev/kvm \
                         ({error}); run it where KVM is available (as root, or in group kvm)"
                    );
                }
                "kvm"
            }
            Self::Tcg => "tcg",
        }
    }
}

/// Console output shared with the reader thread.
#[derive(Default)]
struct Console {
    bytes: Vec<u8>,
    first_byte: Option<Instant>,
    closed: bool,
}

/// A running QEMU with the probe.
pub struct Guest {
    child: Child,
    stdin: ChildStdin,
    console: Arc<(Mutex<Console>, Condvar)>,
    stderr: Arc<Mutex<Vec<u8>>>,
    qmp_path: PathBuf,
    started: Instant,
    /// How far [`Guest::command`] has consumed the output.
    cursor: usize,
}

impl Guest {
    /// Starts QEMU with 2 vCPUs and 64 MiB and waits for `probe: ready` and the prompt.
    pub fn boot(machine: Machine, accel: Accel) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let qmp_path = std::env::temp_dir().join(format!(
            "probe-qmp-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let machine_arg = match machine {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        };
        let mut command = Command::new(QEMU);
        command
            .args([
                "-machine",
                machine_arg,
                "-accel",
                accel.qemu_arg(),
                "-smp",
                "2",
                "-m",
                "64",
            ])
            .arg("-kernel")
            .arg(probe_image::path())
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
            .args(["-serial", "stdio", "-display", "none", "-nodefaults"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if machine == Machine::Q35 {
            command.args(["-device", "igb"]);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let started = Instant::now();
        let mut child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot run {QEMU} ({error}): install QEMU (apt-get install qemu-system-x86)")
        });
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();

        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let reader_console = Arc::clone(&console);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                let read = stdout.read(&mut chunk).unwrap_or(0);
                let (lock, changed) = &*reader_console;
                let mut console = lock.lock().unwrap();
                if read == 0 {
                    console.closed = true;
                    changed.notify_all();
                    return;
                }
                console.first_byte.get_or_insert_with(Instant::now);
                console.bytes.extend_from_slice(&chunk[..read]);
                changed.notify_all();
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let reader_stderr = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut bytes);
            reader_stderr.lock().unwrap().extend_from_slice(&bytes);
        });

        let mut guest = Self {
            child,
            stdin,
            console,
            stderr,
            qmp_path,
            started,
            cursor: 0,
        };
        let ready = format!("{READY}\n{PROMPT}");
        guest.wait_for(&ready, BOOT_TIMEOUT);
        guest.cursor = guest.output().find(&ready).unwrap() + ready.len();
        eprintln!(
            "{machine:?}/{accel:?}: QEMU start -> first console byte {:?}, -> ready {:?}",
            guest.first_byte_after_start(),
            started.elapsed()
        );
        guest
    }

    /// Time from spawning QEMU to the first console byte.
    pub fn first_byte_after_start(&self) -> Option<Duration> {
        let console = self.console.0.lock().unwrap();
        console.first_byte.map(|at| at - self.started)
    }

    /// All console output so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.console.0.lock().unwrap().bytes).into_owned()
    }

    /// What QEMU wrote to stderr so far.
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle` `count` times; fails the test with the
    /// console and QEMU's stderr if it does not within `timeout`.
    pub fn wait_for_count(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.console;
        let mut console = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&console.bytes).into_owned();
            if text.matches(needle).count() >= count {
                return text;
            }
            let now = Instant::now();
            if now >= deadline || console.closed {
                drop(console);
                panic!(
                    "{needle:?} (x{count}) not seen on the probe console {}\n\
                     --- console ---\n{text}\n--- qemu stderr ---\n{}",
                    if now >= deadline {
                        format!("within {timeout:?}")
                    } else {
                        "before QEMU closed it".into()
                    },
                    self.stderr()
                );
            }
            console = changed.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_count(needle, 1, timeout)
    }

    /// Types `text` on the console.
    pub fn type_text(&mut self, text: &str) {
        self.stdin.write_all(text.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Runs one command line (typed with a carriage return, as a terminal sends it) and
    /// returns its output: everything after the echoed line up to the next prompt at the
    /// start of a line (`> ` also occurs inside replies, e.g. in `help`).
    pub fn command(&mut self, line: &str) -> String {
        self.type_text(&format!("{line}\r"));
        let echoed = format!("{line}\n");
        let line_prompt = format!("\n{PROMPT}");
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let output = self.output();
            let tail = &output[self.cursor..];
            if let Some(echo_at) = tail.find(&echoed) {
                // Search from the echo's own newline, so an empty reply is found too.
                let newline_at = echo_at + echoed.len() - 1;
                if let Some(prompt_at) = tail[newline_at..].find(&line_prompt) {
                    let reply = tail[newline_at + 1..newline_at + prompt_at + 1].to_string();
                    self.cursor += newline_at + prompt_at + line_prompt.len();
                    return reply;
                }
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no reply to {line:?} within {REPLY_TIMEOUT:?}\n--- console ---\n{output}\n\
                 --- qemu stderr ---\n{}",
                self.stderr()
            );
            self.wait_for_count(
                &line_prompt,
                output.matches(&line_prompt).count() + 1,
                deadline - now,
            );
        }
    }

    /// Sends one QMP command (e.g. `system_powerdown`) and waits for its return.
    pub fn qmp(&self, command: &str) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(&self.qmp_path) {
                Ok(stream) => break stream,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!(
                    "cannot connect to QMP at {}: {error}",
                    self.qmp_path.display()
                ),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut lines = BufReader::new(stream).lines();
        let mut expect_return = |what: &str| loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("QMP closed waiting for {what}"))
                .unwrap();
            assert!(!line.contains("\"error\""), "QMP {what} failed: {line}");
            if line.contains("\"return\"") || line.contains("\"QMP\"") {
                return;
            }
        };
        expect_return("the greeting");
        writer
            .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
            .unwrap();
        expect_return("qmp_capabilities");
        writer
            .write_all(format!("{{\"execute\": \"{command}\"}}\n").as_bytes())
            .unwrap();
        expect_return(command);
    }

    /// Waits for QEMU to exit and returns its status; fails the test if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU still running {timeout:?} later\n--- console ---\n{}\n\
                 --- qemu stderr ---\n{}",
                self.output(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp_path);
    }
}
