//! `hostctl`: every API call from the command line (docs/CLI.md). Human tables by default,
//! `--json` for scripts; exit codes say what kind of failure it was.

mod build;
mod console;
mod render;
mod shell;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};
use hostd_proto::{ApiError, ErrorCode, EventFilter, EventQuery, Quota, Request, Response, name};

use crate::client::{Client, ClientError};

/// Exit codes (docs/CLI.md).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Any other failure.
    pub const FAILED: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// hostd cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// No such instance, template or stack.
    pub const NOT_FOUND: u8 = 4;
    /// The caller's role does not allow it.
    pub const DENIED: u8 = 5;
    /// Not enough cores, RAM, huge pages, VFs or disk, or over a quota.
    pub const NO_RESOURCES: u8 = 6;
    /// Not possible in the instance's state, or busy.
    pub const BAD_STATE: u8 = 7;
    /// A value was refused (bad name, out of range, exists already).
    pub const INVALID: u8 = 8;
    /// The VMM failed to start or to carry out the request.
    pub const VMM: u8 = 9;
    /// A VF cannot be given to the guest (binding, IOMMU group, no IOMMU, in use).
    pub const VF: u8 = 10;
}

/// The exit code for a refusal.
pub fn exit_code(err: &ApiError) -> u8 {
    match err.code {
        ErrorCode::NotFound => exit::NOT_FOUND,
        ErrorCode::PermissionDenied => exit::DENIED,
        ErrorCode::InsufficientResources | ErrorCode::QuotaExceeded => exit::NO_RESOURCES,
        ErrorCode::InvalidState | ErrorCode::Busy => exit::BAD_STATE,
        ErrorCode::InvalidArgument
        | ErrorCode::AlreadyExists
        | ErrorCode::BadRequest
        | ErrorCode::UnsupportedVersion
        | ErrorCode::FrameTooLarge => exit::INVALID,
        ErrorCode::VmmFailed => exit::VMM,
        ErrorCode::VfUnavailable => exit::VF,
        ErrorCode::Internal => exit::FAILED,
    }
}

/// Talk to hostd: guests, templates, stacks, events, consoles.
#[derive(Debug, Parser)]
#[command(
    name = "hostctl",
    version,
    propagate_version = true,
    max_term_width = 80
)]
pub struct Cli {
    /// hostd's socket [default: /run/hostd/hostd.sock if it exists, else hostd --sim's]
    #[arg(long, global = true, env = "HOSTD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Print the reply as JSON (the API's types) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Host summary: instances, free cores, RAM, VFs.
    Status,
    /// Cores by role, memory, NIC ports, and which VF each instance holds.
    Inventory,
    /// Your uid and role, hostd's version.
    Whoami,
    /// List instances.
    #[command(alias = "ls")]
    List {
        /// Only this stack's.
        #[arg(long)]
        stack: Option<String>,
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show one instance.
    Show {
        /// Name or i-<id>.
        instance: String,
    },
    /// Create an instance from a template.
    Create(CreateArgs),
    /// Start an instance (waits until it runs).
    Start {
        /// Name or i-<id>.
        instance: String,
    },
    /// Stop an instance (waits until it stopped).
    Stop {
        /// Name or i-<id>.
        instance: String,
        /// Stop now instead of pressing the power button.
        #[arg(long)]
        force: bool,
        /// Seconds the guest gets before the stop is forced [default: the template's].
        #[arg(long)]
        timeout: Option<u32>,
    },
    /// Reboot an instance.
    Reboot {
        /// Name or i-<id>.
        instance: String,
        /// Reset now instead of asking the guest.
        #[arg(long)]
        hard: bool,
    },
    /// Park an instance's vCPUs.
    Pause {
        /// Name or i-<id>.
        instance: String,
    },
    /// Release an instance's vCPUs.
    Resume {
        /// Name or i-<id>.
        instance: String,
    },
    /// Change vCPUs, RAM or disk of a stopped instance.
    Resize {
        /// Name or i-<id>.
        instance: String,
        /// vCPUs.
        #[arg(long)]
        vcpus: Option<u16>,
        /// RAM, MiB.
        #[arg(long)]
        ram: Option<u32>,
        /// Disk, GiB (grow only).
        #[arg(long)]
        disk: Option<u32>,
    },
    /// Rename an instance.
    Rename {
        /// Name or i-<id>.
        instance: String,
        /// New name.
        new_name: String,
    },
    /// Set (or clear, without GROUP) an instance's group.
    Regroup {
        /// Name or i-<id>.
        instance: String,
        /// New group.
        group: Option<String>,
    },
    /// Turn HA on or off.
    Ha {
        /// Name or i-<id>.
        instance: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
    /// Delete an instance (releases its cores, RAM and VFs).
    Delete {
        /// Name or i-<id>.
        instance: String,
        /// Stop it by force first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Templates.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Stacks.
    #[command(subcommand)]
    Stack(StackCmd),
    /// Recorded events; --follow waits for new ones.
    Events {
        /// Keep printing new events (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// Only this instance's.
        #[arg(long)]
        instance: Option<String>,
        /// How many recent events.
        #[arg(long, default_value_t = 20)]
        limit: u16,
    },
    /// The fast path: state, cores and port counters; `restart` starts it afresh.
    Fastpath {
        /// What to do [default: status].
        #[command(subcommand)]
        action: Option<FastpathCmd>,
    },
    /// Attach to an instance's serial console (leave with Ctrl-]).
    Console {
        /// Name or i-<id>.
        instance: String,
    },
    /// Interactive hostctl with history and tab completion.
    Shell,
    /// Print a shell completion script (bash).
    Completions {
        /// The shell.
        #[arg(value_enum, default_value_t = clap_complete::Shell::Bash)]
        shell: clap_complete::Shell,
    },
    /// Send one JSON request line and print the JSON reply (for GUI developers).
    #[command(hide = true)]
    Raw {
        /// The request, e.g. '{"version":2,"id":1,"request":"host_status"}'.
        request: String,
    },
}

/// `hostctl create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: lower-case letters, digits, '-', '_', '.'.
    pub name: String,
    /// Template, NAME or NAME@VERSION.
    #[arg(long, short)]
    pub template: String,
    /// Stack.
    #[arg(long)]
    pub stack: Option<String>,
    /// Group.
    #[arg(long)]
    pub group: Option<String>,
    /// vCPUs [default: the template's].
    #[arg(long)]
    pub vcpus: Option<u16>,
    /// RAM, MiB [default: the template's].
    #[arg(long)]
    pub ram: Option<u32>,
    /// Disk, GiB [default: the template's].
    #[arg(long)]
    pub disk: Option<u32>,
    /// Number of VFs with default settings [default: the template's].
    #[arg(long)]
    pub vfs: Option<u8>,
    /// One VF as key=value pairs: port, mac, vlan, qos, min and max (TX Mbit/s), e.g.
    /// port=eth0,mac=02:00:00:00:00:01,vlan=10 (repeat for more VFs).
    #[arg(long = "vf")]
    pub vf: Vec<String>,
    /// Restart on failure.
    #[arg(long)]
    pub ha: bool,
    /// Start it once created.
    #[arg(long)]
    pub start: bool,
}

/// `hostctl template ...`.
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List templates.
    List,
    /// Show a template (NAME or NAME@VERSION).
    Show {
        /// NAME or NAME@VERSION.
        template: String,
    },
    /// Create a template, or a new version of one.
    Create {
        /// Name.
        name: String,
        /// Kernel file on the host.
        #[arg(long)]
        kernel: PathBuf,
        /// Initramfs.
        #[arg(long)]
        initramfs: Option<PathBuf>,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u16,
        /// RAM, MiB.
        #[arg(long, default_value_t = 64)]
        ram: u32,
        /// Disk, GiB.
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// VFs.
        #[arg(long, default_value_t = 0)]
        vfs: u8,
        /// RAM on huge pages.
        #[arg(long)]
        hugepages: bool,
        /// HA by default.
        #[arg(long)]
        ha: bool,
        /// Graceful stop timeout, ms.
        #[arg(long, default_value_t = 10_000)]
        stop_timeout_ms: u32,
    },
    /// Delete a template (all versions).
    Delete {
        /// Name.
        name: String,
    },
}

/// `hostctl fastpath ...`.
#[derive(Debug, Subcommand)]
pub enum FastpathCmd {
    /// State, cores and port counters (the default).
    Status,
    /// Start it afresh: its config is read and checked again, the exit count cleared
    /// (admins).
    Restart,
}

/// Quota flags.
#[derive(Debug, Args, Default)]
pub struct QuotaArgs {
    /// Most instances.
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Most vCPUs.
    #[arg(long)]
    pub max_vcpus: Option<u32>,
    /// Most RAM, MiB.
    #[arg(long)]
    pub max_ram: Option<u64>,
    /// Most VFs.
    #[arg(long)]
    pub max_vfs: Option<u32>,
}

impl QuotaArgs {
    fn quota(&self) -> Quota {
        Quota {
            instances: self.max_instances,
            vcpus: self.max_vcpus,
            ram_mib: self.max_ram,
            vfs: self.max_vfs,
        }
    }
}

/// `hostctl stack ...`.
#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// List stacks.
    List,
    /// Show a stack.
    Show {
        /// Name.
        name: String,
    },
    /// Create a stack.
    Create {
        /// Name.
        name: String,
        /// Admin: user:NAME, group:NAME, uid:N or gid:N (repeat).
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// Limits.
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Replace a stack's quota.
    Quota {
        /// Name.
        name: String,
        /// Limits (absent: unlimited).
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Replace a stack's admins.
    Admins {
        /// Name.
        name: String,
        /// user:NAME, group:NAME, uid:N or gid:N.
        admins: Vec<String>,
    },
    /// Delete an empty stack.
    Delete {
        /// Name.
        name: String,
    },
}

fn usage(message: String) -> CliError {
    CliError::Usage(message)
}

/// What went wrong in hostctl.
#[derive(Debug)]
pub enum CliError {
    /// A bad argument.
    Usage(String),
    /// A failed call.
    Client(ClientError),
    /// Local I/O.
    Io(std::io::Error),
}

impl From<ClientError> for CliError {
    fn from(err: ClientError) -> Self {
        Self::Client(err)
    }
}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

fn print_response(response: &Response, json: bool) {
    if json {
        match serde_json::to_string_pretty(response) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("hostctl: cannot print JSON: {err}"),
        }
    } else {
        print!("{}", render::response(response));
    }
}

/// Runs one parsed command line; returns the exit code.
pub fn run(cli: &Cli) -> u8 {
    match run_inner(cli) {
        Ok(()) => exit::OK,
        Err(err) => report(&err, cli.json),
    }
}

fn report(err: &CliError, json: bool) -> u8 {
    match err {
        CliError::Usage(message) => {
            eprintln!("hostctl: {message}");
            exit::USAGE
        }
        CliError::Io(err) => {
            eprintln!("hostctl: {err}");
            exit::FAILED
        }
        CliError::Client(ClientError::Api(api)) => {
            if json {
                println!("{}", serde_json::json!({ "error": api }));
            }
            eprintln!("hostctl: {}", api.message);
            exit_code(api)
        }
        CliError::Client(err @ ClientError::Connect { .. }) => {
            eprintln!("hostctl: {err}");
            exit::UNREACHABLE
        }
        CliError::Client(err) => {
            let mut message = format!("hostctl: {err}");
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            exit::FAILED
        }
    }
}

fn socket(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .unwrap_or_else(crate::client::default_socket)
}

fn run_inner(cli: &Cli) -> Result<(), CliError> {
    if let Some(request) = build::request(&cli.command)? {
        let mut client = Client::connect(&socket(cli))?;
        let response = client.call(request)?;
        print_response(&response, cli.json);
        return Ok(());
    }
    match &cli.command {
        Cmd::Events {
            instance, limit, ..
        } => {
            // Subscribe first, then list: no event falls between the two; events already
            // listed are skipped in the stream.
            let filter = EventFilter {
                instance: instance.as_deref().map(name),
            };
            let mut follow = Client::connect(&socket(cli))?;
            follow.call(Request::Subscribe(filter))?;
            let mut client = Client::connect(&socket(cli))?;
            let recent = client.call(Request::ListEvents(EventQuery {
                after: 0,
                limit: *limit,
                instance: instance.as_deref().map(name),
                newest: true,
            }))?;
            let listed = match &recent {
                Response::Events(page) => page.events.last().map_or(0, |e| e.seq),
                _ => 0,
            };
            print_response(&recent, cli.json);
            loop {
                let event = follow.next_event()?;
                if event.seq <= listed {
                    continue;
                }
                if cli.json {
                    println!("{}", serde_json::to_string(&event).unwrap_or_default());
                } else {
                    println!("{}", render::event(&event));
                }
            }
        }
        Cmd::Console { instance } => console::attach(&socket(cli), instance),
        Cmd::Shell => shell::run(cli.socket.clone()),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "hostctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Raw { request: json } => {
            use std::io::{BufRead, Write};
            let path = socket(cli);
            let mut stream = std::os::unix::net::UnixStream::connect(&path)
                .map_err(|source| ClientError::Connect { path, source })?;
            stream.write_all(json.trim().as_bytes())?;
            stream.write_all(b"\n")?;
            let mut line = String::new();
            std::io::BufReader::new(stream).read_line(&mut line)?;
            print!("{line}");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `hostctl`'s main.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = err.print();
            return std::process::ExitCode::from(code);
        }
    };
    std::process::ExitCode::from(run(&cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["hostctl", "--json", "stop", "web-1", "--force"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Cmd::Stop { force: true, .. }));
    }
}
