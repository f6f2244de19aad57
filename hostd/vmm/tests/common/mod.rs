//! Test support: guest payloads, a VMM process under test, its console and control socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm::api::{self, Request, Response, VmStatus};

/// The mini payload (tests/guest/mini.S) as flat code for 1 MiB, assembled with binutils once
/// per test run.
pub fn mini_bin() -> &'static [u8] {
    static BIN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/mini.S");
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (object, flat) = (dir.join("mini.o"), dir.join("mini.bin"));
        let run = |cmd: &mut Command| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; install binutils"));
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("as")
            .arg("--32")
            .arg("-o")
            .arg(&object)
            .arg(&source));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_i386",
                "-Ttext",
                "0x100000",
                "--oformat",
                "binary",
                "-o",
            ])
            .arg(&flat)
            .arg(&object));
        std::fs::read(&flat).unwrap()
    })
}
const LOAD_ADDR: u64 = 0x10_0000;

/// Wraps flat 32-bit code in an ELF64 with one PT_LOAD at 1 MiB and a PVH entry note, the
/// shape linux-loader loads.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const NOTE_OFFSET: usize = EHDR + 2 * PHDR;
    const NOTE_LEN: usize = 12 + 4 + 4;
    const CODE_OFFSET: usize = 0x1000;
    let mut elf = vec![0u8; CODE_OFFSET];
    let put = |elf: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        elf[at..at + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut elf, 0, b"\x7fELF\x02\x01\x01");
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut elf, 18, &0x3Eu16.to_le_bytes()); // x86-64
    put(&mut elf, 20, &1u32.to_le_bytes());
    put(&mut elf, 24, &LOAD_ADDR.to_le_bytes()); // e_entry
    put(&mut elf, 32, &(EHDR as u64).to_le_bytes()); // e_phoff
    put(&mut elf, 52, &(EHDR as u16).to_le_bytes());
    put(&mut elf, 54, &(PHDR as u16).to_le_bytes());
    put(&mut elf, 56, &2u16.to_le_bytes()); // e_phnum
    // PT_LOAD: the code, plus room for nothing else (its data is inside).
    let load = EHDR;
    put(&mut elf, load, &1u32.to_le_bytes());
    put(&mut elf, load + 4, &7u32.to_le_bytes());
    put(&mut elf, load + 8, &(CODE_OFFSET as u64).to_le_bytes());
    put(&mut elf, load + 16, &LOAD_ADDR.to_le_bytes());
    put(&mut elf, load + 24, &LOAD_ADDR.to_le_bytes());
    put(&mut elf, load + 32, &(code.len() as u64).to_le_bytes());
    put(&mut elf, load + 40, &(code.len() as u64).to_le_bytes());
    put(&mut elf, load + 48, &0x1000u64.to_le_bytes());
    // PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY.
    let note = EHDR + PHDR;
    put(&mut elf, note, &4u32.to_le_bytes());
    put(&mut elf, note + 8, &(NOTE_OFFSET as u64).to_le_bytes());
    put(&mut elf, note + 32, &(NOTE_LEN as u64).to_le_bytes());
    put(&mut elf, note + 48, &4u64.to_le_bytes());
    put(&mut elf, NOTE_OFFSET, &4u32.to_le_bytes()); // namesz
    put(&mut elf, NOTE_OFFSET + 4, &4u32.to_le_bytes()); // descsz
    put(&mut elf, NOTE_OFFSET + 8, &18u32.to_le_bytes()); // type
    put(&mut elf, NOTE_OFFSET + 12, b"Xen\0");
    put(
        &mut elf,
        NOTE_OFFSET + 16,
        &(LOAD_ADDR as u32).to_le_bytes(),
    );
    elf.extend_from_slice(code);
    elf
}

/// Fails the test with a clear message when the machine has no usable /dev/kvm.
pub fn require_kvm() {
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs /dev/kvm (read-write, as root): {err}");
    }
}

static KVM_TESTS: Mutex<()> = Mutex::new(());

/// Serialises the tests that run VMs: they pin vCPUs to this machine's few cores.
pub fn serial_guard() -> MutexGuard<'static, ()> {
    require_kvm();
    KVM_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The host cores this process may use.
pub fn cores() -> Vec<usize> {
    vmm::cores::available_cores().unwrap()
}

/// What a test VM looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub kernel: PathBuf,
    pub memory_mib: u64,
    pub vcpu_cores: Vec<usize>,
    pub hugepages: bool,
    pub runtime_dir: Option<PathBuf>,
    pub disk: Option<(PathBuf, bool)>,
    pub graceful_timeout_ms: u64,
    /// Top-level config lines (and `[[vfio]]` tables) written before `[kernel]`.
    pub extra: String,
    /// The VMM executable: this build's, or the lab image's (`/usr/bin/hostd-vmm`).
    pub vmm: PathBuf,
    /// `kernel.initramfs`.
    pub initramfs: Option<PathBuf>,
    /// `kernel.cmdline`.
    pub cmdline: String,
}

impl Spec {
    /// A 64 MiB VM running `kernel` on `cores`.
    pub fn new(name: &str, kernel: &Path, vcpu_cores: &[usize]) -> Self {
        Self {
            name: name.into(),
            kernel: kernel.into(),
            memory_mib: 64,
            vcpu_cores: vcpu_cores.to_vec(),
            hugepages: false,
            runtime_dir: None,
            disk: None,
            graceful_timeout_ms: 10_000,
            extra: String::new(),
            vmm: PathBuf::from(env!("CARGO_BIN_EXE_hostd-vmm")),
            initramfs: None,
            cmdline: String::new(),
        }
    }
}

/// A scratch directory with the mini payload written into it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the mini payload ELF and returns its path.
    pub fn mini(&self) -> PathBuf {
        let path = self.path("mini.elf");
        std::fs::write(&path, pvh_elf(mini_bin())).unwrap();
        path
    }
}

/// A running (or ended) `hostd-vmm` process.
pub struct TestVm {
    pub spec: Spec,
    pub child: Child,
    pub dir: PathBuf,
    exit: Option<ExitStatus>,
}

impl TestVm {
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(format!("{}.ctl", self.spec.name))
    }
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join(format!("{}.console", self.spec.name))
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.spec.name))
    }
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("{}.stderr", self.spec.name))
    }

    /// Writes the config and starts the VMM.
    pub fn spawn(spec: Spec, dir: &Path) -> Self {
        let mut vm = Self {
            spec,
            child: Command::new("true").spawn().unwrap(),
            dir: dir.to_owned(),
            exit: None,
        };
        let _ = vm.child.wait();
        let spec = &vm.spec;
        let runtime = spec.runtime_dir.clone().unwrap_or_else(|| dir.join("run"));
        let cores: Vec<String> = spec.vcpu_cores.iter().map(usize::to_string).collect();
        let mut toml = format!(
            "name = \"{}\"\nmemory_mib = {}\nhugepages = {}\nvcpu_cores = [{}]\n\
             runtime_dir = \"{}\"\ncontrol_socket = \"{}\"\ngraceful_stop_timeout_ms = {}\n{}\n\
             [kernel]\npath = \"{}\"\ncmdline = \"{}\"\n{}[console]\nlog = \"{}\"\nsocket = \"{}\"\n",
            spec.name,
            spec.memory_mib,
            spec.hugepages,
            cores.join(", "),
            runtime.display(),
            vm.control_socket().display(),
            spec.graceful_timeout_ms,
            spec.extra,
            spec.kernel.display(),
            spec.cmdline,
            spec.initramfs
                .as_ref()
                .map(|p| format!("initramfs = \"{}\"\n", p.display()))
                .unwrap_or_default(),
            vm.console_log().display(),
            vm.console_socket().display(),
        );
        if let Some((path, read_only)) = &spec.disk {
            toml.push_str(&format!(
                "[disk]\npath = \"{}\"\nread_only = {read_only}\n",
                path.display()
            ));
        }
        let config = dir.join(format!("{}.toml", spec.name));
        std::fs::write(&config, toml).unwrap();
        let stderr = std::fs::File::create(vm.stderr_path()).unwrap();
        vm.child = Command::new(&vm.spec.vmm)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        vm
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.console_log()).unwrap_or_default()).into_owned()
    }

    /// Waits until the console log contains `needle` `count` times.
    pub fn wait_console_count(&mut self, needle: &str, count: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if text.matches(needle).count() >= count {
                return text;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "VMM exited ({status}) before {needle:?} x{count} appeared\nconsole:\n{text}\nstderr:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{needle:?} x{count} not on the console after {timeout:?}\nconsole:\n{text}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the console log contains `needle`.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_console_count(needle, 1, timeout)
    }

    /// Sends a control request (waiting for the socket to appear).
    pub fn request(&self, request: &Request) -> Response {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match api::call(&self.control_socket(), request) {
                Ok(response) => return response,
                Err(err) if Instant::now() > deadline => {
                    panic!(
                        "control request {request:?} failed: {err}\nstderr:\n{}",
                        self.stderr()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn status(&self) -> VmStatus {
        match self.request(&Request::Status) {
            Response::Status(status) => status,
            other => panic!("status answered {other:?}"),
        }
    }

    /// Connects to the console socket.
    pub fn attach(&self) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(self.console_socket()) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    return stream;
                }
                Err(err) if Instant::now() > deadline => panic!("console attach: {err}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Types `input` on the console (through a short-lived attachment).
    pub fn type_text(&self, input: &str) {
        let mut console = self.attach();
        // The attachment is registered by the VMM's loop; give it a moment before typing.
        std::thread::sleep(Duration::from_millis(50));
        console.write_all(input.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().unwrap();
        }
        self.exit
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "VMM still running after {timeout:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Threads of the process: (name, Cpus_allowed_list).
    pub fn threads(&self) -> Vec<(String, String)> {
        let mut threads = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap() {
            let status = std::fs::read_to_string(entry.unwrap().path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            threads.push((field("Name:"), field("Cpus_allowed_list:")));
        }
        threads
    }

    /// A field of /proc/<pid>/status, in kB.
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads whatever arrives on `stream` within `timeout`.
pub fn read_for(stream: &mut UnixStream, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a process with this pid still exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
}
