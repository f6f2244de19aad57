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

/// Writes the exit record (docs/VMM.md "Exit codes"), when the config asks for one. Best
/// effort: the exit code still tells a parent, and a missing record reads as "killed".
fn record_exit(config: &VmConfig, code: i32, reason: &str) {
    if let Some(path) = &config.exit_record {
        let reason = reason.replace('\n', " ");
        if let Err(err) = std::fs::write(path, format!("{code}\n{reason}\n")) {
            log::warn!("cannot write the exit record {}: {err}", path.display());
        }
    }
}

/// Prints `err` and records it, with its causes, as the exit reason.
fn fail(config: &VmConfig, err: &dyn std::error::Error, code: i32) -> ExitCode {
    report(err);
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    record_exit(config, code, &reason);
    self::code(code)
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
    if let Some(path) = &config.exit_record {
        // A record left by an earlier run of this VM must not describe this one.
        let _ = std::fs::remove_file(path);
    }
    let signals = match take_stop_signals() {
        Ok(signals) => signals,
        Err(err) => return fail(&config, &err, exit_code::RUNTIME_FAILURE),
    };
    let sockets = match Sockets::bind(&config) {
        Ok(sockets) => sockets,
        Err(err) => return fail(&config, &err, exit_code::SOCKET_UNAVAILABLE),
    };
    let recorded = config.clone();
    let vm = match Vm::create(config) {
        Ok(vm) => vm,
        Err(err) => return fail(&recorded, &err, start_exit_code(&err)),
    };
    let control = match ControlLoop::new(vm, sockets, signals) {
        Ok(control) => control,
        Err(err) => return fail(&recorded, &err, exit_code::RUNTIME_FAILURE),
    };
    let outcome = control.run();
    if let vmm::control::Outcome::Failed(message) = &outcome {
        eprintln!("hostd-vmm: error: {message}");
    }
    let reason = match &outcome {
        vmm::control::Outcome::PoweredOff => "guest powered off".to_owned(),
        vmm::control::Outcome::GuestExit(v) => format!("guest wrote {v} to the debug exit port"),
        vmm::control::Outcome::Forced => "stopped by force".to_owned(),
        vmm::control::Outcome::Failed(message) => message.clone(),
    };
    record_exit(&recorded, outcome.exit_code(), &reason);
    code(outcome.exit_code())
}
