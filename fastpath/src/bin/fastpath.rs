//! `fastpath`: run the forwarder from a config file (supervised by hostd), or as a quick
//! two-port forwarder for benchmarks, validate a config file, or send a control request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};

use fastpath::config::load_file;
use fastpath::control::client::ControlClient;
use fastpath::control::messages::{
    Config, CoreConfig, IdlePolicy, PortBackend, PortConfig, Request, VlanMode, XdpAttach,
};
use fastpath::runtime::Fastpath;

#[derive(Debug, Parser)]
#[command(
    name = "fastpath",
    about = "Poll-mode L2 forwarder (AF_XDP / AF_PACKET)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    AfXdp,
    AfPacket,
    /// AF_XDP, falling back to AF_PACKET.
    Auto,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XdpMode {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Idle {
    Spin,
    Yield,
    Sleep,
}

/// Options of `fastpath forward`.
#[derive(Debug, Args)]
struct ForwardArgs {
    /// First interface.
    #[arg(long = "in")]
    a: String,
    /// Second interface.
    #[arg(long = "out")]
    b: String,
    /// Port kind.
    #[arg(long, value_enum, default_value = "af-xdp")]
    backend: Backend,
    /// CPU to pin the poll thread to.
    #[arg(long, default_value_t = 0)]
    cpu: u32,
    /// What the poll thread does when idle.
    #[arg(long, value_enum, default_value = "yield")]
    idle: Idle,
    /// Threaded NAPI on both interfaces, NAPI threads pinned to --cpu.
    #[arg(long)]
    napi_threads: bool,
    /// Kernel flow lane (AF_PACKET ports): decided flows are forwarded by a tc program.
    #[arg(long)]
    flow_offload: bool,
    /// AF_XDP preferred busy polling (the poll thread runs the NAPI receive itself).
    #[arg(long)]
    busy_poll: bool,
    /// Where the XDP program attaches (AF_XDP).
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpMode,
    /// Control socket path.
    #[arg(long)]
    control: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run with a configuration file until SIGTERM/SIGINT.
    Run {
        /// TOML (or .json) configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Control socket path.
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Forward between two interfaces (both access ports of VLAN 1) until SIGTERM/SIGINT.
    Forward(ForwardArgs),
    /// Validate a configuration file and exit.
    Check {
        /// TOML (or .json) configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Send one request (JSON, e.g. '"get_stats"') to a running fastpath; print the reply.
    Ctl {
        /// Control socket path.
        #[arg(long)]
        control: PathBuf,
        /// The request as JSON.
        request: String,
    },
}

fn forward_config(args: &ForwardArgs) -> Config {
    let port = |name: &str| PortConfig {
        name: name.to_string(),
        backend: match args.backend {
            Backend::AfXdp => PortBackend::AfXdp {
                ifname: name.to_string(),
                queue: 0,
                attach: match args.xdp_mode {
                    XdpMode::Auto => XdpAttach::Auto,
                    XdpMode::Native => XdpAttach::Native,
                    XdpMode::Generic => XdpAttach::Generic,
                },
                busy_poll: args.busy_poll,
            },
            Backend::Auto => PortBackend::Auto {
                ifname: name.to_string(),
            },
            Backend::AfPacket => PortBackend::AfPacket {
                ifname: name.to_string(),
            },
        },
        vlan: VlanMode::Access { vlan: 1 },
        guest_facing: false,
        acl_in: vec![],
        acl_out: vec![],
        rx_limit: None,
        tx_limit: None,
    };
    Config {
        ports: vec![port(&args.a), port(&args.b)],
        cores: vec![CoreConfig {
            cpu: args.cpu,
            ports: vec![args.a.clone(), args.b.clone()],
            idle: match args.idle {
                Idle::Spin => IdlePolicy::Spin,
                Idle::Yield => IdlePolicy::Yield,
                Idle::Sleep => IdlePolicy::Sleep,
            },
            napi_threads: args.napi_threads,
            flow_offload: args.flow_offload,
        }],
        ..Config::default()
    }
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn run(config: Config, control: Option<&Path>) -> Result<(), String> {
    // Block the stop signals in every thread (threads inherit the mask); main waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block SIGTERM/SIGINT: {e}"))?;
    let fp = Arc::new(Fastpath::start(config).map_err(|e| chain(&e))?);
    if let Some(path) = control {
        fastpath::control::server::spawn(fp.clone(), path).map_err(|e| chain(&e))?;
    }
    println!("fastpath ready");
    let sig = signals.wait().map_err(|e| format!("sigwait failed: {e}"))?;
    log::info!("{sig:?}: stopping");
    fp.stop();
    for s in fp.stats() {
        println!(
            "port {} rx {} tx {} drops {:?}",
            s.name, s.rx_packets, s.tx_packets, s.drops
        );
    }
    if let Some(path) = control {
        let _ = std::fs::remove_file(path);
    }
    // The control thread holds a clone; exit closes every socket and detaches XDP links.
    std::process::exit(0)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, control } => load_file(&config)
            .map_err(|e| chain(&e))
            .and_then(|(c, _)| run(c, control.as_deref())),
        Command::Forward(args) => run(forward_config(&args), args.control.as_deref()),
        Command::Check { config } => load_file(&config)
            .map(|_| println!("{}: valid", config.display()))
            .map_err(|e| chain(&e)),
        Command::Ctl { control, request } => serde_json::from_str::<Request>(&request)
            .map_err(|e| format!("request is not valid JSON for the control protocol: {e}"))
            .and_then(|req| {
                let mut c = ControlClient::connect(&control).map_err(|e| chain(&e))?;
                let reply = c.request(&req).map_err(|e| chain(&e))?;
                serde_json::to_string_pretty(&reply)
                    .map(|s| println!("{s}"))
                    .map_err(|e| e.to_string())
            }),
    };
    if let Err(e) = result {
        eprintln!("fastpath: {e}");
        std::process::exit(1);
    }
}
