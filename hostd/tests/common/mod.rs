//! Test support: a hostd process under test (`--sim`, its own state directory), clients of
//! both encodings, and hostctl run as another user.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err
)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hostd::client::{Client, ClientError};
use hostd_proto::{
    ApiError, ErrorCode, InstanceInfo, InstanceRef, InstanceState, Request, Response, name,
};

/// Runs `f` on a thread with a large stack: replies are fixed-capacity values of tens of
/// KiB, and debug builds of serde code copy them several times.
pub fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Tests that boot guests take turns: the machine has two cores.
pub fn kvm_guard() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests boot the probe guest and need /dev/kvm: run them on a machine with KVM"
    );
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `hostd-vmm` binary beside hostd's; built once if `cargo test -p hostd` did not
/// build it (a workspace test run does).
pub fn vmm_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| binary_beside_hostd("vmm", "hostd-vmm"))
        .clone()
}

/// The `fastpath` binary beside hostd's, likewise.
pub fn fastpath_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| binary_beside_hostd("fastpath", "fastpath"))
        .clone()
}

/// Binary `bin` of workspace package `package` in hostd's target directory, built with
/// hostd's profile if it is not there.
fn binary_beside_hostd(package: &str, bin: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_hostd"))
        .parent()
        .unwrap()
        .to_owned();
    let path = dir.join(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", bin])
            .args(profile)
            .status()
            .unwrap_or_else(|e| panic!("run cargo to build {bin}: {e}"));
        assert!(status.success(), "building {bin} failed");
    }
    assert!(path.exists(), "no {bin} at {}", path.display());
    path
}

/// How a test hostd is configured.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `[cores] guest`.
    pub guest_cores: String,
    /// Extra TOML appended to the config.
    pub extra: String,
    /// The simulated NIC, made before hostd's first start (default: `--sim`'s own, two igb
    /// ports with 7 VFs each).
    pub sim: Option<sriov::sim::SimSpec>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            guest_cores: "0-1".into(),
            extra: String::new(),
            sim: None,
        }
    }
}

/// A hostd under test.
pub struct TestHostd {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    setup: Setup,
}

impl TestHostd {
    pub fn start(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Other users (role tests) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            "socket_group = \"nogroup\"\nvmm_path = \"{}\"\n[cores]\nhousekeeping = \"0\"\nguest = \"{}\"\n{}\n",
            vmm_binary().display(),
            setup.guest_cores,
            setup.extra
        );
        std::fs::write(dir.path().join("hostd.toml"), config).unwrap();
        if let Some(spec) = &setup.sim {
            sriov::sim::SimHost::create(&dir.path().join("state/sriov-sim"), spec).unwrap();
        }
        let mut hostd = Self {
            dir,
            child: None,
            setup,
        };
        hostd.launch();
        hostd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("state").join("hostd.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The simulated NIC hostd runs on, as another program would see it.
    pub fn nic(&self) -> sriov::sim::SimHost {
        sriov::sim::SimHost::open(&self.state_dir().join("sriov-sim")).unwrap()
    }

    /// Starts the hostd process and waits for its socket.
    pub fn launch(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hostd.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hostd"));
        // SAFETY: prctl is async-signal-safe; a hostd left behind by an aborted test run
        // dies with the thread that started it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .arg("--sim")
            .arg("--config")
            .arg(self.dir.path().join("hostd.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hostd exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hostd did not open its socket:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hostd.log")).unwrap_or_default()
    }

    /// A client whose calls fail instead of hanging if hostd stops answering.
    pub fn client(&self) -> Client {
        let client = Client::connect(&self.socket()).unwrap();
        client
            .stream()
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        client
    }

    pub fn call(&self, request: Request) -> Result<Response, ApiError> {
        match self.client().call(request) {
            Ok(response) => Ok(response),
            Err(ClientError::Api(err)) => Err(err),
            Err(err) => panic!("call failed: {err}\n{}", self.log()),
        }
    }

    pub fn ok(&self, request: Request) -> Response {
        let shown = format!("{request:?}");
        self.call(request)
            .unwrap_or_else(|err| panic!("{shown} refused: {err:?}\n{}", self.log()))
    }

    pub fn refused(&self, request: Request, code: ErrorCode) -> ApiError {
        let shown = format!("{request:?}");
        match self.call(request) {
            Err(err) => {
                assert_eq!(err.code, code, "{shown}: {}", err.message);
                err
            }
            Ok(response) => panic!("{shown} was accepted: {response:?}"),
        }
    }

    pub fn instance(&self, instance: &str) -> InstanceInfo {
        match self.ok(Request::ShowInstance(InstanceRef {
            instance: name(instance),
        })) {
            Response::Instance(info) => info,
            other => panic!("{other:?}"),
        }
    }

    /// Polls until `instance` is in `state`.
    pub fn wait_state(
        &self,
        instance: &str,
        state: InstanceState,
        within: Duration,
    ) -> InstanceInfo {
        let deadline = Instant::now() + within;
        loop {
            let info = self.instance(instance);
            if info.state == state {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{instance} is {:?} ({}), not {state:?}\n{}",
                info.state,
                info.state_reason,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs hostctl as `uid`/`gid` with `args`.
    pub fn hostctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        // Another user may not be able to reach the build directory (a checkout under
        // /root): run a copy from the test's own directory, which is world-readable.
        let binary = if uid == 0 {
            PathBuf::from(env!("CARGO_BIN_EXE_hostctl"))
        } else {
            let copy = self.dir.path().join("hostctl");
            if !copy.exists() {
                std::fs::copy(env!("CARGO_BIN_EXE_hostctl"), &copy).unwrap();
            }
            copy
        };
        let mut command = Command::new(binary);
        command
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env("HOME", "/nonexistent");
        if uid != 0 {
            command.uid(uid).gid(gid);
        }
        command.output().unwrap()
    }

    pub fn hostctl(&self, args: &[&str]) -> Output {
        self.hostctl_as(0, 0, args)
    }
}

impl Drop for TestHostd {
    fn drop(&mut self) {
        // Stop guests this hostd started, then hostd.
        if self.child.is_some() {
            if let Ok(mut client) = Client::connect(&self.socket()) {
                if let Ok(Response::Instances(list)) =
                    client.call(Request::ListInstances(Default::default()))
                {
                    for i in list.iter().filter(|i| i.state.has_vmm()) {
                        let _ = client.call(Request::StopInstance(hostd_proto::StopInstance {
                            instance: i.name.clone(),
                            force: true,
                            timeout_ms: None,
                        }));
                    }
                }
            }
        }
        self.kill();
    }
}

/// A JSON-lines connection.
pub struct JsonClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u32,
}

impl JsonClient {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            next_id: 1,
        }
    }

    /// Sends a raw line, returns the reply line parsed.
    pub fn raw(&mut self, line: &str) -> serde_json::Value {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
    }

    /// Sends a typed request as JSON and decodes the typed reply.
    pub fn call(&mut self, request: Request) -> Result<Response, ApiError> {
        let id = self.next_id;
        self.next_id += 1;
        let envelope = hostd_proto::RequestEnvelope {
            version: hostd_proto::PROTOCOL_VERSION,
            id,
            request,
        };
        let line = serde_json::to_string(&envelope).unwrap();
        let value = self.raw(&line);
        let reply: hostd_proto::ReplyEnvelope = serde_json::from_value(value).unwrap();
        assert_eq!(reply.id, id);
        match reply.reply {
            hostd_proto::Reply::Ok(response) => Ok(response),
            hostd_proto::Reply::Error(err) => Err(err),
            hostd_proto::Reply::Event(e) => panic!("unexpected event {e:?}"),
        }
    }
}

/// Whether process `pid` is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    hostd::process::start_time(pid).is_some()
}

/// SIGKILLs process `pid` (a VMM this test's hostd started) and waits until it is gone.
pub fn kill(pid: u32) {
    let pidfd = hostd::process::PidFd::open(pid).unwrap();
    pidfd.kill(libc::SIGKILL).unwrap();
    assert!(pidfd.wait_exit(Some(Duration::from_secs(10))).unwrap());
}
