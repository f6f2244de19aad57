//! The appliance's own hostd gives real igb VFs to probe guests: the QEMU lab's two 82576
//! ports behind VT-d, guests on the lab's /dev/kvm (nested SVM). Built only with
//! `--features lab`; `hw-qemu` runs it inside the emulated appliance, after the other lab
//! tests.
//!
//! It works as an operator does: it restarts the appliance's hostd service with
//! `[sriov.num_vfs]` added to `/etc/hostd/hostd.toml` (2 VFs per port), then uses the API
//! socket (`hostd::client`, what hostctl uses). The sriov crate only looks at the VFs
//! from outside, and plays the other process that holds a VF. When a test ends, its
//! instances are deleted, the PFs are left without VFs and the service runs with its own
//! config again, as the lab tests before it left the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ApiError is a fixed-capacity wire type

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hostd::client::{Client, ClientError};
use hostd_proto::{
    ApiError, CreateInstance, CreateTemplate, DeleteInstance, ErrorCode, InstanceInfo, InstanceRef,
    InstanceState, Request, Resource, Response, StopInstance, TemplateSpec, VfRequest, bounded,
    name, text,
};
use probe_image::console::READY;
use sriov::{Driver, Host, NumVfsOptions, PciAddress};

const HOSTD: &str = "/usr/bin/hostd";
const CONFIG: &str = "/etc/hostd/hostd.toml";
const SOCKET: &str = "/run/hostd/hostd.sock";
const SERVICE_LOG: &str = "/var/log/hostd.log";
/// hostd's log while it runs for this test.
const LOG: &str = "/var/log/hostd-lab-assign.log";
const PFS: [&str; 2] = ["0000:01:00.0", "0000:02:00.0"];
/// What the test adds to the appliance's config.
const VF_COUNTS: &str = "\n[sriov.num_vfs]\n\"0000:01:00.0\" = 2\n\"0000:02:00.0\" = 2\n";
/// The probe's line for an igb VF at guest slot 1: two 64-bit 16 KiB BARs, 3 MSI-X vectors.
const VF_LINE: &str =
    "pci 0000:00:01.0 8086:10ca class=020000 bar0=mem64:16K bar3=mem64:16K msix=3";
/// Nested-emulated guests are slow: generous limits, the typical times are printed.
const BOOT: Duration = Duration::from_secs(60);

fn pf(addr: &str) -> PciAddress {
    addr.parse().unwrap()
}

/// The pids of processes running `exe`.
fn pids_of(exe: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|target| target == Path::new(exe))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    unsafe { libc::kill(pid as i32, signal) };
}

/// The hostd processes this test started: reaped once killed.
static STARTED: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Kills every hostd and waits until they are gone (SIGKILL: as a crash would).
fn kill_hostd() {
    let pids = pids_of(HOSTD);
    for pid in &pids {
        kill(*pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "hostd {pids:?} does not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    for mut child in started.drain(..) {
        let _ = child.wait();
    }
}

/// Starts hostd as init does (own process group, output to a log), with `config`.
/// When this test executable started, for the progress lines.
static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line with the time since the first one: the lab shows the console only.
fn step(what: &str) {
    let t0 = T0.get_or_init(Instant::now);
    println!("lab-assign: [{:6.2} s] {what}", t0.elapsed().as_secs_f64());
}

/// Starts hostd as init does (own process group, output to `log`) with `config`, and waits
/// until it answers; on a timeout, the error has the end of its log.
fn start_hostd(config: Option<&Path>, log_path: &str) -> Result<(), String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("{log_path}: {e}"))?;
    let mut command = Command::new(HOSTD);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {HOSTD} (is this the lab image?): {e}"))?;
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = Client::connect(Path::new(SOCKET)) {
            let _ = client
                .stream()
                .set_read_timeout(Some(Duration::from_secs(30)));
            if client.call(Request::Hello).is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "hostd did not answer on {SOCKET} within 30 s; {log_path} ends:\n{}",
                tail.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The appliance's hostd, restarted with VF counts for one test; the service as it was
/// afterwards.
struct LabHostd {
    _serial: MutexGuard<'static, ()>,
    dir: PathBuf,
    host: Host,
}

impl LabHostd {
    fn restart_with_vfs() -> Self {
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = PathBuf::from("/tmp/lab-assign");
        std::fs::create_dir_all(&dir).unwrap();
        let config = std::fs::read_to_string(CONFIG).expect("the appliance's hostd config");
        // The lab machine has 2 vCPUs (more make QEMU's TCG hang or abort while VFs come and
        // go: docs/PERF.md): this hostd gives both to guests, so two run side by side.
        let every_core_for_guests = config.replace("housekeeping = \"0\"", "housekeeping = \"\"");
        assert_ne!(
            every_core_for_guests, config,
            "no `housekeeping = \"0\"` in {CONFIG}:\n{config}"
        );
        std::fs::write(dir.join("hostd.toml"), every_core_for_guests + VF_COUNTS).unwrap();
        std::fs::write(dir.join("probe.elf"), probe_image::ELF).unwrap();
        step("restarting hostd with sriov.num_vfs");
        kill_hostd();
        start_hostd(Some(&dir.join("hostd.toml")), LOG).unwrap_or_else(|e| panic!("{e}"));
        step("hostd with VF counts answers");
        let lab = Self {
            _serial: serial,
            dir,
            host: Host::real(),
        };
        for addr in PFS {
            let now = sriov::read_pf(&lab.host, pf(addr)).unwrap();
            assert_eq!(
                now.num_vfs,
                2,
                "hostd set sriov.num_vfs for {addr}\n{}",
                lab.log()
            );
        }
        let created = lab.call(Request::CreateTemplate(CreateTemplate {
            name: name("lab-probe"),
            spec: TemplateSpec {
                description: text("probe guest for the VF lab test"),
                kernel: bounded(&lab.dir.join("probe.elf").to_string_lossy()),
                vcpus: 1,
                ram_mib: 64,
                graceful_stop_timeout_ms: 5000,
                ..Default::default()
            },
        }));
        assert!(created.is_ok(), "{created:?}");
        lab
    }

    fn log(&self) -> String {
        std::fs::read_to_string(LOG).unwrap_or_default()
    }

    fn call(&self, request: Request) -> Result<Response, ApiError> {
        let mut client = Client::connect(Path::new(SOCKET)).unwrap();
        client
            .stream()
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        match client.call(request) {
            Ok(response) => Ok(response),
            Err(ClientError::Api(err)) => Err(err),
            Err(err) => panic!("call failed: {err}\n{}", self.log()),
        }
    }

    fn ok(&self, request: Request) -> Response {
        let shown = format!("{request:?}");
        self.call(request)
            .unwrap_or_else(|err| panic!("{shown} refused: {err:?}\n{}", self.log()))
    }

    fn instance(&self, instance: &str) -> InstanceInfo {
        match self.ok(Request::ShowInstance(InstanceRef {
            instance: name(instance),
        })) {
            Response::Instance(info) => info,
            other => panic!("{other:?}"),
        }
    }

    fn inventory(&self) -> hostd_proto::Inventory {
        match self.ok(Request::Inventory) {
            Response::Inventory(inv) => inv,
            other => panic!("{other:?}"),
        }
    }

    /// The port (PF netdev) name hostd uses for PF `addr`.
    fn port(&self, addr: &str) -> String {
        let inv = self.inventory();
        inv.ports
            .iter()
            .find(|p| p.pf == addr)
            .map(|p| p.port.to_string())
            .unwrap_or_else(|| panic!("no port for PF {addr}: {:?}", inv.ports))
    }

    fn create(&self, instance: &str, vfs: Vec<VfRequest>) -> Result<Response, ApiError> {
        self.call(Request::CreateInstance(CreateInstance {
            name: name(instance),
            template: name("lab-probe"),
            vfs: Some(vfs.into_iter().collect()),
            ..Default::default()
        }))
    }

    /// Starts `instance`, waits for the probe's `ready` in its console log; returns it and
    /// prints the times.
    fn start(&self, instance: &str) -> InstanceInfo {
        let t = Instant::now();
        let info = match self.ok(Request::StartInstance(InstanceRef {
            instance: name(instance),
        })) {
            Response::Instance(info) => info,
            other => panic!("{other:?}"),
        };
        assert_eq!(info.state, InstanceState::Running, "{}", info.state_reason);
        let running = t.elapsed();
        wait_for(&PathBuf::from(info.console_log.as_str()), READY, 1);
        println!(
            "lab-assign: {instance}: start to running {:.2} s, to probe ready {:.2} s",
            running.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        info
    }

    fn stop(&self, instance: &str) -> InstanceInfo {
        let t = Instant::now();
        let info = match self.ok(Request::StopInstance(StopInstance {
            instance: name(instance),
            force: false,
            timeout_ms: Some(10_000),
        })) {
            Response::Instance(info) => info,
            other => panic!("{other:?}"),
        };
        assert_eq!(info.state, InstanceState::Stopped, "{}", info.state_reason);
        println!(
            "lab-assign: {instance}: stop (graceful) and release {:.2} s",
            t.elapsed().as_secs_f64()
        );
        info
    }

    fn driver(&self, vf: &str) -> Driver {
        sriov::read_function(&self.host, pf(vf)).unwrap().driver
    }

    /// The VF settings the PF's driver reports for VF `index` of `pf_addr`.
    fn vf_state(&self, pf_addr: &str, index: u32) -> sriov::VfState {
        sriov::read_vf_states(&self.host, pf(pf_addr))
            .unwrap()
            .into_iter()
            .find(|s| s.index == index)
            .unwrap()
    }
}

/// A call that never panics (for the cleanup, which may run while a test unwinds).
fn try_call(request: Request) -> Option<Response> {
    let mut client = Client::connect(Path::new(SOCKET)).ok()?;
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    client.call(request).ok()
}

impl Drop for LabHostd {
    fn drop(&mut self) {
        if let Some(Response::Instances(list)) =
            try_call(Request::ListInstances(Default::default()))
        {
            for i in list.iter() {
                let _ = try_call(Request::DeleteInstance(DeleteInstance {
                    instance: i.name.clone(),
                    force: true,
                }));
            }
        }
        step("cleanup: instances deleted");
        kill_hostd();
        // Both PFs at once: removing VFs waits for igbvf to let go of each (seconds).
        std::thread::scope(|scope| {
            for addr in PFS {
                let host = &self.host;
                scope.spawn(move || {
                    let options = NumVfsOptions::default();
                    if let Err(err) = sriov::set_num_vfs(host, pf(addr), 0, &options) {
                        println!("lab-assign: cleanup: {addr} keeps its VFs: {err}");
                    }
                });
            }
        });
        step("cleanup: VFs removed");
        if let Err(err) = start_hostd(None, SERVICE_LOG) {
            println!("lab-assign: cleanup: the hostd service did not come back: {err}");
        }
        step("cleanup: the hostd service runs with its own config");
    }
}

/// Waits until `file` holds `want` `count` times.
fn wait_for(file: &Path, want: &str, count: usize) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.matches(want).count() >= count {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {want:?} {count} times:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the VF's STATUS register (BAR0 + 0x8) through the probe's console: `peek`.
fn peek_status(lab: &LabHostd, instance: &str) -> u32 {
    let mut client = Client::connect(Path::new(SOCKET)).unwrap();
    client
        .call(Request::AttachConsole(InstanceRef {
            instance: name(instance),
        }))
        .unwrap_or_else(|e| panic!("attach {instance}: {e}\n{}", lab.log()));
    let mut stream: UnixStream = client.into_stream();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    stream.write_all(b"peek 00:01.0 0 0x8\n").unwrap();
    let deadline = Instant::now() + BOOT;
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    loop {
        // Whole lines only: the reply may be half written.
        let complete = &seen[..seen.rfind('\n').map_or(0, |end| end + 1)];
        let reply = complete
            .lines()
            .find(|l| l.starts_with("peek 0000:00:01.0 bar0+0x8 = 0x") || l.starts_with("error:"));
        if let Some(line) = reply {
            let value = line
                .rsplit("= 0x")
                .next()
                .and_then(|v| u32::from_str_radix(v.trim(), 16).ok());
            return value.unwrap_or_else(|| panic!("{instance}: peek answered {line:?}"));
        }
        assert!(
            Instant::now() < deadline,
            "{instance}: no answer to peek: {seen:?}"
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("{instance}: console closed: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
}

/// An igb VF's STATUS as QEMU's 82576 sets it (docs/VMM.md: 0x800c4483 was seen): link up,
/// full duplex, 1000 Mb/s, SR-IOV mode, and the PF's VF count in bits 17:14; never all ones
/// (an unmapped BAR or a dead device).
fn assert_plausible_status(status: u32, pf_vfs: u32) {
    println!("lab-assign: VF STATUS (BAR0+0x8) = {status:#010x}");
    assert_ne!(status, u32::MAX, "all ones: the BAR is not mapped");
    assert_eq!(status & 0x3, 0x3, "link up, full duplex: {status:#x}");
    assert_eq!((status >> 6) & 0x3, 0b10, "1000 Mb/s: {status:#x}");
    assert_ne!(status & (1 << 18), 0, "SR-IOV mode: {status:#x}");
    assert_eq!(
        (status >> 14) & 0xF,
        pf_vfs,
        "the PF's VF count: {status:#x}"
    );
}

/// vfio-pci unloaded (`rmmod`), loaded again when dropped, also when a test fails.
struct VfioPciUnloaded;

impl VfioPciUnloaded {
    fn new() -> Self {
        let status = Command::new("rmmod").arg("vfio_pci").status().unwrap();
        assert!(
            status.success(),
            "rmmod vfio_pci (is a device still on it?)"
        );
        assert!(!Path::new("/sys/bus/pci/drivers/vfio-pci").exists());
        Self
    }
}

impl Drop for VfioPciUnloaded {
    fn drop(&mut self) {
        // The lab image keeps its modules as /lib/modules/<canonical name>.ko.
        let status = Command::new("insmod")
            .arg("/lib/modules/vfio_pci.ko")
            .status();
        if !status.is_ok_and(|s| s.success()) && !std::thread::panicking() {
            panic!("insmod /lib/modules/vfio_pci.ko failed");
        }
    }
}

fn vf(port: Option<&str>, mac: Option<&str>, vlan: Option<u16>) -> VfRequest {
    VfRequest {
        port: port.map(name),
        mac: mac.map(bounded),
        vlan,
        ..Default::default()
    }
}

#[test]
fn hostd_gives_a_probe_guest_a_vf_it_reads_and_takes_it_back_at_stop() {
    let lab = LabHostd::restart_with_vfs();
    let eth = lab.port(PFS[0]);
    // For docs/PERF.md: the same guest without a VF first.
    lab.create("no-vf", vec![]).unwrap();
    lab.start("no-vf");
    lab.stop("no-vf");
    lab.create(
        "vf-a",
        vec![vf(Some(&eth), Some("02:00:00:00:aa:01"), Some(10))],
    )
    .unwrap();
    // What igb reports for the VF before hostd takes it (igbvf gave it a random MAC).
    let before = lab.vf_state(PFS[0], 0);
    let info = lab.start("vf-a");
    let held = &info.vfs[0];
    assert_eq!(
        (held.addr.as_deref(), held.guest_addr.as_deref()),
        (Some("0000:01:10.0"), Some("0000:00:01.0"))
    );
    // The host side: on vfio-pci, the settings in the PF's driver, the group open by the VMM.
    assert_eq!(lab.driver("0000:01:10.0"), Driver::Vfio);
    let state = lab.vf_state(PFS[0], 0);
    assert_eq!(state.mac, Some("02:00:00:00:aa:01".parse().unwrap()));
    assert_eq!(state.vlan.id, 10);
    let in_use = sriov::vfs_in_use(&lab.host, pf(PFS[0]), &Default::default()).unwrap();
    assert_eq!(
        in_use,
        [(
            pf("0000:01:10.0"),
            sriov::VfUse::OpenBy {
                pid: info.vmm_pid.unwrap()
            }
        )]
    );
    // The guest side: the probe found the VF and reads its registers through the BAR.
    let console = wait_for(Path::new(info.console_log.as_str()), READY, 1);
    assert!(console.contains(VF_LINE), "{console}");
    assert_plausible_status(peek_status(&lab, "vf-a"), 2);
    let inv = lab.inventory();
    let owners: Vec<(&str, &str, Option<&str>)> = inv
        .vf_owners
        .iter()
        .map(|o| (o.vf.as_str(), o.instance.as_str(), o.guest_addr.as_deref()))
        .collect();
    assert_eq!(owners, [("0000:01:10.0", "vf-a", Some("0000:00:01.0"))]);

    // Stop: the VMM resets the VF, hostd restores it and gives it back to igbvf.
    let stopped = lab.stop("vf-a");
    assert_eq!(stopped.vfs[0].addr, None);
    let vmm_log = PathBuf::from(info.console_log.as_str()).with_file_name("vmm.log");
    let vmm_log = std::fs::read_to_string(&vmm_log).unwrap();
    assert!(
        vmm_log.contains("0000:01:10.0: reset and released"),
        "{vmm_log}"
    );
    assert_eq!(lab.driver("0000:01:10.0"), Driver::Kernel("igbvf".into()));
    assert_eq!(lab.vf_state(PFS[0], 0), before, "MAC and VLAN as they were");
    assert!(lab.inventory().vf_owners.is_empty());

    for line in lab.log().lines().filter(|l| l.contains(" ms")) {
        println!(
            "lab-assign: hostd: {}",
            line.split("] ").nth(1).unwrap_or(line)
        );
    }
    // And again: the same VF, read again.
    let again = lab.start("vf-a");
    assert_eq!(again.vfs[0].addr.as_deref(), Some("0000:01:10.0"));
    assert_plausible_status(peek_status(&lab, "vf-a"), 2);
    lab.stop("vf-a");
}

#[test]
fn two_guests_get_distinct_vfs_a_third_is_refused_and_a_hostd_crash_keeps_them() {
    let lab = LabHostd::restart_with_vfs();
    lab.create("vf-one", vec![vf(None, None, None)]).unwrap();
    lab.create("vf-two", vec![vf(None, None, None)]).unwrap();
    let one = lab.start("vf-one");
    let two = lab.start("vf-two");
    let (one_vf, two_vf) = (
        one.vfs[0].addr.clone().unwrap(),
        two.vfs[0].addr.clone().unwrap(),
    );
    assert_ne!(one_vf, two_vf);
    for instance in ["vf-one", "vf-two"] {
        assert_plausible_status(peek_status(&lab, instance), 2);
    }
    // 4 VFs, 2 reserved: a third asking for 3 is refused by admission, with the numbers
    // (VFs are checked before cores: both of the lab's 2 cores are taken too).
    let err = lab
        .create("vf-three", (0..3).map(|_| vf(None, None, None)).collect())
        .unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::InsufficientResources,
        "{}",
        err.message
    );
    assert!(
        err.message.starts_with("needs 3 VFs, 2 free"),
        "{}",
        err.message
    );
    let shortfall = err.shortfall.unwrap();
    assert_eq!(
        (shortfall.resource, shortfall.needed, shortfall.available),
        (Resource::Vfs, 3, 2)
    );

    step("killing hostd, then vf-two's VMM");
    // hostd crashes; vf-two's VMM dies while it is down; hostd comes back.
    let config = lab.dir.join("hostd.toml");
    kill_hostd();
    let two_pid = two.vmm_pid.unwrap();
    kill(two_pid, libc::SIGKILL);
    while alive(two_pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    start_hostd(Some(&config), LOG).unwrap_or_else(|e| panic!("{e}"));
    step("hostd restarted after the crash");
    let one_now = lab.instance("vf-one");
    assert_eq!(one_now.state, InstanceState::Running);
    assert_eq!(one_now.vmm_pid, one.vmm_pid, "re-adopted");
    assert_eq!(one_now.vfs[0].addr.as_deref(), Some(one_vf.as_str()));
    assert_eq!(lab.driver(&one_vf), Driver::Vfio);
    assert_plausible_status(peek_status(&lab, "vf-one"), 2);
    let two_now = lab.instance("vf-two");
    assert!(!two_now.state.has_vmm(), "{:?}", two_now.state);
    assert_eq!(two_now.vfs[0].addr, None);
    assert_eq!(lab.driver(&two_vf), Driver::Kernel("igbvf".into()));
    let owners: Vec<String> = lab
        .inventory()
        .vf_owners
        .iter()
        .map(|o| format!("{} {}", o.vf, o.instance))
        .collect();
    assert_eq!(owners, [format!("{one_vf} vf-one")]);
    // The freed VF is had again.
    assert_eq!(
        lab.start("vf-two").vfs[0].addr.as_deref(),
        Some(two_vf.as_str())
    );
}

#[test]
fn refusals_on_real_vfs_name_the_vf_the_pf_and_what_to_do() {
    let lab = LabHostd::restart_with_vfs();
    let eth = lab.port(PFS[0]);
    lab.create("vf-hold", vec![vf(Some(&eth), None, None)])
        .unwrap();
    lab.create(
        "vf-x",
        vec![vf(Some(&eth), Some("02:00:00:00:bb:01"), Some(20))],
    )
    .unwrap();
    assert_eq!(
        lab.start("vf-hold").vfs[0].addr.as_deref(),
        Some("0000:01:10.0")
    );

    step("holding VF 1's VFIO group open");
    // Already assigned: VF 0 to vf-hold, VF 1 open through VFIO by this process.
    let vf1 = pf("0000:01:10.2");
    sriov::bind_to_vfio(&lab.host, vf1).unwrap();
    let group = sriov::iommu_group_of(&lab.host, vf1).unwrap().unwrap().id;
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/vfio/{group}"))
        .unwrap();
    let err = lab
        .call(Request::StartInstance(InstanceRef {
            instance: name("vf-x"),
        }))
        .unwrap_err();
    drop(holder);
    sriov::bind_to_host_driver(&lab.host, vf1, Some("igbvf")).unwrap();
    println!("lab-assign: refused: {}", err.message);
    assert_eq!(err.code, ErrorCode::VfUnavailable, "{}", err.message);
    let expected = format!(
        "no free VF on port {eth} (PF 0000:01:00.0) for vf-x: 2 VFs: 0000:01:10.0 held by vf-hold, 0000:01:10.2 open by pid {}",
        std::process::id()
    );
    assert!(err.message.starts_with(&expected), "{}", err.message);
    assert!(
        err.message.ends_with("; stop that process"),
        "{}",
        err.message
    );

    // Binding fails: vfio-pci is not loaded. vf-hold stops first (vfio-pci in use).
    lab.stop("vf-hold");
    // igbvf took VF 0 back and gave it a new random MAC: what hostd must restore.
    let before = lab.vf_state(PFS[0], 0);
    step("unloading vfio-pci");
    let unloaded = VfioPciUnloaded::new();
    let err = lab
        .call(Request::StartInstance(InstanceRef {
            instance: name("vf-x"),
        }))
        .unwrap_err();
    drop(unloaded);
    step("vfio-pci loaded again");
    println!("lab-assign: refused: {}", err.message);
    assert_eq!(err.code, ErrorCode::VfUnavailable, "{}", err.message);
    assert!(
        err.message.starts_with("VF 0000:01:10.0 (")
            && err.message.contains(", PF 0000:01:00.0) cannot be bound to vfio-pci: the vfio-pci driver is not available")
            && err.message.contains("modprobe vfio-pci"),
        "{}",
        err.message
    );
    // Nothing was left behind: the VF is back on igbvf with its settings as they were.
    assert_eq!(lab.driver("0000:01:10.0"), Driver::Kernel("igbvf".into()));
    assert_eq!(lab.vf_state(PFS[0], 0), before, "MAC and VLAN as they were");
    let x = lab.instance("vf-x");
    assert_eq!(x.state, InstanceState::Error);
    assert_eq!(x.vfs[0].addr, None);

    // With vfio-pci back, the same instance starts with its VF.
    let x = lab.start("vf-x");
    assert_eq!(x.vfs[0].addr.as_deref(), Some("0000:01:10.0"));
    let state = lab.vf_state(PFS[0], 0);
    assert_eq!(
        (state.vlan.id, state.mac),
        (20, Some("02:00:00:00:bb:01".parse().unwrap()))
    );
}
