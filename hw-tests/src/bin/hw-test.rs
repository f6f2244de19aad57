//! `hw-test`: the factory suite, run on the appliance.
//!
//! Exit codes: 0 every required check passed; 1 a check failed; 2 bad usage or profile.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hw_tests::checks::run_suite;
use hw_tests::machine::Machine;
use hw_tests::profile::Profile;
use hw_tests::{frame, report::Report};

/// Check this machine against a factory profile.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The SKU's factory profile (TOML); shipped ones are in /etc/hw-test/profiles.
    #[arg(long)]
    profile: PathBuf,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the report as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Print the JSON report on one line between checksummed markers (for a serial console).
    #[arg(long, conflicts_with = "json")]
    frame: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let profile = match Profile::load(&args.profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hw-test: {e}");
            return ExitCode::from(2);
        }
    };
    let report = run_suite(&profile, &Machine::real(), |r| {
        if !args.quiet {
            eprintln!("hw-test: {:<12} {:?} {}", r.name, r.outcome, r.reason);
        }
    });
    if let Err(code) = emit(&args, &report) {
        return code;
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn emit(args: &Args, report: &Report) -> Result<(), ExitCode> {
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, report.to_junit()) {
            eprintln!(
                "hw-test: cannot write the JUnit report to {}: {e}",
                path.display()
            );
            return Err(ExitCode::from(2));
        }
    }
    if args.frame {
        print!("{}", frame::encode(&report.to_json_line()));
    } else if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
