//! `hostd-vmm --config <file>`: runs one VM until it ends. The exit code says how
//! (docs/VMM.md "Exit codes"); errors go to stderr with what to do about them.

use std::path::PathBuf;
use std::process::ExitCode;

use vmm::config::VmConfig;
use vmm::control::{ControlLoop, Sockets, exit_code, start_exit_code, take_stop_signals};
use vmm::vm::Vm;

const USAGE: &str = "usage: hostd-vmm --config <vm.toml>";

fn parse_args() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--config"), Some(path), None) => Ok(PathBuf::from(path)),
        _ => Err(USAGE.to_owned()),
    }
}

/// Prints an error with its chain of causes.
fn report(err: &dyn std::error::Error) {
    let mut message = format!("hostd-vmm: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    eprintln!("{message}");
}

fn code(value: i32) -> ExitCode {
    ExitCode::from(u8::try_from(value).unwrap_or(1))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config_path = match parse_args() {
        Ok(path) => path,
        Err(usage) => {
            eprintln!("{usage}");
            return code(exit_code::BAD_CONFIG);
        }
    };
    let config = match VmConfig::from_file(&config_path) {
        Ok(config) => config,
        Err(err) => {
            report(&err);
            return code(exit_code::BAD_CONFIG);
        }
    };
    let signals = match take_stop_signals() {
        Ok(signals) => signals,
        Err(err) => {
            report(&err);
            return code(exit_code::RUNTIME_FAILURE);
        }
    };
    let sockets = match Sockets::bind(&config) {
        Ok(sockets) => sockets,
        Err(err) => {
            report(&err);
            return code(exit_code::SOCKET_UNAVAILABLE);
        }
    };
    let vm = match Vm::create(config) {
        Ok(vm) => vm,
        Err(err) => {
            report(&err);
            return code(start_exit_code(&err));
        }
    };
    let control = match ControlLoop::new(vm, sockets, signals) {
        Ok(control) => control,
        Err(err) => {
            report(&err);
            return code(exit_code::RUNTIME_FAILURE);
        }
    };
    let outcome = control.run();
    if let vmm::control::Outcome::Failed(message) = &outcome {
        eprintln!("hostd-vmm: error: {message}");
    }
    code(outcome.exit_code())
}
