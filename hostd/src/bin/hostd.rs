//! `hostd`: the appliance's control plane daemon (docs/HOSTD.md). `hostd --sim` runs it on
//! simulated hardware under the user's data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::mpsc::Sender;

use clap::Parser;
use hostd::config::{ConfigFile, DEFAULT_CONFIG_PATH};
use hostd::daemon::{Command, Daemon};
use nix::sys::signal::{SigSet, Signal};

/// The appliance's control plane: guests, cores, RAM, VFs, stacks; the API socket.
#[derive(Debug, Parser)]
#[command(version, max_term_width = 80)]
struct Args {
    /// Simulated hardware: an in-process SR-IOV NIC model and state under
    /// ~/.local/share/hostd-sim; guests boot the probe image on /dev/kvm.
    #[arg(long)]
    sim: bool,
    /// Config file (default /etc/hostd/hostd.toml; none with --sim).
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory (overrides the config).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// API socket (overrides the config).
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Exit codes (docs/HOSTD.md).
mod exit {
    pub const CONFIG: u8 = 2;
    pub const STATE: u8 = 3;
    pub const SOCKET: u8 = 4;
    pub const HOST: u8 = 5;
}

fn report(err: &dyn std::error::Error) {
    let mut message = format!("hostd: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    eprintln!("{message}");
}

/// SIGTERM and SIGINT, blocked in every thread (threads inherit the mask; children get an
/// empty one from std's spawn) and taken by [`stop_on_signal`] instead.
fn stop_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
}

/// Waits for SIGTERM or SIGINT and asks the state owner to shut down (it stops fastpath;
/// guests keep running). A second signal exits at once.
fn stop_on_signal(signals: SigSet, commands: Sender<Command>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                log::info!("{signal:?}: shutting down");
                let _ = commands.send(Command::Shutdown);
            }
            if let Ok(signal) = signals.wait() {
                log::warn!("{signal:?} again: exiting without stopping fastpath");
                std::process::exit(1);
            }
        })
        .map(drop)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let signals = stop_signals();
    if let Err(err) = signals.thread_block() {
        eprintln!("hostd: error: cannot block SIGTERM and SIGINT: {err}");
        return ExitCode::from(exit::HOST);
    }
    let args = Args::parse();
    let online = match hostd::inventory::online_cpus() {
        Ok(online) => online,
        Err(err) => {
            report(&err);
            return ExitCode::from(exit::HOST);
        }
    };
    let file = match (&args.config, args.sim) {
        (Some(path), _) => ConfigFile::load(path),
        (None, true) => Ok(ConfigFile::default()),
        (None, false) => ConfigFile::load(std::path::Path::new(DEFAULT_CONFIG_PATH)),
    };
    let mut file = match file {
        Ok(file) => file,
        Err(err) => {
            report(&err);
            return ExitCode::from(exit::CONFIG);
        }
    };
    if args.state_dir.is_some() {
        file.state_dir = args.state_dir.clone();
    }
    if args.socket.is_some() {
        file.socket = args.socket.clone();
    }
    let config = match file.resolve(args.sim, &online) {
        Ok(config) => config,
        Err(err) => {
            report(&err);
            return ExitCode::from(exit::CONFIG);
        }
    };
    if !config.vmm_path.is_file() {
        log::warn!(
            "no VMM at {}: guests cannot start until it is there (cargo build -p vmm, or set \
             vmm_path in the config)",
            config.vmm_path.display()
        );
    }
    for dir in [&config.state_dir, &config.runtime_dir] {
        if let Err(err) = std::fs::create_dir_all(dir) {
            eprintln!("hostd: error: cannot create {}: {err}", dir.display());
            return ExitCode::from(exit::STATE);
        }
    }
    let (nic, probe) = if config.sim {
        let nic = hostd::sim::nic(&config.state_dir);
        let probe = hostd::sim::probe_image(&config.state_dir);
        match (nic, probe) {
            (Ok(nic), Ok(probe)) => (nic, Some(probe)),
            (Err(err), _) => {
                report(&err);
                return ExitCode::from(exit::STATE);
            }
            (_, Err(err)) => {
                report(&err);
                return ExitCode::from(exit::STATE);
            }
        }
    } else {
        (sriov::Host::real(), None)
    };
    let inventory = match hostd::inventory::read(&nic) {
        Ok(inventory) => inventory,
        Err(err) => {
            report(&err);
            return ExitCode::from(exit::HOST);
        }
    };
    let listener = match hostd::server::bind(&config.socket, config.socket_group.as_deref()) {
        Ok(listener) => listener,
        Err(err) => {
            report(&err);
            return ExitCode::from(exit::SOCKET);
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = config.socket.clone();
    let state_dir = config.state_dir.clone();
    let sim = config.sim;
    let cores = hostd::cpulist::format(&config.guest_cores);
    let mut daemon = match Daemon::new(config, nic, inventory, tx.clone()) {
        Ok(daemon) => daemon,
        Err(err) => {
            report(&err);
            return ExitCode::from(exit::STATE);
        }
    };
    if let Some(probe) = probe {
        daemon.seed_template("probe", hostd::sim::probe_template(&probe));
    }
    daemon.record_start();
    // Re-adoption first: it tells which VFs running guests hold (their PFs keep their VF
    // count) and gives back those of guests that are gone.
    daemon.adopt_all();
    daemon.apply_vf_counts();
    // After the guests: the cores they hold are known, so a fastpath config naming one of
    // them is refused.
    daemon.adopt_fastpath();
    if let Err(err) = stop_on_signal(signals, tx.clone()) {
        eprintln!("hostd: error: cannot start the signal thread: {err}");
        return ExitCode::from(exit::HOST);
    }
    let server = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || hostd::server::serve(listener, tx));
    if let Err(err) = server {
        eprintln!("hostd: error: cannot start the accept thread: {err}");
        return ExitCode::from(exit::SOCKET);
    }
    log::info!(
        "hostd ready: socket {}, state {}, guest cores {cores}{}",
        socket.display(),
        state_dir.display(),
        if sim { " (simulated hardware)" } else { "" }
    );
    if sim {
        eprintln!(
            "hostd --sim: ready. In another terminal:\n  hostctl create demo --template probe --start\n  hostctl console demo    (leave with Ctrl-])\n  hostctl stop demo && hostctl delete demo"
        );
    }
    daemon.run(rx);
    ExitCode::SUCCESS
}
